"""Tools and the library start without Paddle's ccache warning or faiss's INFO lines, unless asked."""
import os
import subprocess
import sys

import pytest

from ernievil2 import runtime
from tests.conftest import REPO

STARTS = {
    "library": [sys.executable, "-c", "import ernievil2.api"],
    "tool": [sys.executable, str(REPO / "tools" / "serve.py"), "--help"],
}


def start_stderr(argv, verbose):
    env = {**os.environ, "PYTHONPATH": str(REPO), runtime.VERBOSE_START: "1" if verbose else "0"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=True).stderr


@pytest.mark.parametrize("kind", sorted(STARTS))
def test_start_is_quiet_unless_asked(kind):
    assert start_stderr(STARTS[kind], verbose=False) == ""
    loud = start_stderr(STARTS[kind], verbose=True)
    assert "ccache" in loud
    if kind == "library":
        assert "Loading faiss" in loud


def test_quiet_start_leaves_other_warnings_alone():
    code = (
        "import warnings, ernievil2\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    warnings.warn('No ccache found.')\n"
        "    warnings.warn('something else')\n"
        "print([str(w.message) for w in caught])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert "something else" in out
