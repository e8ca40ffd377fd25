"""FashionScenes-CN: determinism, split hygiene, faithful captions, file layouts.

Most tests run on a tiny synthetic Fashion-MNIST written as real idx .gz files, so they do
not need the Debian package; one test runs on the real files when they are installed.
"""
import base64
import gzip
import hashlib
import json
import re
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from ernievil2.data.errors import DataError
from ernievil2.demo import fashion_scenes as fs

REPO = Path(__file__).resolve().parents[1]


def encode_idx(array):
    """The idx byte layout of a uint8 array (inverse of ``fs.decode_idx``): fake Fashion-MNIST files."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


NUM_SYNTHETIC_TRAIN = 60
NUM_SYNTHETIC_T10K = 40
SMALL = fs.DemoSpec(num_train=50, num_val=20, num_test=30, canvas_size=32, num_zeroshot=25)

ITEM_RE = re.compile(
    "一(?P<measure>[件条双个])(?P<colour>{})的?(?P<noun>{})".format(
        "|".join(c.name for c in fs.COLOURS), "|".join(c.noun for c in fs.CLASSES)
    )
)
# The measure words the dataset promises (一件T恤, 一双运动鞋, ...), stated independently.
MEASURE_OF = {
    "T恤": "件", "裤子": "条", "套头衫": "件", "连衣裙": "条", "外套": "件",
    "凉鞋": "双", "衬衫": "件", "运动鞋": "双", "包": "个", "短靴": "双",
}  # fmt: skip
POSITION_RE = re.compile("|".join(fs.POSITIONS))
COLOUR_RE = re.compile("|".join(c.name for c in fs.COLOURS))


def synthetic_images(labels, rng):
    """Each garment a bright block whose shape depends on its class, on a black ground."""
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        height, width = 8 + 2 * int(label), 26 - 2 * int(label)
        top, left = (28 - height) // 2, (28 - width) // 2
        image[top : top + height, left : left + width] = rng.integers(120, 256)
    return images


def write_gz(path, array):
    with gzip.open(path, "wb") as f:
        f.write(encode_idx(array))


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    # Labels differ in pattern between the splits, so drawing from the wrong split's pools
    # shows up as a label mismatch; every class occurs in both halves of t10k.
    directory = tmp_path_factory.mktemp("fashion_mnist")
    rng = np.random.default_rng(7)
    labels = {
        "train": np.arange(NUM_SYNTHETIC_TRAIN, dtype=np.uint8) % 10,
        "t10k": (np.arange(NUM_SYNTHETIC_T10K) * 3 % 10).astype(np.uint8),
    }
    for split, split_labels in labels.items():
        write_gz(directory / fs.source_file_name(split, "images"), synthetic_images(split_labels, rng))
        write_gz(directory / fs.source_file_name(split, "labels"), split_labels)
    return directory


@pytest.fixture(scope="module")
def source(synthetic_dir):
    return fs.load_fashion_mnist(synthetic_dir)


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("built")
    meta = fs.build_demo_dataset(source, SMALL, out_dir)
    return out_dir, meta


def records_of(source, spec):
    return {split: list(fs.iter_split(source, split, spec)) for split in fs.SPLITS}


def read_tsv(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def decode(image_bytes):
    return cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR)


def folder_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir())}


# ----------------------------------------------------------------------------- source files


def test_idx_round_trip_keeps_shape_and_values():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    decoded = fs.decode_idx(encode_idx(array), fs.IDX_IMAGES_MAGIC, "x")
    assert decoded.shape == (2, 3, 4)
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize(
    "payload, expected",
    [
        (encode_idx(np.zeros(5, np.uint8)), "magic number 0x00000801, expected 0x00000803"),
        (encode_idx(np.zeros((2, 3, 3), np.uint8))[:-1], "header (2, 3, 3) implies"),
        (b"\x00\x00", "too short"),
    ],
)
def test_corrupt_idx_is_rejected_with_the_reason(tmp_path, payload, expected):
    path = tmp_path / "bad-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(payload)
    with pytest.raises(DataError, match=re.escape(expected)) as error:
        fs.read_idx_gz(path, fs.IDX_IMAGES_MAGIC)
    assert str(path) in str(error.value)


def test_non_gzip_file_is_reported_as_corrupt_with_install_hint(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError, match="corrupt gzip file.*apt-get install dataset-fashion-mnist"):
        fs.read_idx_gz(path, fs.IDX_IMAGES_MAGIC)


def test_label_count_must_match_image_count(tmp_path, synthetic_dir):
    for name in fs.SOURCE_FILES:
        (tmp_path / name).write_bytes((synthetic_dir / name).read_bytes())
    write_gz(tmp_path / fs.source_file_name("t10k", "labels"), np.zeros(NUM_SYNTHETIC_T10K - 1, np.uint8))
    with pytest.raises(DataError, match=f"{NUM_SYNTHETIC_T10K - 1} labels for {NUM_SYNTHETIC_T10K} images"):
        fs.load_fashion_mnist(tmp_path)


def test_source_checksums_are_of_the_decompressed_idx_bytes(source, synthetic_dir):
    for name in fs.SOURCE_FILES:
        with gzip.open(synthetic_dir / name, "rb") as f:
            assert source.sha256[name] == hashlib.sha256(f.read()).hexdigest()


def test_missing_source_without_network_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fs.locate_source(
            system_dir=tmp_path / "absent",
            cache_dir=tmp_path / "cache",
            url_bases=((tmp_path / "no_server").as_uri() + "/",),
        )


def test_source_dir_option_requires_all_four_files(tmp_path):
    (tmp_path / fs.SOURCE_FILES[0]).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lacks some of"):
        fs.locate_source(source_dir=tmp_path)


def test_download_fills_the_cache_only_with_matching_md5(tmp_path, synthetic_dir):
    server = synthetic_dir.as_uri() + "/"
    md5 = {name: fs.file_md5(synthetic_dir / name) for name in fs.SOURCE_FILES}
    located = fs.locate_source(
        system_dir=tmp_path / "absent", cache_dir=tmp_path / "cache", url_bases=(server,), expected_md5=md5
    )
    assert located == tmp_path / "cache"
    assert all((located / name).read_bytes() == (synthetic_dir / name).read_bytes() for name in fs.SOURCE_FILES)

    wrong = dict(md5, **{fs.SOURCE_FILES[0]: "0" * 32})
    with pytest.raises(FileNotFoundError, match="MD5 mismatch"):
        fs.locate_source(
            system_dir=tmp_path / "absent", cache_dir=tmp_path / "cache2", url_bases=(server,), expected_md5=wrong
        )
    assert not (tmp_path / "cache2" / fs.SOURCE_FILES[0]).exists()


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_folders(source, built, tmp_path):
    fs.build_demo_dataset(source, SMALL, tmp_path)
    assert folder_bytes(tmp_path) == folder_bytes(built[0])


def test_different_seed_gives_different_data(source, built, tmp_path):
    fs.build_demo_dataset(source, fs.DemoSpec(**{**vars(SMALL), "seed": 1}), tmp_path)
    for name in ("train.tsv", "test.tsv", "val.tsv"):
        assert (tmp_path / name).read_bytes() != (built[0] / name).read_bytes()


def test_resizing_train_leaves_test_unchanged(source):
    small, large = fs.DemoSpec(num_train=5, num_test=10), fs.DemoSpec(num_train=40, num_test=10)
    test_small = [r.captions for r in fs.iter_split(source, "test", small)]
    assert test_small == [r.captions for r in fs.iter_split(source, "test", large)]


# ----------------------------------------------------------------------------- split hygiene


def test_splits_draw_from_disjoint_fashion_mnist_rows(source):
    records = records_of(source, SMALL)
    half = NUM_SYNTHETIC_T10K // 2
    rows = {split: {item.source_index for r in records[split] for item in r.scene.items} for split in fs.SPLITS}
    assert rows["test"] and max(rows["test"]) < half
    assert rows["val"] and min(rows["val"]) >= half
    assert max(rows["train"]) < NUM_SYNTHETIC_TRAIN
    for split, source_split in (("train", "train"), ("val", "t10k"), ("test", "t10k")):
        for record in records[split]:
            for item in record.scene.items:
                assert source.labels[source_split][item.source_index] == item.class_id


def test_image_ids_are_unique_across_splits(source):
    ids = [r.image_id for records in records_of(source, SMALL).values() for r in records]
    assert len(ids) == len(set(ids)) == SMALL.num_train + SMALL.num_val + SMALL.num_test


# ----------------------------------------------------------------------------- faithfulness


def parse_caption(caption):
    """What a caption says, read independently of the generator: the multiset of
    (colour, noun) it mentions and, if it names positions, each item's position."""
    mentions = Counter()
    placed = {}
    for clause in re.split("[，；：]", caption):
        items = [(m["colour"], m["noun"]) for m in ITEM_RE.finditer(clause)]
        mentions.update(items)
        positions = POSITION_RE.findall(clause)
        if positions:
            assert len(items) == 1 and len(positions) == 1, caption
            placed[items[0]] = positions[0]
    return mentions, placed


