"""``tbot``: the Machine ID agent (start, init, proxy, install systemd).

Thin: flags are parsed here, the work happens in :mod:`jumpgate.core.bot`.
Global flags (``-c/--config``, ``-d/--debug``, ``--log-format``) work before
or after the subcommand, as with Teleport's kingpin parser:
``tbot -c /etc/tbot.yaml proxy ... db ...`` and ``tbot start -c /etc/tbot.yaml``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import typer

from jumpgate.cli.common import hoist_global_flags, info, run_app, warn

if TYPE_CHECKING:
    from jumpgate.core.bot.config import BotConfig

app = typer.Typer(
    name="tbot",
    help="Jumpgate Machine ID agent: keeps short-lived certificates fresh for machines.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
proxy_app = typer.Typer(
    help="Start a local proxy to a database or an application, with the certificates tbot writes.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
install_app = typer.Typer(
    help="Helper commands for installing Machine ID.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(proxy_app, name="proxy")
app.add_typer(install_app, name="install")

GLOBAL_FLAGS = {
    "-c": True,
    "--config": True,
    "-d": False,
    "--debug": False,
    "--log-format": True,
    "--insecure": False,
}


@dataclass
class Globals:
    """Options every tbot command shares."""

    config: str | None = None
    debug: bool = False
    log_format: str = "text"
    insecure: bool = False

    def bot_config(self, *, required: bool = False) -> BotConfig:
        """The parsed ``-c`` file, or the defaults when there is none."""
        from jumpgate.core.bot.config import BotConfig, load_config
        from jumpgate.core.errors import BadParameter

        if self.config:
            cfg = load_config(self.config)
        elif required:
            raise BadParameter("missing required parameter --config", hint="pass -c /etc/tbot.yaml")
        else:
            cfg = BotConfig()
        if self.insecure:
            cfg.insecure = True
        return cfg


def g(ctx: typer.Context) -> Globals:
    """The shared options of this invocation."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Globals)
    return obj


@app.callback()
def _root(
    ctx: typer.Context,
    config: str = typer.Option(
        None, "-c", "--config", envvar="TBOT_CONFIG_PATH", help="Path to a tbot config file"
    ),
    debug: bool = typer.Option(False, "-d", "--debug", envvar="TBOT_DEBUG", help="Debug logging"),
    log_format: str = typer.Option("text", "--log-format", help="Log format: text or json"),
    insecure: bool = typer.Option(
        False, "--insecure", help="Trust the cluster on first use without a CA pin"
    ),
) -> None:
    """Jumpgate Machine ID agent."""
    from jumpgate.cli.logsetup import setup_logging
    from jumpgate.core.errors import BadParameter

    if log_format not in ("text", "json"):
        raise BadParameter(f"invalid --log-format {log_format!r}", hint="use text or json")
    setup_logging(level="DEBUG" if debug else "INFO", fmt=log_format)
    ctx.obj = Globals(config=config, debug=debug, log_format=log_format, insecure=insecure)


@app.command()
def version() -> None:
    """Print the version."""
    from jumpgate.core.version import TELEPORT_COMPAT, VERSION

    print(
        f"Jumpgate tbot v{VERSION} (Teleport {TELEPORT_COMPAT} compatible) python{sys.version.split()[0]}"
    )


def _duration(value: str, flag: str) -> timedelta | None:
    if not value:
        return None
    from jumpgate.core.durations import parse_duration
    from jumpgate.core.errors import BadParameter

    td = parse_duration(value, field=flag)
    if td <= timedelta(0):
        raise BadParameter(f"{flag} must be a positive duration")
    return td


