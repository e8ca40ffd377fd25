"""Serve text -> image (and image -> text) search over HTTP, with a search page at /.

The command is ``ernievil2/commands/serve.py`` (installed as ``ernievil2-serve``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "serve")
