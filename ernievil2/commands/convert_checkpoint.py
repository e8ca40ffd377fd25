"""Convert weights between PaddleNLP's ErnieViLModel and ours (= the official layout), and mix two models.

    # a PaddleNLP save_pretrained folder, or the released name ernie_vil-2.0-base-zh -> our .pdparams (+ its Arch)
    python tools/convert_checkpoint.py to-ours PADDLENLP_DIR ernievil2_base.pdparams --arch-out arch.yaml
    # ours / official .pdparams (or a training checkpoint folder) -> a PaddleNLP folder
    python tools/convert_checkpoint.py to-paddlenlp ernievil2_base.pdparams OUT_DIR -c configs/ernievil2_base_vit16.yaml
    # WiSE-FT: (1 - alpha) x the pretrained model + alpha x the fine-tuned one -> a .pdparams
    python tools/convert_checkpoint.py interpolate PRETRAINED FINETUNED --alpha 0.5 mixed.pdparams
    # every alpha of --alphas evaluated on the config's Data.val; the best written with --out
    python tools/convert_checkpoint.py sweep PRETRAINED FINETUNED -c CONFIG --alphas 0,0.25,0.5,0.75,1 --out best.pdparams

Every key is mapped explicitly and every shape is checked; anything that does
not fit is reported by name. The official checkpoint needs no conversion: it
loads as it is (``Global.pretrained`` or ``--weights``). PRETRAINED and
FINETUNED are anything ``--weights`` takes (a .pdparams, a PaddleNLP folder, a
training output folder or checkpoint); see docs/finetuning.md.
"""
import argparse

import paddle
import yaml

from ernievil2.checkpoint import load_pretrained, read_model_state
from ernievil2.checkpoint.interpolate import interpolate_states
from ernievil2.checkpoint.paddlenlp import (
    PADDLENLP_TEXT_EPSILON,
    paddlenlp_config_from_arch,
    read_paddlenlp_dir,
    write_paddlenlp_dir,
)
from ernievil2.checkpoint.released import resolve_weights
from ernievil2.checkpoint.state import atomic_save
from ernievil2.config import load_config
from ernievil2.data.image_ops import EvalTransform
from ernievil2.data.tokenizer import build_tokenizer
from ernievil2.engine.sweep import (
    DEFAULT_ALPHAS,
    best_alpha,
    parse_alphas,
    sweep_alphas,
    table_header,
    table_line,
)
from ernievil2.engine.trainer import evaluate_model
from ernievil2.models import build_model
from ernievil2.registry import ConfigError
from ernievil2.resource_files import resolve_resource

# A ValueError here means a checkpoint or folder that is not what the command expects: a one-line error too (ernievil2.cli.run).
USER_ERRORS = (ValueError,)


def to_ours(args):
    source = resolve_weights(args.source)  # a released name too (ernie_vil-2.0-base-zh): its cached folder
    arch, state = read_paddlenlp_dir(source)
    model = build_model(arch)
    load_pretrained(model, source)  # strict: proves every key and shape fits our model
    atomic_save({k: paddle.to_tensor(v) for k, v in state.items()}, args.target)
    if args.arch_out:
        with open(args.arch_out, "w", encoding="utf-8") as f:
            yaml.safe_dump({"Arch": arch}, f, sort_keys=False)
    print(f"{len(state)} tensors -> {args.target}" + (f"; Arch section -> {args.arch_out}" if args.arch_out else ""))


