"""``tctl users``, ``tctl bots`` and ``tctl tokens``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import typer

from jumpgate.cli.common import (
    Format,
    info,
    labels_text,
    print_json,
    print_table,
    print_yaml,
    split_csv,
    warn,
)

users_app = typer.Typer(help="Manage local users.", no_args_is_help=True)
bots_app = typer.Typer(help="Manage Machine ID bots.", no_args_is_help=True)
tokens_app = typer.Typer(help="Manage join tokens.", no_args_is_help=True)


def _client(ctx: typer.Context) -> Any:
    from jumpgate.cli.tctl import g

    return g(ctx).client()


def _ttl(value: str, flag: str = "--ttl") -> float | None:
    if not value:
        return None
    from jumpgate.core.durations import parse_duration

    td = parse_duration(value, field=flag)
    from jumpgate.core.errors import BadParameter

    if td <= timedelta(0):
        raise BadParameter(f"{flag} must be positive")
    return td.total_seconds()


def _human(seconds: float) -> str:
    from jumpgate.core.durations import humanize

    return humanize(timedelta(seconds=seconds))


# ---------------------------------------------------------------------- users
@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="User name"),
    roles: str = typer.Option("", "--roles", help="Comma-separated roles, e.g. access,editor"),
    logins: str = typer.Option(None, "--logins", help="Allowed OS logins (trait logins)"),
    db_users: str = typer.Option(
        None, "--db-users", help="Allowed database users (trait db_users); * for any"
    ),
    db_names: str = typer.Option(
        None, "--db-names", help="Allowed database names (trait db_names); * for any"
    ),
    db_roles: str = typer.Option(
        None, "--db-roles", help="Database roles for auto-provisioned users (trait db_roles)"
    ),
    ttl: str = typer.Option("", "--ttl", help="How long the invite link is valid [default: 1h]"),
    format: Format = typer.Option(Format.text, "--format", help="Output format"),
) -> None:
    """Create a local user and print its invite link."""
    params: dict[str, Any] = {"name": name, "roles": split_csv(roles), "ttl": _ttl(ttl)}
    for key, val in (
        ("logins", logins),
        ("db_users", db_users),
        ("db_names", db_names),
        ("db_roles", db_roles),
    ):
        if val is not None:
            params[key] = split_csv(val)
    out = _client(ctx).call("users.add", **params)
    if format is not Format.text:
        data = {"user": out["user"], "invite_url": out["url"], "invite_token": out["token"]}
        print_json(data) if format is Format.json else print_yaml(data)
        return
    url = out["url"]
    host = url.split("//", 1)[1].split("/", 1)[0]
    print(
        f'User "{name}" has been created but requires a password. Share this URL with the user to '
        f"complete user setup, link is valid for {_human(out['ttl'])}:\n{url}\n\n"
        f"NOTE: Make sure {host} points at a Teleport proxy which users can access."
    )


@users_app.command("update")
def users_update(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="User name"),
    set_roles: str = typer.Option(None, "--set-roles", help="Replace the user's roles"),
    set_logins: str = typer.Option(None, "--set-logins", help="Replace the logins trait"),
    set_db_users: str = typer.Option(None, "--set-db-users", help="Replace the db_users trait"),
    set_db_names: str = typer.Option(None, "--set-db-names", help="Replace the db_names trait"),
    set_db_roles: str = typer.Option(None, "--set-db-roles", help="Replace the db_roles trait"),
) -> None:
    """Change a user's roles or traits."""
    params: dict[str, Any] = {"name": name}
    if set_roles is not None:
        params["roles"] = split_csv(set_roles)
    for key, val in (
        ("logins", set_logins),
        ("db_users", set_db_users),
        ("db_names", set_db_names),
        ("db_roles", set_db_roles),
    ):
        if val is not None:
            params[key] = split_csv(val)
    if len(params) == 1:
        info("Nothing to update. Please provide at least one --set flag.")
        return
    user = _client(ctx).call("users.update", **params)
    print(f"User {name} has been updated:")
    if set_roles is not None:
        print(f"\tNew roles: {', '.join(user['spec']['roles'])}")
    for key in ("logins", "db_users", "db_names", "db_roles"):
        if key in params:
            print(f"\tNew {key.replace('_', ' ')}: {', '.join(params[key])}")


