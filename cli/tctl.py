"""``tctl``: the cluster administration tool."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from jumpgate.cli.common import (
    Format,
    hoist_global_flags,
    print_json,
    print_kv,
    print_table,
    print_yaml,
    run_app,
)

if TYPE_CHECKING:
    from jumpgate.core.auth.client import AuthClient

app = typer.Typer(
    name="tctl",
    help="Admin tool for a Jumpgate (Teleport-compatible) cluster.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

GLOBAL_FLAGS = {
    "-c": True,
    "--config": True,
    "--auth-server": True,
    "-i": True,
    "--identity": True,
    "-d": False,
    "--debug": False,
    "--insecure": False,
}


@dataclass
class Globals:
    """Options every tctl command shares."""

    config: str | None = None
    auth_server: str | None = None
    identity: str | None = None
    insecure: bool = False
    _client: Any = field(default=None, repr=False)

    def client(self) -> AuthClient:
        """The API client, connected on first use."""
        if self._client is None:
            from jumpgate.core.client.admin import connect_admin

            self._client = connect_admin(
                config=self.config, auth_server=self.auth_server, identity=self.identity
            )
        return self._client  # type: ignore[no-any-return]


def g(ctx: typer.Context) -> Globals:
    """The shared options of this invocation."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Globals)
    return obj


@app.callback()
def _root(
    ctx: typer.Context,
    config: str = typer.Option(
        None,
        "-c",
        "--config",
        help="Path to teleport.yaml on the auth host [default: /etc/teleport.yaml]",
        envvar="TELEPORT_CONFIG_FILE",
        show_default=False,
    ),
    auth_server: str = typer.Option(
        None,
        "--auth-server",
        help="Auth (3025) or proxy (web port) address, for remote use with -i",
    ),
    identity: str = typer.Option(
        None, "-i", "--identity", help="Identity file (from tctl auth sign --user or tbot)"
    ),
    debug: bool = typer.Option(False, "-d", "--debug", help="Show tracebacks and debug logs"),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="Do not verify the proxy's certificate when fetching public CA data",
    ),
) -> None:
    ctx.obj = Globals(config=config, auth_server=auth_server, identity=identity, insecure=insecure)


@app.command()
def version() -> None:
    """Print the version."""
    from jumpgate.core.version import TELEPORT_COMPAT, VERSION

    print(
        f"Jumpgate tctl v{VERSION} (Teleport {TELEPORT_COMPAT} compatible) python{sys.version.split()[0]}"
    )


@app.command()
def status(ctx: typer.Context) -> None:
    """Cluster name, version, certificate authorities and the CA pin."""
    st = g(ctx).client().call("status")
    pairs = [("Cluster", st["cluster_name"]), ("Version", st["version"])]
    for ca in st["cas"]:
        pairs.append((f"{ca['type']} CA", ca["rotation"]))
    pairs.append(("CA pin", st["ca_pin"]))
    print_kv(pairs)


@app.command()
def create(
    ctx: typer.Context,
    filename: str = typer.Argument(
        "-",
        metavar="[FILE|-]",
        help="YAML file with one or more resources; - or nothing reads stdin",
    ),
    force: bool = typer.Option(
        False, "-f", "--force", help="Overwrite resources that already exist"
    ),
) -> None:
    """Create or update resources from a YAML file."""
    from jumpgate.core.errors import BadParameter, NotFound
    from jumpgate.core.resources import parse_documents, resource_to_dict

    if filename in ("-", ""):
        text, source = sys.stdin.read(), "stdin"
    else:
        path = Path(filename)
        try:
            text, source = path.read_text(), filename
        except FileNotFoundError:
            raise NotFound(f"file {filename} does not exist") from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise BadParameter(f"cannot read {filename}: {exc}") from None
    resources = parse_documents(text, source)
    if not resources:
        raise BadParameter(
            f"{source} holds no resources", hint="write at least one YAML document with a kind"
        )
    done = (
        g(ctx)
        .client()
        .call(
            "resources.create",
            resources=[resource_to_dict(r, with_secrets=True) for r in resources],
            force=force,
        )
    )
    for item in done:
        print(f'{item["kind"]} "{item["name"]}" has been {item["action"]}')
        if item.get("token"):
            print(f"  bot join token: {item['token']}")


def _split_ref(ref: str) -> tuple[str, str]:
    kind, _, name = ref.partition("/")
    return kind.strip(), name.strip()


@app.command()
def get(
    ctx: typer.Context,
    refs: str = typer.Argument(
        ..., metavar="KIND[/NAME][,KIND2]", help="e.g. roles, role/access, db,app, bot/example"
    ),
    format: Format = typer.Option(Format.yaml, "--format", help="Output format"),
    with_secrets: bool = typer.Option(
        False, "--with-secrets", help="Include secrets (CA private keys); local admin only"
    ),
) -> None:
    """Print resources."""
    from jumpgate.core.resources import canonical_kind

    client = g(ctx).client()
    docs: list[dict[str, Any]] = []
    for ref in [r for r in refs.split(",") if r.strip()]:
        kind, name = _split_ref(ref)
        kinds = (
            ["user", "role", "token", "bot", "db", "app", "lock", "cert_authority", "cluster_name"]
            if kind == "all"
            else [canonical_kind(kind)]
        )
        for k in kinds:
            docs.extend(client.call("resources.get", kind=k, name=name, with_secrets=with_secrets))
    if format is Format.json:
        print_json(docs)
    elif format is Format.yaml:
        if docs:
            print_yaml(docs, multi=True)
    else:
        print_table(
            ["Kind", "Name", "Labels"],
            [
                [
                    d["kind"],
                    d["metadata"]["name"],
                    ",".join(f"{k}={v}" for k, v in (d["metadata"].get("labels") or {}).items()),
                ]
                for d in docs
            ],
            empty="No resources found.",
        )


