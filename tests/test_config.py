"""Config loading: inheritance, overrides, and errors that name the key and the file."""
import pytest

from ernievil2.config import load_config
from ernievil2.models import build_model
from ernievil2.registry import ConfigError
from ernievil2.resource_files import resolve_resource
from tests.conftest import REPO

BASE = str(REPO / "configs" / "ernievil2_base_vit16.yaml")


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(f"_base_: {BASE}\n" + text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name", ["ernievil2_base_vit16", "ernievil2_large_vit14", "ernievil2_base_effnetb5", "tiny_official_fixture"])
def test_shipped_configs_load(name):
    config = load_config(str(REPO / "configs" / f"{name}.yaml"))
    assert config["Arch"]["image_tower"]["name"] in ("ViT", "PaddleClas")


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs" / "demo").glob("*.yaml")))
def test_demo_configs_load_and_their_losses_build(path):
    from ernievil2.losses import build_loss

    config = load_config(str(REPO / path))
    loss = build_loss(config["Loss"], global_batch=config["Train"]["batch_size"])
    assert {"image_v1", "text_v1"} <= set(loss.needs.views)


def test_large_config_inherits_and_overrides():
    config = load_config(str(REPO / "configs" / "ernievil2_large_vit14.yaml"))
    tower = config["Arch"]["image_tower"]
    assert (tower["patch_size"], tower["embed_dim"], tower["depth"], tower["img_size"]) == (14, 1024, 24, 224)


def test_changing_component_name_replaces_the_section():
    config = load_config(str(REPO / "configs" / "ernievil2_base_effnetb5.yaml"))
    assert config["Arch"]["image_tower"] == {"name": "PaddleClas", "backbone": "EfficientNetB5", "out_dim": 768}


def test_unknown_section_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "Tokenizer:\n  max_lenght: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "Tokenizer.max_lenght" and "did you mean 'max_len'" in str(err.value)
    assert path in str(err.value)


def test_unknown_component_key_is_an_error(tmp_path):
    path = write(tmp_path, "Arch:\n  image_tower:\n    dpeth: 3\n")
    with pytest.raises(ConfigError, match=r"Arch.image_tower.dpeth: unknown key.*did you mean 'depth'"):
        load_config(path)


def test_unknown_component_name_is_an_error(tmp_path):
    path = write(tmp_path, "Arch:\n  text_tower:\n    name: ErnieTxt\n")
    with pytest.raises(ConfigError, match=r"Arch.text_tower.name: unknown text tower 'ErnieTxt'.*did you mean 'ErnieText'"):
        load_config(path)


def test_wrong_type_is_an_error(tmp_path):
    path = write(tmp_path, "Tokenizer:\n  max_len: long\n")
    with pytest.raises(ConfigError, match=r"Tokenizer.max_len: expected int"):
        load_config(path)


def test_overrides_are_typed_and_strict():
    config = load_config(BASE, ["Tokenizer.max_len=64", "Arch.image_tower.depth=2", "Global.output_dir=/tmp/x"])
    assert config["Tokenizer"]["max_len"] == 64 and config["Arch"]["image_tower"]["depth"] == 2
    with pytest.raises(ConfigError, match=r"override -o Tokenizer.max_len=1.5"):
        load_config(BASE, ["Tokenizer.max_len=1.5"])
    with pytest.raises(ConfigError, match=r"Global.outptu_dir: unknown key"):
        load_config(BASE, ["Global.outptu_dir=x"])
    with pytest.raises(ConfigError, match=r"Section.key=value"):
        load_config(BASE, ["Global.seed"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("Global: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(str(bad))


def test_circular_inheritance(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n", encoding="utf-8")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="circular"):
        load_config(str(tmp_path / "a.yaml"))


def test_vocab_resolves_to_bundled_resource():
    config = load_config(BASE)
    assert resolve_resource(config["Tokenizer"]["vocab_file"], config).endswith("ernie-3.0-base-zh/vocab.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        resolve_resource("nope.txt", config)


def test_tower_width_mismatch_is_explained():
    config = load_config(BASE, ["Arch.image_tower.embed_dim=64", "Arch.image_tower.num_heads=4", "Arch.image_tower.depth=1", "Arch.text_tower.num_layers=1"])
    with pytest.raises(ValueError, match="64-d features and the text tower 768-d"):
        build_model(config["Arch"])


@pytest.mark.parametrize("written, expected", [("1e-3", 1e-3), ("5E-5", 5e-5), ("-2e2", -200.0), ("1.5e-4", 1.5e-4), ("3", 3)])
def test_scientific_notation_is_a_number_in_yaml_and_overrides(tmp_path, written, expected):
    from_file = load_config(write(tmp_path, f"Optimizer:\n  weight_decay: {abs(float(written)) if written.startswith('-') else written}\n"))
    assert from_file["Optimizer"]["weight_decay"] == pytest.approx(abs(expected))
    if expected > 0:
        assert load_config(BASE, [f"Optimizer.lr={written}"])["Optimizer"]["lr"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "override, key",
    [
        ("Optimizer.lr=-1.0", "Optimizer.lr"),
        ("Optimizer.lr=0", "Optimizer.lr"),
        ("Train.max_steps=-5", "Train.max_steps"),
        ("Train.batch_size=0", "Train.batch_size"),
        ("Data.on_error=ignore", "Data.on_error"),
        ("Data.num_workers=-1", "Data.num_workers"),
        ("Train.tag_as_text_prob=1.5", "Train.tag_as_text_prob"),
        ("Optimizer.min_lr_ratio=2", "Optimizer.min_lr_ratio"),
        ("Train.sharding_stage=3", "Train.sharding_stage"),
        ("Global.num_threads=0", "Global.num_threads"),
        ("Optimizer.lr=.nan", "Optimizer.lr"),
    ],
)
def test_values_out_of_range_fail_at_load_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(BASE, [override])
    assert info.value.key == key
    # the value came from the command line, not from the file
    assert info.value.source == f"override -o {override}"


@pytest.mark.parametrize(
    "spec, words",
    [
        ("{format: official_tsvv, path: a.tsv}", "did you mean 'official_tsv'"),
        ("{format: official_tsv, pth: a.tsv}", "did you mean 'path'"),
        ("{path: a.tsv}", "no 'format' key"),
        ("{format: chinese_clip, root: d}", "split"),
    ],
)
@pytest.mark.parametrize("which", ["train", "val"])
def test_data_specs_are_checked_when_the_config_loads(spec, words, which):
    with pytest.raises(ConfigError) as info:
        load_config(BASE, [f"Data.{which}={spec}"])
    assert info.value.key == f"Data.{which}" and words in str(info.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("Optimizer.image.lr=0", "Optimizer.image.lr"),
        ("Optimizer.text.weight_decay=-0.1", "Optimizer.text.weight_decay"),
        ("Optimizer.text.layer_decay=1.5", "Optimizer.text.layer_decay"),
        ("Optimizer.image.lr=fast", "Optimizer.image.lr"),
        ("Optimizer.image.lrr=0.1", "Optimizer.image.lrr"),
    ],
)
def test_per_tower_optimizer_values_are_checked_at_load(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(BASE, [override])
    assert info.value.key == key
    # the value came from the command line, not from the file
    assert info.value.source == f"override -o {override}"


def test_per_tower_optimizer_values_default_to_null():
    config = load_config(BASE, ["Optimizer.text.lr=5e-5"])
    assert config["Optimizer"]["image"] == {"lr": None, "weight_decay": None, "layer_decay": None, "unlocked_layers": None}
    assert config["Optimizer"]["text"]["lr"] == 5e-5


@pytest.mark.parametrize(
    "overrides, key, words",
    [
        (["Preprocess.image_size=192", "Preprocess.resize_short=192"], "Preprocess.image_size", "Arch.image_tower.img_size (224)"),
        (["Augment={image_size: 192, resize_short: 192}"], "Augment.image_size", "Preprocess.image_size (224)"),
        (["Tokenizer.max_len=100", "Arch.text_tower.max_position_embeddings=64"], "Tokenizer.max_len", "max_position_embeddings (64)"),
        (["Arch.text_tower.vocab_size=1000"], "Arch.text_tower.vocab_size", "39980 ids of Tokenizer.vocab_file"),
        (["Arch.name=ErnieVil2"], "Arch.name", "did you mean 'ErnieViL2'"),
    ],
)
def test_sections_that_share_a_setting_must_agree(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(BASE, overrides)
    assert info.value.key == key and words in str(info.value)


def test_augment_takes_its_image_size_from_preprocess_unless_set():
    config = load_config(BASE, ["Preprocess.image_size=160", "Preprocess.resize_short=176", "Arch.image_tower.img_size=160"])
    assert config["Augment"] == {"image_size": 160, "resize_short": 176}
    config = load_config(BASE, ["Augment={resize_short: 256}"])
    assert config["Augment"] == {"image_size": 224, "resize_short": 256}


def test_sharding_with_accumulation_is_refused_at_load_naming_accum_steps():
    with pytest.raises(ConfigError) as info:
        load_config(BASE, ["Train.sharding_stage=1", "Train.accum_steps=2"])
    assert info.value.key == "Train.accum_steps" and "sharding_stage 1" in str(info.value)
    assert load_config(BASE, ["Train.sharding_stage=1"])["Train"]["accum_steps"] == 1
    assert load_config(BASE, ["Train.accum_steps=2"])["Train"]["sharding_stage"] == 0


def test_the_default_vocabulary_is_the_bundled_one_and_resolves():
    from ernievil2.config import DEFAULTS
    from ernievil2.resource_files import resolve_resource

    path = resolve_resource(DEFAULTS["Tokenizer"]["vocab_file"])
    assert path.endswith("resources/vocab/ernie-3.0-base-zh/vocab.txt")
