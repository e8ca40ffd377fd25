"""FashionScenes-CN: a Chinese image-text demo set built from real Fashion-MNIST images.

A scene is a small colour canvas holding one to four Fashion-MNIST garments in distinct
cells of a 2x2 grid. Each garment is tinted a named colour (colour x intensity mask, so its
shape stays visible) on a plain light background. Captions come from varied Chinese
templates and say exactly what was placed: colour and class always, position when the
template names one. Tags list the items the way a detector would (``红色T恤,蓝色运动鞋``).

Everything below is a pure function of the Fashion-MNIST arrays, a :class:`DemoSpec` and its
seed; ``tools/make_demo_data.py`` is the command line. Train scenes draw only from
Fashion-MNIST's train split; test scenes from the first half of t10k and val scenes from
the second half, so the three never share a source image.
"""
import base64
import gzip
import hashlib
import json
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from ..data.errors import DataError
from ..files import atomic_text_file, file_digest

FORMAT_VERSION = "fashion_scenes_cn/1"

DEBIAN_SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "ernievil2" / "fashion-mnist"
OFFICIAL_URL_BASES = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
# MD5 of the .gz files as published in the Fashion-MNIST README. Debian recompresses them,
# so its .gz files differ; the decompressed idx bytes (what meta.json records) do not.
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
SOURCE_SPLITS = ("train", "t10k")
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
INSTALL_HINT = "apt-get install dataset-fashion-mnist"


def source_file_name(source_split, kind):
    """``train``/``t10k`` x ``images``/``labels`` -> the official file name."""
    suffix = "images-idx3-ubyte.gz" if kind == "images" else "labels-idx1-ubyte.gz"
    return f"{source_split}-{suffix}"


SOURCE_FILES = tuple(source_file_name(s, k) for s in SOURCE_SPLITS for k in ("images", "labels"))


@dataclass(frozen=True)
class GarmentClass:
    english: str
    chinese: str  # the Fashion-MNIST class name in Chinese
    noun: str  # what captions and tags call it
    measure: str  # measure word used after 一


CLASSES = (
    GarmentClass("T-shirt/top", "T恤/上衣", "T恤", "件"),
    GarmentClass("Trouser", "裤子", "裤子", "条"),
    GarmentClass("Pullover", "套头衫", "套头衫", "件"),
    GarmentClass("Dress", "连衣裙", "连衣裙", "条"),
    GarmentClass("Coat", "外套", "外套", "件"),
    GarmentClass("Sandal", "凉鞋", "凉鞋", "双"),
    GarmentClass("Shirt", "衬衫", "衬衫", "件"),
    GarmentClass("Sneaker", "运动鞋", "运动鞋", "双"),
    GarmentClass("Bag", "包", "包", "个"),
    GarmentClass("Ankle boot", "短靴", "短靴", "双"),
)


@dataclass(frozen=True)
class Colour:
    name: str
    rgb: tuple


# White would vanish on the light background and grey reads as black wherever a garment's
# intensity is low, so neither is offered: every name below stays recognisable when blended.
COLOURS = (
    Colour("红色", (215, 35, 35)),
    Colour("橙色", (245, 130, 20)),
    Colour("黄色", (230, 195, 10)),
    Colour("绿色", (40, 160, 60)),
    Colour("蓝色", (35, 85, 215)),
    Colour("紫色", (135, 60, 185)),
    Colour("粉色", (245, 120, 185)),
    Colour("黑色", (25, 25, 25)),
)

# Index = row * 2 + column of the 2x2 grid.
POSITIONS = ("左上角", "右上角", "左下角", "右下角")
NUMERALS = ("一", "两", "三", "四")
BACKGROUND_RANGE = (230, 250)
MASK_GAMMA = 0.6


@dataclass(frozen=True)
class CaptionTemplate:
    """A whole-scene sentence (``{items}``, ``{count}``) or a clause repeated per item
    (``{position}``, ``{item}``) joined by ``separator``."""

    name: str
    text: str
    per_item: bool
    separator: str = "，"
    min_items: int = 1


CAPTION_TEMPLATES = (
    CaptionTemplate("list_there_is", "图中有{items}", per_item=False),
    CaptionTemplate("list_background", "浅色背景上摆着{items}", per_item=False),
    CaptionTemplate("list_collage", "这是一张服饰拼图，包含{items}", per_item=False),
    CaptionTemplate("list_picture", "一张图片，里面有{items}", per_item=False),
    CaptionTemplate("list_count", "画面里共有{count}样东西：{items}", per_item=False, min_items=2),
    CaptionTemplate("list_together", "{items}被放在同一张图里", per_item=False, min_items=2),
    CaptionTemplate("at_is", "{position}是{item}", per_item=True),
    CaptionTemplate("at_has", "{position}有{item}", per_item=True),
    CaptionTemplate("placed_at", "{item}放在{position}", per_item=True),
    CaptionTemplate("item_at", "{item}在{position}", per_item=True, separator="；"),
    CaptionTemplate("at_see", "在{position}可以看到{item}", per_item=True),
    CaptionTemplate("located_at", "位于{position}的是{item}", per_item=True, separator="；"),
)
TEMPLATES_BY_NAME = {t.name: t for t in CAPTION_TEMPLATES}

# Caption styles. ``scene``: the sentences above. ``title``: a shop's product title, a style
# word the image cannot show and then the items in reading order, the way a user's own corpus
# words things differently from the pre-training captions (``韩版 红色连衣裙 蓝色凉鞋``).
CAPTION_STYLES = ("scene", "title")
TITLE = "product_title"  # the template name titles are counted under in meta.json
STYLE_WORDS = ("新款", "韩版", "百搭", "简约", "复古", "修身", "休闲", "通勤", "潮流", "气质")

SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")
SPLIT_SEED_CODE = {"train": 0, "val": 1, "test": 2}
# Integer image ids (Chinese-CLIP needs ints), unique across splits.
IMAGE_ID_BASE = {"train": 10_000_000, "val": 20_000_000, "test": 30_000_000}
MAX_SCENES_PER_SPLIT = 10_000_000
# An eval scene with an ambiguous caption is redrawn, at most this many times; beyond that
# the ambiguity is kept and shows in meta.json.
MAX_REDRAWS = 50
# Noise kinds, in the order one uniform draw tests them (DemoSpec's rates of the same names).
CAPTION_NOISE = {"caption_mismatch_rate": "mismatched", "caption_attribute_rate": "wrong_attribute", "caption_partial_rate": "partial"}
TAG_NOISE = {"tag_missing_rate": "tag_missing", "tag_wrong_rate": "wrong_tag"}
CAPTION_NOISE_RATES, TAG_NOISE_RATES = tuple(CAPTION_NOISE), tuple(TAG_NOISE)
# Kinds that need a scene of two or more items; a one-item scene drawn for them stays clean.
MULTI_ITEM_NOISE = ("partial", "tag_missing")
NOISE_SEED_CODE = 4  # after ZEROSHOT_SEED_CODE: the noise never moves a clean draw
# ``image_id \t kinds`` of every noisy train pair: the ground truth a noise-robust method is judged on.
NOISE_FILE = "train_noise.tsv"


@dataclass(frozen=True)
class DemoSpec:
    """Everything that determines the output bytes; recorded in meta.json."""

    seed: int = 0
    num_train: int = 20000
    num_val: int = 0
    num_test: int = 2000
    canvas_size: int = 64
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    eval_captions_per_image: int = 2
    cn_clip_eval: bool = True
    # Each caption character is one token (CJK characters, punctuation, the t of T恤), so
    # 46 characters fit the official text length 48 with [CLS] and [SEP]: no caption is cut.
    max_caption_chars: int = 46
    items_per_scene_weights: tuple = (0.15, 0.35, 0.30, 0.20)
    min_item_scale: float = 0.75
    # Single-garment images for zero-shot classification (and for checking generated tags).
    num_zeroshot: int = 1000
    # The noise of a web corpus, in the train split only (docs/demo_data.md, "Noisy corpora").
    # Caption noise: a share of all captions describes another scene, names one item with a
    # wrong colour or garment, or (a share of the scenes with two or more items) names only
    # some of the items. Tag noise, independent of it: a share of the multi-item scenes lose
    # one tag, a share of all scenes has one tag with a wrong colour or garment.
    caption_mismatch_rate: float = 0.0
    caption_attribute_rate: float = 0.0
    caption_partial_rate: float = 0.0
    tag_missing_rate: float = 0.0
    tag_wrong_rate: float = 0.0
    # A domain of one's own (docs/finetuning.md): the Fashion-MNIST labels scenes draw their
    # garments from (empty: all ten), the labels of which every scene holds at least one
    # (empty: no such rule), and the caption style (CAPTION_STYLES).
    classes: tuple = ()
    required_classes: tuple = ()
    caption_style: str = "scene"

    def num_scenes(self, split):
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]


def validate_spec(spec):
    """Raise ValueError naming the first bad field."""
    if spec.canvas_size < 16 or spec.canvas_size % 2:
        raise ValueError(f"canvas_size must be even and >= 16, got {spec.canvas_size}")
    for split in SPLITS:
        if not 0 <= spec.num_scenes(split) <= MAX_SCENES_PER_SPLIT:
            raise ValueError(f"num_{split} must be in [0, {MAX_SCENES_PER_SPLIT}], got {spec.num_scenes(split)}")
    if not 0 <= spec.num_zeroshot <= MAX_SCENES_PER_SPLIT:
        raise ValueError(f"num_zeroshot must be in [0, {MAX_SCENES_PER_SPLIT}], got {spec.num_zeroshot}")
    if spec.image_format not in ("jpeg", "png"):
        raise ValueError(f"image_format must be 'jpeg' or 'png', got {spec.image_format!r}")
    if not 1 <= spec.jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {spec.jpeg_quality}")
    weights = spec.items_per_scene_weights
    if len(weights) != len(POSITIONS) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"items_per_scene_weights needs {len(POSITIONS)} non-negative weights, got {weights}")
    if spec.eval_captions_per_image < 1:
        raise ValueError(f"eval_captions_per_image must be >= 1, got {spec.eval_captions_per_image}")
    check_classes(spec)
    if spec.caption_style == "title" and spec.eval_captions_per_image > len(STYLE_WORDS):
        raise ValueError(f"titles have {len(STYLE_WORDS)} style words: eval_captions_per_image={spec.eval_captions_per_image} is too many")
    for num_items, weight in enumerate(weights if spec.caption_style == "scene" else (), start=1):
        available = len(templates_fitting_any_scene(num_items, spec.max_caption_chars))
        if weight and available < spec.eval_captions_per_image:
            raise ValueError(
                f"with max_caption_chars={spec.max_caption_chars}, only {available} caption templates fit every "
                f"{num_items}-item scene: eval_captions_per_image={spec.eval_captions_per_image} is too many"
            )
    if not 0 < spec.min_item_scale <= 1:
        raise ValueError(f"min_item_scale must be in (0, 1], got {spec.min_item_scale}")
    for name in CAPTION_NOISE_RATES + TAG_NOISE_RATES:
        if not 0 <= getattr(spec, name) <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(spec, name)}")
    # One draw decides a pair's caption noise (and one its tag noise): the kinds exclude each other.
    for group in (CAPTION_NOISE_RATES, TAG_NOISE_RATES):
        if sum(getattr(spec, name) for name in group) > 1:
            raise ValueError(f"{' + '.join(group)} must be at most 1, got {sum(getattr(spec, name) for name in group):g}")


