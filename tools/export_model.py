"""Export the image and text towers to Paddle Inference, with a self-contained deploy config.

The command is ``ernievil2/commands/export_model.py`` (installed as ``ernievil2-export-model``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "export_model")