@app.command("rm")
def rm(
    ctx: typer.Context,
    ref: str = typer.Argument(
        ..., metavar="KIND/NAME", help="e.g. role/devs, lock/<id>, db/example"
    ),
) -> None:
    """Delete a resource."""
    from jumpgate.core.errors import BadParameter

    kind, name = _split_ref(ref)
    if not kind or not name:
        raise BadParameter(
            f"expected KIND/NAME, got {ref!r}", hint="for example: tctl rm role/devs"
        )
    out = g(ctx).client().call("resources.delete", kind=kind, name=name)
    print(f'{out["kind"]} "{out["name"]}" has been deleted')


@app.command("lock")
def lock(
    ctx: typer.Context,
    user: str = typer.Option("", "--user", help="Lock this user"),
    role: str = typer.Option("", "--role", help="Lock everyone holding this role"),
    bot: str = typer.Option("", "--bot", help="Lock this bot (its user bot-NAME)"),
    bot_instance_id: str = typer.Option("", "--bot-instance-id", help="Lock one bot instance"),
    message: str = typer.Option("", "--message", help="Message shown to the locked identity"),
    expires: str = typer.Option(
        "", "--expires", help="When the lock ends (RFC3339, e.g. 2026-12-01T00:00:00Z)"
    ),
    ttl: str = typer.Option(
        "", "--ttl", help="How long the lock lasts (e.g. 1h); default: until removed"
    ),
) -> None:
    """Lock a user, role or bot out of the cluster; live sessions end too."""
    from datetime import UTC, datetime

    from jumpgate.core.durations import parse_duration
    from jumpgate.core.errors import BadParameter

    if expires and ttl:
        raise BadParameter("use only one of --expires and --ttl")
    when = ""
    if ttl:
        when = (datetime.now(UTC) + parse_duration(ttl, field="--ttl")).isoformat()
    elif expires:
        try:
            when = datetime.fromisoformat(expires.replace("Z", "+00:00")).isoformat()
        except ValueError:
            raise BadParameter(
                f"--expires {expires!r} is not an RFC3339 time", hint="e.g. 2026-12-01T00:00:00Z"
            ) from None
    target = {
        "user": user or (f"bot-{bot}" if bot else ""),
        "role": role,
        "bot_instance_id": bot_instance_id,
    }
    res = g(ctx).client().call("locks.create", target=target, message=message, expires=when or None)
    print(f'Created a lock with name "{res["metadata"]["name"]}".')


audit_app = typer.Typer(help="Read the audit log.", no_args_is_help=True)


@audit_app.command("ls")
def audit_ls(
    ctx: typer.Context,
    since: str = typer.Option("24h", "--since", help="How far back to look (duration, e.g. 1h)"),
    type: list[str] = typer.Option(
        [], "--type", help="Only events of this type (repeatable), e.g. db.session.start"
    ),
    user: str = typer.Option("", "--user", help="Only events of this user"),
    limit: int = typer.Option(200, "--limit", help="At most this many (the most recent)"),
    format: Format = typer.Option(Format.text, "--format", help="Output format"),
) -> None:
    """Recent audit events, oldest first."""
    from datetime import UTC, datetime

    from jumpgate.core.durations import parse_duration

    start = datetime.now(UTC) - parse_duration(since, field="--since")
    events = (
        g(ctx)
        .client()
        .call(
            "events.search",
            since=start.isoformat(),
            types=list(type),
            limit=limit,
            filters={"user": user} if user else {},
        )
    )
    if format is Format.json:
        print_json(events)
        return
    if format is Format.yaml:
        print_yaml(events, multi=True)
        return
    skip = {"event", "code", "time", "uid", "cluster_name", "ei", "user", "success"}
    rows = []
    for ev in events:
        detail = " ".join(
            f"{k}={v}" for k, v in ev.items() if k not in skip and v not in (None, "", [])
        )
        ok = "" if "success" not in ev else ("ok" if ev["success"] else "DENIED")
        rows.append(
            [
                ev.get("time", "")[:19].replace("T", " "),
                ev.get("event", ""),
                ev.get("user", ""),
                ok,
                detail,
            ]
        )
    print_table(
        ["Time (UTC)", "Event", "User", "Result", "Details"], rows, empty="No events found."
    )


def _register_subapps() -> None:
    from jumpgate.cli import tctl_apps, tctl_auth, tctl_users

    app.add_typer(tctl_users.users_app, name="users")
    app.add_typer(tctl_users.bots_app, name="bots")
    app.add_typer(tctl_users.bots_app, name="bot", hidden=True)
    app.add_typer(tctl_users.tokens_app, name="tokens")
    app.add_typer(tctl_auth.auth_app, name="auth")
    app.add_typer(audit_app, name="audit")
    app.add_typer(tctl_apps.apps_app, name="apps")


_register_subapps()


def main() -> None:
    """Console-script entry point."""
    run_app(app, prog="tctl", argv=hoist_global_flags(sys.argv[1:], GLOBAL_FLAGS))