def check_classes(spec):
    """The class and caption-style fields of ``spec``: ValueError naming the bad one."""
    for name in ("classes", "required_classes"):
        labels = getattr(spec, name)
        bad = [c for c in labels if not isinstance(c, int) or not 0 <= c < len(CLASSES)]
        if bad or len(set(labels)) != len(labels):
            raise ValueError(f"{name} must be distinct Fashion-MNIST labels in [0, {len(CLASSES) - 1}], got {list(labels)}")
    outside = sorted(set(spec.required_classes) - set(scene_classes(spec)))
    if outside:
        raise ValueError(f"required_classes {outside} are not among classes {list(spec.classes)}")
    if spec.caption_style not in CAPTION_STYLES:
        raise ValueError(f"caption_style must be one of {', '.join(CAPTION_STYLES)}, got {spec.caption_style!r}")
    if spec.caption_style == "title" and any(getattr(spec, name) for name in CAPTION_NOISE_RATES):
        raise ValueError("caption noise is drawn in the scene style only: use caption_style 'scene' with caption noise")
    if spec.classes or spec.required_classes:
        kinds = len(scene_classes(spec)) * len(COLOURS)
        if kinds < len(POSITIONS):
            raise ValueError(f"{len(scene_classes(spec))} classes give {kinds} colour x garment kinds, fewer than a scene's {len(POSITIONS)} items")


def scene_classes(spec):
    """The Fashion-MNIST labels a scene of ``spec`` may hold."""
    return tuple(spec.classes) or tuple(range(len(CLASSES)))


# ----------------------------------------------------------------------------- source files


