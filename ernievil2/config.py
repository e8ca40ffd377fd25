"""YAML configs with strict validation and ``-o Section.key=value`` overrides.

A config is plain nested dicts. Every key must be known: fixed sections are
checked against :data:`DEFAULTS` (which also gives each key its type and
default), and sections that name a registered component (``name: ViT``) are
checked against that component's builder signature. Errors name the key path
and the file. ``_base_: other.yaml`` at the top of a file inherits from another
config (paths relative to the file).
"""
import copy
import inspect
import math
import os
import re

import yaml

from .data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from .data.tokenizer import load_vocab
from .registry import ConfigError, check_kwargs, did_you_mean
from .resource_files import resolve_resource
from .views import IMAGE_VIEWS

# Any value is accepted for keys whose default is ANY (optional paths, etc.).
ANY = object()


class Nullable:
    """The default of a key that is null unless set, and then of type ``kind``."""

    def __init__(self, kind):
        self.kind = kind

    def __repr__(self):
        return f"null or a {self.kind.__name__}"


# Optimizer.image and Optimizer.text: a tower's own lr, weight decay and layer decay (null: the section's),
# and how many of its last layer groups train (null: all of them).
TOWER_OPTIMIZER = {
    "lr": Nullable(float), "weight_decay": Nullable(float), "layer_decay": Nullable(float), "unlocked_layers": Nullable(int),
}
# Keys that say which component (or data format) a section describes.
COMPONENT_KEYS = ("name", "format")

DEFAULTS = {
    "Global": {
        "seed": 42,
        "device": "cpu",
        "output_dir": "output",
        "pretrained": ANY,  # checkpoint to start from: a path (official, PaddleNLP or ours) or a released name
        "num_threads": ANY,  # matmul (MKL) threads; null: every core available (ernievil2/runtime.py)
    },
    "Arch": {
        "name": "ErnieViL2",
        "image_tower": ANY,  # validated against the image tower registry
        "text_tower": ANY,  # validated against the text tower registry
    },
    "Tokenizer": {
        "vocab_file": "ernie-3.0-base-zh/vocab.txt",  # the official tokenizer's, bundled (resources/vocab)
        "max_len": 48,
        "do_lower_case": True,
        "backend": "fast",
    },
    "Preprocess": {
        "image_size": 224,
        "resize_short": 224,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    },
    "Loss": ANY,  # validated by losses.loss.check_loss_section
    "Augment": ANY,  # validated by ernievil2.data.augment.augment_settings
    "Data": {
        "train": ANY,  # {format: official_tsv|chinese_clip|jsonl_folder, path/root/...}
        "val": ANY,  # same form; evaluated every Train.eval_every steps
        "replay": ANY,  # same form: general-domain pairs mixed into every epoch of train (against forgetting)
        "replay_share": 0.5,  # the expected share of each batch's records drawn from replay
        "on_error": "raise",  # raise | skip (bad records counted and logged)
        "num_workers": 2,
        "shuffle_buffer": 2048,
        "one_caption_per_image": False,  # reorder so a step's batch holds one caption per image (per rank)
        "tag_prompt": "图中有：",
        "tag_separator": "、",
    },
    "Train": {
        "max_steps": 1000,
        "batch_size": 32,  # per rank and micro-batch
        "accum_steps": 1,  # micro-batches per step; negatives come from all of them
        "tag_as_text_prob": 0.0,  # chance per step that the text views read the tag prompt
        "log_every": 10,
        "save_every": 500,
        "eval_every": 0,  # 0: only at the end (when Data.val is set)
        "keep_checkpoints": 3,
        "resume": "auto",  # auto | never | a checkpoint folder
        "force_resume": False,  # resume although settings an exact resume needs have changed
        "amp": False,
        "amp_dtype": "bfloat16",
        "amp_level": "O1",
        "recompute": False,
        "sharding_stage": 0,  # 0 (plain data parallel) | 1 | 2
        # Share of its patches each image view's tower sees in training (FLIP's patch dropout).
        "patch_keep": dict.fromkeys(IMAGE_VIEWS, 1.0),
        # The fine-tuned weights' share of the final model, the rest Global.pretrained's (WiSE-FT); null: no mixing.
        "wise_ft_alpha": Nullable(float),
    },
    "Optimizer": {
        "name": "AdamW",
        "lr": 1.0e-4,
        "weight_decay": 0.05,
        "beta1": 0.9,
        "beta2": 0.98,
        "epsilon": 1.0e-6,
        "warmup_steps": 100,
        "min_lr_ratio": 0.0,
        "layer_decay": 1.0,
        "grad_clip": ANY,  # global-norm clip value, or null
        "freeze": [],  # towers to lock: image and/or text
        "image": TOWER_OPTIMIZER,
        "text": TOWER_OPTIMIZER,
    },
    "Eval": {
        "batch_size": 64,
        "num_workers": 0,
        "zeroshot": ANY,  # {images, labels, classes[, templates]}: zero-shot top-1/top-5 at each evaluation
    },
}


