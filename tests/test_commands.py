"""Every command runs as ``python tools/<name>.py`` and as its console script, through one error handler."""
import importlib
import subprocess
import sys

import pytest

from ernievil2 import cli
from tests.conftest import REPO

NAMES = sorted(p.stem for p in (REPO / "ernievil2" / "commands").glob("*.py") if p.stem != "__init__")


def test_every_command_has_a_script_and_a_console_entry():
    setup = (REPO / "setup.py").read_text(encoding="utf-8")
    assert "ernievil2.cli:{name}" in setup
    for name in NAMES:
        assert (REPO / "tools" / f"{name}.py").is_file(), name
        assert callable(getattr(cli, name)) and getattr(cli, name).__name__ == name
        assert callable(importlib.import_module(f"ernievil2.commands.{name}").main)


@pytest.mark.parametrize("name", NAMES)
def test_help_runs_through_the_script(name):
    result = subprocess.run([sys.executable, f"tools/{name}.py", "--help"], capture_output=True, text=True, cwd=str(REPO), timeout=300)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-1000:]


def test_a_user_error_is_one_line_through_the_console_entry(capsys, tmp_path):
    assert cli.run_command("train", ["-c", str(tmp_path / "missing.yaml")]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config file not found" in err and len(err.strip().splitlines()) == 1
