"""The README's examples must run as written (its Python blocks run in scripts/test_wheel.sh), and it must stay a
short front page."""

from markdown_blocks import ROOT, check_cli_command, cli_commands, python_blocks

README = ROOT / "README.md"


def test_readme_cli_commands_use_flags_that_exist(monkeypatch):
    """A flag renamed or removed in the CLI must not live on in the README."""
    monkeypatch.chdir(ROOT)  # --config paths are relative to the repository
    commands = cli_commands(README)
    assert len(commands) >= 4, commands  # the CLI quickstart: inspect, train, evaluate, predict
    for command in commands:
        check_cli_command(command)


def test_readme_has_examples():
    """scripts/test_wheel.sh runs these blocks, as written, from the wheel installed in a clean environment."""
    assert python_blocks(README), "README lost its Python examples"
    assert not [b.line for b in python_blocks(README) if b.marker == "no-run"], "every README block runs"
    test_sh = (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
    wheel_sh = (ROOT / "scripts" / "test_wheel.sh").read_text(encoding="utf-8")
    assert "\nbash scripts/test_wheel.sh" in test_sh, "the test command no longer runs the README's blocks"
    assert '"$REPO/README.md" >quickstart.py' in wheel_sh and '"$PY" quickstart.py' in wheel_sh


def test_readme_is_a_front_page():
    """The README says what headkit is, how to install and start, and links to the docs for the rest."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for needed in ("pip install headkit", "bash scripts/demo.sh", "bash scripts/test.sh", "docs/"):
        assert needed in text, f"README lost {needed!r}"
