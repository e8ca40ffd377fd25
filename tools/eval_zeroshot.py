"""Zero-shot classification with Chinese prompts.

The command is ``ernievil2/commands/eval_zeroshot.py`` (installed as ``ernievil2-eval-zeroshot``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "eval_zeroshot")
