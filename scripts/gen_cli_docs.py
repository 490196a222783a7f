#!/usr/bin/env python3
"""Generate shell completions (``completions/``) and man pages (``man/``) from the CLI apps.

Each module in ``--modules`` (default: the five console scripts) exposes a module-level
``app: typer.Typer``; the command name is the console-script name.

    .venv/bin/python scripts/gen_cli_docs.py            # (re)write completions/ and man/
    .venv/bin/python scripts/gen_cli_docs.py --check    # exit 1 if the committed files are stale

A module that cannot be imported is a hard error: we never skip a command silently.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
FIX_COMMAND = "make docs-gen  (or: .venv/bin/python scripts/gen_cli_docs.py)"

DEFAULT_MODULES: dict[str, str] = {
    "teleport": "jumpgate.cli.teleport",
    "tctl": "jumpgate.cli.tctl",
    "tsh": "jumpgate.cli.tsh",
    "tbot": "jumpgate.cli.tbot",
    "jumpgate": "jumpgate.tui.app",
}

# shell -> file name pattern inside completions/
SHELL_FILES: dict[str, str] = {"bash": "{cmd}.bash", "zsh": "_{cmd}", "fish": "{cmd}.fish"}


class GenError(Exception):
    """A loud, user-facing failure (exit status 2)."""


# --------------------------------------------------------------------------------------
# Loading the command trees
# --------------------------------------------------------------------------------------


def parse_modules(spec: str | None) -> dict[str, str]:
    if not spec:
        return dict(DEFAULT_MODULES)
    out: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, mod = item.partition("=")
        if not sep or not name.strip() or not mod.strip():
            raise GenError(f"bad --modules entry {item!r}: expected name=module.path")
        out[name.strip()] = mod.strip()
    if not out:
        raise GenError("--modules is empty")
    return out


def load_command(prog: str, module_path: str) -> Any:
    """Import ``module_path`` and return the click command built from its ``app``."""
    try:
        module = importlib.import_module(module_path)
    except Exception as exc:
        missing_itself = isinstance(exc, ModuleNotFoundError) and exc.name == module_path
        tb = "" if missing_itself else traceback.format_exc()
        raise GenError(
            f"cannot import {module_path} (the {prog!r} command): {exc!r}\n{tb}"
            f"Every CLI module must be importable to generate completions and man pages."
        ) from exc
    app = getattr(module, "app", None)
    if app is None:
        raise GenError(f"{module_path} has no module-level `app` (the {prog!r} command)")
    if hasattr(app, "list_commands") or hasattr(app, "get_params"):
        return app  # already a click command
    try:
        import typer.main
    except ImportError as exc:  # pragma: no cover - typer is a hard dependency
        raise GenError("typer is not installed") from exc
    try:
        return typer.main.get_command(app)
    except Exception as exc:
        raise GenError(
            f"{module_path}.app (the {prog!r} command) is not a usable typer.Typer: {exc!r}"
        ) from exc


def _shell_completion_module(cli: Any) -> ModuleType:
    """The ``shell_completion`` module of the click flavour ``cli`` is built on.

    typer >= 0.26 vendors click as ``typer._click``; older typer uses ``click`` itself.
    Walk the MRO of the command class and use the first ``<pkg>.shell_completion`` sibling.
    """
    for klass in type(cli).__mro__:
        mod_name = getattr(klass, "__module__", "") or ""
        package = mod_name.rpartition(".")[0]
        if not package:
            continue
        try:
            module = importlib.import_module(f"{package}.shell_completion")
        except ImportError:
            continue
        if hasattr(module, "get_completion_class"):
            return module
    import click.shell_completion as click_sc

    return click_sc


def completion_source(cli: Any, prog: str, shell: str) -> str:
    sc = _shell_completion_module(cli)
    cls = sc.get_completion_class(shell)
    if cls is None:
        # typer registers its completion classes lazily (only when add_completion=True).
        try:
            import typer.completion

            typer.completion.completion_init()  # type: ignore[attr-defined]
        except (ImportError, AttributeError):
            pass
        cls = sc.get_completion_class(shell)
    if cls is None:
        raise GenError(f"no {shell} completion class available in {sc.__name__}")
    complete_var = f"_{prog}_COMPLETE".replace("-", "_").upper()
    source: str = cls(cli, {}, prog, complete_var).source()
    return source.strip("\n") + "\n"


# --------------------------------------------------------------------------------------
# roff builder
# --------------------------------------------------------------------------------------


def roff_escape(text: str) -> str:
    """Escape text for roff: backslashes, hyphens, and control characters at line start."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _strip_markup(text: str, mode: str | None) -> str:
    if mode != "rich" or "[" not in text:
        return text
    try:
        from rich.text import Text

        return Text.from_markup(text).plain
    except Exception:
        return text


