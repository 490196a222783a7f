"""What every command-line face shares: the error ladder, output formats, tables.

Heavy modules (rich, yaml) are imported inside the functions that print, because
start-up time is completion latency: shell completion runs the program on every TAB.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any, NoReturn

#: Set by ``--debug`` (or the tool's DEBUG env var): show tracebacks.
DEBUG = False


class Format(StrEnum):
    """``--format`` values for listings."""

    text = "text"
    json = "json"
    yaml = "yaml"


def hoist_global_flags(argv: list[str], flags: dict[str, bool]) -> list[str]:
    """Move global flags to the front so they work after subcommands too, as with kingpin.

    ``flags`` maps each flag spelling to whether it takes a value.
    ``tctl auth export --type=db-client --auth-server=x:443`` becomes
    ``tctl --auth-server=x:443 auth export --type=db-client``.
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name = arg.split("=", 1)[0]
        if name in flags:
            takes_value = flags[name]
            if takes_value and "=" not in arg and i + 1 < len(argv):
                front.extend([arg, argv[i + 1]])
                i += 2
                continue
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def split_short_equals(argv: list[str]) -> list[str]:
    """``-o=file`` → ``-o file``: kingpin (Teleport's parser) accepts both, click only the latter."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            out.extend(argv[i:])
            break
        if len(arg) > 3 and arg[0] == "-" and arg[1] != "-" and arg[2] == "=":
            out.extend([arg[:2], arg[3:]])
        else:
            out.append(arg)
    return out


def _stderr_console() -> Any:
    from rich.console import Console  # imported lazily: start-up time

    return Console(stderr=True, highlight=False, no_color="NO_COLOR" in os.environ)


def error(message: str, hint: str | None = None) -> None:
    """Print ``ERROR: message`` (and the hint) to stderr."""
    if sys.stderr.isatty() and "NO_COLOR" not in os.environ:
        from rich.markup import escape

        con = _stderr_console()
        con.print(f"[bold red]ERROR:[/] {escape(message)}")
        if hint:
            con.print(f"[dim]{escape(hint)}[/]")
    else:
        print(f"ERROR: {message}", file=sys.stderr)
        if hint:
            print(hint, file=sys.stderr)


def warn(message: str) -> None:
    """A warning on stderr."""
    print(f"WARNING: {message}", file=sys.stderr)


def info(message: str) -> None:
    """A diagnostic line on stderr (stdout is reserved for data)."""
    print(message, file=sys.stderr)


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    """Exit with an error message."""
    error(message, hint)
    raise SystemExit(code)


def run_app(app: Callable[..., Any], *, prog: str, argv: list[str] | None = None) -> None:
    """Run a typer app with the one error ladder of the project.

    JumpgateError → one line (and a hint), its exit code; Ctrl-C → 130; any other
    exception → a short message, with the traceback only under ``--debug``.
    """
    from jumpgate.core.errors import JumpgateError

    global DEBUG
    args = split_short_equals(sys.argv[1:] if argv is None else argv)
    DEBUG = (
        DEBUG or "--debug" in args or "-d" in args or os.environ.get(f"{prog.upper()}_DEBUG") == "1"
    )
    try:
        rc = app(args=args, prog_name=prog, standalone_mode=False)
        if isinstance(rc, int) and rc:
            # click returns typer.Exit(code) instead of raising when not standalone
            raise SystemExit(rc)
    except JumpgateError as exc:
        if DEBUG:
            import traceback

            traceback.print_exc()
        error(exc.message, exc.hint)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as exc:
        if _is_click_exception(exc):
            _handle_click_exception(exc)
        if DEBUG:
            raise
        error(f"{type(exc).__name__}: {exc}", "run again with --debug to see where it failed")
        raise SystemExit(1) from None


def _is_click_exception(exc: BaseException) -> bool:
    import click  # already loaded by typer

    if isinstance(exc, click.ClickException | click.exceptions.Exit | click.exceptions.Abort):
        return True
    return type(exc).__name__ in (
        "UsageError",
        "BadParameter",
        "NoSuchOption",
        "MissingParameter",
        "Abort",
        "BadOptionUsage",
        "BadArgumentUsage",
        "ClickException",
        "FileError",
        "Exit",
    )


def _handle_click_exception(exc: Any) -> NoReturn:
    name = type(exc).__name__
    if name == "Exit":
        raise SystemExit(exc.exit_code)
    if name == "Abort":
        print("Aborted.", file=sys.stderr)
        raise SystemExit(1)
    if hasattr(exc, "show"):
        exc.show()
        raise SystemExit(getattr(exc, "exit_code", 2))
    error(str(exc))
    raise SystemExit(2)


# --------------------------------------------------------------------- output
def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, bytes):
        return obj.decode()
    if isinstance(obj, Enum):
        return obj.value
    raise TypeError(type(obj).__name__)


def print_json(data: Any, *, indent: int = 4) -> None:
    """JSON to stdout."""
    print(json.dumps(data, indent=indent, default=_default))


def print_yaml(docs: Sequence[Any] | Any, *, multi: bool = False) -> None:
    """YAML to stdout; ``multi`` prints each item as its own document (``---`` between)."""
    import yaml  # lazily: start-up time

    class _Dumper(yaml.SafeDumper):
        """Multi-line strings (PEM certificates) as readable ``|`` blocks."""

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)

    def dump(d: Any) -> str:
        return str(
            yaml.dump(
                json.loads(json.dumps(d, default=_default)),
                Dumper=_Dumper,
                sort_keys=False,
                allow_unicode=True,
            )
        )

    if multi:
        print("---\n".join(dump(d) for d in docs), end="")
    else:
        print(dump(docs), end="")


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str | None = None
) -> None:
    """A table in Teleport's text layout: header, dashes, left-aligned columns.

    On a terminal the header is bold (rich); piped output stays plain ASCII.
    """
    if not rows and empty is not None:
        print(empty)
        return
    cells = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def line(values: Sequence[str]) -> str:
        return " ".join(v.ljust(widths[i]) for i, v in enumerate(values)).rstrip()

    header = line(headers)
    if sys.stdout.isatty() and "NO_COLOR" not in os.environ:
        from rich.console import Console
        from rich.markup import escape

        con = Console(highlight=False, soft_wrap=True)
        con.print(f"[bold]{escape(header)}[/]")
        con.print(line(["-" * w for w in widths]))
        for r in cells:
            con.print(escape(line(r)))
        return
    print(header)
    print(line(["-" * w for w in widths]))
    for r in cells:
        print(line(r))


def print_kv(pairs: Sequence[tuple[str, str]]) -> None:
    """A headless two-column listing (``tctl status``)."""
    width = max((len(k) for k, _ in pairs), default=0)
    for k, v in pairs:
        print(f"{k.ljust(width)} {v}")


def labels_text(labels: dict[str, str]) -> str:
    """``env=dev,team=a``."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def split_csv(value: str | None) -> list[str]:
    """``a,b , c`` → ``[a, b, c]``; None/"" → []."""
    if not value:
        return []
    return [p.strip() for p in value.split(",") if p.strip()]
