"""``tbot``: the Machine ID agent (joining and outputs arrive with the Machine ID issue)."""

from __future__ import annotations

import sys

import typer

from jumpgate.cli.common import run_app

app = typer.Typer(
    name="tbot",
    help="Jumpgate Machine ID agent.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
def version() -> None:
    """Print the version."""
    from jumpgate.core.version import TELEPORT_COMPAT, VERSION

    print(
        f"Jumpgate tbot v{VERSION} (Teleport {TELEPORT_COMPAT} compatible) python{sys.version.split()[0]}"
    )


@app.callback()
def _root() -> None:
    """Jumpgate Machine ID agent."""


def main() -> None:
    """Console-script entry point."""
    run_app(app, prog="tbot")
