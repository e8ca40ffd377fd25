"""Build FashionScenes-CN, the Chinese image-text demo set made from Fashion-MNIST.

The command is ``ernievil2/commands/make_demo_data.py`` (installed as ``ernievil2-make-demo-data``); ``--help`` says more.
"""
from ernievil2.cli import run_as_script

run_as_script(__name__, "make_demo_data")
