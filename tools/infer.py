"""Encode images and texts with an exported model (Paddle Inference), and search a gallery.

The command is ``ernievil2/commands/infer.py`` (installed as ``ernievil2-infer``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "infer")
