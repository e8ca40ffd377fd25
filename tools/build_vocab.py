"""Build a WordPiece vocab.txt (``token\\tid``, ERNIE 3.0 layout) from caption files.

The command is ``ernievil2/commands/build_vocab.py`` (installed as ``ernievil2-build-vocab``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "build_vocab")