@app.command()
def start(
    ctx: typer.Context,
    data_dir: str = typer.Option(
        "", "--data-dir", help="Internal storage: a directory or memory://"
    ),
    destination_dir: str = typer.Option(
        "", "--destination-dir", help="Write one identity output to this directory"
    ),
    token: str = typer.Option(
        "", "--token", envvar="TELEPORT_BOT_TOKEN", help="Join token (or a path to a file)"
    ),
    ca_pin: list[str] = typer.Option(
        None, "--ca-pin", help="CA pin to validate the cluster (repeatable)"
    ),
    join_method: str = typer.Option("", "--join-method", help="Join method: token"),
    auth_server: str = typer.Option(
        "",
        "-a",
        "--auth-server",
        envvar="TELEPORT_AUTH_SERVER",
        help="Address of the cluster (prefer --proxy-server)",
    ),
    proxy_server: str = typer.Option(
        "", "--proxy-server", envvar="TELEPORT_PROXY", help="Proxy address, HOST:PORT"
    ),
    certificate_ttl: str = typer.Option("", "--certificate-ttl", help="TTL of the certificates"),
    renewal_interval: str = typer.Option("", "--renewal-interval", help="How often to renew"),
    oneshot: bool = typer.Option(False, "--oneshot", help="Quit after the first renewal"),
    diag_addr: str = typer.Option("", "--diag-addr", help="Diagnostics HTTP listen address"),
    pid_file: str = typer.Option("", "--pid-file", help="Write the process id to this file"),
) -> None:
    """Join (or load the stored identity), write every output, and keep renewing."""
    from jumpgate.core.bot.config import CLIOverrides, apply_overrides
    from jumpgate.core.bot.service import run_bot

    gl = g(ctx)
    cfg = apply_overrides(
        gl.bot_config(),
        CLIOverrides(
            data_dir=data_dir,
            destination_dir=destination_dir,
            token=token,
            ca_pins=list(ca_pin or []),
            join_method=join_method,
            auth_server=auth_server,
            proxy_server=proxy_server,
            certificate_ttl=_duration(certificate_ttl, "--certificate-ttl"),
            renewal_interval=_duration(renewal_interval, "--renewal-interval"),
            oneshot=oneshot,
            diag_addr=diag_addr,
            debug=gl.debug,
        ),
    )
    if cfg.debug and not gl.debug:
        import logging

        logging.getLogger().setLevel(logging.DEBUG)
    if not cfg.outputs:
        warn("no outputs configured: only the bot's own identity will be kept fresh")
    run_bot(cfg, pid_file=pid_file)


@app.command()
def init(
    ctx: typer.Context,
    destination_dir: str = typer.Option(
        "", "--destination-dir", help="Initialize this directory (an identity output)"
    ),
    init_dir: str = typer.Option(
        "", "--init-dir", help="With a config of several outputs: the directory to initialize"
    ),
    bot_user: str = typer.Option("", "--bot-user", help="The Linux user tbot runs as"),
    owner: str = typer.Option("", "--owner", help="Owner of the files, USER:GROUP"),
    reader_user: str = typer.Option("", "--reader-user", help="The Linux user reading the files"),
    clean: bool = typer.Option(False, "--clean", help="Remove files the output does not write"),
) -> None:
    """Create an output directory and its files, readable only by the bot and reader users."""
    from jumpgate.core.bot.init import init_destination
    from jumpgate.core.errors import BadParameter

    gl = g(ctx)
    if not gl.config and not destination_dir:
        raise BadParameter(
            "pass -c CONFIG (with --init-dir when it has several outputs) or --destination-dir",
        )
    report = init_destination(
        gl.bot_config(),
        init_dir=init_dir,
        destination_dir=destination_dir,
        bot_user=bot_user,
        owner=owner,
        reader_user=reader_user,
        clean=clean,
    )
    for w in report.warnings:
        warn(w)
    if report.created:
        info(f"Created: {', '.join(report.created)}")
    else:
        info("Nothing to create.")
    if report.removed:
        info(f"Removed: {', '.join(report.removed)}")
    how = "with ACLs" if report.acls else "with permissions 0600/0700"
    info(f"Destination {report.path} has been initialized (owner {report.owner}, {how}).")


# ---------------------------------------------------------------------- proxy
@dataclass
class ProxyOpts:
    """``tbot proxy`` options shared by db and app."""

    proxy: str
    destination_dir: str
    cluster: str


@proxy_app.callback()
def _proxy_root(
    ctx: typer.Context,
    proxy_server: str = typer.Option(
        "", "--proxy-server", "--proxy", envvar="TELEPORT_PROXY", help="Proxy address, HOST:PORT"
    ),
    destination_dir: str = typer.Option(
        "", "--destination-dir", help="The tbot output directory holding the certificate"
    ),
    cluster: str = typer.Option("", "--cluster", help="Cluster name (the certificate's cluster)"),
) -> None:
    """Start a local proxy to a database or an application."""
    ctx.obj = ProxyOpts(proxy=proxy_server, destination_dir=destination_dir, cluster=cluster)


def _proxy_opts(ctx: typer.Context) -> tuple[str, str, str]:
    from jumpgate.core.bot.proxy import resolve_destination_dir, resolve_proxy_addr

    opts = ctx.parent.obj if ctx.parent is not None else None
    assert isinstance(opts, ProxyOpts)
    gl = g(ctx)
    cfg = gl.bot_config() if gl.config else None
    return (
        resolve_proxy_addr(opts.proxy, cfg),
        resolve_destination_dir(opts.destination_dir, cfg),
        opts.cluster,
    )


