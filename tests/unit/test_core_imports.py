"""Layering rules: core/ never pulls in a terminal UI; cli/ and tui/ don't import each other."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Top-level packages core/ must never load, directly or transitively.
UI_PACKAGES = (
    "rich",
    "typer",
    "textual",
    "prompt_toolkit",
    "click",
    "jumpgate.cli",
    "jumpgate.tui",
)

# Import-package name for each source folder (see [tool.setuptools] in pyproject.toml).
PACKAGES = {"core": "jumpgate.core", "cli": "jumpgate.cli", "tui": "jumpgate.tui"}


def module_names(folder: str) -> list[str]:
    """Dotted module names of every .py file under ``folder`` (packages by their __init__)."""
    base = REPO / folder
    names = []
    for path in sorted(base.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join([PACKAGES[folder], *parts]))
    return names


_PROBE = r"""
import importlib, json, sys
banned = tuple(sys.argv[1].split(","))
report = {}
preloaded = sorted({b for b in banned for m in sys.modules if m == b or m.startswith(b + ".")})
if preloaded:
    report["<interpreter startup>"] = {"offenders": preloaded}
for name in sys.argv[2:]:
    before = set(sys.modules)
    try:
        importlib.import_module(name)
    except BaseException as exc:
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        continue
    # A library shared by several offenders is blamed on the first one only.
    loaded = set(sys.modules) - before
    bad = sorted({b for b in banned for m in loaded if m == b or m.startswith(b + ".")})
    if bad:
        report[name] = {"offenders": bad}
print(json.dumps(report))
"""


def test_core_modules_import_no_ui_libraries() -> None:
    modules = module_names("core")
    assert "jumpgate.core" in modules
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(UI_PACKAGES), *modules],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, f"probe crashed:\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = []
    for name, info in sorted(report.items()):
        if "error" in info:
            lines.append(f"{name}: import failed: {info['error']}")
        else:
            lines.append(f"{name} imports {', '.join(info['offenders'])}")
    assert not lines, "jumpgate.core must stay free of UI libraries:\n" + "\n".join(lines)


def _imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in a file, with relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg_init = path.name == "__init__.py"
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # The containing package of this module, then climb (level - 1) packages.
                parts = package.split(".")
                if not is_pkg_init:
                    parts = parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts)
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out.extend((node.lineno, f"{mod}.{alias.name}") for alias in node.names)
    return out


def _file_module(folder: str, path: Path) -> str:
    parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGES[folder], *parts])


@pytest.mark.parametrize(
    ("folder", "forbidden"), [("cli", "jumpgate.tui"), ("tui", "jumpgate.cli")]
)
def test_cli_and_tui_do_not_import_each_other(folder: str, forbidden: str) -> None:
    problems = []
    for path in sorted((REPO / folder).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        package = _file_module(folder, path)
        for lineno, mod in _imported_modules(path, package):
            if mod == forbidden or mod.startswith(forbidden + "."):
                problems.append(f"{path.relative_to(REPO)}:{lineno}: imports {mod}")
    assert not problems, f"{PACKAGES[folder]} must not import {forbidden}:\n" + "\n".join(
        sorted(set(problems))
    )


def test_relative_import_resolution(tmp_path: Path) -> None:
    f = tmp_path / "mod.py"
    f.write_text("from ..tui import app\nfrom . import sibling\nimport jumpgate.tui.x\n")
    mods = {m for _, m in _imported_modules(f, "jumpgate.cli.mod")}
    assert {"jumpgate.tui", "jumpgate.tui.app", "jumpgate.cli.sibling", "jumpgate.tui.x"} <= mods
