"""Train an ERNIE-ViL 2.0 dual encoder.

The command is ``ernievil2/commands/train.py`` (installed as ``ernievil2-train``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "train")