@users_app.command("ls")
def users_ls(ctx: typer.Context, format: Format = typer.Option(Format.text, "--format")) -> None:
    """List users (bots are listed by tctl bots ls)."""
    users = [
        u
        for u in _client(ctx).call("resources.get", kind="user")
        if not u["metadata"].get("labels", {}).get("teleport.internal/bot")
    ]
    if format is Format.json:
        print_json(users)
    elif format is Format.yaml:
        print_yaml(users, multi=True)
    else:
        print_table(
            ["User", "Roles"],
            [[u["metadata"]["name"], ",".join(u["spec"].get("roles", []))] for u in users],
            empty="No users found.",
        )


@users_app.command("rm")
def users_rm(
    ctx: typer.Context, names: str = typer.Argument(..., help="Comma-separated user names")
) -> None:
    """Delete users."""
    client = _client(ctx)
    for name in split_csv(names):
        client.call("resources.delete", kind="user", name=name)
        print(f'User "{name}" has been deleted')


@users_app.command("reset")
def users_reset(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="User name"),
    ttl: str = typer.Option("", "--ttl", help="How long the reset link is valid [default: 8h]"),
) -> None:
    """Reset a user's password and print a new invite link."""
    out = _client(ctx).call("users.reset", name=name, ttl=_ttl(ttl))
    print(
        f'User "{name}" has been reset. Share this URL with the user to complete password reset, '
        f"link is valid for {_human(out['ttl'])}:\n{out['url']}"
    )


# ---------------------------------------------------------------------- bots
BOT_ADD_TEXT = """The bot token: {token}
This token will expire in {ttl}.

Optionally, if running the bot under an isolated user account, first initialize
the data directory by running the following command as root:

> tbot init \\
   --destination-dir=./tbot-user \\
   --bot-user=tbot \\
   --reader-user=alice

... where "tbot" is the username of the bot's UNIX user, and "alice" is the
UNIX user that will be making use of the certificates.

Then, run this as the bot user to begin continuously fetching
certificates:

> tbot start \\
   --destination-dir=./tbot-user \\
   --token={token} \\
   --proxy-server={proxy} \\
   --ca-pin={pin} \\
   --join-method=token

Please note:

  - The ./tbot-user destination directory can be changed as desired.
  - /var/lib/teleport/bot must be accessible to the bot user, or --data-dir
    must point to another accessible directory to store internal bot data.
  - This invitation token will expire in {ttl}
  - {proxy} must be reachable from the new node
  - This is a single-use token that will be consumed upon usage. For
    long-running bots, renew certificates with tbot start rather than
    re-using this token."""


@bots_app.command("add")
def bots_add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Bot name"),
    roles: str = typer.Option("", "--roles", help="Roles the bot may assume"),
    logins: str = typer.Option("", "--logins", help="Logins the bot may use"),
    token: str = typer.Option(
        "", "--token", help="Use an existing bot join token instead of creating one"
    ),
    ttl: str = typer.Option("", "--ttl", help="TTL of the join token [default: 1h]"),
    format: Format = typer.Option(Format.text, "--format", help="text or json"),
) -> None:
    """Create a bot and a single-use join token for it."""
    role_list = split_csv(roles)
    if not role_list:
        warn(
            "No roles specified - the bot will not be able to produce outputs until a role is added to the bot"
        )
    out = _client(ctx).call(
        "bots.add", name=name, roles=role_list, logins=split_csv(logins), token=token, ttl=_ttl(ttl)
    )
    if format is Format.json:
        print_json({k: out[k] for k in ("user_name", "role_name", "token_id", "token_ttl")})
        return
    if format is Format.yaml:
        print_yaml({k: out[k] for k in ("user_name", "role_name", "token_id", "token_ttl")})
        return
    print(
        BOT_ADD_TEXT.format(
            token=out["token_id"],
            ttl=_human(out["token_ttl"] / 1e9),
            proxy=out["proxy_addr"] or "<proxy address>",
            pin=out["ca_pins"][0],
        )
    )