class _Loader(yaml.SafeLoader):
    """YAML 1.1 with scientific notation read as numbers: ``1e-3`` and ``5E-5`` (no dot) are floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text_or_stream):
    return yaml.load(text_or_stream, Loader=_Loader)


def _between(low, high, low_open=False, high_open=False):
    """A (check, description) pair for a number in an interval."""
    def check(value):
        return (value > low if low_open else value >= low) and (high is None or (value < high if high_open else value <= high))

    upper = "" if high is None else f", {high}{')' if high_open else ']'}"
    text = f"> {low}" if high is None and low_open else (f">= {low}" if high is None else f"in {'(' if low_open else '['}{low}{upper}")
    return check, text


def _one_of(*choices):
    return (lambda value: value in choices), "one of " + ", ".join(map(repr, choices))


POSITIVE, NON_NEGATIVE, FRACTION = _between(0, None, low_open=True), _between(0, None), _between(0, 1)
LAYER_DECAY = _between(0, 1, low_open=True)
RANGES_OF_TOWER_KEYS = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "layer_decay": LAYER_DECAY, "unlocked_layers": NON_NEGATIVE}
# Values checked at load time beyond their type, as (check, what it means); null passes
# wherever the key allows it.
RANGES = {
    "Global.num_threads": POSITIVE,
    "Tokenizer.max_len": _between(3, None),  # [CLS] + one piece + [SEP]
    "Tokenizer.backend": _one_of("fast", "python"),
    "Preprocess.image_size": POSITIVE,
    "Preprocess.resize_short": POSITIVE,
    "Data.on_error": _one_of("raise", "skip"),
    "Data.num_workers": NON_NEGATIVE,
    "Data.shuffle_buffer": NON_NEGATIVE,
    "Data.replay_share": _between(0, 1, low_open=True, high_open=True),
    "Train.max_steps": POSITIVE,
    "Train.batch_size": POSITIVE,
    "Train.accum_steps": POSITIVE,
    "Train.tag_as_text_prob": FRACTION,
    "Train.log_every": POSITIVE,
    "Train.save_every": NON_NEGATIVE,
    "Train.eval_every": NON_NEGATIVE,
    "Train.keep_checkpoints": POSITIVE,
    "Train.amp_dtype": _one_of("float16", "bfloat16"),
    "Train.amp_level": _one_of("O1", "O2"),
    "Train.sharding_stage": _one_of(0, 1, 2),
    "Train.wise_ft_alpha": FRACTION,
    **{f"Train.patch_keep.{view}": _between(0, 1, low_open=True) for view in IMAGE_VIEWS},
    "Optimizer.name": _one_of("AdamW"),
    "Optimizer.lr": POSITIVE,
    "Optimizer.weight_decay": NON_NEGATIVE,
    "Optimizer.beta1": _between(0, 1, high_open=True),
    "Optimizer.beta2": _between(0, 1, high_open=True),
    "Optimizer.epsilon": POSITIVE,
    "Optimizer.warmup_steps": NON_NEGATIVE,
    "Optimizer.min_lr_ratio": FRACTION,
    "Optimizer.layer_decay": LAYER_DECAY,
    "Optimizer.grad_clip": POSITIVE,
    **{f"Optimizer.{tower}.{key}": RANGES_OF_TOWER_KEYS[key] for tower in ("image", "text") for key in RANGES_OF_TOWER_KEYS},
    "Eval.batch_size": POSITIVE,
    "Eval.num_workers": NON_NEGATIVE,
}


def check_ranges(config):
    """Every value of :data:`RANGES` within its range, and numbers finite; the key is named otherwise."""
    for key, (check, meaning) in RANGES.items():
        value = config
        for part in key.split("."):
            value = (value or {}).get(part)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value!r}")
        if not check(value):
            raise ConfigError(key, f"must be {meaning}, got {value!r}")


def _type_ok(default, value):
    if default is ANY or value is None:
        return True
    if isinstance(default, Nullable):
        return _type_ok(default.kind(), value)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def _type_name(default):
    return default.kind.__name__ if isinstance(default, Nullable) else type(default).__name__


def _merge(base, update, schema, path, source):
    """Merge ``update`` into ``base`` in place, checking keys and types against ``schema``."""
    for key, value in update.items():
        key_path = f"{path}.{key}" if path else key
        if schema is not ANY and key not in schema:
            raise ConfigError(
                key_path, "unknown key" + did_you_mean(key, schema) + f"; known: {', '.join(schema)}", source
            )
        sub_schema = ANY if schema is ANY else schema[key]
        if isinstance(sub_schema, dict):
            if not isinstance(value, dict):
                raise ConfigError(key_path, f"expected a mapping, got {value!r}", source)
            base.setdefault(key, {})
            _merge(base[key], value, sub_schema, key_path, source)
        elif sub_schema is ANY and isinstance(value, dict) and isinstance(base.get(key), dict):
            if any(k in value and value[k] != base[key].get(k) for k in COMPONENT_KEYS):
                # Another component (or data format): its keys replace the inherited ones instead of mixing in.
                base[key] = copy.deepcopy(value)
            else:
                _merge(base[key], value, ANY, key_path, source)
        else:
            if not _type_ok(sub_schema, value):
                raise ConfigError(
                    key_path,
                    f"expected {_type_name(sub_schema)} (like the default {sub_schema!r}), got {value!r}",
                    source,
                )
            base[key] = copy.deepcopy(value)


def _read_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError("-c", f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = parse_yaml(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError("(yaml)", f"cannot parse: {err}", path) from None
    if not isinstance(data, dict):
        raise ConfigError("(top level)", "expected a mapping of sections", path)
    return data


def _schema_defaults(schema):
    return {
        k: (_schema_defaults(v) if isinstance(v, dict) else (None if v is ANY or isinstance(v, Nullable) else copy.deepcopy(v)))
        for k, v in schema.items()
    }


def default_config():
    """Every section at its defaults, with the official preprocessing and the bundled official vocabulary; unvalidated."""
    return _schema_defaults(DEFAULTS)


def _load_file(path, schema, seen=()):
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError("_base_", f"circular inheritance through {path}")
    data = _read_yaml(path)
    base_ref = data.pop("_base_", None)
    if base_ref is None:
        config = _schema_defaults(schema)
    else:
        config = _load_file(os.path.join(os.path.dirname(path), base_ref), schema, seen + (path,))
    _merge(config, data, schema, "", path)
    return config


def parse_override(text):
    """``'Section.key=value'`` -> (['Section', 'key'], parsed value)."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like Section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = parse_yaml(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(config, overrides, schema=None):
    schema = DEFAULTS if schema is None else schema
    for text in overrides or ():
        keys, value = parse_override(text)
        nested = value
        for k in reversed(keys):
            nested = {k: nested}
        try:
            _merge(config, nested, schema, "", None)
        except ConfigError as err:
            raise err.located(f"override -o {text}") from None
    return config


