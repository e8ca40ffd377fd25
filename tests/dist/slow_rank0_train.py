"""``tools/train.py`` with rank 0's first evaluation and first checkpoint write slowed past gloo's 30 s.

Worker for tests/test_engine_distributed.py: the other ranks must wait out both
without a collective that times out. Only rank 0 evaluates and writes, so the
sleep is rank 0's alone.
"""
import sys
import time

from ernievil2 import cli
from ernievil2.engine import build, trainer

# gloo gives up on a collective after a fixed 30 s.
SLOW_SECONDS = 33


def slow_first_call(function):
    calls = []

    def run(*args, **kwargs):
        if not calls:
            calls.append(1)
            time.sleep(SLOW_SECONDS)
        return function(*args, **kwargs)

    return run


def main(argv):
    make_eval_fn = build.make_eval_fn
    build.make_eval_fn = lambda *args, **kwargs: slow_first_call(make_eval_fn(*args, **kwargs))
    trainer.save_checkpoint = slow_first_call(trainer.save_checkpoint)
    return cli.run_command("train", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
