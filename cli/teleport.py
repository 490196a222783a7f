"""``teleport``: the cluster daemon (auth, proxy and agents) and its config helpers."""

from __future__ import annotations

import sys
from typing import Any

import typer

from jumpgate.cli.common import info, run_app

app = typer.Typer(
    name="teleport",
    help="Jumpgate cluster daemon: runs the auth, proxy, database and application services.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
install_app = typer.Typer(help="Install service files.", no_args_is_help=True)
db_app = typer.Typer(help="Database Service commands.", no_args_is_help=True)
db_configure_app = typer.Typer(help="Database Service configuration.", no_args_is_help=True)
app.add_typer(install_app, name="install")
app.add_typer(db_app, name="db")
app_service_app = typer.Typer(help="Application Service commands.", no_args_is_help=True)
app.add_typer(app_service_app, name="app")
db_app.add_typer(db_configure_app, name="configure")


@app.command()
def version() -> None:
    """Print the version."""
    from jumpgate.core.version import TELEPORT_COMPAT, VERSION

    print(
        f"Jumpgate teleport v{VERSION} (Teleport {TELEPORT_COMPAT} compatible) python{sys.version.split()[0]}"
    )


@app.command()
def start(
    config: str = typer.Option(
        "/etc/teleport.yaml",
        "-c",
        "--config",
        envvar="TELEPORT_CONFIG_FILE",
        help="Path to teleport.yaml",
    ),
    debug: bool = typer.Option(False, "-d", "--debug", help="Debug logging"),
    pid_file: str = typer.Option("", "--pid-file", help="Write the process id to this file"),
) -> None:
    """Start the services enabled in teleport.yaml; stop with SIGTERM/SIGINT, reload with SIGHUP."""
    import asyncio
    import os
    from pathlib import Path

    from jumpgate.cli.logsetup import setup_logging
    from jumpgate.core.aio import install_event_loop_policy
    from jumpgate.core.config import load_config
    from jumpgate.core.fsutil import atomic_write
    from jumpgate.core.process import TeleportProcess

    path = Path(config)
    cfg = load_config(path)
    log_cfg = cfg.teleport.log
    setup_logging(
        level="DEBUG" if debug else log_cfg.severity,
        fmt=log_cfg.format.output,
        output=log_cfg.output,
    )
    pid_path = pid_file or cfg.teleport.pid_file
    if pid_path:
        atomic_write(pid_path, f"{os.getpid()}\n", mode=0o644)
    install_event_loop_policy()
    proc = TeleportProcess(cfg, config_path=path)
    try:
        asyncio.run(proc.run())
    finally:
        if pid_path:
            Path(pid_path).unlink(missing_ok=True)


@app.command()
def configure(
    output: str = typer.Option(
        "stdout",
        "-o",
        "--output",
        help='Where to write: "stdout", "file" (/etc/teleport.yaml) or "file:///path"',
    ),
    cluster_name: str = typer.Option(
        "", "--cluster-name", help="Name of the cluster [default: the host name]"
    ),
    public_addr: str = typer.Option(
        "", "--public-addr", help="Public address of the proxy, host:port"
    ),
    data_dir: str = typer.Option(
        "/var/lib/teleport", "--data-dir", help="Where the daemon keeps its state"
    ),
    nodename: str = typer.Option(
        "", "--nodename", help="Name of this node [default: the host name]"
    ),
    web_listen_addr: str = typer.Option(
        "0.0.0.0:3080", "--web-listen-addr", help="Proxy web port listen address"
    ),
    auth_listen_addr: str = typer.Option(
        "0.0.0.0:3025", "--auth-listen-addr", help="Auth API listen address"
    ),
    second_factor: str = typer.Option(
        "off", "--second-factor", help="off, otp, webauthn, on or optional"
    ),
) -> None:
    """Write a teleport.yaml for an all-in-one node (auth + proxy)."""
    import socket

    from jumpgate.core.config import render_teleport_configure, write_output

    node = nodename or socket.gethostname()
    text = render_teleport_configure(
        cluster_name=cluster_name or node,
        public_addr=public_addr or None,
        data_dir=data_dir,
        nodename=node,
        web_listen_addr=web_listen_addr,
        auth_listen_addr=auth_listen_addr,
        second_factor=second_factor,
    )
    written = write_output(text, output)
    if output == "stdout":
        print(written, end="")
    else:
        info(
            f"A Teleport configuration file has been created at {written!r}.\nTo start Teleport with this configuration file, run:\n\nteleport start --config={written!r}"
        )


@install_app.command("systemd")
def install_systemd(
    output: str = typer.Option(
        "stdout", "-o", "--output", help='"stdout" or a file path for the unit'
    ),
    config: str = typer.Option(
        "/etc/teleport.yaml", "--config", help="teleport.yaml the service runs with"
    ),
    teleport_path: str = typer.Option(
        "", "--teleport-path", help="Path of the teleport binary [default: this one]"
    ),
    pid_file: str = typer.Option("/run/teleport.pid", "--pid-file", help="PID file of the service"),
) -> None:
    """Write a systemd unit that runs teleport start."""
    import shutil

    from jumpgate.core.config import render_systemd_unit
    from jumpgate.core.fsutil import atomic_write

    binary = teleport_path or shutil.which("teleport") or "/usr/local/bin/teleport"
    text = render_systemd_unit(config_path=config, teleport_binary=binary, pid_file=pid_file)
    if output in ("stdout", "-", ""):
        print(text, end="")
        return
    path = output.removeprefix("file://")
    atomic_write(path, text, mode=0o644)
    info(f"Wrote systemd unit file: {path}")


@db_configure_app.command("create")
def db_configure_create(
    output: str = typer.Option(
        "stdout", "-o", "--output", help='"stdout", "file" (/etc/teleport.yaml) or "file:///path"'
    ),
    proxy: str = typer.Option(
        "0.0.0.0:3080", "--proxy", help="Proxy address to join through, host[:port]"
    ),
    token: str = typer.Option(
        "/tmp/token", "--token", help="Join token, or a path to a file holding it"
    ),
    ca_pin: list[str] = typer.Option([], "--ca-pin", help="CA pin(s) of the cluster, sha256:..."),
    name: str = typer.Option("", "--name", help="Name of the database"),
    protocol: str = typer.Option("", "--protocol", help="Database protocol, e.g. postgres"),
    uri: str = typer.Option("", "--uri", help="Address of the database, host:port"),
    labels: str = typer.Option("", "--labels", help="Static labels, k=v,k2=v2"),
    description: str = typer.Option("", "--description", help="Description shown by tsh db ls"),
    ca_cert_file: str = typer.Option(
        "", "--ca-cert-file", help="CA that signed the database's certificate"
    ),
    trust_system_cert_pool: bool = typer.Option(
        False,
        "--trust-system-cert-pool",
        "--trust_system_cert_pool",
        help="Also trust the system CA pool",
    ),
    data_dir: str = typer.Option(
        "/var/lib/teleport", "--data-dir", help="Where the agent keeps its state"
    ),
    nodename: str = typer.Option(
        "", "--nodename", help="Name of this node [default: the host name]"
    ),
) -> None:
    """Write a teleport.yaml for a Database Service agent."""
    from jumpgate.core.config import render_db_configure, write_output

    text = render_db_configure(
        **_db_agent_args(
            proxy=proxy,
            token=token,
            ca_pin=ca_pin,
            name=name,
            protocol=protocol,
            uri=uri,
            labels=labels,
            description=description,
            ca_cert_file=ca_cert_file,
            trust_system_cert_pool=trust_system_cert_pool,
            data_dir=data_dir,
            nodename=nodename,
        )
    )
    written = write_output(text, output)
    if output == "stdout":
        print(written, end="")
    else:
        info(f"Wrote config to file {written!r}. Now you can start the server. Happy Teleporting!")


def _db_agent_args(
    *,
    proxy: str,
    token: str,
    ca_pin: list[str],
    name: str,
    protocol: str,
    uri: str,
    labels: str,
    description: str,
    ca_cert_file: str,
    trust_system_cert_pool: bool,
    data_dir: str,
    nodename: str,
) -> dict[str, Any]:
    from jumpgate.core.config import parse_labels

    return {
        "proxy": proxy,
        "token": token,
        "name": name,
        "protocol": protocol,
        "uri": uri,
        "labels": parse_labels(labels) if labels else {},
        "ca_cert_file": ca_cert_file or None,
        "trust_system_cert_pool": trust_system_cert_pool,
        "ca_pins": list(ca_pin),
        "data_dir": data_dir,
        "nodename": nodename or None,
        "description": description,
    }


@db_app.command("start")
def db_start(
    token: str = typer.Option(..., "--token", help="Join token, or a path to a file holding it"),
    proxy: str = typer.Option("", "--proxy", help="Proxy address to join through, host[:port]"),
    auth_server: str = typer.Option(
        "", "--auth-server", help="Same as --proxy (Teleport's older spelling)"
    ),
    ca_pin: list[str] = typer.Option([], "--ca-pin", help="CA pin(s) of the cluster, sha256:..."),
    name: str = typer.Option(..., "--name", help="Name of the database"),
    protocol: str = typer.Option(..., "--protocol", help="Database protocol, e.g. postgres"),
    uri: str = typer.Option(..., "--uri", help="Address of the database, host:port"),
    labels: str = typer.Option("", "--labels", help="Static labels, k=v,k2=v2"),
    description: str = typer.Option("", "--description", help="Description shown by tsh db ls"),
    ca_cert_file: str = typer.Option(
        "", "--ca-cert", "--ca-cert-file", help="CA that signed the database's certificate"
    ),
    data_dir: str = typer.Option(
        "/var/lib/teleport", "--data-dir", help="Where the agent keeps its state"
    ),
    nodename: str = typer.Option(
        "", "--nodename", help="Name of this node [default: the host name]"
    ),
    debug: bool = typer.Option(False, "-d", "--debug", help="Debug logging"),
) -> None:
    """Run a Database Service agent for one database, configured by flags alone."""
    import asyncio

    from jumpgate.cli.logsetup import setup_logging
    from jumpgate.core.aio import install_event_loop_policy
    from jumpgate.core.config import parse_config, render_db_configure
    from jumpgate.core.errors import BadParameter
    from jumpgate.core.process import TeleportProcess

    addr = proxy or auth_server
    if not addr:
        raise BadParameter(
            "--proxy is required",
            hint="the proxy's public address, e.g. --proxy=teleport.example.com:443",
        )
    text = render_db_configure(
        **_db_agent_args(
            proxy=addr,
            token=token,
            ca_pin=ca_pin,
            name=name,
            protocol=protocol,
            uri=uri,
            labels=labels,
            description=description,
            ca_cert_file=ca_cert_file,
            trust_system_cert_pool=False,
            data_dir=data_dir,
            nodename=nodename,
        )
    )
    cfg = parse_config(text, "teleport db start flags")
    setup_logging(level="DEBUG" if debug else "INFO")
    install_event_loop_policy()
    asyncio.run(TeleportProcess(cfg).run())


@app_service_app.command("start")
def app_start(
    token: str = typer.Option(..., "--token", help="Join token, or a path to a file holding it"),
    proxy: str = typer.Option("", "--proxy", help="Proxy address to join through, host[:port]"),
    auth_server: str = typer.Option(
        "", "--auth-server", help="Same as --proxy (Teleport's older spelling)"
    ),
    ca_pin: list[str] = typer.Option([], "--ca-pin", help="CA pin(s) of the cluster, sha256:..."),
    name: str = typer.Option(..., "--name", help="Name of the application"),
    uri: str = typer.Option(
        ..., "--uri", help="Where the application listens, http(s)://host:port"
    ),
    public_addr: str = typer.Option(
        "", "--public-addr", help="Public address [default: <name>.<proxy host>]"
    ),
    labels: str = typer.Option("", "--labels", help="Static labels, k=v,k2=v2"),
    insecure_skip_verify: bool = typer.Option(
        False, "--insecure-skip-verify", help="Do not verify the application's TLS certificate"
    ),
    data_dir: str = typer.Option(
        "/var/lib/teleport", "--data-dir", help="Where the agent keeps its state"
    ),
    nodename: str = typer.Option(
        "", "--nodename", help="Name of this node [default: the host name]"
    ),
    debug: bool = typer.Option(False, "-d", "--debug", help="Debug logging"),
) -> None:
    """Run an Application Service agent for one web application, configured by flags alone."""
    import asyncio
    import json
    import socket

    from jumpgate.cli.logsetup import setup_logging
    from jumpgate.core.aio import install_event_loop_policy
    from jumpgate.core.config import parse_config, parse_labels
    from jumpgate.core.errors import BadParameter
    from jumpgate.core.process import TeleportProcess

    addr = proxy or auth_server
    if not addr:
        raise BadParameter(
            "--proxy is required",
            hint="the proxy's public address, e.g. --proxy=teleport.example.com:443",
        )
    if not token.strip():
        raise BadParameter("--token must not be empty", hint="--token=/tmp/token (file or value)")
    entry: dict[str, Any] = {"name": name, "uri": uri}
    if public_addr:
        entry["public_addr"] = public_addr
    if labels:
        entry["labels"] = parse_labels(labels)
    if insecure_skip_verify:
        entry["insecure_skip_verify"] = True
    teleport: dict[str, Any] = {
        "nodename": nodename or socket.gethostname(),
        "data_dir": data_dir,
        "proxy_server": addr,
        "join_params": {"token_name": token, "method": "token"},
    }
    if ca_pin:
        teleport["ca_pin"] = list(ca_pin)
    doc = {
        "version": "v3",
        "teleport": teleport,
        "auth_service": {"enabled": "no"},
        "ssh_service": {"enabled": "no"},
        "proxy_service": {"enabled": "no"},
        "app_service": {"enabled": "yes", "apps": [entry]},
    }
    cfg = parse_config(json.dumps(doc, indent=1), "teleport app start flags")
    setup_logging(level="DEBUG" if debug else "INFO")
    install_event_loop_policy()
    asyncio.run(TeleportProcess(cfg).run())


def main() -> None:
    """Console-script entry point."""
    run_app(app, prog="teleport")
