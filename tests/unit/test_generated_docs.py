"""completions/ and man/ are generated from the typer apps and must be kept up to date."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import typer
import typer.main

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_cli_docs.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_cli_docs", module)
    spec.loader.exec_module(module)
    return module


gen = _load_script()


def test_committed_completions_and_man_pages_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"scripts/gen_cli_docs.py --check exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    )


# --- the roff builder on a tiny app ---------------------------------------------------------


def _tiny_app() -> typer.Typer:
    app = typer.Typer(
        help="Run the [bold]demo[/bold] cluster.\n\nSecond para - with a dash.",
        add_completion=False,
        rich_markup_mode="rich",
    )
    users = typer.Typer(help="Manage users.")
    app.add_typer(users, name="users")

    @app.callback()
    def root(
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Chatty output."),
    ) -> None:
        pass

    @users.command("add")
    def add(
        name: str = typer.Argument(..., help="Login name."),
        ttl: str = typer.Option("12h", "--ttl", help="Certificate lifetime."),
    ) -> None:
        """Add a user.

        \b
        .dot at line start
        'quote at line start
        """

    @users.command("secret", hidden=True)
    def secret() -> None:
        """Hidden."""

    @app.command()
    def status() -> None:
        """Show status."""

    return app


@pytest.fixture(scope="module")
def tiny_page() -> str:
    cli = typer.main.get_command(_tiny_app())
    return str(gen.build_man_page(cli, "demo", "9.8.7", ["demo", "other"]))


def test_roff_escape() -> None:
    assert gen.roff_escape("a-b") == "a\\-b"
    assert gen.roff_escape("back\\slash") == "back\\eslash"
    assert gen.roff_escape(".TH evil\n'quote\nok") == "\\&.TH evil\n\\&'quote\nok"


def test_man_page_header_and_name(tiny_page: str) -> None:
    lines = tiny_page.splitlines()
    assert lines[0] == '.TH "DEMO" "1" "" "jumpgate 9.8.7" "Jumpgate Manual"'
    assert "demo \\- Run the demo cluster." in lines  # rich markup stripped
    assert ".SH SYNOPSIS" in lines
    assert ".SH DESCRIPTION" in lines
    assert "Second para \\- with a dash." in lines
    assert ".BR other (1)" in tiny_page


def test_man_page_options_and_subcommands(tiny_page: str) -> None:
    lines = tiny_page.splitlines()
    assert ".SH OPTIONS" in lines
    assert any("\\-v" in ln and "\\-\\-verbose" in ln for ln in lines)
    assert "Chatty output." in tiny_page
    # nested subcommands appear as .SS sections, depth-first
    ss = [ln for ln in lines if ln.startswith(".SS")]
    assert ss == ['.SS "demo status"', '.SS "demo users"', '.SS "demo users add"']
    add = tiny_page.split('.SS "demo users add"', 1)[1]
    assert "\\-\\-ttl" in add and "Certificate lifetime." in add and "12h" in add
    assert "NAME" in add  # plain typer (<0.20) drops argument help; the argument itself is listed
    assert "secret" not in tiny_page  # hidden commands are left out


def test_man_page_escapes_every_line(tiny_page: str) -> None:
    # The only lines starting with '.' or "'" are our own requests, never help text.
    for line in tiny_page.splitlines():
        assert not line.startswith("'"), line
        if line.startswith("."):
            assert line.split()[0] in {
                ".TH",
                ".SH",
                ".SS",
                ".PP",
                ".TP",
                ".RS",
                ".RE",
                ".BR",
                ".nf",
                ".fi",
            }, line
    # click's \b paragraph keeps its line breaks (.nf), so these really start a line
    assert ".nf\n\\&.dot at line start\n\\&'quote at line start\n.fi\n" in tiny_page
    assert " -" not in tiny_page.replace("\\-", "")  # every hyphen escaped


def test_man_page_is_deterministic() -> None:
    a = gen.build_man_page(typer.main.get_command(_tiny_app()), "demo", "1.0")
    b = gen.build_man_page(typer.main.get_command(_tiny_app()), "demo", "1.0")
    assert a == b


@pytest.mark.parametrize(
    ("shell", "marker"), [("bash", "complete "), ("zsh", "#compdef demo"), ("fish", "complete ")]
)
def test_completion_source(shell: str, marker: str) -> None:
    src = gen.completion_source(typer.main.get_command(_tiny_app()), "demo", shell)
    assert "_DEMO_COMPLETE" in src
    assert marker in src


# --- generate / --check round trip on a throwaway module ---------------------------------------


def test_generate_and_check_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = tmp_path / "src"
    pkg.mkdir()
    (pkg / "throwaway_cli_for_docs.py").write_text(
        textwrap.dedent(
            '''
            import typer
            app = typer.Typer(help="Throwaway.")

            @app.command()
            def hello(name: str = "world") -> None:
                """Say hello."""
            '''
        )
    )
    monkeypatch.syspath_prepend(str(pkg))
    out = tmp_path / "out"
    mods = "my-tool=throwaway_cli_for_docs"

    assert gen.main(["--modules", mods, "--out", str(out)]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [
        "completions/_my-tool",
        "completions/my-tool.bash",
        "completions/my-tool.fish",
        "man/my-tool.1",
    ]
    assert "_MY_TOOL_COMPLETE" in (out / "completions/my-tool.bash").read_text()
    assert gen.main(["--modules", mods, "--out", str(out), "--check"]) == 0

    (out / "man/my-tool.1").write_text("stale\n")
    (out / "completions/my-tool.fish").unlink()
    capsys.readouterr()
    assert gen.main(["--modules", mods, "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "stale:   man/my-tool.1" in err
    assert "missing: completions/my-tool.fish" in err
    assert "make docs-gen" in err


def test_unimportable_module_fails_loudly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = gen.main(["--modules", "nope=no_such_module_xyz", "--out", str(tmp_path), "--check"])
    assert rc == 2
    assert "cannot import no_such_module_xyz" in capsys.readouterr().err
