"""``tsh``: the user client — log in to a proxy, then reach databases through it."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import typer

from jumpgate.cli.common import Format, hoist_global_flags, print_json, print_yaml, run_app

if TYPE_CHECKING:
    from jumpgate.core.client.profile import Profile, ProfileStore

app = typer.Typer(
    name="tsh",
    help="Jumpgate user client (Teleport-compatible tsh).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: Global flags accepted anywhere on the command line (value-taking ones → True).
GLOBAL_FLAGS = {
    "--proxy": True,
    "--user": True,
    "--insecure": False,
    "-d": False,
    "--debug": False,
    "--ttl": True,
    "-i": True,
    "--identity": True,
}


@dataclass
class Globals:
    """Options every tsh command shares."""

    proxy: str | None = None
    user: str | None = None
    insecure: bool = False
    debug: bool = False
    ttl: int | None = None
    identity: str | None = None
    _store: Any = field(default=None, repr=False)

    def store(self) -> ProfileStore:
        """The profile directory (a throw-away one holding the identity file with ``-i``)."""
        if self._store is None:
            from jumpgate.core.client.profile import ProfileStore, store_from_identity_file
            from jumpgate.core.errors import BadParameter

            if self.identity:
                if not self.proxy:
                    raise BadParameter(
                        "--proxy is required with an identity file (-i)",
                        hint="for example: tsh -i identity --proxy=proxy.example.com:443 db ls",
                    )
                self._store = store_from_identity_file(self.identity, self.proxy)
            else:
                self._store = ProfileStore()
        return self._store  # type: ignore[no-any-return]

    def profile(self, *, valid: bool = True) -> Profile:
        """The profile to act with (``--proxy``/``--user`` select one); AccessDenied if none.

        With ``valid`` (the default) an expired certificate is an error too.
        """
        from jumpgate.core.errors import AccessDenied

        store = self.store()
        prof = store.find(None if self.identity else self.proxy, self.user)
        if prof is None:
            where = f" to {self.proxy}" if self.proxy else ""
            raise AccessDenied(
                f"not logged in{where}",
                hint=f"log in first: tsh login --proxy={self.proxy or 'HOST:PORT'}"
                + (f" --user={self.user}" if self.user else ""),
            )
        if valid:
            prof.require_valid()
        return prof


def g(ctx: typer.Context) -> Globals:
    """The shared options of this invocation."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Globals)
    return obj


@app.callback()
def _root(
    ctx: typer.Context,
    proxy: str = typer.Option(
        None, "--proxy", envvar="TELEPORT_PROXY", help="Proxy web address, HOST[:PORT]"
    ),
    user: str = typer.Option(None, "--user", envvar="TELEPORT_USER", help="Jumpgate user name"),
    insecure: bool = typer.Option(
        False, "--insecure", help="Do not verify the proxy's certificate (test clusters only)"
    ),
    debug: bool = typer.Option(
        False, "-d", "--debug", envvar="TELEPORT_DEBUG", help="Verbose logging to stderr"
    ),
    ttl: int = typer.Option(None, "--ttl", help="Certificate lifetime in minutes (tsh login)"),
    identity: str = typer.Option(
        None,
        "-i",
        "--identity",
        envvar="TELEPORT_IDENTITY_FILE",
        help="Identity file to use instead of a profile (needs --proxy)",
    ),
) -> None:
    if debug:
        from jumpgate.cli.logsetup import setup_logging

        setup_logging(level="DEBUG")
    ctx.obj = Globals(
        proxy=proxy, user=user, insecure=insecure, debug=debug, ttl=ttl, identity=identity
    )


# ---------------------------------------------------------------------- status
def _go_duration(delta: timedelta) -> str:
    """Go's Duration.String() of ``delta`` rounded to the minute: ``11h59m0s``."""
    minutes = round(delta.total_seconds() / 60)
    if minutes <= 0:
        return "0s"
    hours, mins = divmod(minutes, 60)
    return f"{hours}h{mins}m0s" if hours else f"{mins}m0s"


