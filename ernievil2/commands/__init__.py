"""The command-line tools, each a module with ``main(argv)``.

They are reached three ways, all through :func:`ernievil2.cli.run` (one line
and exit code 2 for a user's mistake, never a traceback):

- ``python tools/<name>.py``, the Paddle convention (``tools/`` holds two-line scripts);
- ``ernievil2-<name>`` (``-`` for ``_``), the console scripts that ``setup.py`` declares
  (functions of ``ernievil2/cli.py``);
- ``python -m paddle.distributed.launch tools/train.py``.

A command module imports Paddle inside ``main``, not at the top: the data
workers of ``train`` are spawned processes that import the script again.
"""
import sys


def run_as_script(module_name, name):
    """What ``tools/<name>.py`` does: run the command when executed, nothing when imported."""
    if module_name == "__main__":
        from .. import cli

        sys.exit(cli.run_command(name))
