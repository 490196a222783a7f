"""``jumpgate``: the dashboard (its screens arrive with the dashboard issue)."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="jumpgate",
    help="Jumpgate dashboard.",
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
def dashboard(
    version: bool = typer.Option(False, "--version", help="Print the version and exit"),
) -> None:
    """Open the dashboard."""
    from jumpgate.core.version import VERSION

    if version:
        print(f"Jumpgate dashboard v{VERSION}")
        return
    print("The jumpgate dashboard is not built yet; use tctl, tsh and tbot.", file=sys.stderr)
    raise SystemExit(1)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="jumpgate")