def to_paddlenlp(args):
    config = load_config(args.config)
    arch = config["Arch"]
    # Refused before any weight is read: PaddleNLP would load such a folder with a part left random.
    paddlenlp_config_from_arch(arch)
    model = build_model(arch)
    load_pretrained(model, args.source)
    tokenizer = config["Tokenizer"]
    write_paddlenlp_dir(
        args.target, arch, read_model_state(args.source), tokenizer,
        resolve_resource(tokenizer["vocab_file"], config), config["Preprocess"],
    )
    print(
        f"PaddleNLP folder -> {args.target}: the same weights and towers (load with ErnieViLModel.from_pretrained; "
        "its tokenizer and ErnieViLProcessor with from_pretrained too)"
    )
    epsilon = arch["text_tower"].get("epsilon", 1e-5)
    if epsilon != PADDLENLP_TEXT_EPSILON:
        print(
            f"note: PaddleNLP runs the text tower's LayerNorms at epsilon {PADDLENLP_TEXT_EPSILON:g} whatever config.json "
            f"says (this model: {epsilon:g}); its unit text embeddings differ from ours by about 1e-5"
        )


def interpolate(args):
    mixed = interpolate_states(read_model_state(args.start), read_model_state(args.end), args.alpha)
    atomic_save(mixed, args.target)
    print(f"{len(mixed)} tensors: {1 - args.alpha:g} x {args.start} + {args.alpha:g} x {args.end} -> {args.target}")


def sweep(args):
    config = load_config(args.config, args.override)
    if config["Data"]["val"] is None:
        raise ConfigError("Data.val", "not given: the sweep evaluates each mixing weight on it", config["_source_"])
    alphas = parse_alphas(args.alphas) if args.alphas else list(DEFAULT_ALPHAS)
    paddle.set_device(config["Global"]["device"])
    start, end = read_model_state(args.start), read_model_state(args.end)
    model = build_model(config["Arch"])
    tokenizer, transform = build_tokenizer(config), EvalTransform.from_config(config["Preprocess"])
    print(f"mixing weight alpha of {args.end} against {args.start}, on Data.val of {args.config}:")
    print(table_header(config["Eval"]["zeroshot"] is not None))
    rows = sweep_alphas(
        model, start, end, alphas, lambda m: evaluate_model(m, config, tokenizer, transform, log=lambda _: None),
        report=lambda alpha, row: print(table_line(alpha, row), flush=True),
    )
    best = best_alpha(rows)
    protocol = rows[0][1][0]
    print(f"best alpha: {best:g} (the highest MeanRecall, {protocol} protocol)")
    if args.out:
        atomic_save(interpolate_states(start, end, best), args.out)
        print(f"the model at alpha {best:g} -> {args.out}")


def alpha_value(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value:g}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ours = commands.add_parser("to-ours", help="PaddleNLP save_pretrained folder -> our .pdparams")
    ours.add_argument("source")
    ours.add_argument("target")
    ours.add_argument("--arch-out", help="write the matching Arch section (yaml) here")
    nlp = commands.add_parser("to-paddlenlp", help="our/official weights -> PaddleNLP folder")
    nlp.add_argument("source")
    nlp.add_argument("target")
    nlp.add_argument("-c", "--config", required=True, help="the config whose Arch the weights belong to")
    mix = commands.add_parser("interpolate", help="(1 - alpha) x START + alpha x END -> a .pdparams (WiSE-FT)")
    mix.add_argument("start", help="the pretrained (start) model")
    mix.add_argument("end", help="the fine-tuned model")
    mix.add_argument("target", help="the .pdparams to write")
    mix.add_argument("--alpha", type=alpha_value, required=True, help="the fine-tuned model's weight, in [0, 1]")
    best = commands.add_parser("sweep", help="evaluate interpolations on Data.val, print the table and the best alpha")
    best.add_argument("start", help="the pretrained (start) model")
    best.add_argument("end", help="the fine-tuned model")
    best.add_argument("-c", "--config", required=True, help="the models' config: Arch, Tokenizer, Preprocess, Data.val (and Eval.zeroshot)")
    best.add_argument("-o", "--override", action="append", default=[], metavar="Section.key=value")
    best.add_argument("--alphas", help="comma-separated weights of the fine-tuned model (default 0,0.1,...,1)")
    best.add_argument("--out", help="write the model at the best alpha here (.pdparams)")
    args = parser.parse_args(argv)
    {"to-ours": to_ours, "to-paddlenlp": to_paddlenlp, "interpolate": interpolate, "sweep": sweep}[args.command](args)