@proxy_app.command("db")
def proxy_db(
    ctx: typer.Context,
    service: str = typer.Argument(..., help="Database name (the output's service)"),
    port: int = typer.Option(
        0, "-p", "--port", help="Local port [default: random]", show_default=False
    ),
    tunnel: bool = typer.Option(
        False, "--tunnel", help="Authenticate here: clients connect without certificates"
    ),
) -> None:
    """Local proxy to a database, using the database output's certificate."""
    from jumpgate.core.bot.proxy import db_proxy, serve

    proxy_addr, dest, cluster = _proxy_opts(ctx)
    lp = db_proxy(
        proxy_addr=proxy_addr,
        destination_dir=dest,
        service=service,
        port=port,
        tunnel=tunnel,
        cluster=cluster,
    )

    def started(host: str, bound: int) -> None:
        if tunnel:
            print(
                f'Started authenticated tunnel for the database "{service}" on {host}:{bound}.\n'
                "Connect without certificates, e.g.:\n\n"
                f"  psql postgres://USER@localhost:{bound}/DATABASE\n",
                flush=True,
            )
        else:
            print(
                f"Started DB proxy on {host}:{bound}\n\n"
                f"Use the following credentials to connect to the {service} proxy:\n"
                f"  ca_file={dest}/teleport-host-ca.crt\n"
                f"  cert_file={dest}/tlscert\n"
                f"  key_file={dest}/key\n",
                flush=True,
            )

    serve(lp, started)


@proxy_app.command("app")
def proxy_app_cmd(
    ctx: typer.Context,
    app_name: str = typer.Argument(..., help="Application name (the output's app_name)"),
    port: int = typer.Option(
        0, "-p", "--port", help="Local port [default: random]", show_default=False
    ),
) -> None:
    """Local HTTP proxy to an application, using the application output's certificate."""
    from jumpgate.core.bot.proxy import app_proxy, serve

    proxy_addr, dest, cluster = _proxy_opts(ctx)
    lp = app_proxy(
        proxy_addr=proxy_addr, destination_dir=dest, app=app_name, port=port, cluster=cluster
    )

    def started(host: str, bound: int) -> None:
        print(
            f'Proxying connections to the application "{app_name}" on http://{host}:{bound}\n'
            "Any local user can connect to this port without authenticating.",
            flush=True,
        )

    serve(lp, started)


# ---------------------------------------------------------------------- install
@install_app.command("systemd")
def install_systemd(
    ctx: typer.Context,
    name: str = typer.Option("tbot", "--name", help="Name of the systemd unit"),
    user: str = typer.Option("teleport", "--user", help="The user the service runs as"),
    group: str = typer.Option("teleport", "--group", help="The group the service runs as"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing, different unit"),
    systemd_directory: str = typer.Option(
        "/etc/systemd/system", "--systemd-directory", help="Where to write the unit"
    ),
    pid_file: str = typer.Option("", "--pid-file", help="PID file [default: /run/NAME.pid]"),
    anonymous_telemetry: bool = typer.Option(
        False, "--anonymous-telemetry", help="Set TELEPORT_ANONYMOUS_TELEMETRY=1 in the unit"
    ),
) -> None:
    """Write a systemd unit that runs tbot start with the config (-c)."""
    import shutil
    from pathlib import Path

    from jumpgate.core.bot.systemd import DEFAULT_TBOT_PATH, install_unit, render_unit

    gl = g(ctx)
    gl.bot_config(required=True)  # a unit for a config that does not parse is no use
    found = shutil.which("tbot")
    tbot_path = str(Path(found).absolute()) if found else DEFAULT_TBOT_PATH
    text = render_unit(
        config=gl.config or "",
        name=name,
        user=user,
        group=group,
        pid_file=pid_file,
        anonymous_telemetry=anonymous_telemetry,
        tbot_path=tbot_path,
    )
    result = install_unit(text, name=name, directory=systemd_directory, force=force)
    if result.changed:
        info(
            f"Wrote systemd unit file {result.path}. Reload systemd with 'systemctl daemon-reload' "
            f"and then enable and start the service with 'systemctl enable --now {name}'"
        )
    else:
        info(f"{result.path} is up to date: no changes to write")


def main() -> None:
    """Console-script entry point."""
    run_app(app, prog="tbot", argv=hoist_global_flags(sys.argv[1:], GLOBAL_FLAGS))