def load_config(path, overrides=()):
    """Load, inherit, override and validate a config file; returns nested dicts."""
    config = _load_file(path, DEFAULTS)
    apply_overrides(config, overrides)
    config["_source_"] = os.path.abspath(path)
    config["Augment"] = augment_with_preprocess_size(config.get("Augment"), config["Preprocess"])
    try:
        return validate_component_sections(config)
    except ConfigError as err:
        given = _override_of(err.key, overrides)
        raise (err.located(f"override -o {given}") if given else err) from None


def _override_of(key, overrides):
    """The last override that set ``key`` (or a section holding it, or a key inside it), else None."""
    for text in reversed(list(overrides or ())):
        given = ".".join(parse_override(text)[0])
        if given == key or key.startswith(given + ".") or given.startswith(key + "."):
            return text
    return None


def augment_with_preprocess_size(augment, preprocess):
    """The ``Augment`` section, its ``image_size`` and ``resize_short`` taken from ``Preprocess`` unless set:
    training and evaluation images then have one size by default."""
    if augment is not None and not isinstance(augment, dict):
        return augment  # augment_settings names the error
    sizes = {key: preprocess[key] for key in ("image_size", "resize_short")}
    return {**sizes, **(augment or {})}


def _tower_setting(section, registry, name):
    """A tower's setting: as configured, else its builder's default; None when the builder has no such argument."""
    if name in section:
        return section[name]
    parameter = inspect.signature(registry.get(section["name"])).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def check_cross_sections(config):
    """Settings that several sections hold must agree: image size, vocabulary size, text length,
    sharding and accumulation, weight interpolation and the weights it mixes with."""
    from .models import IMAGE_TOWERS, TEXT_TOWERS

    train = config.get("Train") or {}
    if train.get("wise_ft_alpha") is not None and not config["Global"]["pretrained"]:
        raise ConfigError("Train.wise_ft_alpha", "mixes the fine-tuned weights with Global.pretrained's, which is not set; "
                          "set Global.pretrained or leave Train.wise_ft_alpha null")
    if train.get("sharding_stage", 0) and train.get("accum_steps", 1) > 1:
        raise ConfigError("Train.accum_steps", f"{train['accum_steps']} micro-batches are not supported with "
                          f"Train.sharding_stage {train['sharding_stage']}; use sharding_stage 0 or accum_steps 1")

    image_size = config["Preprocess"]["image_size"]
    tower_size = _tower_setting(config["Arch"]["image_tower"], IMAGE_TOWERS, "img_size")
    if tower_size is not None and tower_size != image_size:
        raise ConfigError("Preprocess.image_size", f"{image_size} differs from Arch.image_tower.img_size ({tower_size})")
    augment_size = (config.get("Augment") or {}).get("image_size", image_size)
    if augment_size != image_size:
        raise ConfigError("Augment.image_size", f"{augment_size} differs from Preprocess.image_size ({image_size})")
    text = config["Arch"]["text_tower"]
    positions = _tower_setting(text, TEXT_TOWERS, "max_position_embeddings")
    max_len = config["Tokenizer"]["max_len"]
    if positions is not None and max_len > positions:
        raise ConfigError("Tokenizer.max_len", f"{max_len} exceeds Arch.text_tower.max_position_embeddings ({positions})")
    vocab_size = _tower_setting(text, TEXT_TOWERS, "vocab_size")
    tokens = _vocab_tokens(config)
    if vocab_size is not None and tokens is not None and tokens > vocab_size:
        raise ConfigError("Arch.text_tower.vocab_size", f"{vocab_size} is smaller than the {tokens} ids of Tokenizer.vocab_file")