def decode_idx(data, expected_magic, path):
    """Parse idx bytes into a uint8 array, checking the magic number and the length."""
    if len(data) < 4:
        raise DataError(path, None, f"corrupt idx file: {len(data)} bytes, too short for a header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise DataError(path, None, f"corrupt idx file: magic number {magic:#010x}, expected {expected_magic:#010x}")
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(path, None, "corrupt idx file: truncated header")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = header_size + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(path, None, f"corrupt idx file: {len(data)} bytes, header {shape} implies {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def read_idx_gz(path, expected_magic):
    """Decompress and parse one idx .gz file; returns (array, sha256 of the idx bytes)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(path, None, f"corrupt gzip file ({error}); reinstall with `{INSTALL_HINT}`") from error
    return decode_idx(data, expected_magic, path), hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class FashionMnist:
    images: dict  # source split -> uint8 (N, 28, 28)
    labels: dict  # source split -> uint8 (N,)
    sha256: dict  # file name -> sha256 of its decompressed idx bytes


def load_fashion_mnist(source_dir):
    """Read the four idx .gz files from ``source_dir`` and check they agree."""
    source_dir = Path(source_dir)
    images, labels, sha256 = {}, {}, {}
    for split in SOURCE_SPLITS:
        image_name, label_name = source_file_name(split, "images"), source_file_name(split, "labels")
        images[split], sha256[image_name] = read_idx_gz(source_dir / image_name, IDX_IMAGES_MAGIC)
        labels[split], sha256[label_name] = read_idx_gz(source_dir / label_name, IDX_LABELS_MAGIC)
        label_path = source_dir / label_name
        if len(images[split]) != len(labels[split]):
            raise DataError(label_path, None, f"{len(labels[split])} labels for {len(images[split])} images")
        if labels[split].size and labels[split].max() >= len(CLASSES):
            raise DataError(label_path, None, f"label {labels[split].max()} out of range 0..{len(CLASSES) - 1}")
    return FashionMnist(images, labels, sha256)


def has_source_files(directory):
    return all((Path(directory) / name).is_file() for name in SOURCE_FILES)


def file_md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def download_file(name, dest_dir, url_bases, expected_md5, timeout):
    """Fetch one file from the first base URL that serves it with the expected MD5."""
    failures = []
    for base in url_bases:
        url = base + name
        partial = Path(dest_dir) / (name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
                out.write(response.read())
        except (urllib.error.URLError, OSError) as error:
            failures.append(f"{url}: {error}")
            continue
        if file_md5(partial) != expected_md5[name]:
            failures.append(f"{url}: MD5 mismatch")
            partial.unlink()
            continue
        os.replace(partial, Path(dest_dir) / name)
        return
    raise FileNotFoundError("could not download " + name + ":\n  " + "\n  ".join(failures))


def locate_source(
    source_dir=None,
    system_dir=DEBIAN_SOURCE_DIR,
    cache_dir=DEFAULT_CACHE_DIR,
    url_bases=OFFICIAL_URL_BASES,
    expected_md5=OFFICIAL_MD5,
    timeout=20,
):
    """The folder holding the four Fashion-MNIST files: ``source_dir`` if given, else the
    Debian package's folder, else the download cache (filled from the official URLs)."""
    if source_dir is not None:
        if not has_source_files(source_dir):
            raise FileNotFoundError(f"--source-dir {source_dir} lacks some of {', '.join(SOURCE_FILES)}")
        return Path(source_dir)
    for candidate in (system_dir, cache_dir):
        if has_source_files(candidate):
            return Path(candidate)
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        for name in SOURCE_FILES:
            if not (Path(cache_dir) / name).is_file():
                download_file(name, cache_dir, url_bases, expected_md5, timeout)
    except (FileNotFoundError, OSError) as error:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {system_dir} or {cache_dir}, and downloading failed ({error}).\n"
            f"Install it with `{INSTALL_HINT}` or pass --source-dir."
        ) from error
    return Path(cache_dir)


# ----------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class PlacedItem:
    position: int  # index into POSITIONS
    class_id: int
    colour_id: int
    source_index: int  # row of the Fashion-MNIST split the image came from
    size: int  # side of the garment on the canvas, pixels
    top: int  # canvas coordinates of the garment's top-left corner
    left: int


@dataclass(frozen=True)
class Scene:
    items: tuple  # PlacedItem, in drawing order
    background: tuple  # RGB


def split_source(split, source):
    """The Fashion-MNIST split and the rows of it that a demo split may draw from."""
    if split == "train":
        return "train", np.arange(len(source.labels["train"]))
    half = len(source.labels["t10k"]) // 2
    rows = np.arange(half) if split == "test" else np.arange(half, len(source.labels["t10k"]))
    return "t10k", rows


def class_pools(labels, rows):
    """Per class, the rows (of ``rows``) whose label is that class."""
    pools = tuple(rows[labels[rows] == c] for c in range(len(CLASSES)))
    empty = [CLASSES[c].english for c, pool in enumerate(pools) if not len(pool)]
    if empty:
        raise ValueError(f"no source images of class(es) {empty} to draw from")
    return pools


def sample_scene(rng, pools, spec):
    """Draw a scene: how many items, where, which class x colour (all distinct), which image."""
    weights = np.asarray(spec.items_per_scene_weights, dtype=np.float64)
    count = int(rng.choice(len(POSITIONS), p=weights / weights.sum())) + 1
    positions = rng.choice(len(POSITIONS), size=count, replace=False)
    kinds = sample_kinds(rng, spec, count)
    items = []
    for position, kind in zip(positions, kinds):
        class_id, colour_id = divmod(int(kind), len(COLOURS))
        items.append(place_item(rng, pools, spec, int(position), class_id, colour_id))
    return Scene(tuple(items), sample_background(rng))


def sample_kinds(rng, spec, count):
    """``count`` distinct colour x garment kinds (``class_id * len(COLOURS) + colour_id``) from
    the spec's classes, the first of a required class when the spec names any."""
    if not spec.classes and not spec.required_classes:  # the draw of every build before class choice
        return rng.choice(len(CLASSES) * len(COLOURS), size=count, replace=False)
    allowed = [c * len(COLOURS) + k for c in scene_classes(spec) for k in range(len(COLOURS))]
    if not spec.required_classes:
        return [allowed[i] for i in rng.choice(len(allowed), size=count, replace=False)]
    required = [kind for kind in allowed if kind // len(COLOURS) in spec.required_classes]
    first = required[int(rng.integers(len(required)))]
    rest = [kind for kind in allowed if kind != first]
    return [first] + [rest[i] for i in rng.choice(len(rest), size=count - 1, replace=False)]


def place_item(rng, pools, spec, position, class_id, colour_id):
    """A garment of ``class_id`` in ``colour_id`` in its grid cell: a random size, offset and source image."""
    cell = spec.canvas_size // 2
    min_size = max(1, round(cell * spec.min_item_scale))
    pool = pools[class_id]
    size = int(rng.integers(min_size, cell + 1))
    top, left = (int(v) for v in rng.integers(0, cell - size + 1, size=2))
    row, column = divmod(position, 2)
    return PlacedItem(
        position=position,
        class_id=class_id,
        colour_id=colour_id,
        source_index=int(pool[rng.integers(len(pool))]),
        size=size,
        top=row * cell + top,
        left=column * cell + left,
    )


def sample_background(rng):
    return tuple(int(v) for v in rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1, size=3))


def garment_mask(image, size):
    """The garment's intensity resized to ``size``, stretched to peak at 1 and lifted by a
    gamma: dark Fashion-MNIST garments and faint fabric would otherwise tint so weakly that
    red reads as pink and black as grey."""
    interpolation = cv2.INTER_AREA if size < image.shape[0] else cv2.INTER_LINEAR
    mask = cv2.resize(image, (size, size), interpolation=interpolation).astype(np.float32)
    peak = mask.max()
    return (mask / peak) ** MASK_GAMMA if peak > 0 else mask


def render_scene(scene, images, canvas_size):
    """RGB uint8 canvas: background, then each garment blended in with its colour."""
    canvas = np.empty((canvas_size, canvas_size, 3), dtype=np.float32)
    canvas[:] = scene.background
    for item in scene.items:
        mask = garment_mask(images[item.source_index], item.size)[..., None]
        region = canvas[item.top : item.top + item.size, item.left : item.left + item.size]
        region += mask * (np.asarray(COLOURS[item.colour_id].rgb, dtype=np.float32) - region)
    return np.rint(canvas).astype(np.uint8)


def encode_image(rgb, image_format, jpeg_quality):
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if image_format == "jpeg":
        ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    else:
        ok, buffer = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {rgb.shape} image as {image_format}")
    return buffer.tobytes()


# ----------------------------------------------------------------------------- text


def item_phrase(item, with_de):
    """``一件红色的T恤`` (or ``一件红色T恤``)."""
    garment = CLASSES[item.class_id]
    return f"一{garment.measure}{COLOURS[item.colour_id].name}{'的' if with_de else ''}{garment.noun}"


def join_phrases(phrases):
    """a / a和b / a、b和c."""
    if len(phrases) == 1:
        return phrases[0]
    return "、".join(phrases[:-1]) + "和" + phrases[-1]


def fill_template(template, items, with_de):
    """The caption ``template`` gives for ``items`` in the given order."""
    if template.per_item:
        return template.separator.join(
            template.text.format(position=POSITIONS[item.position], item=item_phrase(item, with_de)) for item in items
        )
    phrases = [item_phrase(item, with_de) for item in items]
    return template.text.format(items=join_phrases(phrases), count=NUMERALS[len(items) - 1])


def fitting_templates(items, max_chars):
    """The templates that can describe ``items`` in at most ``max_chars`` characters."""
    return [
        t for t in CAPTION_TEMPLATES if len(items) >= t.min_items and len(fill_template(t, items, False)) <= max_chars
    ]


def templates_fitting_any_scene(num_items, max_chars):
    """The templates that fit every ``num_items``-item scene, judged on the longest items."""
    garment = max(range(len(CLASSES)), key=lambda c: len(CLASSES[c].measure + CLASSES[c].noun))
    colour = max(range(len(COLOURS)), key=lambda c: len(COLOURS[c].name))
    items = [PlacedItem(p, garment, colour, source_index=0, size=1, top=0, left=0) for p in range(num_items)]
    return fitting_templates(items, max_chars)


def draw_captions(rng, scene, num_captions, spec):
    """``num_captions`` (template name, caption) pairs in the spec's caption style."""
    if spec.caption_style == "title":
        styles = rng.choice(len(STYLE_WORDS), size=num_captions, replace=False)
        return tuple((TITLE, product_title(scene, STYLE_WORDS[style])) for style in styles)
    return tuple((template.name, caption) for template, caption in draw_sentences(rng, scene, num_captions, spec.max_caption_chars))


def product_title(scene, style):
    """``韩版 红色连衣裙 蓝色凉鞋``: the style word, then the items in reading order."""
    return " ".join([style] + [COLOURS[item.colour_id].name + CLASSES[item.class_id].noun for item in in_reading_order(scene)])


def in_reading_order(scene):
    return sorted(scene.items, key=lambda item: item.position)


def draw_sentences(rng, scene, num_captions, max_chars):
    """``num_captions`` (template, caption) pairs from distinct templates that fit in
    ``max_chars``, each caption with its own item order."""
    eligible = fitting_templates(scene.items, max_chars)
    captions = []
    for choice in rng.choice(len(eligible), size=num_captions, replace=False):
        template = eligible[choice]
        items = [scene.items[i] for i in rng.permutation(len(scene.items))]
        with_de = bool(rng.integers(2)) and len(fill_template(template, items, True)) <= max_chars
        captions.append((template, fill_template(template, items, with_de)))
    return tuple(captions)


# The meanings a caption of each style can give: colour x garment of every item, with their
# positions (a sentence naming positions) or their reading order (a product title).
STYLE_MEANINGS = {"scene": ("items", "placed"), "title": ("ordered",)}


def meaning_kind(template_name):
    if template_name == TITLE:
        return "ordered"
    return "placed" if TEMPLATES_BY_NAME[template_name].per_item else "items"


def scene_meaning(scene, kind):
    """What a caption of ``kind`` (STYLE_MEANINGS) says about ``scene``. Captions are complete
    descriptions, so an image fits a caption exactly when the image's meaning of that kind
    equals the caption's."""
    if kind == "ordered":
        return (kind, tuple((i.colour_id, i.class_id) for i in in_reading_order(scene)))
    if kind == "placed":
        return (kind, frozenset((i.position, i.colour_id, i.class_id) for i in scene.items))
    return (kind, frozenset((i.colour_id, i.class_id) for i in scene.items))


def scene_meanings(scene, caption_style):
    """Every meaning a caption of ``caption_style`` can give that ``scene`` fits."""
    return {scene_meaning(scene, kind) for kind in STYLE_MEANINGS[caption_style]}


def scene_tags(scene):
    """Detector-style tags in reading order: ``红色T恤,蓝色运动鞋``."""
    return ",".join(COLOURS[item.colour_id].name + CLASSES[item.class_id].noun for item in in_reading_order(scene))


# ----------------------------------------------------------------------------- web noise


def noise_kind(rng, scene, spec, kinds):
    """One uniform draw picks at most one of ``kinds`` ({DemoSpec rate name: kind}) with its
    rate; a kind that needs several items (MULTI_ITEM_NOISE) picks nothing on a one-item scene."""
    draw = rng.random()
    for rate_name, kind in kinds.items():
        rate = getattr(spec, rate_name)
        if draw < rate:
            return None if kind in MULTI_ITEM_NOISE and len(scene.items) < 2 else kind
        draw -= rate
    return None


def with_wrong_attribute(rng, scene):
    """``scene`` with one item's colour or garment changed to one no item of the scene has:
    the half-right caption of a web corpus, or a detector's misread tag."""
    index = int(rng.integers(len(scene.items)))
    item = scene.items[index]
    taken = {(i.class_id, i.colour_id) for i in scene.items}
    if rng.integers(2):
        choices = [c for c in range(len(COLOURS)) if (item.class_id, c) not in taken]
        changed = replace(item, colour_id=int(choices[rng.integers(len(choices))]))
    else:
        choices = [c for c in range(len(CLASSES)) if (c, item.colour_id) not in taken]
        changed = replace(item, class_id=int(choices[rng.integers(len(choices))]))
    return replace(scene, items=scene.items[:index] + (changed,) + scene.items[index + 1 :])


def with_some_items(rng, scene, keep):
    """``scene`` with only ``keep`` of its items, drawn at random (their order kept)."""
    kept = sorted(rng.choice(len(scene.items), size=keep, replace=False))
    return replace(scene, items=tuple(scene.items[i] for i in kept))


def noisy_caption(rng, scene, kind, pools, spec):
    """The caption a web corpus pairs with ``scene`` under ``kind`` of caption noise."""
    if kind == "mismatched":
        described = sample_scene(rng, pools, spec)
    elif kind == "wrong_attribute":
        described = with_wrong_attribute(rng, scene)
    else:  # partial
        described = with_some_items(rng, scene, int(rng.integers(1, len(scene.items))))
    template, caption = draw_sentences(rng, described, 1, spec.max_caption_chars)[0]
    return template.name, caption


def noisy_tags(rng, scene, kind):
    """The tags a fallible detector gives ``scene`` under ``kind`` of tag noise."""
    if kind == "tag_missing":
        return scene_tags(with_some_items(rng, scene, len(scene.items) - 1))
    return scene_tags(with_wrong_attribute(rng, scene))


# ----------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class SceneRecord:
    split: str
    image_id: int
    scene: Scene  # carries each item's Fashion-MNIST row; never written to the TSV
    captions: tuple  # captions[0] goes to the official TSV
    tags: str
    image: bytes  # encoded JPEG or PNG
    templates: tuple  # CAPTION_TEMPLATES name of each caption
    redraws: int  # how often this eval scene was redrawn to keep every caption unambiguous
    noise: tuple = ()  # the web-noise kinds of this train pair (CAPTION_NOISE, TAG_NOISE values)


def split_rng(seed, split):
    """One independent generator per split, so resizing one split leaves the others unchanged."""
    return np.random.default_rng([seed, SPLIT_SEED_CODE[split]])


def iter_split(source, split, spec):
    """Yield the SceneRecords of one split. Eval splits redraw a scene when one of its
    captions would also fit an earlier image, or an earlier caption would fit it (e.g. two
    scenes holding the same items, described by a template without positions), so that
    every eval caption has exactly one correct image. The train split carries the spec's web
    noise, drawn from a generator of its own so that a clean draw never moves."""
    source_split, rows = split_source(split, source)
    pools = class_pools(source.labels[source_split], rows)
    images = source.images[source_split]
    rng = split_rng(spec.seed, split)
    is_eval = split in EVAL_SPLITS
    num_captions = spec.eval_captions_per_image if is_eval else 1
    fitted, claimed = set(), set()  # meanings earlier scenes fit / earlier captions state
    noise_rng = np.random.default_rng([spec.seed, NOISE_SEED_CODE]) if split == "train" else None
    for index in range(spec.num_scenes(split)):
        for redraws in range(MAX_REDRAWS + 1):
            scene = sample_scene(rng, pools, spec)
            captions = draw_captions(rng, scene, num_captions, spec)
            claims = {scene_meaning(scene, meaning_kind(name)) for name, _ in captions}
            fits = scene_meanings(scene, spec.caption_style)
            if not is_eval or (claims.isdisjoint(fitted) and fits.isdisjoint(claimed)):
                break
        fitted |= fits
        claimed |= claims
        tags, noise = scene_tags(scene), ()
        if noise_rng is not None:
            caption_noise, tag_noise = (noise_kind(noise_rng, scene, spec, kinds) for kinds in (CAPTION_NOISE, TAG_NOISE))
            if caption_noise:
                captions = (noisy_caption(noise_rng, scene, caption_noise, pools, spec),)
            if tag_noise:
                tags = noisy_tags(noise_rng, scene, tag_noise)
            noise = tuple(kind for kind in (caption_noise, tag_noise) if kind)
        rgb = render_scene(scene, images, spec.canvas_size)
        yield SceneRecord(
            split=split,
            image_id=IMAGE_ID_BASE[split] + index,
            scene=scene,
            captions=tuple(text for _, text in captions),
            tags=tags,
            image=encode_image(rgb, spec.image_format, spec.jpeg_quality),
            templates=tuple(name for name, _ in captions),
            redraws=redraws,
            noise=noise,
        )


def official_tsv_line(record, image_base64):
    """``caption \\t image_id \\t base64 image \\t tags``."""
    return f"{record.captions[0]}\t{record.image_id}\t{image_base64}\t{record.tags}\n"


def cn_clip_image_line(record, image_base64):
    return f"{record.image_id}\t{image_base64}\n"


def cn_clip_text_lines(record, first_text_id):
    return "".join(
        json.dumps({"text_id": first_text_id + i, "text": text, "image_ids": [record.image_id]}, ensure_ascii=False)
        + "\n"
        for i, text in enumerate(record.captions)
    )


def duplicate_stats(texts):
    counts = Counter(texts)
    return {
        "total": len(texts),
        "distinct": len(counts),
        "duplicates": len(texts) - len(counts),  # rows whose text already appeared
        "in_duplicate_groups": sum(n for n in counts.values() if n > 1),
    }


class SplitStats:
    """What meta.json reports about a split, accumulated while it streams to disk."""

    def __init__(self, caption_style="scene"):
        self.caption_style = caption_style
        self.items_per_scene = Counter()
        self.classes = Counter()
        self.colours = Counter()
        self.positions = Counter()
        self.source_rows = set()
        self.tsv_captions = []
        self.all_captions = []
        self.templates = Counter()
        self.fits = Counter()  # caption meaning -> how many scenes fit it
        self.claims = []  # the meaning of every caption, first caption of each scene first
        self.redrawn_scenes = 0
        self.image_bytes = 0
        self.noise = Counter()

    def add(self, record):
        items = record.scene.items
        self.items_per_scene[len(items)] += 1
        self.classes.update(CLASSES[item.class_id].noun for item in items)
        self.colours.update(COLOURS[item.colour_id].name for item in items)
        self.positions.update(POSITIONS[item.position] for item in items)
        self.source_rows.update(item.source_index for item in items)
        self.templates.update(record.templates)
        self.tsv_captions.append(record.captions[0])
        self.all_captions.extend(record.captions)
        self.fits.update(scene_meanings(record.scene, self.caption_style))
        self.claims.extend(scene_meaning(record.scene, meaning_kind(name)) for name in record.templates)
        self.redrawn_scenes += record.redraws > 0
        self.image_bytes += len(record.image)
        self.noise.update(record.noise)

    def as_dict(self):
        return {
            "num_samples": len(self.tsv_captions),
            "items_per_scene": {str(k): self.items_per_scene[k] for k in sorted(self.items_per_scene)},
            "class_counts": {c.noun: self.classes[c.noun] for c in CLASSES},
            "colour_counts": {c.name: self.colours[c.name] for c in COLOURS},
            "position_counts": {p: self.positions[p] for p in POSITIONS},
            "template_counts": {name: self.templates[name] for name in ([TITLE] if self.caption_style == "title" else TEMPLATES_BY_NAME)},
            "max_caption_chars": max(map(len, self.all_captions), default=0),
            "distinct_source_images": len(self.source_rows),
            "mean_image_bytes": round(self.image_bytes / max(1, len(self.tsv_captions)), 1),
            "tsv_caption_duplicates": duplicate_stats(self.tsv_captions),
            "all_caption_duplicates": duplicate_stats(self.all_captions),
            # captions that fit more than one image of the split, whatever their wording
            "all_captions_fitting_several_images": sum(self.fits[claim] > 1 for claim in self.claims),
            "redrawn_scenes": self.redrawn_scenes,
            # pairs of each web-noise kind; the multi-item kinds' rates are of the multi-item scenes
            "noise": {kind: self.noise[kind] for kind in (*CAPTION_NOISE.values(), *TAG_NOISE.values())},
            "multi_item_scenes": sum(n for k, n in self.items_per_scene.items() if k > 1),
        }


# ----------------------------------------------------------------------------- zero-shot set

ZEROSHOT_SEED_CODE = 3  # after SPLIT_SEED_CODE's: its own generator, whatever the splits' sizes
ZEROSHOT_IMAGE_ID = 40_000_000
ZEROSHOT_IMAGES = "zeroshot_imgs.tsv"
ZEROSHOT_TEMPLATES = "zeroshot_templates.txt"
# garment: the ten Fashion-MNIST classes; item: colour x garment, the 80 tags of train.tsv.
ZEROSHOT_TASKS = ("garment", "item")


def zeroshot_files(task):
    """(labels file, classes file) of a zero-shot task."""
    return f"zeroshot_{task}_labels.tsv", f"zeroshot_{task}_classes.txt"


@dataclass(frozen=True)
class ZeroShotRecord:
    image_id: int
    item: PlacedItem
    image: bytes


def iter_zeroshot(source, spec):
    """Single garments on the demo canvas: the classes in turn (so they are balanced), colour and
    cell at random. Drawn from the test split's Fashion-MNIST rows, never from train's."""
    source_split, rows = split_source("test", source)
    pools = class_pools(source.labels[source_split], rows)
    images = source.images[source_split]
    rng = np.random.default_rng([spec.seed, ZEROSHOT_SEED_CODE])
    for index in range(spec.num_zeroshot):
        class_id = index % len(CLASSES)
        colour_id = int(rng.integers(len(COLOURS)))
        position = int(rng.integers(len(POSITIONS)))
        scene = Scene((place_item(rng, pools, spec, position, class_id, colour_id),), sample_background(rng))
        rgb = render_scene(scene, images, spec.canvas_size)
        yield ZeroShotRecord(ZEROSHOT_IMAGE_ID + index, scene.items[0], encode_image(rgb, spec.image_format, spec.jpeg_quality))


def zeroshot_label(item, task):
    """What the labels file says: the garment's noun, or the item's tag (``红色T恤``)."""
    if task == "garment":
        return CLASSES[item.class_id].noun
    return COLOURS[item.colour_id].name + CLASSES[item.class_id].noun


def zeroshot_classes(task):
    """``(label, prompt name)`` of every class: the name is the phrase captions use (``一件红色的T恤``)."""
    if task == "garment":
        return [(c.noun, f"一{c.measure}{c.noun}") for c in CLASSES]
    kinds = [PlacedItem(0, class_id, colour_id, 0, 0, 0, 0) for class_id in range(len(CLASSES)) for colour_id in range(len(COLOURS))]
    return [(zeroshot_label(item, task), item_phrase(item, with_de=True)) for item in kinds]


def zeroshot_templates():
    """The whole-scene caption templates that fit one item, with ``{}`` for it: prompts in the captions' words."""
    return [t.text.replace("{items}", "{}") for t in CAPTION_TEMPLATES if not t.per_item and t.min_items == 1]


def write_zeroshot(source, spec, out_dir, on_progress):
    """The zero-shot images, a labels and a classes file per task, and the prompt templates;
    returns (stats dict, written file names)."""
    out_dir = Path(out_dir)
    names = [ZEROSHOT_IMAGES] + [name for task in ZEROSHOT_TASKS for name in zeroshot_files(task)] + [ZEROSHOT_TEMPLATES]
    for task in ZEROSHOT_TASKS:
        with atomic_text_file(out_dir / zeroshot_files(task)[1]) as f:
            f.writelines(f"{label}\t{name}\n" for label, name in zeroshot_classes(task))
    with atomic_text_file(out_dir / ZEROSHOT_TEMPLATES) as f:
        f.writelines(template + "\n" for template in zeroshot_templates())
    classes, colours = Counter(), Counter()
    with ExitStack() as stack:
        images = stack.enter_context(atomic_text_file(out_dir / ZEROSHOT_IMAGES))
        labels = {task: stack.enter_context(atomic_text_file(out_dir / zeroshot_files(task)[0])) for task in ZEROSHOT_TASKS}
        for done, record in enumerate(iter_zeroshot(source, spec), start=1):
            images.write(f"{record.image_id}\t{base64.b64encode(record.image).decode('ascii')}\n")
            for task, f in labels.items():
                f.write(f"{record.image_id}\t{zeroshot_label(record.item, task)}\n")
            classes[CLASSES[record.item.class_id].noun] += 1
            colours[COLOURS[record.item.colour_id].name] += 1
            on_progress("zeroshot", done, spec.num_zeroshot)
    stats = {
        "num_samples": spec.num_zeroshot,
        "class_counts": {c.noun: classes[c.noun] for c in CLASSES},
        "colour_counts": {c.name: colours[c.name] for c in COLOURS},
    }
    return stats, names


# ----------------------------------------------------------------------------- output folder


def spec_as_json(spec):
    return json.loads(json.dumps(asdict(spec)))


def source_rows_label(split, source):
    """``t10k[0:5000]``: which Fashion-MNIST rows a demo split draws from."""
    source_split, rows = split_source(split, source)
    return f"{source_split}[{rows[0]}:{rows[-1] + 1}]" if len(rows) else f"{source_split}[]"


def build_meta(spec, source, split_stats, files):
    return {
        "format": FORMAT_VERSION,
        "spec": spec_as_json(spec),
        "source": {
            "name": "Fashion-MNIST",
            "sha256_of_idx": source.sha256,
            "rows_used": {split: source_rows_label(split, source) for split in SPLITS},
        },
        "classes": [asdict(c) for c in CLASSES],
        "colours": [asdict(c) for c in COLOURS],
        "positions": list(POSITIONS),
        "caption_templates": [asdict(t) for t in CAPTION_TEMPLATES],
        "splits": split_stats,
        "files": files,
    }


def existing_meta_matches(out_dir, spec, source):
    """True when ``out_dir`` already holds a complete build of this spec from this source."""
    meta_path = Path(out_dir) / "meta.json"
    if not meta_path.is_file():
        return False
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    return (
        meta.get("format") == FORMAT_VERSION
        and meta.get("spec") == spec_as_json(spec)
        and meta.get("source", {}).get("sha256_of_idx") == source.sha256
        and all(
            (Path(out_dir) / name).is_file() and (Path(out_dir) / name).stat().st_size == info["bytes"]
            for name, info in meta.get("files", {}).items()
        )
    )


def write_split(source, split, spec, out_dir, on_progress):
    """Stream one split into its files; returns (stats dict, written file names)."""
    out_dir = Path(out_dir)
    stats = SplitStats(spec.caption_style)
    names = [f"{split}.tsv"]
    if spec.cn_clip_eval and split in EVAL_SPLITS:
        names += [f"{split}_imgs.tsv", f"{split}_texts.jsonl"]
    noise_file = NOISE_FILE if split == "train" and has_noise(spec) else None
    total = spec.num_scenes(split)
    with ExitStack() as stack:
        tsv, *cn_clip = (stack.enter_context(atomic_text_file(out_dir / name)) for name in names)
        noise_list = stack.enter_context(atomic_text_file(out_dir / noise_file)) if noise_file else None
        for done, record in enumerate(iter_split(source, split, spec), start=1):
            image_base64 = base64.b64encode(record.image).decode("ascii")
            tsv.write(official_tsv_line(record, image_base64))
            if noise_list and record.noise:
                noise_list.write(f"{record.image_id}\t{','.join(record.noise)}\n")
            if cn_clip:
                cn_clip[0].write(cn_clip_image_line(record, image_base64))
                cn_clip[1].write(cn_clip_text_lines(record, len(stats.all_captions)))
            stats.add(record)
            on_progress(split, done, total)
    return stats.as_dict(), names + ([noise_file] if noise_file else [])


def has_noise(spec):
    return any(getattr(spec, name) for name in CAPTION_NOISE_RATES + TAG_NOISE_RATES)


def build_demo_dataset(source, spec, out_dir, on_progress=lambda split, done, total: None):
    """Write every non-empty split plus meta.json (last, so a partial build never looks done);
    returns the meta exactly as written."""
    validate_spec(spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split_stats, names = {}, []
    for split in SPLITS:
        if spec.num_scenes(split):
            split_stats[split], split_names = write_split(source, split, spec, out_dir, on_progress)
            names.extend(split_names)
    if spec.num_zeroshot:
        zeroshot_stats, zeroshot_names = write_zeroshot(source, spec, out_dir, on_progress)
        names.extend(zeroshot_names)
    meta = build_meta(spec, source, split_stats, {name: file_digest(out_dir / name) for name in names})
    if spec.num_zeroshot:
        meta["zeroshot"] = zeroshot_stats
    text = json.dumps(meta, ensure_ascii=False, indent=2) + "\n"
    with atomic_text_file(out_dir / "meta.json") as f:
        f.write(text)
    return json.loads(text)
