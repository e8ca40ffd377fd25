"""Train an ERNIE-ViL 2.0 dual encoder.

    python tools/train.py -c configs/demo/multiview.yaml [-o Train.max_steps=100 ...]
    python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py -c CONFIG
    # multi-node (run on every node): python -m paddle.distributed.launch \
    #     --master HOST0:PORT --nnodes N --nproc_per_node G tools/train.py -c CONFIG
"""
import argparse
import sys

import ernievil2  # noqa: F401  (the CPU runtime, before anything loads Paddle; light: no Paddle here)


def main(argv=None):
    # Imported here, not at the top: the data workers are spawned processes that
    # import this file as their main module, and must not load Paddle for nothing.
    from ernievil2.checkpoint import CheckpointMismatchError
    from ernievil2.config import load_config
    from ernievil2.data.errors import DataError
    from ernievil2.engine.build import build_trainer
    from ernievil2.registry import ConfigError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.override)
        build_trainer(config).train()
    except (ConfigError, DataError, CheckpointMismatchError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    from ernievil2 import cli

    sys.exit(cli.run(main))
