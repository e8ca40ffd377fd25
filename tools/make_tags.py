"""Object tags for one's own corpus, from a trained model used as a zero-shot tagger.

The command is ``ernievil2/commands/make_tags.py`` (installed as ``ernievil2-make-tags``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "make_tags")
