"""Convert weights between PaddleNLP's ErnieViLModel and ours (= the official layout).

The command is ``ernievil2/commands/convert_checkpoint.py`` (installed as ``ernievil2-convert-checkpoint``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "convert_checkpoint")
