"""``tsh``: the user client (login and database/app access arrive with the next issues)."""

from __future__ import annotations

import sys

import typer

from jumpgate.cli.common import run_app

app = typer.Typer(
    name="tsh",
    help="Jumpgate user client.",
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
        f"Jumpgate tsh v{VERSION} (Teleport {TELEPORT_COMPAT} compatible) python{sys.version.split()[0]}"
    )


@app.callback()
def _root() -> None:
    """Jumpgate user client."""


def main() -> None:
    """Console-script entry point."""
    run_app(app, prog="tsh")
