"""Example text-to-image queries with an exported model, printed and drawn (examples.png).

The command is ``ernievil2/commands/demo_report.py`` (installed as ``ernievil2-demo-report``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "demo_report")