def scene_contents(scene):
    placed = {
        (fs.COLOURS[i.colour_id].name, fs.CLASSES[i.class_id].noun): fs.POSITIONS[i.position] for i in scene.items
    }
    return Counter(placed.keys()), placed


def caption_fits(caption, scene):
    """Does ``scene`` show exactly what ``caption`` says?"""
    mentions, placed = parse_caption(caption)
    scene_items, scene_placed = scene_contents(scene)
    return mentions == scene_items and (not placed or placed == scene_placed)


def assert_caption_describes(caption, scene):
    assert caption_fits(caption, scene), caption
    mentions, placed = parse_caption(caption)
    assert len(placed) in (0, len(scene.items)), caption
    assert len(COLOUR_RE.findall(caption)) == len(scene.items), caption
    for m in ITEM_RE.finditer(caption):
        assert m["measure"] == MEASURE_OF[m["noun"]], caption
    count = re.search("共有(.)样", caption)
    if count:
        assert count.group(1) == fs.NUMERALS[len(scene.items) - 1], caption


def test_every_caption_is_faithful_to_its_scene(source):
    spec = fs.DemoSpec(num_train=80, num_val=0, num_test=60, canvas_size=32, eval_captions_per_image=4)
    templates_seen = set()
    for records in records_of(source, spec).values():
        for record in records:
            for caption in record.captions:
                assert_caption_describes(caption, record.scene)
                assert len(caption) <= spec.max_caption_chars
                templates_seen.add(bool(POSITION_RE.search(caption)))
    assert templates_seen == {True, False}


