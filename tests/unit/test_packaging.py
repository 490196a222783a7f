"""The wheel holds the whole program: every module, the dashboard's stylesheets.

The test venv installs Jumpgate in editable mode, which finds any module in the
tree; a package missing from ``pyproject.toml`` would only break a real
install. So the wheel is built here and imported on its own.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAPPING = {"core": "jumpgate/core", "cli": "jumpgate/cli", "tui": "jumpgate/tui"}


def _shipped_files() -> set[str]:
    """Paths (in the wheel's layout) of the tree's modules and stylesheets."""
    out = set()
    for src, dst in MAPPING.items():
        for f in (ROOT / src).rglob("*"):
            if f.suffix in (".py", ".tcss") and "__pycache__" not in f.parts:
                out.add(f"{dst}/{f.relative_to(ROOT / src).as_posix()}")
    return out


def test_every_package_directory_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = {p.rsplit("/", 1)[0] for p in _shipped_files() if p.endswith(".py")}
    expected = {d.replace("/", ".") for d in dirs}
    assert expected - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - expected == set(), "pyproject.toml lists packages that no longer exist"
    for d in dirs:
        src = ROOT / next(s for s, dst in MAPPING.items() if d.startswith(dst))
        rel = d.split("/", 2)[2] if d.count("/") >= 2 else ""
        assert (src / rel / "__init__.py").is_file(), f"{src / rel} needs an __init__.py"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for d in MAPPING:
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    build = ["wheel", str(src), "--no-deps", "--no-build-isolation", "--wheel-dir", str(out)]
    subprocess.run(
        [sys.executable, "-m", "pip", *build, "--quiet"],
        check=True,
        capture_output=True,
        cwd=src,
    )
    (whl,) = out.glob("jumpgate-*.whl")
    return whl


def test_wheel_holds_every_module_and_stylesheet(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_shipped_files() - names)
    assert missing == []
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for cmd in ("teleport", "tctl", "tsh", "tbot", "jumpgate"):
        assert f"{cmd} = jumpgate." in scripts


def test_installed_wheel_imports_without_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    # -S: no site processing, so the venv's editable-install finder is not there;
    # only the unpacked wheel and the dependencies are importable.
    deps = site.getsitepackages()
    code = f"""
import sys
sys.path[:0] = {[str(target), *deps]!r}
import importlib, pathlib, pkgutil
import jumpgate.core, jumpgate.cli, jumpgate.tui
root = pathlib.Path({str(target)!r})
for pkg in (jumpgate.core, jumpgate.cli, jumpgate.tui):
    assert pathlib.Path(pkg.__path__[0]).is_relative_to(root), pkg.__path__
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(mod.name)
from jumpgate.tui.screens.databases import DatabasesScreen
css = pathlib.Path(sys.modules[DatabasesScreen.__module__].__file__).with_name("databases.tcss")
assert css.is_file(), css
print("imported", len(sys.modules))
"""
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("imported")