def _vocab_tokens(config):
    """How many ids the configured vocabulary uses (its largest id + 1); None when the file is not there yet
    (the demo's vocabulary is built by ``make demo``; the tokenizer names a missing file when it loads)."""
    try:
        path = resolve_resource(config["Tokenizer"]["vocab_file"], config)
    except FileNotFoundError:
        return None
    try:
        return max(load_vocab(path).values()) + 1
    except ValueError as err:
        raise ConfigError("Tokenizer.vocab_file", str(err)) from None


def validate_component_sections(config):
    """Check registry-selected sections against their builders, and sections against each other,
    so that typos and contradictions fail at load time; errors name the key and the file."""
    try:
        for check in (check_ranges, check_data_specs, check_zeroshot, check_arch, check_augment, check_loss, check_cross_sections):
            check(config)
    except ConfigError as err:
        raise err.located(config.get("_source_")) from None
    return config


def check_named_files(config):
    """Every file and folder a training config names is there, of its kind, readable and not empty;
    else a ConfigError naming the key. Run when training starts, not at every load: a tool that
    only reads ``Arch`` from a config (export, feature extraction) needs none of its data."""
    from .checkpoint.released import check_weights_path
    from .data.pipeline import check_spec_paths
    from .files import check_path
    from .losses.distill import distill_entries

    checks = [(f"Data.{key}", check_spec_paths, (config["Data"][key],)) for key in PAIR_SPECS if config["Data"].get(key) is not None]
    checks += [(f"Eval.zeroshot.{key}", check_path, (path,)) for key, path in (config["Eval"].get("zeroshot") or {}).items() if path is not None]
    pretrained = config["Global"]["pretrained"]
    if pretrained:
        # A released model's name passes: it is downloaded when the weights are read, not here.
        checks.append(("Global.pretrained", check_weights_path, (pretrained,)))
    checks += [(key, check_weights_path, (teacher,)) for key, teacher in distill_entries(config.get("Loss")) if teacher is not None]
    for key, check, args in checks:
        try:
            check(*args)
        except OSError as err:
            raise ConfigError(key, str(err), config.get("_source_")) from None


