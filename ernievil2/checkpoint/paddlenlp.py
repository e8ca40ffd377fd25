"""Weights of PaddleNLP's ``ErnieViLModel`` <-> ours (= the official layout).

Same maths, different names and three layout differences, all listed here:
- the ViT's fused ``attn.qkv`` (D, 3D) is PaddleNLP's separate q/k/v projections,
  concatenated along the output axis in q, k, v order;
- ``class_embedding`` is (1, 1, D) for us and (D,) for PaddleNLP;
- ``positional_embedding`` is a (1, N, D) parameter for us and an
  ``Embedding`` weight (N, D) for PaddleNLP.
A ``save_pretrained`` folder holds ``config.json`` and ``model_state.pdparams``.
"""
import json
import os
import re

import numpy as np

from .state import CheckpointMismatchError, CheckpointReadError

# (our key pattern, PaddleNLP key pattern); {i} is a layer index.
RENAMES = [
    ("visual.patch_embed.proj.weight", "vision_model.conv1.weight"),
    ("visual.norm_pre.{p}", "vision_model.ln_pre.{p}"),
    ("visual.norm_post.{p}", "vision_model.ln_post.{p}"),
    ("visual.blocks.{i}.norm1.{p}", "vision_model.transformer.layers.{i}.norm1.{p}"),
    ("visual.blocks.{i}.norm2.{p}", "vision_model.transformer.layers.{i}.norm2.{p}"),
    ("visual.blocks.{i}.attn.proj.{p}", "vision_model.transformer.layers.{i}.self_attn.out_proj.{p}"),
    ("visual.blocks.{i}.mlp.fc1.{p}", "vision_model.transformer.layers.{i}.linear1.{p}"),
    ("visual.blocks.{i}.mlp.fc2.{p}", "vision_model.transformer.layers.{i}.linear2.{p}"),
    ("text_model.word_emb.weight", "text_model.embeddings.word_embeddings.weight"),
    ("text_model.pos_emb.weight", "text_model.embeddings.position_embeddings.weight"),
    ("text_model.ln.{p}", "text_model.embeddings.layer_norm.{p}"),
    ("text_model.encoder_stack.block.{i}.attn.q.{p}", "text_model.encoder.layers.{i}.self_attn.q_proj.{p}"),
    ("text_model.encoder_stack.block.{i}.attn.k.{p}", "text_model.encoder.layers.{i}.self_attn.k_proj.{p}"),
    ("text_model.encoder_stack.block.{i}.attn.v.{p}", "text_model.encoder.layers.{i}.self_attn.v_proj.{p}"),
    ("text_model.encoder_stack.block.{i}.attn.o.{p}", "text_model.encoder.layers.{i}.self_attn.out_proj.{p}"),
    ("text_model.encoder_stack.block.{i}.ln1.{p}", "text_model.encoder.layers.{i}.norm1.{p}"),
    ("text_model.encoder_stack.block.{i}.ffn.i.{p}", "text_model.encoder.layers.{i}.linear1.{p}"),
    ("text_model.encoder_stack.block.{i}.ffn.o.{p}", "text_model.encoder.layers.{i}.linear2.{p}"),
    ("text_model.encoder_stack.block.{i}.ln2.{p}", "text_model.encoder.layers.{i}.norm2.{p}"),
    ("text_model.pooler.{p}", "text_model.pooler.dense.{p}"),
    ("contrastive_loss_mm.temperature_b", "temperature"),
]
_QKV = re.compile(r"^visual\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_SPLIT_QKV = re.compile(r"^vision_model\.transformer\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def _pattern(template):
    escaped = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{escaped}$")


_FORWARD = [(_pattern(ours), theirs) for ours, theirs in RENAMES]
_BACKWARD = [(_pattern(theirs), ours) for ours, theirs in RENAMES]


def _rename(key, table):
    for pattern, target in table:
        match = pattern.match(key)
        if match:
            return target.format(**match.groupdict())
    return None


def _as_numpy(state):
    return {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in state.items()}


def official_to_paddlenlp(state):
    """Our/official state dict -> PaddleNLP ``ErnieViLModel`` state dict (numpy arrays)."""
    out, unknown = {}, []
    for key, value in _as_numpy(state).items():
        qkv = _QKV.match(key)
        if qkv:
            layer, kind = qkv.groups()
            for name, part in zip("qkv", np.split(value, 3, axis=-1)):
                out[f"vision_model.transformer.layers.{layer}.self_attn.{name}_proj.{kind}"] = part
        elif key == "visual.class_embedding":
            out["vision_model.class_embedding"] = value.reshape(-1)
        elif key == "visual.positional_embedding":
            out["vision_model.positional_embedding.weight"] = value.reshape(value.shape[-2:])
        else:
            target = _rename(key, _FORWARD)
            if target is None:
                unknown.append(key)
            else:
                out[target] = value
    if unknown:
        raise CheckpointMismatchError(f"no PaddleNLP name for {len(unknown)} key(s): {', '.join(sorted(unknown)[:20])}")
    return out


def paddlenlp_to_official(state):
    """PaddleNLP ``ErnieViLModel`` state dict -> our/official state dict (numpy arrays)."""
    out, unknown, qkv_parts = {}, [], {}
    for key, value in _as_numpy(state).items():
        split = _SPLIT_QKV.match(key)
        if split:
            layer, name, kind = split.groups()
            qkv_parts.setdefault((layer, kind), {})[name] = value
        elif key == "vision_model.class_embedding":
            out["visual.class_embedding"] = value.reshape(1, 1, -1)
        elif key == "vision_model.positional_embedding.weight":
            out["visual.positional_embedding"] = value[None]
        else:
            target = _rename(key, _BACKWARD)
            if target is None:
                unknown.append(key)
            else:
                out[target] = value
    for (layer, kind), parts in qkv_parts.items():
        if set(parts) != set("qkv"):
            raise CheckpointMismatchError(f"layer {layer} {kind}: has only {sorted(parts)} of q/k/v projections")
        out[f"visual.blocks.{layer}.attn.qkv.{kind}"] = np.concatenate([parts[n] for n in "qkv"], axis=-1)
    if unknown:
        raise CheckpointMismatchError(f"no ERNIE-ViL name for {len(unknown)} key(s): {', '.join(sorted(unknown)[:20])}")
    return out


def arch_from_paddlenlp_config(config):
    """``Arch`` section from a PaddleNLP ``ErnieViLConfig`` dict (its ``config.json``)."""
    vision, text = config["vision_config"], config["text_config"]
    width = vision["hidden_size"]
    return {
        "name": "ErnieViL2",
        "image_tower": {
            "name": "ViT",
            "img_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "embed_dim": width,
            "depth": vision["num_hidden_layers"],
            "num_heads": vision["num_attention_heads"],
            "mlp_ratio": vision["intermediate_size"] / width,
            "qkv_bias": True,
            "epsilon": vision.get("layer_norm_eps", 1e-6),
        },
        "text_tower": {
            "name": "ErnieText",
            "vocab_size": text["vocab_size"],
            "hidden_size": text["hidden_size"],
            "num_layers": text["num_hidden_layers"],
            "num_heads": text["num_attention_heads"],
            "intermediate_size": text["intermediate_size"],
            "max_position_embeddings": text["max_position_embeddings"],
            "hidden_dropout": text.get("hidden_dropout_prob", 0.1),
            "attention_dropout": text.get("attention_probs_dropout_prob", 0.1),
            "act": text.get("hidden_act", "gelu"),
            "epsilon": text.get("layer_norm_eps", 1e-5),
            "pad_id": text.get("pad_token_id", 0),
        },
    }


def paddlenlp_refusals(arch):
    """Why PaddleNLP's ``ErnieViLModel`` cannot compute what ``arch`` computes; empty when it can, exactly.

    Everything else converts to the same weights and maths, except the text LayerNorm epsilon,
    which PaddleNLP resets to :data:`PADDLENLP_TEXT_EPSILON` whatever its config says.
    """
    image, text = arch["image_tower"], arch["text_tower"]
    if image.get("name") != "ViT" or text.get("name") != "ErnieText":
        return ["PaddleNLP's ErnieViLModel has a ViT image tower and an ERNIE text tower only, "
                f"this model has {image.get('name')} and {text.get('name')}"]
    reasons = []
    if text.get("pooler", "tanh") != "tanh":
        reasons.append(
            f"text_tower.pooler is {text['pooler']!r}: PaddleNLP's text features are always tanh(pooler([CLS])), "
            "and no pooler weights give back the [CLS] output itself (PaddleNLP would start a random pooler)"
        )
    if not image.get("qkv_bias", True):
        reasons.append("image_tower.qkv_bias is false: PaddleNLP's ViT attention always has q/k/v biases")
    if image.get("act", "quick_gelu") != "quick_gelu":
        reasons.append(f"image_tower.act is {image['act']!r}: PaddleNLP's ViT blocks use quick_gelu")
    if image.get("in_chans", 3) != 3:
        reasons.append(f"image_tower.in_chans is {image['in_chans']}: PaddleNLP's ViT takes 3 channels")
    return reasons


def paddlenlp_config_from_arch(arch):
    """A PaddleNLP ``ErnieViLConfig`` dict for a ViT + ERNIE ``Arch`` section; a ValueError with every
    reason when PaddleNLP cannot represent it (:func:`paddlenlp_refusals`)."""
    reasons = paddlenlp_refusals(arch)
    if reasons:
        raise ValueError("PaddleNLP's ErnieViLModel cannot represent this model: " + "; ".join(reasons))
    image, text = arch["image_tower"], arch["text_tower"]
    return {
        "architectures": ["ErnieViLModel"],
        "model_type": "ernie_vil",
        "vision_config": {
            "hidden_size": image.get("embed_dim", 768),
            "num_hidden_layers": image.get("depth", 12),
            "num_attention_heads": image.get("num_heads", 12),
            "intermediate_size": int(image.get("embed_dim", 768) * image.get("mlp_ratio", 4)),
            "image_size": image.get("img_size", 224),
            "patch_size": image.get("patch_size", 16),
            "layer_norm_eps": image.get("epsilon", 1e-6),
            "hidden_act": "quick_gelu",
            "num_channels": 3,
            "dropout": 0.0,
            "attention_dropout": 0.0,
        },
        "text_config": {
            "vocab_size": text.get("vocab_size", 40000),
            "hidden_size": text.get("hidden_size", 768),
            "num_hidden_layers": text.get("num_layers", 12),
            "num_attention_heads": text.get("num_heads", 12),
            "intermediate_size": text.get("intermediate_size", 3072),
            "max_position_embeddings": text.get("max_position_embeddings", 2048),
            "hidden_act": text.get("act", "gelu"),
            "hidden_dropout_prob": text.get("hidden_dropout", 0.1),
            "attention_probs_dropout_prob": text.get("attention_dropout", 0.1),
            "layer_norm_eps": text.get("epsilon", 1e-5),
            "pad_token_id": text.get("pad_id", 0),
            "type_vocab_size": 0,
            "use_task_id": False,
        },
    }


PADDLENLP_WEIGHTS = "model_state.pdparams"
# ErnieModel's weight initialisation sets every LayerNorm of PaddleNLP's text tower to this,
# after ErnieViL applied config.json's layer_norm_eps: no config reaches it.
PADDLENLP_TEXT_EPSILON = 1e-12


def read_paddlenlp_dir(folder):
    """(Arch section, our state dict) from a PaddleNLP ``save_pretrained`` folder."""
    import paddle

    config_path = os.path.join(folder, "config.json")
    weights_path = os.path.join(folder, PADDLENLP_WEIGHTS)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            present = ", ".join(sorted(os.listdir(folder))) if os.path.isdir(folder) else "folder missing"
            raise FileNotFoundError(f"{path} not found (a PaddleNLP save_pretrained folder has config.json and {PADDLENLP_WEIGHTS}; found: {present})")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    try:
        arch = arch_from_paddlenlp_config(config)
    except (KeyError, TypeError) as err:
        raise CheckpointReadError(f"{config_path}: not an ErnieViLConfig (no {err} in its vision_config/text_config)") from None
    return arch, paddlenlp_to_official(paddle.load(weights_path))


def paddlenlp_vocab_text(vocab_file):
    """PaddleNLP's ``vocab.txt`` (one token a line, the line number its id) from ours (``token`` or ``token\tid`` lines).

    Line for line, duplicates included: both readers give a repeated token its last line's id.
    """
    lines = []
    with open(vocab_file, encoding="utf-8") as f:
        for number, line in enumerate(f):
            token, _, given = line.rstrip("\n").partition("\t")
            if given and int(given) != number:
                raise ValueError(f"{vocab_file}:{number + 1}: id {given} is not the line's (PaddleNLP numbers tokens by line)")
            lines.append(token + "\n")
    return "".join(lines)


def paddlenlp_tokenizer_files(tokenizer, vocab_file):
    """``{file name: text}`` that PaddleNLP's ``AutoTokenizer`` / ``ErnieViLTokenizer.from_pretrained`` read."""
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    config = {
        "tokenizer_class": "ErnieViLTokenizer",
        "do_lower_case": bool(tokenizer["do_lower_case"]),
        "model_max_length": int(tokenizer["max_len"]),
        **special,
    }
    return {
        "vocab.txt": paddlenlp_vocab_text(vocab_file),
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }


def paddlenlp_image_processor(preprocess):
    """PaddleNLP's ``ErnieViLImageProcessor`` settings for our evaluation preprocessing.

    The sizes, mean and std are ours; PaddleNLP resizes with PIL's bicubic filter where we use
    OpenCV's bilinear one, so its pixels differ slightly (the weights and the towers do not).
    """
    return {
        "image_processor_type": "ErnieViLImageProcessor",
        "processor_class": "ErnieViLProcessor",
        "do_resize": True,
        "size": {"shortest_edge": int(preprocess["resize_short"])},
        "do_center_crop": True,
        "crop_size": {"height": int(preprocess["image_size"]), "width": int(preprocess["image_size"])},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(v) for v in preprocess["mean"]],
        "image_std": [float(v) for v in preprocess["std"]],
        "do_convert_rgb": True,
    }


def write_paddlenlp_dir(folder, arch, state, tokenizer=None, vocab_file=None, preprocess=None):
    """Write ``config.json`` + weights that ``ErnieViLModel.from_pretrained(folder)`` loads.

    With ``tokenizer`` (a ``Tokenizer`` config section) and ``vocab_file``, also the tokenizer files,
    and with ``preprocess`` (a ``Preprocess`` section) the image processor's, so that PaddleNLP's
    ``ErnieViLProcessor.from_pretrained(folder)`` loads too. A model PaddleNLP cannot represent
    is refused (ValueError naming why) before anything is written.
    """
    import paddle

    from .state import atomic_save

    config = paddlenlp_config_from_arch(arch)
    converted = {k: paddle.to_tensor(v) for k, v in official_to_paddlenlp(state).items()}
    os.makedirs(folder, exist_ok=True)
    files = {"config.json": json.dumps(config, indent=2)}
    if tokenizer is not None:
        files.update(paddlenlp_tokenizer_files(tokenizer, vocab_file))
    if preprocess is not None:
        files["preprocessor_config.json"] = json.dumps(paddlenlp_image_processor(preprocess), indent=2)
    for name, text in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text)
    atomic_save(converted, os.path.join(folder, PADDLENLP_WEIGHTS))