def clean_help(text: str | None, mode: str | None = None) -> str:
    if not text:
        return ""
    text = inspect.cleandoc(text).partition("\f")[0]
    return _strip_markup(text, mode).strip()


def roff_paragraphs(text: str) -> list[str]:
    """Help text -> roff lines. Paragraphs split on blank lines; click's ``\\b`` keeps layout."""
    out: list[str] = []
    for i, para in enumerate(p for p in text.split("\n\n") if p.strip()):
        if i:
            out.append(".PP")
        lines = para.split("\n")
        if lines[0].strip() == "\b":
            out.append(".nf")
            out.extend(roff_escape(line) for line in lines[1:])
            out.append(".fi")
        else:
            out.append(roff_escape(" ".join(line.strip() for line in lines)))
    return out


def _markup_mode(cmd: Any) -> str | None:
    return getattr(cmd, "rich_markup_mode", None)


def param_record(param: Any, ctx: Any, mode: str | None) -> tuple[str, str] | None:
    """(term, description) for one parameter: flags + metavar, help + [default/required]."""
    if getattr(param, "hidden", False):
        return None
    raw_help = getattr(param, "help", None) or ""
    try:
        rec = param.get_help_record(ctx)
    except Exception:
        rec = None
    if rec is None:
        if getattr(param, "param_type_name", "") != "argument":
            return None
        term = param.human_readable_name
        desc = raw_help
        if getattr(param, "required", False):
            desc = f"{desc}  [required]" if desc else "[required]"
        rec = (term, desc)
    term, desc = rec
    if raw_help and raw_help not in desc:
        # plain (non-rich) typer omits argument help from the help record
        desc = f"{raw_help}  {desc}".strip()
    if raw_help and desc.startswith(raw_help):
        desc = clean_help(raw_help, mode) + desc[len(raw_help) :]
    return term, desc.strip()


def _param_lines(records: list[tuple[str, str]]) -> list[str]:
    out: list[str] = []
    for term, desc in records:
        out.append(".TP")
        out.append(f"\\fB{roff_escape(term)}\\fR")
        out.extend(roff_paragraphs(desc) if desc else ["\\&"])
    return out


def _make_ctx(cmd: Any, name: str, parent: Any | None) -> Any:
    return cmd.context_class(cmd, info_name=name, parent=parent)


def _usage(cmd: Any, ctx: Any) -> str:
    try:
        return " ".join(cmd.collect_usage_pieces(ctx))
    except Exception:
        return "[OPTIONS]"


def _walk(cmd: Any, ctx: Any, path: list[str]) -> Iterator[tuple[list[str], Any, Any]]:
    """Yield (path, command, context) for every visible subcommand, depth-first, sorted."""
    if not hasattr(cmd, "list_commands"):
        return
    for name in cmd.list_commands(ctx):
        sub = cmd.get_command(ctx, name)
        if sub is None or getattr(sub, "hidden", False):
            continue
        sub_ctx = _make_ctx(sub, name, ctx)
        yield [*path, name], sub, sub_ctx
        yield from _walk(sub, sub_ctx, [*path, name])


