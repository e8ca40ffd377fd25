"""Read a corpus through as training will, decode every image, and report what is wrong with it.

The command is ``ernievil2/commands/check_data.py`` (installed as ``ernievil2-check-data``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "check_data")
