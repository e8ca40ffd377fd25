"""Image-text retrieval metrics from saved embeddings.

The command is ``ernievil2/commands/eval_retrieval.py`` (installed as ``ernievil2-eval-retrieval``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "eval_retrieval")