def test_fill_template_renders_the_documented_examples():
    red_tee = fs.PlacedItem(0, class_id=0, colour_id=0, source_index=0, size=1, top=0, left=0)
    blue_sneaker = fs.PlacedItem(3, class_id=7, colour_id=4, source_index=0, size=1, top=0, left=0)
    templates = {t.name: t for t in fs.CAPTION_TEMPLATES}
    both = [red_tee, blue_sneaker]
    assert fs.fill_template(templates["at_is"], both, True) == "左上角是一件红色的T恤，右下角是一双蓝色的运动鞋"
    assert fs.fill_template(templates["list_there_is"], both, True) == "图中有一件红色的T恤和一双蓝色的运动鞋"
    assert fs.fill_template(templates["placed_at"], [blue_sneaker], True) == "一双蓝色的运动鞋放在右下角"
    assert fs.fill_template(templates["list_count"], both, False) == "画面里共有两样东西：一件红色T恤和一双蓝色运动鞋"


def test_captions_of_one_image_use_distinct_templates(source):
    most = len(fs.templates_fitting_any_scene(4, fs.DemoSpec().max_caption_chars))
    spec = fs.DemoSpec(num_train=0, num_test=40, eval_captions_per_image=most)
    for record in fs.iter_split(source, "test", spec):
        assert len(set(record.captions)) == len(set(record.templates)) == most


def captions_fitting_several_scenes(records):
    return [
        caption
        for record in records
        for caption in record.captions
        if sum(caption_fits(caption, other.scene) for other in records) > 1
    ]


def test_eval_captions_each_fit_exactly_one_image(source):
    # Small scenes collide often (the same items elsewhere, or described without positions);
    # train keeps such captions, eval splits redraw until none is left.
    spec = fs.DemoSpec(num_train=200, num_test=200, items_per_scene_weights=(1, 1, 0, 0))
    assert captions_fitting_several_scenes(list(fs.iter_split(source, "train", spec)))
    test = list(fs.iter_split(source, "test", spec))
    assert captions_fitting_several_scenes(test) == []
    assert sum(r.redraws for r in test) > 0


def test_tags_name_each_item_once_in_reading_order(source):
    for records in records_of(source, SMALL).values():
        for record in records:
            items = sorted(record.scene.items, key=lambda i: i.position)
            expected = [fs.COLOURS[i.colour_id].name + fs.CLASSES[i.class_id].noun for i in items]
            assert record.tags.split(",") == expected