@bots_app.command("update")
def bots_update(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Bot name"),
    add_roles: str = typer.Option("", "--add-roles", help="Roles to add"),
    set_roles: str = typer.Option(None, "--set-roles", help="Replace the bot's roles"),
    add_logins: str = typer.Option("", "--add-logins", help="Logins to add"),
    set_logins: str = typer.Option(None, "--set-logins", help="Replace the bot's logins"),
) -> None:
    """Change a bot's roles or logins (effective at its next renewal)."""
    if not (add_roles or add_logins) and set_roles is None and set_logins is None:
        info("No changes requested, nothing to do")
        return
    params: dict[str, Any] = {
        "name": name,
        "add_roles": split_csv(add_roles),
        "add_logins": split_csv(add_logins),
    }
    if set_roles is not None:
        params["set_roles"] = split_csv(set_roles)
    if set_logins is not None:
        params["set_logins"] = split_csv(set_logins)
    bot = _client(ctx).call("bots.update", **params)
    print(f"Bot {name} has been updated, roles will take effect on its next renewal.")
    print(f"\tRoles: {', '.join(bot['spec'].get('roles', []))}")


@bots_app.command("ls")
def bots_ls(ctx: typer.Context, format: Format = typer.Option(Format.text, "--format")) -> None:
    """List bots with their generation, last renewal and lock state."""
    bots = _client(ctx).call("bots.list")
    if format is Format.json:
        print_json(bots)
        return
    if format is Format.yaml:
        print_yaml(bots, multi=True)
        return
    rows = []
    for b in bots:
        st = b.get("status", {})
        rows.append(
            [
                b["metadata"]["name"],
                st.get("user_name", ""),
                ",".join(b["spec"].get("roles", [])),
                st.get("generation", 0),
                st.get("last_renewal") or "never",
                f"yes ({st['lock']})" if st.get("locked") else "no",
            ]
        )
    print_table(
        ["Bot", "User", "Roles", "Generation", "Last Renewal", "Locked"],
        rows,
        empty="No bots found",
    )


@bots_app.command("rm")
def bots_rm(ctx: typer.Context, name: str = typer.Argument(..., help="Bot name")) -> None:
    """Delete a bot, its user, role and unused tokens."""
    _client(ctx).call("bots.delete", name=name)
    print(f'Bot "{name}" deleted successfully.')


