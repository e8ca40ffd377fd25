"""The command-line tools, each a module with ``main(argv)``.

They are reached three ways, all through :func:`ernievil2.cli.run` (one line
and exit code 2 for a user's mistake, never a traceback):

- ``python tools/<name>.py``, the Paddle convention (``tools/`` holds two-line scripts
  calling :func:`ernievil2.cli.run_as_script`);
- ``ernievil2-<name>`` (``-`` for ``_``), the console scripts that ``setup.py`` declares
  (functions of ``ernievil2/cli.py``);
- ``python -m paddle.distributed.launch tools/train.py``.

``train`` imports Paddle inside ``main``, not at the top: its data workers are
spawned processes that import the script again. The other commands import what
they use at the top.
"""