# The Data keys that name a corpus of pairs.
PAIR_SPECS = ("train", "val", "replay")


def check_data_specs(config):
    from .data.readers import check_pair_spec

    for key in PAIR_SPECS:
        spec = config["Data"].get(key)
        if spec is not None:
            try:
                check_pair_spec(spec)
            except ValueError as err:
                raise ConfigError(f"Data.{key}", str(err)) from None
    if config["Data"].get("replay") is not None and config["Data"].get("replay_share") is None:
        raise ConfigError("Data.replay_share", "must be a number in (0, 1) when Data.replay is set, got null")


def check_zeroshot(config):
    from .data.classes import check_zeroshot_spec

    spec = config["Eval"].get("zeroshot")
    if spec is not None:
        try:
            check_zeroshot_spec(spec)
        except ValueError as err:
            raise ConfigError("Eval.zeroshot", str(err)) from None


def check_arch(config):
    from .models import ARCHS, IMAGE_TOWERS, TEXT_TOWERS

    arch = config["Arch"]
    ARCHS.get(arch["name"], key="Arch.name")
    for key, registry in (("image_tower", IMAGE_TOWERS), ("text_tower", TEXT_TOWERS)):
        section = arch.get(key)
        if section is None:
            raise ConfigError(f"Arch.{key}", "missing")
        if not isinstance(section, dict) or "name" not in section:
            raise ConfigError(f"Arch.{key}", f"expected a mapping with a 'name' of a {registry.kind}")
        kwargs = dict(section)
        builder = registry.get(kwargs.pop("name"), key=f"Arch.{key}.name")
        check_kwargs(builder, kwargs, f"Arch.{key}")


def check_augment(config):
    from .data.augment import augment_settings

    augment_settings(config["Augment"])


def check_loss(config):
    from .losses.loss import check_loss_section

    if config.get("Loss") is not None:
        check_loss_section(config["Loss"])


def plain_config(config):
    """The config without its load-time notes (``_source_``): what a run is trained with."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def dump_config(config, path):
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(plain_config(config), f, allow_unicode=True, sort_keys=False)