# ---------------------------------------------------------------------- tokens
@tokens_app.command("add")
def tokens_add(
    ctx: typer.Context,
    type: str = typer.Option(
        ..., "--type", help="Comma-separated: db, app, node, bot, proxy, kube"
    ),
    ttl: str = typer.Option("30m", "--ttl", help="How long the token is valid"),
    value: str = typer.Option("", "--value", help="Use this token value instead of a random one"),
    labels: str = typer.Option("", "--labels", help="Labels k=v,k2=v2 attached to the token"),
    app_name: str = typer.Option(
        "example-app", "--app-name", help="App name for the printed join command"
    ),
    app_uri: str = typer.Option(
        "http://localhost:8080", "--app-uri", help="App URI for the printed join command"
    ),
    db_name: str = typer.Option("", "--db-name", help="Database name for the printed join command"),
    db_protocol: str = typer.Option(
        "", "--db-protocol", help="Database protocol for the printed join command"
    ),
    db_uri: str = typer.Option("", "--db-uri", help="Database URI for the printed join command"),
    format: str = typer.Option("", "--format", help="text (only the token), json or yaml"),
) -> None:
    """Create a join token for agents and bots."""
    from jumpgate.core.config import parse_labels
    from jumpgate.core.errors import BadParameter

    if format not in ("", "text", "json", "yaml"):
        raise BadParameter(f"--format must be text, json or yaml, not {format!r}")
    roles = split_csv(type)
    out = _client(ctx).call(
        "tokens.add",
        roles=roles,
        ttl=_ttl(ttl),
        value=value,
        labels=parse_labels(labels) if labels else {},
    )
    tok = out["token"]
    name = tok["metadata"]["name"]
    if format == "text":
        print(name)
        return
    if format in ("json", "yaml"):
        data = {
            "token": name,
            "roles": tok["spec"]["roles"],
            "expires": tok["metadata"].get("expires"),
        }
        print_json(data, indent=1) if format == "json" else print_yaml(data)
        return
    ttl_s = _ttl(ttl) or 1800
    pin = out["ca_pins"][0]
    proxy = out["proxy_addr"] or "<proxy address>"
    print(f"The invite token: {name}\nThis token will expire in {_human(ttl_s)}.\n")
    if "Db" in tok["spec"]["roles"]:
        print(
            "Fill out and run this command on a node to start proxying the database:\n\n"
            f"> teleport db start \\\n   --token={name} \\\n   --ca-pin={pin} \\\n   --auth-server={proxy} \\\n"
            f"   --name={db_name or '<db_name>'} \\\n   --protocol={db_protocol or '<db_protocol>'} \\\n"
            f"   --uri={db_uri or '<db_uri>'}\n\n"
            "Or write a configuration for it with: teleport db configure create --token=<token file> ...\n"
            f"Please note:\n\n  - This invitation token will expire in {_human(ttl_s)}.\n"
            f"  - {proxy} must be reachable from the new database service."
        )
    elif "App" in tok["spec"]["roles"]:
        host = proxy.rsplit(":", 1)[0]
        print(
            "Fill out and run this command on a node to make the application available:\n\n"
            f"> teleport app start \\\n   --token={name} \\\n   --ca-pin={pin} \\\n   --auth-server={proxy} \\\n"
            f"   --name={app_name} \\\n   --uri={app_uri}\n\n"
            f"Please note:\n\n  - This invitation token will expire in {_human(ttl_s)}.\n"
            f"  - {proxy} must be reachable from the new application service.\n"
            f"  - Update DNS to point {app_name}.{host} to the Teleport proxy.\n"
            f"  - Your application will be available at https://{app_name}.{host}."
        )
    else:
        print(
            "Use it with --token and --ca-pin when joining:\n\n"
            f"  --token={name} --ca-pin={pin} --auth-server={proxy}"
        )


@tokens_app.command("ls")
def tokens_ls(
    ctx: typer.Context,
    format: Format = typer.Option(Format.text, "--format"),
    with_secrets: bool = typer.Option(False, "--with-secrets", help="Show full token values"),
) -> None:
    """List active join tokens (values redacted unless --with-secrets)."""
    toks = _client(ctx).call("resources.get", kind="token")
    if not with_secrets:
        for t in toks:
            n = t["metadata"]["name"]
            t["metadata"]["name"] = "*" * max(0, len(n) - 4) + n[-4:] if len(n) > 8 else "********"
    if format is Format.json:
        print_json(toks)
        return
    if format is Format.yaml:
        print_yaml(toks, multi=True)
        return
    rows = []
    for t in toks:
        exp = t["metadata"].get("expires", "")
        if exp:
            dt = datetime.fromisoformat(exp.replace("Z", "+00:00")).astimezone(UTC)
            left = dt - datetime.now(UTC)
            exp = f"{dt:%d %b %y %H:%M UTC} ({_human(max(0.0, left.total_seconds()))})"
        rows.append(
            [
                t["metadata"]["name"],
                ",".join(t["spec"]["roles"]),
                labels_text(t["metadata"].get("labels") or {}),
                exp,
            ]
        )
    print_table(
        ["Token", "Type", "Labels", "Expiry Time (UTC)"], rows, empty="No active tokens found."
    )


@tokens_app.command("rm")
def tokens_rm(ctx: typer.Context, token: str = typer.Argument(..., help="The token value")) -> None:
    """Delete a join token."""
    _client(ctx).call("resources.delete", kind="token", name=token)
    print(f"Token {token} has been deleted")
