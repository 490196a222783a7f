"""``tsh apps …`` and ``tsh proxy app``: list, log in to and reach web applications."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import typer

from jumpgate.cli.common import Format, labels_text, print_json, print_table, print_yaml

apps_app = typer.Typer(
    help="View and control proxied applications.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class ConfigFormat(StrEnum):
    """``tsh apps config --format``."""

    text = "text"
    uri = "uri"
    ca = "ca"
    cert = "cert"
    key = "key"
    curl = "curl"
    json = "json"
    yaml = "yaml"


def _profile(ctx: typer.Context) -> Any:
    from jumpgate.cli.tsh import g

    return g(ctx).profile()


@apps_app.command("ls")
def apps_ls(
    ctx: typer.Context,
    format: Format = typer.Option(Format.text, "-f", "--format", help="Output format"),
) -> None:
    """List the applications you can access."""
    from jumpgate.core.client.appclient import list_apps, logged_in_apps, public_url

    prof = _profile(ctx)
    apps = list_apps(prof)
    for a in apps:
        a["url"] = public_url(prof, str(a.get("public_addr") or ""))
    if format is Format.json:
        print_json(apps)
        return
    if format is Format.yaml:
        print_yaml(apps)
        return
    active = set(logged_in_apps(prof))
    rows = [
        [
            f"> {a['name']}" if a["name"] in active else a["name"],
            a.get("description") or "",
            "HTTP",
            a.get("public_addr") or "",
            labels_text(a.get("labels") or {}),
        ]
        for a in apps
    ]
    print_table(
        ["Application", "Description", "Type", "Public Address", "Labels"],
        rows,
        empty="No applications found (tsh apps ls shows only those your roles allow).",
    )


@apps_app.command("login")
def apps_login(
    ctx: typer.Context,
    app: str = typer.Argument(..., help="Application name (tsh apps ls)"),
) -> None:
    """Get a certificate for an application and print how to use it."""
    from jumpgate.core.client.appclient import app_login, public_url

    prof = _profile(ctx)
    path, info = app_login(prof, app)
    uri = public_url(prof, str(info.get("public_addr") or ""))
    print(
        f"Logged into app {app}. Example curl command:\n\n"
        f"curl \\\n  --cacert {prof.ca_path} \\\n  --cert {path} \\\n  --key {prof.key_path} \\\n"
        f"  {uri}\n\n"
        f"Or start a local proxy that adds the certificate for you: tsh proxy app {app}"
    )


@apps_app.command("logout")
def apps_logout(
    ctx: typer.Context,
    app: str = typer.Argument(None, help="Application to log out of [default: all]"),
) -> None:
    """Remove application certificates."""
    from jumpgate.core.client.appclient import app_logout

    removed = app_logout(_profile(ctx), app)
    if not removed:
        print("Not logged in to any application.")
    for name in removed:
        print(f'Logged out of app "{name}"')


@apps_app.command("config")
def apps_config(
    ctx: typer.Context,
    app: str = typer.Argument(None, help="Application [default: the only one logged in]"),
    format: ConfigFormat = typer.Option(
        ConfigFormat.text, "-f", "--format", help="text, uri, ca, cert, key, curl, json or yaml"
    ),
) -> None:
    """Print the URI, certificate paths and curl command of an application."""
    from jumpgate.core.client.appclient import app_config

    cfg = app_config(_profile(ctx), app)
    if format in (ConfigFormat.uri, ConfigFormat.ca, ConfigFormat.cert, ConfigFormat.key):
        print(cfg[format.value])
    elif format is ConfigFormat.curl:
        print(cfg["curl"])
    elif format is ConfigFormat.json:
        print_json(cfg)
    elif format is ConfigFormat.yaml:
        print_yaml(cfg)
    else:
        print(
            f"Name:      {cfg['name']}\nURI:       {cfg['uri']}\nCA:        {cfg['ca']}\n"
            f"Cert:      {cfg['cert']}\nKey:       {cfg['key']}"
        )


def proxy_app(
    ctx: typer.Context,
    app: str = typer.Argument(..., help="Application name"),
    port: int = typer.Option(0, "-p", "--port", help="Local port [default: random]"),
) -> None:
    """Start a local HTTP proxy to an application (until Ctrl-C)."""
    from jumpgate.core.client.appclient import app_local_proxy, ensure_app_login
    from jumpgate.core.client.localproxy import serve_until_signal

    prof = _profile(ctx)
    ensure_app_login(prof, app)
    proxy = app_local_proxy(prof, app, port)

    def started(host: str, bound: int) -> None:
        print(
            f"Proxying connections to {app} on {host}:{bound}\n"
            f"Reach it at http://{host}:{bound}/ (any local user can use this port).",
            flush=True,
        )

    serve_until_signal(proxy, started)
