"""scripts/install.sh under an externally managed Python (PEP 668) installs into a project .venv."""
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

DEBIAN_PYTHON = "/usr/bin/python3"


def externally_managed(python):
    code = "import os, sys, sysconfig; print(sys.prefix == sys.base_prefix and os.path.isfile(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip() == "True"


def install_copy(tmp_path):
    """The install scripts in a folder of their own, so that a .venv made there leaves the checkout alone."""
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    return tmp_path


def choose(folder, python):
    result = subprocess.run(
        ["bash", str(folder / "scripts" / "install.sh"), "--venv-only"], capture_output=True, text=True,
        env={**os.environ, "PYTHON": python}, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not (os.path.exists(DEBIAN_PYTHON) and externally_managed(DEBIAN_PYTHON)), reason="no externally managed /usr/bin/python3")
def test_an_externally_managed_python_gets_a_project_venv(tmp_path):
    folder = install_copy(tmp_path)
    assert choose(folder, DEBIAN_PYTHON) == ".venv/bin/python"
    venv_python = folder / ".venv" / "bin" / "python"
    assert not externally_managed(str(venv_python))
    pip = subprocess.run([str(venv_python), "-m", "pip", "--version"], capture_output=True, text=True)
    assert pip.returncode == 0 and str(folder / ".venv") in pip.stdout
    runner = subprocess.run(["bash", str(folder / "scripts" / "python.sh"), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
    assert runner.stdout.strip() == str(folder / ".venv")
    assert choose(folder, DEBIAN_PYTHON) == ".venv/bin/python"  # the second run reuses it


@pytest.mark.skipif(externally_managed(sys.executable), reason="this interpreter is externally managed")
def test_a_python_that_allows_installs_is_used_as_it_is(tmp_path):
    folder = install_copy(tmp_path)
    assert choose(folder, sys.executable) == sys.executable
    assert not (folder / ".venv").exists()
