"""Build a search gallery (faiss index + ids + thumbnails, and the captions) for tools/serve.py.

The command is ``ernievil2/commands/build_index.py`` (installed as ``ernievil2-build-index``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "build_index")
