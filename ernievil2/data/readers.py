"""Record-level readers for the three image-text pair formats.

Readers stream raw records (text, encoded image bytes, ids, tags) and reject
what can be judged without decoding pixels. Every bad record is located as
``path:line`` and handed to a :class:`SkipCounter`, which raises or counts it.
The formats, the error reasons and the skip policy are described for users in
``docs/data_format.md``.

Sharding: every iterator takes ``shard=(index, count)`` and keeps the records
whose 0-based record number ``n`` satisfies ``n % count == index``. A record is
one line of the file being iterated (the text file for pair views), counted
over good, bad and blank lines alike, so every rank and worker agrees on the
split without talking to the others and each bad line is reported by exactly
one shard.
"""
import base64
import dataclasses
import inspect
import json
import re
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import cv2
import numpy as np

from ernievil2.data.errors import DataError, SkipCounter, split_where
from ernievil2.registry import Registry, did_you_mean

Shard = Optional[Tuple[int, int]]

TAG_SEPARATORS = re.compile(r"[,，、;；]")
OFFICIAL_COLUMNS = "text, image_id, base64[, tags]"
CLIP_IMAGE_COLUMNS = "image_id, base64"
UTF8_BOM = b"\xef\xbb\xbf"
# Chinese-CLIP decodes with the URL-safe alphabet, ERNIE-ViL with the standard
# one; a string using '-' or '_' can never be standard base64, so accepting
# both is unambiguous.
URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
BASE64_FIELD = re.compile(r"[A-Za-z0-9+/\-_]+={0,2}")
# A one-pixel side is a placeholder (a tracking pixel, an "image removed" stub), not a photo:
# resized to the model's input it trains on one colour.
MIN_IMAGE_SIDE = 2
# The smallest valid JPEG or PNG takes well over this many base64 characters.
MIN_IMAGE_BASE64 = 64
# Image files a folder is searched for (galleries, zero-shot folders per class).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class PairRecord:
    """One caption and the encoded bytes of its image.

    ``where`` locates the text record (``path:line``); ``image_where`` locates
    the image bytes (``path:line`` of a TSV, or an image file's path), so that
    a decoding failure can name the line that actually holds the bad image.
    """

    text: str
    image_id: str
    image: bytes = dataclasses.field(repr=False)
    tags: Tuple[str, ...]
    where: str
    image_where: str


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image of a Chinese-CLIP split, base64 already decoded."""

    image_id: str
    image: bytes = dataclasses.field(repr=False)
    where: str


@dataclasses.dataclass(frozen=True)
class TextRecord:
    """One text of a Chinese-CLIP split and the ids of its matching images."""

    text_id: str
    text: str
    image_ids: Tuple[str, ...]
    where: str


@dataclasses.dataclass(frozen=True)
class ImageIndex:
    """Where each image id's line starts in an image TSV.

    ``entries`` maps an id to ``(byte offset, line)``; ids found on several
    lines are kept out of it and listed in ``duplicates`` with their lines.
    """

    path: str
    entries: Dict[str, Tuple[int, int]]
    duplicates: Dict[str, List[int]]


def _check_shard(shard: Shard) -> None:
    """Reject anything but ``None`` or ``(index, count)`` with ``0 <= index < count``."""
    if shard is None:
        return
    ok = (
        isinstance(shard, tuple)
        and len(shard) == 2
        and all(isinstance(v, int) for v in shard)
        and 0 <= shard[0] < shard[1]
    )
    if not ok:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")


def _in_shard(record_number: int, shard: Shard) -> bool:
    return shard is None or record_number % shard[1] == shard[0]


def split_tags(field: str) -> Tuple[str, ...]:
    """Object tags separated by , ， 、 ; or ；, stripped, empty ones dropped."""
    return tuple(tag.strip() for tag in TAG_SEPARATORS.split(field) if tag.strip())


def truncation(data: bytes) -> Optional[str]:
    """Why ``data`` is a cut-off JPEG or PNG, or None.

    Decoders accept both: OpenCV fills a JPEG's missing rows with grey after a
    warning, so a half-downloaded photo would train as a half-grey one. A JPEG
    is whole when an end-of-image marker follows its last start-of-scan (data
    after that marker is tolerated); a PNG when its IEND chunk is there, CRC included.
    """
    if data[:3] == b"\xff\xd8\xff":
        scan = data.rfind(b"\xff\xda")
        if scan < 0 or data.find(b"\xff\xd9", scan) < 0:
            return "truncated JPEG: no end-of-image marker after the last scan"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        end = data.rfind(b"IEND")
        if end < 8 or len(data) < end + 8:  # the chunk type, then its 4-byte CRC
            return "truncated PNG: no complete IEND chunk"
    return None


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 HWC array.

    Raises :class:`DataError` located at ``where`` (``path:line`` or a file
    path) when the bytes are cut off, OpenCV cannot decode them, or the image
    is smaller than ``MIN_IMAGE_SIDE`` on a side.
    """
    path, line = split_where(where)
    cut = truncation(data) if data else None
    if cut:
        raise DataError(path, line, f"{cut} ({len(data)} bytes)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        start = data[:8].hex() or "(none)"
        raise DataError(path, line, f"undecodable image: {len(data)} bytes starting {start}")
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise DataError(path, line, f"image too small: {image.shape[1]}x{image.shape[0]} (at least {MIN_IMAGE_SIDE} px a side)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def iter_official_tsv(path, counter: SkipCounter, shard: Shard = None) -> Iterator[PairRecord]:
    """Pairs from an ERNIE-ViL 2.0 TSV: ``text \\t image_id \\t base64[\\t tags]``."""
    _check_shard(shard)
    for line_no, _, raw in _content_lines(path, counter, shard):
        record = _parse_or_report(counter, _parse_official_line, raw, path, line_no)
        if record is not None:
            yield record


def iter_jsonl_folder(
    path, counter: SkipCounter, image_root=None, shard: Shard = None
) -> Iterator[PairRecord]:
    """Pairs from a JSONL of ``{"text", "image", ["image_id"], ["tags"]}`` plus image files.

    Relative image paths are resolved against ``image_root``, by default the
    JSONL's folder.
    """
    _check_shard(shard)
    root = Path(path).parent if image_root is None else Path(image_root)
    for line_no, _, raw in _content_lines(path, counter, shard):
        record = _parse_or_report(counter, _parse_folder_line, raw, path, line_no, root)
        if record is not None:
            yield record


class ChineseClipSplit:
    """One split of a Chinese-CLIP style folder: ``{split}_imgs.tsv`` + ``{split}_texts.jsonl``.

    Images are never held in memory: the image TSV is indexed once (id ->
    byte offset) and each image is read by seeking to its line. The index is
    built on first use and kept for the life of the object, so the image
    file's bad lines are reported once, to the counter of that first use.
    """

    def __init__(self, root, split: str):
        self.images_path, self.texts_path = self.split_files(root, split)
        for path in (self.images_path, self.texts_path):
            if not path.is_file():
                raise FileNotFoundError(f"Chinese-CLIP split {split!r}: {path} not found")
        self._index: Optional[ImageIndex] = None

    @staticmethod
    def split_files(root, split: str) -> Tuple[Path, Path]:
        """The split's image TSV and text JSONL."""
        return Path(root) / f"{split}_imgs.tsv", Path(root) / f"{split}_texts.jsonl"

    def image_index(self, counter: SkipCounter) -> ImageIndex:
        """The image TSV's index; bad lines found building it go to ``counter``."""
        if self._index is None:
            self._index = index_image_tsv(self.images_path, counter)
        return self._index

    def iter_images(self, counter: SkipCounter, shard: Shard = None) -> Iterator[ImageRecord]:
        """Each uniquely identified image, in file order; a record is a line of the image TSV."""
        _check_shard(shard)
        index = self.image_index(_index_counter(counter, shard))
        with open(self.images_path, "rb") as images:
            for image_id, (_, line_no) in index.entries.items():
                if not _in_shard(line_no - 1, shard):
                    continue
                image = _parse_or_report(counter, _read_indexed_image, images, index, image_id)
                if image is not None:
                    yield ImageRecord(image_id, image, _location(self.images_path, line_no))

    def iter_texts(self, counter: SkipCounter, shard: Shard = None) -> Iterator[TextRecord]:
        """Each text whose image ids all name exactly one line of the image TSV."""
        _check_shard(shard)
        index = self.image_index(_index_counter(counter, shard))
        for line_no, _, raw in _content_lines(self.texts_path, counter, shard):
            record = _parse_or_report(counter, _parse_clip_text_line, raw, self.texts_path, line_no, index)
            if record is not None:
                yield record

    def iter_pairs(self, counter: SkipCounter, shard: Shard = None) -> Iterator[PairRecord]:
        """One pair per (text, image id), images looked up by seeking into the image TSV."""
        _check_shard(shard)
        index = self.image_index(_index_counter(counter, shard))
        with open(self.images_path, "rb") as images:
            for text in self.iter_texts(counter, shard):
                for image_id in text.image_ids:
                    image = _parse_or_report(counter, _read_indexed_image, images, index, image_id)
                    if image is None:
                        continue
                    image_where = _location(self.images_path, index.entries[image_id][1])
                    yield PairRecord(text.text, image_id, image, (), text.where, image_where)


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    """One image of a classification set and its label (a class id or name), as written."""

    image_id: str
    image: bytes = dataclasses.field(repr=False)
    label: str
    where: str
    image_where: str


LABEL_COLUMNS = "image_id, label"


def iter_labelled_images(images_path, labels_path, counter: SkipCounter, shard: Shard = None) -> Iterator[LabelledImage]:
    """Labelled images: ``image_id \\t label`` lines naming images of an ``image_id \\t base64`` TSV.

    The image TSV is the Chinese-CLIP one, indexed once and read by seeking, so
    one image file serves several label sets. A record is a line of the labels
    file; an id listed twice, or absent from the image file, is a bad record.
    """
    _check_shard(shard)
    index = index_image_tsv(images_path, _index_counter(counter, shard))
    first_line: Dict[str, int] = {}
    with open(images_path, "rb") as images:
        for line_no, _, raw in _content_lines(labels_path, counter, shard):
            record = _parse_or_report(counter, _parse_label_line, raw, labels_path, line_no, index, first_line)
            if record is None:
                continue
            image_id, label = record
            image = _parse_or_report(counter, _read_indexed_image, images, index, image_id)
            if image is not None:
                where = _location(labels_path, line_no)
                yield LabelledImage(image_id, image, label, where, _location(images_path, index.entries[image_id][1]))


def _parse_label_line(raw: bytes, path, line_no: int, index: ImageIndex, first_line: Dict[str, int]):
    fields = _decode_utf8(raw, path, line_no).split("\t")
    if len(fields) != 2:
        raise DataError(path, line_no, f"wrong column count: found {len(fields)}, expected 2 ({LABEL_COLUMNS})")
    image_id, label = fields[0].strip(), fields[1].strip()
    if not image_id:
        raise DataError(path, line_no, "empty image id")
    if not label:
        raise DataError(path, line_no, "empty label")
    # Every shard sees every line's id only for its own lines, so repeats are caught within a shard.
    if image_id in first_line:
        raise DataError(path, line_no, f"repeated image id: {image_id!r} is labelled on line {first_line[image_id]} already")
    first_line[image_id] = line_no
    _check_indexed(image_id, index, path, line_no)
    return image_id, label


def check_pair_spec(spec: Mapping):
    """The opener and its keyword arguments for a data spec; a bad spec raises ValueError naming the key."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a data spec is a mapping like {{format: official_tsv, path: ...}}, got {spec!r}")
    kwargs = dict(spec)
    name = kwargs.pop("format", None)
    known = ", ".join(DATA_FORMATS.names())
    if name is None:
        raise ValueError(f"data spec has no 'format' key; known formats: {known}")
    if name not in DATA_FORMATS:
        raise ValueError(f"unknown data format {name!r}; known formats: {known}" + did_you_mean(name, DATA_FORMATS.names()))
    opener = DATA_FORMATS.get(name)
    signature = inspect.signature(opener)
    keys = [key for key in signature.parameters if key not in ("counter", "shard")]
    for key in kwargs:
        if key not in keys:
            raise ValueError(f"unknown key {key!r} in {name!r} data spec; allowed keys: {', '.join(keys)}" + did_you_mean(key, keys))
    try:
        signature.bind(counter=None, shard=None, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad {name!r} data spec: {err}") from None
    return opener, kwargs


def open_pairs(spec: Mapping, counter: SkipCounter, shard: Shard = None) -> Iterator[PairRecord]:
    """Pairs from a data spec: ``{"format": name, **that format's arguments}``.

    ``official_tsv``: ``path``; ``chinese_clip``: ``root``, ``split``;
    ``jsonl_folder``: ``path``, optional ``image_root``.
    """
    opener, kwargs = check_pair_spec(spec)
    return opener(counter=counter, shard=shard, **kwargs)


def _chinese_clip_pairs(root, split: str, counter: SkipCounter, shard: Shard = None):
    return ChineseClipSplit(root, split).iter_pairs(counter, shard)


# A format is an opener ``(counter, shard=None, **spec options) -> PairRecord iterator``;
# the spec's other keys are checked against its signature.
DATA_FORMATS = Registry(
    "data format",
    {"official_tsv": iter_official_tsv, "chinese_clip": _chinese_clip_pairs, "jsonl_folder": iter_jsonl_folder},
)


def index_image_tsv(path, counter: SkipCounter) -> ImageIndex:
    """Index an ``image_id \\t base64`` TSV in one pass, without decoding images.

    Every line of an id that occurs more than once is reported: which of them a
    text meant cannot be known, so none of them is used.
    """
    entries: Dict[str, Tuple[int, int]] = {}
    duplicates: Dict[str, List[int]] = {}
    for line_no, offset, raw in _content_lines(path, counter, None):
        image_id = _parse_or_report(counter, _parse_image_id, raw, path, line_no)
        if image_id is None:
            continue
        if image_id in duplicates:
            duplicates[image_id].append(line_no)
        elif image_id in entries:
            duplicates[image_id] = [entries.pop(image_id)[1], line_no]
        else:
            entries[image_id] = (offset, line_no)
    for image_id, lines in duplicates.items():
        for line_no in lines:
            reason = f"duplicate image id: {image_id!r} is on lines {_join_ints(lines)}"
            counter.report(DataError(path, line_no, reason))
    return ImageIndex(str(path), entries, duplicates)


def _index_counter(counter: SkipCounter, shard: Shard) -> SkipCounter:
    """The counter for bad lines found while indexing the image file.

    Every shard indexes the whole file, so only shard 0 counts those lines:
    otherwise merged counts would multiply them by the number of shards.
    """
    if shard is None or shard[0] == 0 or counter.on_error == "raise":
        return counter
    return SkipCounter("skip")


def _read_indexed_image(images, index: ImageIndex, image_id: str) -> bytes:
    """Seek to ``image_id``'s line in the open image TSV and decode its base64."""
    offset, line_no = index.entries[image_id]
    images.seek(offset)
    found_id, _, field = _strip_eol(images.readline()).partition(b"\t")
    if found_id.decode("utf-8", "replace").strip() != image_id:
        # Carrying on would pair texts with whatever now sits at the offset.
        raise RuntimeError(
            f"{index.path} changed while it was being read; line {line_no} no longer holds image {image_id!r}"
        )
    return _decode_base64_field(field, index.path, line_no)


def _content_lines(path, counter: SkipCounter, shard: Shard) -> Iterator[Tuple[int, int, bytes]]:
    """``(line, byte offset, bytes)`` of the non-blank lines of ``path`` in ``shard``.

    Blank lines are bad records unless only blank lines follow them: a file
    may end with empty lines, but a hole in the middle is reported.
    """
    first_blank = None
    for line_no, offset, raw in _numbered_lines(path):
        if not raw.strip():
            first_blank = line_no if first_blank is None else first_blank
            continue
        if first_blank is not None:
            for blank_no in range(first_blank, line_no):
                if _in_shard(blank_no - 1, shard):
                    counter.report(DataError(path, blank_no, "blank line"))
            first_blank = None
        if _in_shard(line_no - 1, shard):
            yield line_no, offset, raw


def _numbered_lines(path) -> Iterator[Tuple[int, int, bytes]]:
    """``(1-based line, byte offset of its content, content without end of line)``.

    Read in binary so that a line that is not UTF-8 is still located.
    """
    offset = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            bom = len(UTF8_BOM) if line_no == 1 and raw.startswith(UTF8_BOM) else 0
            yield line_no, offset + bom, _strip_eol(raw[bom:])
            offset += len(raw)


def _strip_eol(raw: bytes) -> bytes:
    return raw.removesuffix(b"\n").removesuffix(b"\r")


def _parse_or_report(counter: SkipCounter, parse, *args):
    """``parse(*args)``, or ``None`` after reporting its :class:`DataError`."""
    try:
        return parse(*args)
    except DataError as err:
        counter.report(err)
        return None


def _parse_official_line(raw: bytes, path, line_no: int) -> PairRecord:
    fields = _decode_utf8(raw, path, line_no).split("\t")
    if len(fields) not in (3, 4):
        reason = f"wrong column count: found {len(fields)}, expected 3 or 4 ({OFFICIAL_COLUMNS})"
        raise DataError(path, line_no, reason)
    if len(fields) == 4 and _looks_like_base64(fields[3]) and not _looks_like_base64(fields[2]):
        # Column 3 would otherwise be decoded as the image and fail as a bad image.
        reason = f"columns shifted: column 4 holds the base64 image ({OFFICIAL_COLUMNS}); a tab inside the caption?"
        raise DataError(path, line_no, reason)
    text, image_id = fields[0].strip(), fields[1].strip()
    if not text:
        raise DataError(path, line_no, "empty text")
    if not image_id:
        raise DataError(path, line_no, "empty image id")
    image = _decode_base64_field(fields[2].encode(), path, line_no)
    tags = split_tags(fields[3]) if len(fields) == 4 else ()
    where = _location(path, line_no)
    return PairRecord(text, image_id, image, tags, where, where)


def _looks_like_base64(field: str) -> bool:
    """Long and of the base64 alphabet only: an encoded image, never a caption, id or tag list."""
    return len(field) >= MIN_IMAGE_BASE64 and BASE64_FIELD.fullmatch(field.strip()) is not None


def _parse_image_id(raw: bytes, path, line_no: int) -> str:
    """The id of an ``image_id \\t base64`` line; the base64 is checked when read."""
    if raw.count(b"\t") != 1:
        found = raw.count(b"\t") + 1
        reason = f"wrong column count: found {found}, expected 2 ({CLIP_IMAGE_COLUMNS})"
        raise DataError(path, line_no, reason)
    image_id = _decode_utf8(raw.partition(b"\t")[0], path, line_no).strip()
    if not image_id:
        raise DataError(path, line_no, "empty image id")
    return image_id


def _parse_clip_text_line(raw: bytes, path, line_no: int, index: ImageIndex) -> TextRecord:
    obj = _load_json_object(raw, path, line_no)
    text_id = _as_id(_require(obj, "text_id", path, line_no), "text_id", path, line_no)
    text = _as_text(_require(obj, "text", path, line_no), path, line_no)
    listed = _require(obj, "image_ids", path, line_no)
    if not isinstance(listed, list):
        raise DataError(path, line_no, f"wrong type: 'image_ids' must be a list, not {type(listed).__name__}")
    if not listed:
        raise DataError(path, line_no, "empty image_ids")
    image_ids = tuple(_as_id(value, "image_ids", path, line_no) for value in listed)
    for image_id in image_ids:
        _check_indexed(image_id, index, path, line_no)
    return TextRecord(text_id, text, image_ids, _location(path, line_no))


def _check_indexed(image_id: str, index: ImageIndex, path, line_no: int) -> None:
    if image_id in index.duplicates:
        lines = _join_ints(index.duplicates[image_id])
        raise DataError(path, line_no, f"ambiguous image id: {image_id!r} is on lines {lines} of {index.path}")
    if image_id not in index.entries:
        raise DataError(path, line_no, f"unknown image id: {image_id!r} is not in {index.path}")


def _parse_folder_line(raw: bytes, path, line_no: int, image_root: Path) -> PairRecord:
    obj = _load_json_object(raw, path, line_no)
    text = _as_text(_require(obj, "text", path, line_no), path, line_no)
    image_path = _require(obj, "image", path, line_no)
    if not isinstance(image_path, str):
        raise DataError(path, line_no, f"wrong type: 'image' must be a string, not {type(image_path).__name__}")
    if not image_path.strip():
        raise DataError(path, line_no, "empty image path")
    given_id = obj.get("image_id")
    image_id = image_path if given_id is None else _as_id(given_id, "image_id", path, line_no)
    tags = _as_tags(obj.get("tags"), path, line_no)
    image_file = image_root / image_path
    image = _read_image_file(image_file, path, line_no)
    return PairRecord(text, image_id, image, tags, _location(path, line_no), str(image_file))


def _read_image_file(image_file: Path, path, line_no: int) -> bytes:
    try:
        data = image_file.read_bytes()
    except FileNotFoundError:
        raise DataError(path, line_no, f"missing image file: {image_file}") from None
    except OSError as err:
        raise DataError(path, line_no, f"unreadable image file: {image_file} ({err.strerror})") from None
    if not data:
        raise DataError(path, line_no, f"empty image file: {image_file}")
    return data


def _decode_utf8(raw: bytes, path, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        reason = f"not UTF-8: byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line"
        raise DataError(path, line_no, reason) from None


def _decode_base64_field(field: bytes, path, line_no: int) -> bytes:
    """Strictly decode standard or URL-safe base64; any stray character is an error."""
    field = field.strip()
    if not field:
        raise DataError(path, line_no, "empty base64")
    try:
        return base64.b64decode(field.translate(URLSAFE_TO_STANDARD), validate=True)
    except ValueError as err:
        raise DataError(path, line_no, f"invalid base64: {err}") from None


def _load_json_object(raw: bytes, path, line_no: int) -> dict:
    try:
        obj = json.loads(_decode_utf8(raw, path, line_no))
    except json.JSONDecodeError as err:
        raise DataError(path, line_no, f"malformed JSON: {err}") from None
    if not isinstance(obj, dict):
        raise DataError(path, line_no, f"wrong type: line must be a JSON object, not {type(obj).__name__}")
    return obj


def _require(obj: dict, key: str, path, line_no: int):
    if key not in obj:
        raise DataError(path, line_no, f"missing key: {key!r}")
    return obj[key]


def _as_text(value, path, line_no: int) -> str:
    if not isinstance(value, str):
        raise DataError(path, line_no, f"wrong type: 'text' must be a string, not {type(value).__name__}")
    if not value.strip():
        raise DataError(path, line_no, "empty text")
    return value.strip()


def _as_id(value, key: str, path, line_no: int) -> str:
    """Ids may be JSON integers or strings; both become strings, as in a TSV."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        reason = f"wrong type: {key!r} must hold integers or strings, not {type(value).__name__}"
        raise DataError(path, line_no, reason)
    ident = str(value).strip()
    if not ident:
        raise DataError(path, line_no, "empty text id" if key == "text_id" else "empty image id")
    return ident


def _as_tags(value, path, line_no: int) -> Tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise DataError(path, line_no, "wrong type: 'tags' must be a list of strings")
    return tuple(tag.strip() for tag in value if tag.strip())


def _location(path, line_no: int) -> str:
    return f"{path}:{line_no}"


def _join_ints(values) -> str:
    return ", ".join(str(v) for v in values)
