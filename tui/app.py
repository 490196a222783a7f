"""``jumpgate``: the dashboard's command line (the Textual app is in :mod:`jumpgate.tui.dashboard`)."""

from __future__ import annotations

import typer

from jumpgate.core.errors import JumpgateError

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
    proxy: str = typer.Option(
        None, "--proxy", envvar="TELEPORT_PROXY", help="Proxy web address, HOST[:PORT]"
    ),
    user: str = typer.Option(None, "--user", envvar="TELEPORT_USER", help="Jumpgate user name"),
    config: list[str] = typer.Option(
        [], "-c", "--config", help="A tbot config to watch (repeatable)"
    ),
    destination_dir: list[str] = typer.Option(
        [], "--destination-dir", help="A tbot destination directory to watch (repeatable)"
    ),
    proxies_dir: list[str] = typer.Option(
        [], "--proxies-dir", help="Another directory of local-proxy status files (repeatable)"
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Do not verify the proxy's certificate at login (test clusters)"
    ),
    light: bool = typer.Option(False, "--light", help="Start with the light theme"),
    version: bool = typer.Option(False, "--version", help="Print the version and exit"),
) -> None:
    """Open the dashboard on the current tsh profile and the given tbot configs."""
    from jumpgate.core.version import VERSION

    if version:
        print(f"Jumpgate dashboard v{VERSION}")
        return
    from jumpgate.tui.state import DashboardState, Options, check_inputs

    opts = Options(
        proxy=proxy,
        user=user,
        configs=list(config),
        destination_dirs=list(destination_dir),
        proxies_dirs=list(proxies_dir),
        insecure=insecure,
    )
    # before the terminal is taken over: a bad -c or --destination-dir stops here, with
    # tbot's own message, hint and exit code (main's error ladder prints it)
    check_inputs(opts)
    # Textual is imported only when the dashboard opens (--version and completion stay fast)
    from jumpgate.tui.dashboard import DARK, LIGHT, JumpgateApp

    dash = JumpgateApp(DashboardState(opts), theme=LIGHT if light else DARK)
    dash.run()
    if dash.return_code:  # 128 + the signal number after SIGTERM/SIGHUP
        raise SystemExit(dash.return_code)


def _error(exc: JumpgateError) -> None:
    """The message, and the hint on the next line, as the other command-line tools print them."""
    import sys

    print(f"ERROR: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(exc.hint, file=sys.stderr)


def main() -> None:
    """Console-script entry point: a user error prints its message and hint and exits
    with its class's code, as the other tools do (``tbot -c BAD`` and ``jumpgate -c BAD``
    exit alike); never a traceback."""
    try:
        app(prog_name="jumpgate")
    except JumpgateError as exc:
        _error(exc)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
