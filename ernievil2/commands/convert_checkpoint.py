"""Convert weights between PaddleNLP's ErnieViLModel and ours (= the official layout).

    # a PaddleNLP save_pretrained folder, or the released name ernie_vil-2.0-base-zh -> our .pdparams (+ its Arch)
    python tools/convert_checkpoint.py to-ours PADDLENLP_DIR ernievil2_base.pdparams --arch-out arch.yaml
    # ours / official .pdparams (or a training checkpoint folder) -> a PaddleNLP folder
    python tools/convert_checkpoint.py to-paddlenlp ernievil2_base.pdparams OUT_DIR -c configs/ernievil2_base_vit16.yaml

Every key is mapped explicitly and every shape is checked; anything that does
not fit is reported by name. The official checkpoint needs no conversion: it
loads as it is (``Global.pretrained`` or ``--weights``).
"""
import argparse

import paddle
import yaml

from ernievil2.checkpoint import load_pretrained, read_model_state
from ernievil2.checkpoint.paddlenlp import (
    PADDLENLP_TEXT_EPSILON,
    paddlenlp_config_from_arch,
    read_paddlenlp_dir,
    write_paddlenlp_dir,
)
from ernievil2.checkpoint.released import resolve_weights
from ernievil2.checkpoint.state import atomic_save
from ernievil2.config import load_config
from ernievil2.models import build_model
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
    args = parser.parse_args(argv)
    {"to-ours": to_ours, "to-paddlenlp": to_paddlenlp}[args.command](args)