def _go_time(t: datetime) -> str:
    """Go's Time.String() in local time: ``2026-01-01 12:00:00 +0000 UTC``."""
    local = t.astimezone()
    return f"{local:%Y-%m-%d %H:%M:%S %z} {local.tzname() or ''}".rstrip()


def profile_status(prof: Profile) -> dict[str, Any]:
    """One profile as data (the JSON/YAML form of ``tsh status``)."""
    ident = prof.identity
    return {
        "profile_url": prof.proxy_url,
        "username": ident.username,
        "cluster": prof.cluster,
        "roles": list(ident.groups),
        "traits": ident.traits_dict(),
        "logins": list(ident.logins),
        "kubernetes_enabled": False,
        "databases": prof.databases(),
        "valid_until": prof.valid_until,
        "expired": prof.is_expired(),
    }


def print_profile(prof: Profile, *, active: bool) -> None:
    """The text block of one profile, in tsh's layout."""
    st = profile_status(prof)
    valid = _go_time(st["valid_until"])
    left = prof.valid_for()
    valid += " [EXPIRED]" if st["expired"] else f" [valid for {_go_duration(left)}]"
    rows = [
        ("Profile URL:", st["profile_url"]),
        ("Logged in as:", st["username"]),
        ("Cluster:", st["cluster"]),
        ("Roles:", ", ".join(st["roles"])),
        ("Logins:", ", ".join(st["logins"])),
        ("Kubernetes:", "disabled"),
    ]
    if st["databases"]:
        rows.append(("Databases:", ", ".join(st["databases"])))
    rows.append(("Valid until:", valid))
    for i, (label, value) in enumerate(rows):
        mark = "> " if active and i == 0 else "  "
        print(f"{mark}{label:<20}{value}".rstrip())
    print()


def show_status(store: ProfileStore, fmt: Format = Format.text) -> None:
    """Every profile, the active one first (``tsh status``)."""
    profiles = store.list()
    current = store.current_name()
    if fmt is not Format.text:
        data: dict[str, Any] = {"active": None, "profiles": []}
        for p in profiles:
            st = profile_status(p)
            if p.name == current:
                data["active"] = st
            else:
                data["profiles"].append(st)
        print_json(data) if fmt is Format.json else print_yaml(data)
        return
    if not profiles:
        print("Not logged in.")
        return
    for p in profiles:
        print_profile(p, active=p.name == current)


@app.command()
def status(
    ctx: typer.Context,
    format: Format = typer.Option(Format.text, "-f", "--format", help="Output format"),
) -> None:
    """Show the profiles you are logged in with."""
    show_status(g(ctx).store(), format)


# ---------------------------------------------------------------------- login
def _confirm_pin(proxy: str) -> Any:
    def confirm(pin: str) -> bool:
        from prompt_toolkit import prompt

        answer = prompt(
            f"The authenticity of proxy {proxy} can't be established. CA pin {pin}. Trust it? [y/N] "
        )
        return answer.strip().lower() in ("y", "yes")

    return confirm


def _read_secrets(user: str, want_otp: bool) -> tuple[str, str]:
    """Password (and OTP): prompted on a terminal, else one line each from stdin."""
    if sys.stdin.isatty():
        from prompt_toolkit import prompt

        password = prompt(f"Enter password for Teleport user {user}:\n", is_password=True)
        otp = prompt("Enter your OTP token:\n") if want_otp else ""
        return password, otp.strip()
    password = sys.stdin.readline().rstrip("\r\n")
    otp = sys.stdin.readline().strip() if want_otp else ""
    return password, otp