def _split_params(cmd: Any, ctx: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    mode = _markup_mode(cmd)
    options: list[tuple[str, str]] = []
    arguments: list[tuple[str, str]] = []
    for param in cmd.get_params(ctx):
        rec = param_record(param, ctx, mode)
        if rec is None:
            continue
        if getattr(param, "param_type_name", "") == "argument":
            arguments.append(rec)
        else:
            options.append(rec)
    return options, arguments


def build_man_page(cli: Any, prog: str, version: str, see_also: list[str] | None = None) -> str:
    """Render a section-1 man page for ``cli`` (a click command) as roff text."""
    ctx = _make_ctx(cli, prog, None)
    mode = _markup_mode(cli)
    help_text = clean_help(cli.help, mode)
    summary = help_text.split("\n\n")[0].replace("\n", " ").strip() or f"the {prog} command"
    if summary.startswith("\b"):
        summary = summary[1:].strip()
    esc_prog = roff_escape(prog)

    lines = [
        f'.TH "{esc_prog.upper()}" "1" "" "jumpgate {roff_escape(version)}" "Jumpgate Manual"',
        ".SH NAME",
        f"{esc_prog} \\- {roff_escape(summary)}",
        ".SH SYNOPSIS",
        f"\\fB{esc_prog}\\fR {roff_escape(_usage(cli, ctx))}",
    ]
    if help_text:
        lines += [".SH DESCRIPTION", *roff_paragraphs(help_text)]
    options, arguments = _split_params(cli, ctx)
    if arguments:
        lines += [".SH ARGUMENTS", *_param_lines(arguments)]
    if options:
        lines += [".SH OPTIONS", *_param_lines(options)]

    subs = list(_walk(cli, ctx, [prog]))
    if subs:
        lines.append(".SH COMMANDS")
        for path, sub, sub_ctx in subs:
            full = roff_escape(" ".join(path))
            lines.append(f'.SS "{full}"')
            lines.append(f"\\fB{full}\\fR {roff_escape(_usage(sub, sub_ctx))}")
            sub_help = clean_help(sub.help, _markup_mode(sub))
            if sub_help:
                lines += [".PP", *roff_paragraphs(sub_help)]
            sub_opts, sub_args = _split_params(sub, sub_ctx)
            if sub_args:
                lines += [".PP", "Arguments:", ".RS", *_param_lines(sub_args), ".RE"]
            if sub_opts:
                lines += [".PP", "Options:", ".RS", *_param_lines(sub_opts), ".RE"]
    others = [c for c in (see_also or []) if c != prog]
    if others:
        refs = ",\n".join(f".BR {roff_escape(c)} (1)" for c in others)
        lines += [".SH SEE ALSO", refs]
    text = "\n".join(lines) + "\n"
    home = str(Path.home())
    if len(home) > 1:  # dynamic defaults under $HOME must not make the output machine-specific
        text = re.sub(re.escape(roff_escape(home)) + r"(?![A-Za-z0-9_.]|\\-)", "~", text)
    return text


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def project_version() -> str:
    try:
        return importlib.metadata.version("jumpgate")
    except importlib.metadata.PackageNotFoundError:
        import tomllib

        data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
        return str(data["project"]["version"])


def generate(modules: dict[str, str], out_dir: Path) -> list[Path]:
    """Write all files under out_dir; return their paths relative to out_dir."""
    version = project_version()
    commands = {prog: load_command(prog, mod) for prog, mod in modules.items()}
    written: list[Path] = []

    def write(rel: Path, content: str) -> None:
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(rel)

    for prog, cli in commands.items():
        for shell, pattern in SHELL_FILES.items():
            write(
                Path("completions") / pattern.format(cmd=prog), completion_source(cli, prog, shell)
            )
        write(Path("man") / f"{prog}.1", build_man_page(cli, prog, version, list(commands)))
    return written


def _existing(root: Path) -> set[Path]:
    found: set[Path] = set()
    for sub in ("completions", "man"):
        base = root / sub
        if base.is_dir():
            found.update(
                p.relative_to(root)
                for p in base.rglob("*")
                if p.is_file() and not p.name.startswith(".")
            )
    return found


def check(modules: dict[str, str], out_dir: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="gen_cli_docs.") as tmp:
        fresh = Path(tmp)
        expected = set(generate(modules, fresh))
        problems: list[str] = []
        for rel in sorted(expected):
            committed = out_dir / rel
            if not committed.is_file():
                problems.append(f"missing: {rel}")
            elif not filecmp.cmp(committed, fresh / rel, shallow=False):
                problems.append(f"stale:   {rel}")
        problems += [f"extra:   {rel}" for rel in sorted(_existing(out_dir) - expected)]
    if problems:
        print("Generated CLI docs are out of date:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        print(f"Fix: run  {FIX_COMMAND}  and commit the result.", file=sys.stderr)
        return 1
    print(f"completions/ and man/ are up to date ({len(expected)} files).")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files instead of writing"
    )
    parser.add_argument(
        "--modules",
        help="comma-separated name=module.path list (default: the five jumpgate commands)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT, help="directory holding completions/ and man/"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TERM", "dumb")
    try:
        modules = parse_modules(args.modules)
        if args.check:
            return check(modules, args.out)
        files = generate(modules, args.out)
    except GenError as exc:
        print(f"gen_cli_docs: error: {exc}", file=sys.stderr)
        return 2
    expected = set(files)
    for rel in sorted(_existing(args.out) - expected):
        print(f"note: {rel} is not generated by this script (remove it?)", file=sys.stderr)
    print(f"wrote {len(files)} files under {args.out}/completions and {args.out}/man")
    return 0


if __name__ == "__main__":
    sys.exit(main())