def test_scene_items_sit_in_distinct_cells_inside_the_canvas(source):
    cell = SMALL.canvas_size // 2
    for records in records_of(source, SMALL).values():
        for record in records:
            items = record.scene.items
            assert 1 <= len(items) <= 4
            assert len({i.position for i in items}) == len(items)
            assert len({(i.colour_id, i.class_id) for i in items}) == len(items)
            for item in items:
                row, column = divmod(item.position, 2)
                assert row * cell <= item.top and item.top + item.size <= (row + 1) * cell
                assert column * cell <= item.left and item.left + item.size <= (column + 1) * cell


def test_render_tints_items_with_their_colour_and_leaves_empty_cells_plain(source):
    # The synthetic garments are solid blocks centred in their 28x28 image, so the centre
    # of each placed garment carries the full colour.
    scene = fs.Scene(
        items=(
            fs.PlacedItem(0, class_id=3, colour_id=0, source_index=3, size=28, top=2, left=2),
            fs.PlacedItem(3, class_id=5, colour_id=4, source_index=5, size=24, top=36, left=34),
        ),
        background=(240, 238, 236),
    )
    canvas = fs.render_scene(scene, source.images["train"], 64)
    assert canvas.shape == (64, 64, 3) and canvas.dtype == np.uint8
    for item in scene.items:
        centre = canvas[item.top + item.size // 2, item.left + item.size // 2]
        assert tuple(centre) == fs.COLOURS[item.colour_id].rgb
    assert (canvas[:32, 32:] == scene.background).all()
    assert (canvas[32:, :32] == scene.background).all()


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("image_format, canvas_size", [("jpeg", 32), ("png", 48)])
def test_every_image_decodes_to_the_configured_size(source, image_format, canvas_size):
    spec = fs.DemoSpec(num_train=20, num_test=10, canvas_size=canvas_size, image_format=image_format)
    for record in fs.iter_split(source, "train", spec):
        assert decode(record.image).shape == (canvas_size, canvas_size, 3)
    png_magic = b"\x89PNG"
    assert record.image.startswith(png_magic) == (image_format == "png")


def test_official_tsv_has_four_columns_matching_the_records(source, built):
    out_dir, _ = built
    for split in fs.SPLITS:
        rows = read_tsv(out_dir / f"{split}.tsv")
        records = list(fs.iter_split(source, split, SMALL))
        assert len(rows) == len(records) == SMALL.num_scenes(split)
        for (caption, image_id, image, tags), record in zip(rows, records):
            assert (caption, int(image_id), tags) == (record.captions[0], record.image_id, record.tags)
            assert decode(base64.b64decode(image)).shape == (SMALL.canvas_size, SMALL.canvas_size, 3)


def test_chinese_clip_layout_is_consistent_with_the_official_tsv(built):
    out_dir, _ = built
    for split in fs.EVAL_SPLITS:
        official = read_tsv(out_dir / f"{split}.tsv")
        images = read_tsv(out_dir / f"{split}_imgs.tsv")
        with open(out_dir / f"{split}_texts.jsonl", encoding="utf-8") as f:
            texts = [json.loads(line) for line in f]
        assert [(int(r[1]), r[2]) for r in official] == [(int(i), b64) for i, b64 in images]
        assert [t["text_id"] for t in texts] == list(range(len(official) * SMALL.eval_captions_per_image))
        by_image = {}
        for text in texts:
            (image_id,) = text["image_ids"]
            by_image.setdefault(image_id, []).append(text["text"])
        assert list(by_image) == [int(r[1]) for r in official]
        for row in official:
            captions = by_image[int(row[1])]
            assert captions[0] == row[0] and len(captions) == SMALL.eval_captions_per_image
        all_texts = [t["text"] for t in texts]
        assert len(set(all_texts)) == len(all_texts), "eval captions must each point at one image"
    assert not (out_dir / "train_imgs.tsv").exists()


def test_meta_records_spec_sources_and_caption_duplicates(source, built):
    out_dir, meta = built
    with open(out_dir / "meta.json", encoding="utf-8") as f:
        assert json.load(f) == meta
    assert meta["spec"] == fs.spec_as_json(SMALL)
    assert meta["source"]["sha256_of_idx"] == source.sha256
    assert meta["source"]["rows_used"]["test"] == f"t10k[0:{NUM_SYNTHETIC_T10K // 2}]"
    for split in fs.SPLITS:
        captions = [row[0] for row in read_tsv(out_dir / f"{split}.tsv")]
        stats = meta["splits"][split]
        assert stats["num_samples"] == len(captions)
        assert stats["tsv_caption_duplicates"]["distinct"] == len(set(captions))
        assert stats["tsv_caption_duplicates"]["duplicates"] == len(captions) - len(set(captions))
    assert meta["splits"]["test"]["all_caption_duplicates"]["duplicates"] == 0
    assert meta["splits"]["test"]["all_captions_fitting_several_images"] == 0
    for name, info in meta["files"].items():
        assert info["sha256"] == hashlib.sha256((out_dir / name).read_bytes()).hexdigest()


def test_existing_build_is_recognised_only_when_complete_and_identical(source, built, tmp_path):
    out_dir, _ = built
    assert fs.existing_meta_matches(out_dir, SMALL, source)
    assert not fs.existing_meta_matches(out_dir, fs.DemoSpec(**{**vars(SMALL), "num_test": 31}), source)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in folder_bytes(out_dir).items():
        (copy / name).write_bytes(data)
    (copy / "val.tsv").write_bytes(b"truncated")
    assert not fs.existing_meta_matches(copy, SMALL, source)


def test_invalid_spec_is_rejected_by_name():
    with pytest.raises(ValueError, match="canvas_size"):
        fs.validate_spec(fs.DemoSpec(canvas_size=33))
    with pytest.raises(ValueError, match="image_format"):
        fs.validate_spec(fs.DemoSpec(image_format="gif"))
    with pytest.raises(ValueError, match="eval_captions_per_image"):
        fs.validate_spec(fs.DemoSpec(eval_captions_per_image=len(fs.CAPTION_TEMPLATES) + 1))
    with pytest.raises(ValueError, match="only 0 caption templates fit every 1-item scene"):
        fs.validate_spec(fs.DemoSpec(max_caption_chars=5))


def test_cli_builds_then_skips_then_rebuilds_with_force(synthetic_dir, tmp_path):
    command = [
        sys.executable, str(REPO / "tools" / "make_demo_data.py"), "--source-dir", str(synthetic_dir),
        "--output", str(tmp_path / "out"), "--num-train", "20", "--num-test", "10", "--canvas-size", "32",
    ]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "done in" in first.stdout and (tmp_path / "out" / "test_texts.jsonl").is_file()
    second = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "up to date" in second.stdout
    third = subprocess.run(command + ["--force"], capture_output=True, text=True, check=True)
    assert "done in" in third.stdout
    missing = subprocess.run(command[:2] + ["--source-dir", str(tmp_path / "none")], capture_output=True, text=True)
    assert missing.returncode == 2 and "lacks some of" in missing.stderr


# ----------------------------------------------------------------------------- real data


def test_real_fashion_mnist_builds_a_valid_small_set(tmp_path):
    if not fs.has_source_files(fs.DEBIAN_SOURCE_DIR):
        pytest.skip(f"Fashion-MNIST not installed ({fs.INSTALL_HINT})")
    source = fs.load_fashion_mnist(fs.DEBIAN_SOURCE_DIR)
    assert source.images["train"].shape == (60000, 28, 28)
    assert source.images["t10k"].shape == (10000, 28, 28)
    assert np.bincount(source.labels["t10k"], minlength=10).tolist() == [1000] * 10
    spec = fs.DemoSpec(num_train=30, num_val=10, num_test=20, canvas_size=64)
    meta = fs.build_demo_dataset(source, spec, tmp_path)
    assert meta["source"]["rows_used"] == {"train": "train[0:60000]", "val": "t10k[5000:10000]", "test": "t10k[0:5000]"}
    for split in fs.SPLITS:
        rows = read_tsv(tmp_path / f"{split}.tsv")
        assert len(rows) == spec.num_scenes(split)
        for caption, _, image, tags in rows:
            assert decode(base64.b64decode(image)).shape == (64, 64, 3)
            assert len(tags.split(",")) == len(ITEM_RE.findall(caption))


# ----------------------------------------------------------------------------- zero-shot set


def test_zeroshot_set_is_single_garments_labelled_by_garment_and_by_tag(source, built):
    from ernievil2.data.classes import read_class_names, read_templates
    from ernievil2.data.errors import SkipCounter
    from ernievil2.data.readers import iter_labelled_images

    out_dir, meta = built
    records = list(fs.iter_zeroshot(source, SMALL))
    assert meta["zeroshot"]["num_samples"] == len(records) == SMALL.num_zeroshot
    half = NUM_SYNTHETIC_T10K // 2
    for n, record in enumerate(records):
        assert record.item.class_id == n % len(fs.CLASSES)  # the classes in turn: balanced
        assert record.item.source_index < half  # the test split's rows, never train's
        assert source.labels["t10k"][record.item.source_index] == record.item.class_id
        assert decode(record.image).shape == (SMALL.canvas_size, SMALL.canvas_size, 3)
    assert max(meta["zeroshot"]["class_counts"].values()) - min(meta["zeroshot"]["class_counts"].values()) <= 1
    train_tags = {tag for row in read_tsv(out_dir / "train.tsv") for tag in row[3].split(",")}
    for task in fs.ZEROSHOT_TASKS:
        labels_file, classes_file = (out_dir / name for name in fs.zeroshot_files(task))
        classes = read_class_names(classes_file)
        read = list(iter_labelled_images(out_dir / fs.ZEROSHOT_IMAGES, labels_file, SkipCounter()))
        assert [int(r.image_id) for r in read] == [r.image_id for r in records]
        assert [r.image for r in read] == [r.image for r in records]
        assert all(r.label in classes.index for r in read)
        for r, record in zip(read, records):
            item = record.item
            noun, colour = fs.CLASSES[item.class_id].noun, fs.COLOURS[item.colour_id].name
            assert r.label == (noun if task == "garment" else colour + noun)
            assert noun in classes.names[classes.index[r.label]]  # the prompt name says the garment
        if task == "item":
            # The 80 item classes are the tags train.tsv uses (every one occurs in a large enough split).
            assert len(classes.labels) == len(fs.CLASSES) * len(fs.COLOURS) and train_tags <= set(classes.labels)
            assert classes.names[classes.index["红色T恤"]] == "一件红色的T恤"
    templates = read_templates(out_dir / fs.ZEROSHOT_TEMPLATES)
    assert "图中有{}" in templates and all(t.count("{}") == 1 for t in templates)


# ----------------------------------------------------------------------------- web noise

NOISY = dict(
    caption_mismatch_rate=0.25, caption_attribute_rate=0.10, caption_partial_rate=0.15, tag_missing_rate=0.10, tag_wrong_rate=0.20
)


def tag_set(tags):
    return Counter(tags.split(","))


def within_binomial(count, trials, rate):
    """``count`` of ``trials`` is a plausible draw at ``rate`` (4 standard deviations)."""
    return abs(count - rate * trials) <= 4 * (rate * (1 - rate) * trials) ** 0.5 + 1


def test_web_noise_has_the_rates_asked_for_and_each_kind_does_what_it_says(source):
    spec = fs.DemoSpec(num_train=3000, num_test=0, canvas_size=16, num_zeroshot=0, **NOISY)
    clean = {r.image_id: r for r in fs.iter_split(source, "train", fs.DemoSpec(**{**vars(spec), **dict.fromkeys(NOISY, 0.0)}))}
    records = list(fs.iter_split(source, "train", spec))
    kinds = Counter(kind for r in records for kind in r.noise)
    multi = sum(len(r.scene.items) > 1 for r in records)
    assert within_binomial(kinds["mismatched"], len(records), 0.25)
    assert within_binomial(kinds["wrong_attribute"], len(records), 0.10)
    assert within_binomial(kinds["partial"], multi, 0.15)
    assert within_binomial(kinds["tag_missing"], multi, 0.10)
    assert within_binomial(kinds["wrong_tag"], len(records), 0.20)
    still_fitting = 0
    for record in records:
        # The images and the scenes are the clean corpus's: only texts change.
        assert record.image == clean[record.image_id].image and record.scene == clean[record.image_id].scene
        caption, scene, true_tags = record.captions[0], record.scene, fs.scene_tags(record.scene)
        mentions, _ = parse_caption(caption)
        shown, _ = scene_contents(scene)
        if "mismatched" in record.noise:
            still_fitting += caption_fits(caption, scene)
        elif "wrong_attribute" in record.noise:
            assert sum(mentions.values()) == len(scene.items) and sum((mentions - shown).values()) == 1, caption
        elif "partial" in record.noise:
            assert 0 < sum(mentions.values()) < len(scene.items) and not mentions - shown, caption
        else:
            assert caption == clean[record.image_id].captions[0]
        if "tag_missing" in record.noise:
            assert tag_set(true_tags) - tag_set(record.tags) and not tag_set(record.tags) - tag_set(true_tags)
            assert len(record.tags.split(",")) == len(scene.items) - 1
        elif "wrong_tag" in record.noise:
            assert sum((tag_set(record.tags) - tag_set(true_tags)).values()) == 1, record.tags
            assert len(record.tags.split(",")) == len(scene.items)
        else:
            assert record.tags == true_tags
    # Another scene's caption fits this image only by the odd coincidence.
    assert still_fitting <= 0.02 * kinds["mismatched"]


def test_web_noise_leaves_the_eval_splits_and_the_clean_pairs_byte_identical(source, built, tmp_path):
    clean_dir, _ = built
    noisy_dir = tmp_path / "noisy"
    meta = fs.build_demo_dataset(source, fs.DemoSpec(**{**vars(SMALL), **NOISY}), noisy_dir)
    clean_files, noisy_files = folder_bytes(clean_dir), folder_bytes(noisy_dir)
    for name in set(clean_files) - {"train.tsv", "meta.json"}:
        assert noisy_files[name] == clean_files[name], name
    listed = dict(line.split("\t") for line in (noisy_dir / fs.NOISE_FILE).read_text(encoding="utf-8").splitlines())
    clean_rows, noisy_rows = read_tsv(clean_dir / "train.tsv"), read_tsv(noisy_dir / "train.tsv")
    assert [r[1:3] for r in noisy_rows] == [r[1:3] for r in clean_rows]  # ids and images
    for clean_row, noisy_row in zip(clean_rows, noisy_rows):
        kinds = set(listed.get(noisy_row[1], "").split(",")) - {""}
        if not kinds & set(fs.CAPTION_NOISE.values()):
            assert noisy_row[0] == clean_row[0]
        if not kinds:
            assert noisy_row == clean_row
    counted = {kind: n for kind, n in meta["splits"]["train"]["noise"].items() if n}
    assert counted == Counter(kind for kinds in listed.values() for kind in kinds.split(","))
    assert meta["spec"]["caption_mismatch_rate"] == 0.25
    assert not any(meta["splits"]["test"]["noise"].values())
    assert not (clean_dir / fs.NOISE_FILE).exists()


@pytest.mark.parametrize(
    "rates, message",
    [
        ({"tag_wrong_rate": 1.5}, "tag_wrong_rate must be in"),
        ({"caption_partial_rate": -0.1}, "caption_partial_rate must be in"),
        ({"caption_mismatch_rate": 0.7, "caption_attribute_rate": 0.4}, "must be at most 1, got 1.1"),
    ],
)
def test_web_noise_rates_are_checked_by_name(rates, message):
    with pytest.raises(ValueError, match=message):
        fs.validate_spec(fs.DemoSpec(**rates))


def test_cli_writes_the_noise_it_is_asked_for(synthetic_dir, tmp_path):
    out = tmp_path / "noisy"
    cmd = [sys.executable, str(REPO / "tools" / "make_demo_data.py"), "--output", str(out), "--source-dir", str(synthetic_dir)]
    cmd += ["--num-train", "40", "--num-test", "10", "--num-zeroshot", "0", "--canvas-size", "16", "--caption-mismatch", "0.5"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["spec"]["caption_mismatch_rate"] == 0.5
    assert f"{meta['splits']['train']['noise']['mismatched']} mismatched" in result.stdout
    assert meta["splits"]["train"]["noise"]["mismatched"] > 0


# ----------------------------------------------------------------------------- a domain of one's own

HELD_OUT = (3, 5, 8)
TITLE_RE = re.compile(
    "^(?P<style>{}) (?P<items>.+)$".format("|".join(fs.STYLE_WORDS))
)
TITLE_ITEM_RE = re.compile("^({})({})$".format("|".join(c.name for c in fs.COLOURS), "|".join(c.noun for c in fs.CLASSES)))


def test_scenes_draw_only_from_the_chosen_classes(source):
    seen = tuple(c for c in range(len(fs.CLASSES)) if c not in HELD_OUT)
    spec = fs.DemoSpec(num_train=300, num_test=100, classes=seen)
    for split in ("train", "test"):
        classes = Counter(item.class_id for record in fs.iter_split(source, split, spec) for item in record.scene.items)
        assert set(classes) == set(seen), split  # every chosen class appears, no other


def test_every_scene_holds_a_required_class_and_any_other(source):
    spec = fs.DemoSpec(num_train=400, num_test=0, required_classes=HELD_OUT)
    records = list(fs.iter_split(source, "train", spec))
    assert all(any(item.class_id in HELD_OUT for item in record.scene.items) for record in records)
    others = Counter(item.class_id for record in records for item in record.scene.items if item.class_id not in HELD_OUT)
    assert set(others) == set(range(len(fs.CLASSES))) - set(HELD_OUT)
    kinds = [(item.class_id, item.colour_id) for record in records for item in record.scene.items]
    assert all(len(set(k)) == len(k) for k in ([(i.class_id, i.colour_id) for i in r.scene.items] for r in records))
    assert len(kinds) > len(records)  # multi-item scenes too


def test_titles_name_a_style_word_then_every_item_in_reading_order(source):
    spec = fs.DemoSpec(num_train=100, num_test=60, required_classes=HELD_OUT, caption_style="title")
    for split in ("train", "test"):
        for record in fs.iter_split(source, split, spec):
            assert record.templates == (fs.TITLE,) * len(record.captions)
            styles = set()
            for caption in record.captions:
                match = TITLE_RE.match(caption)
                assert match, caption
                styles.add(match["style"])
                named = [TITLE_ITEM_RE.match(word).groups() for word in match["items"].split(" ")]
                in_order = sorted(record.scene.items, key=lambda i: i.position)
                assert named == [(fs.COLOURS[i.colour_id].name, fs.CLASSES[i.class_id].noun) for i in in_order]
            assert len(styles) == len(record.captions)  # an image's titles differ in their style word


def test_eval_titles_each_fit_exactly_one_image(source):
    # A title fixes the items and their reading order, not their cells: two scenes can share one,
    # and the eval splits redraw until none does.
    spec = fs.DemoSpec(num_train=300, num_test=300, items_per_scene_weights=(1, 1, 0, 0), required_classes=HELD_OUT,
                       caption_style="title")

    def ambiguous(records):
        meanings = Counter(fs.scene_meaning(r.scene, "ordered") for r in records)
        return sum(meanings[fs.scene_meaning(r.scene, "ordered")] > 1 for r in records)

    assert ambiguous(list(fs.iter_split(source, "train", spec)))
    test = list(fs.iter_split(source, "test", spec))
    assert ambiguous(test) == 0 and sum(r.redraws for r in test) > 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"classes": (0, 10)}, "classes must be distinct Fashion-MNIST labels"),
        ({"classes": (1, 1, 2)}, "classes must be distinct"),
        ({"classes": (0, 1), "required_classes": (5,)}, r"required_classes \[5\] are not among classes"),
        ({"caption_style": "poem"}, "caption_style must be one of scene, title"),
        ({"caption_style": "title", "caption_mismatch_rate": 0.2}, "caption noise is drawn in the scene style only"),
        ({"caption_style": "title", "eval_captions_per_image": 11}, "titles have 10 style words"),
    ],
)
def test_bad_class_or_style_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        fs.validate_spec(fs.DemoSpec(**fields))


def test_cli_builds_a_title_corpus_of_held_out_classes(synthetic_dir, tmp_path):
    out = tmp_path / "shop"
    command = [
        sys.executable, str(REPO / "tools" / "make_demo_data.py"), "--source-dir", str(synthetic_dir), "--output", str(out),
        "--num-train", "20", "--num-test", "10", "--num-zeroshot", "0", "--canvas-size", "32",
        "--required-classes", "3,5,8", "--caption-style", "title",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["spec"]["required_classes"] == [3, 5, 8] and meta["spec"]["caption_style"] == "title"
    assert meta["splits"]["test"]["template_counts"] == {fs.TITLE: 20}
    assert all(TITLE_RE.match(row[0]) for row in read_tsv(out / "train.tsv"))
    bad = subprocess.run(command[:-4] + ["--required-classes", "3,x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "expected comma-separated Fashion-MNIST labels" in bad.stderr