@app.command()
def login(
    ctx: typer.Context,
    cluster: str = typer.Argument(None, help="Cluster name (only the proxy's own cluster)"),
) -> None:
    """Log in to a cluster and save the certificate in ~/.tsh."""
    import getpass

    from jumpgate.core.client.login import establish_trust, ping
    from jumpgate.core.client.login import login as password_login
    from jumpgate.core.client.profile import join_hostport, normalize_proxy_addr
    from jumpgate.core.errors import BadParameter

    gl = g(ctx)
    if gl.identity:
        raise BadParameter("tsh login does not take an identity file (-i)")
    store = gl.store()
    current = store.current()
    proxy = gl.proxy or (current.web_proxy_addr if current else None)
    if not proxy:
        raise BadParameter(
            "--proxy must be set", hint="for example: tsh login --proxy=proxy.example.com:443"
        )
    host, port = normalize_proxy_addr(proxy)
    addr = join_hostport(host, port)
    existing = store.get(host)
    user = gl.user or (existing.user if existing else "") or getpass.getuser()
    if (
        existing is not None
        and existing.user == user
        and existing.proxy_port == port
        and gl.ttl is None
        and not existing.is_expired()
        and (cluster is None or cluster == existing.cluster)
    ):
        store.set_current(existing.name)
        show_status(store)
        return
    confirm = _confirm_pin(addr) if sys.stdin.isatty() else None
    trust = establish_trust(addr, insecure=gl.insecure, store=store, confirm=confirm)
    info = ping(addr, insecure=gl.insecure, ca_pem=trust.ca_pem)
    if cluster and cluster != info.get("cluster_name"):
        raise BadParameter(
            f"unknown cluster {cluster!r}; the proxy serves {info.get('cluster_name')!r}",
            hint="leaf clusters are not supported; omit the cluster argument",
        )
    second = str((info.get("auth") or {}).get("second_factor") or "off")
    password, otp = _read_secrets(user, second in ("otp", "on"))
    ttl = timedelta(minutes=gl.ttl) if gl.ttl else None
    res = password_login(addr, user, password, otp, ttl, trust=trust)
    store.save(
        proxy_addr=addr,
        user=res.username,
        cluster=res.cluster_name,
        key_pem=res.key_pem,
        cert_pem=res.cert_pem,
        ca_pem=res.host_ca_pem,
        insecure=gl.insecure,
    )
    show_status(store)


@app.command()
def logout(ctx: typer.Context) -> None:
    """Delete the certificates of every proxy (or of --proxy/--user)."""
    from jumpgate.core.client.dbclient import db_logout

    gl = g(ctx)
    store = gl.store()
    targets = store.list() if not gl.proxy else [p for p in [store.find(gl.proxy)] if p]
    if gl.user:
        targets = [p for p in targets if p.user == gl.user]
    if not targets:
        print("You are not logged in.")
        return
    for prof in targets:
        db_logout(prof)
        store.delete(prof.web_proxy_addr, prof.user)
    if gl.proxy or gl.user:
        for prof in targets:
            print(f"Logged out {prof.user} from {prof.proxy_host}.")
    else:
        print("Logged out all users from all proxies.")


@app.command()
def version(
    ctx: typer.Context,
    client_only: bool = typer.Option(False, "--client", help="Do not ask the proxy its version"),
) -> None:
    """Print the version (and the proxy's, when logged in)."""
    from jumpgate.core.version import TELEPORT_COMPAT, VERSION

    print(
        f"Jumpgate tsh v{VERSION} (Teleport {TELEPORT_COMPAT} compatible) python{sys.version.split()[0]}"
    )
    if client_only:
        return
    from jumpgate.core.client.profile import ProfileStore

    store = ProfileStore()
    name = store.current_name()
    if not name:
        return  # no profile: no network, nothing else imported
    from jumpgate.core.client.login import ping
    from jumpgate.core.errors import JumpgateError

    try:
        prof = store.get(name)
        if prof is None:
            return
        info = ping(prof.web_proxy_addr, ca_pem=prof.ca_pem(), insecure=prof.insecure, timeout=1.5)
    except (JumpgateError, OSError, ValueError):
        return
    if info.get("server_version"):
        print(f"Proxy version: {info['server_version']}")


def _register_subapps() -> None:
    from jumpgate.cli import tsh_apps, tsh_db

    app.add_typer(tsh_db.db_app, name="db")
    app.add_typer(tsh_apps.apps_app, name="apps")
    app.add_typer(tsh_apps.apps_app, name="app", hidden=True)
    tsh_db.proxy_app.command("app")(tsh_apps.proxy_app)
    app.add_typer(tsh_db.proxy_app, name="proxy")


_register_subapps()


def main() -> None:
    """Console-script entry point."""
    run_app(app, prog="tsh", argv=hoist_global_flags(sys.argv[1:], GLOBAL_FLAGS))
