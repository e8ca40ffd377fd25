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

Below: the arguments several commands share, and what they read from them.
"""
import argparse

WEIGHTS_HELP = "official .pdparams, PaddleNLP folder, our checkpoint, or a released name (ernie_vil-2.0-base-zh)"


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_model_arguments(parser, required=True):
    """The options every command that runs a trained model takes (eval_zeroshot, make_tags)."""
    parser.add_argument("-c", "--config", required=required, help="the model's config (Arch, Tokenizer, Preprocess)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
    parser.add_argument("--weights", required=required, help=WEIGHTS_HELP)
    parser.add_argument("--templates", help="prompt templates, one a line with {} (default: the Chinese set shipped)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="default: Eval.batch_size")
    parser.add_argument("--num-workers", type=int, default=None, help="image decoding processes (default: Eval.num_workers)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="a bad record stops the run, or is skipped and counted")


def trained_model(args):
    """(config, model with the weights, tokenizer, eval transform) for ``args`` of :func:`add_model_arguments`."""
    import paddle

    from ..config import load_config
    from ..data.image_ops import EvalTransform
    from ..data.tokenizer import build_tokenizer
    from ..inference.export import load_model

    config = load_config(args.config, args.override)
    paddle.set_device(config["Global"]["device"])
    return config, load_model(config, args.weights), build_tokenizer(config), EvalTransform.from_config(config["Preprocess"])


def batch_settings(args, config):
    """(batch size, decoding workers): ``--batch-size``, ``--num-workers``, else the config's ``Eval``."""
    batch = args.batch_size or config["Eval"]["batch_size"]
    workers = config["Eval"]["num_workers"] if args.num_workers is None else args.num_workers
    return batch, workers
