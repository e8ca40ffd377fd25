"""Train an ERNIE-ViL 2.0 dual encoder.

    python tools/train.py -c configs/demo/multiview.yaml [-o Train.max_steps=100 ...]
    python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py -c CONFIG
    # multi-node (run on every node): python -m paddle.distributed.launch \
    #     --master HOST0:PORT --nnodes N --nproc_per_node G tools/train.py -c CONFIG
"""
import argparse


def main(argv=None):
    # Imported here, not at the top: ``--help`` needs no Paddle.
    from ernievil2.config import load_config
    from ernievil2.engine.build import build_trainer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
    args = parser.parse_args(argv)
    # A config, data or checkpoint error becomes one line in ernievil2.cli.run.
    build_trainer(load_config(args.config, args.override)).train()
