"""Embed a data split with a model: text and image features for retrieval evaluation.

The command is ``ernievil2/commands/extract_features.py`` (installed as ``ernievil2-extract-features``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "extract_features")
