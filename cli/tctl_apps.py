"""``tctl apps ls``: the applications App Services announce (``app_server`` heartbeats)."""

from __future__ import annotations

import typer

from jumpgate.cli.common import Format, labels_text, print_json, print_table, print_yaml

apps_app = typer.Typer(
    help="Operate on applications registered with the cluster.", no_args_is_help=True
)


@apps_app.command("ls")
def apps_ls(
    ctx: typer.Context,
    format: Format = typer.Option(Format.text, "--format", help="Output format"),
) -> None:
    """List the applications served by App Services (one row per serving host)."""
    from jumpgate.cli.tctl import g

    servers = g(ctx).client().call("resources.get", kind="app_server")
    servers.sort(key=lambda s: (s["metadata"]["name"], s["spec"].get("hostname", "")))
    if format is Format.json:
        print_json(servers)
        return
    if format is Format.yaml:
        if servers:
            print_yaml(servers, multi=True)
        return
    rows = []
    for s in servers:
        app = s["spec"]["app"]
        rows.append(
            [
                s["spec"].get("hostname", ""),
                app["metadata"]["name"],
                app["spec"].get("public_addr", ""),
                app["spec"].get("uri", ""),
                labels_text(app["metadata"].get("labels") or {}),
                s["spec"].get("version", ""),
            ]
        )
    print_table(
        ["Host", "Name", "Public Address", "URI", "Labels", "Version"],
        rows,
        empty="No applications found.",
    )
