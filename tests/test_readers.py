"""Record-level readers: good records stay aligned, every bad one is located."""
import base64
import json

import cv2
import numpy as np
import pytest

from ernievil2.data.errors import DataError, SkipCounter
from ernievil2.data.readers import (
    ChineseClipSplit,
    PairRecord,
    decode_image_bytes,
    iter_jsonl_folder,
    iter_official_tsv,
    open_pairs,
    split_tags,
)


def rgb_of(number):
    return (number * 37 % 256, number * 91 % 256, (number * 53 + 7) % 256)


def png_bytes(number):
    """A 3x2 image whose single colour encodes ``number``; PNG keeps it exact."""
    rgb = np.zeros((3, 2, 3), np.uint8)
    rgb[:] = rgb_of(number)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def b64(number):
    return base64.b64encode(png_bytes(number)).decode()


def tsv_line(number, tags=None):
    fields = [f"caption {number}", f"img{number}", b64(number)] + ([tags] if tags is not None else [])
    return "\t".join(fields).encode()


def write_lines(path, lines, end=b"\n"):
    path.write_bytes(b"".join(line + end for line in lines))
    return path


def assert_aligned(records):
    """Each record carries exactly the text and image written for its number."""
    for record in records:
        number = int(record.image_id.removeprefix("img"))
        assert record.image == png_bytes(number)
        assert record.text in (f"caption {number}", f"text {number}")
        assert tuple(decode_image_bytes(record.image, record.image_where)[0, 0]) == rgb_of(number)


def numbers_of(records):
    return [int(r.image_id.removeprefix("img")) for r in records]


# ---------------------------------------------------------------- official TSV

def test_official_tsv_reads_columns_tags_and_crlf(tmp_path):
    lines = [tsv_line(0), tsv_line(1, " 蓝天, 红色汽车、草地;;  ；狗，猫 ")]
    path = write_lines(tmp_path / "d.tsv", lines, end=b"\r\n")
    records = list(iter_official_tsv(path, SkipCounter()))
    assert numbers_of(records) == [0, 1]
    assert records[0].tags == ()
    assert records[1].tags == ("蓝天", "红色汽车", "草地", "狗", "猫")
    assert records[1].where == f"{path}:2" == records[1].image_where
    assert_aligned(records)


def test_official_tsv_accepts_urlsafe_base64_bom_and_trailing_blank_lines(tmp_path):
    # Find an image whose base64 needs '+' or '/', so the URL-safe form differs.
    number = next(n for n in range(200) if set(b64(n)) & {"+", "/"})
    urlsafe = base64.urlsafe_b64encode(png_bytes(number))
    line = f"caption {number}\timg{number}\t".encode() + urlsafe
    path = write_lines(tmp_path / "d.tsv", [b"\xef\xbb\xbf" + tsv_line(0), line, b"", b"  "])
    records = list(iter_official_tsv(path, SkipCounter("raise")))
    assert records[0].text == "caption 0"
    assert numbers_of(records) == [0, number]
    assert_aligned(records)


BAD_TSV_LINES = {
    "two columns": (b"caption\timg9", "wrong column count: found 2, expected 3 or 4"),
    "five columns": (b"c\timg9\t" + b64(9).encode() + b"\tt\textra", "wrong column count: found 5"),
    "tab inside the caption": (b"a\tcaption\timg9\t" + b64(9).encode(), "columns shifted: column 4 holds the base64 image"),
    "empty caption": (b" \t img9\t" + b64(9).encode(), "empty text"),
    "empty image id": (b"caption\t  \t" + b64(9).encode(), "empty image id"),
    "empty base64": (b"caption\timg9\t ", "empty base64"),
    "invalid base64": (b"caption\timg9\t" + b64(9)[:-3].encode() + b"!==", "invalid base64"),
    "non-ascii base64": ("caption\timg9\t图片".encode(), "invalid base64"),
    "not utf-8": (b"caption \xff\xfe\timg9\t" + b64(9).encode(), "not UTF-8: byte 0xff at byte 9"),
    "blank": (b"", "blank line"),
    "whitespace only": (b" \t ", "blank line"),
}


@pytest.mark.parametrize("case", BAD_TSV_LINES)
def test_official_tsv_bad_line_raises_with_file_line_and_reason(tmp_path, case):
    bad, reason = BAD_TSV_LINES[case]
    path = write_lines(tmp_path / "d.tsv", [tsv_line(0), tsv_line(1), bad, tsv_line(3)])
    with pytest.raises(DataError) as info:
        list(iter_official_tsv(path, SkipCounter("raise")))
    assert (info.value.path, info.value.line) == (str(path), 3)
    assert info.value.reason.startswith(reason)
    assert str(info.value).startswith(f"{path}:3: ")


@pytest.mark.parametrize("case", BAD_TSV_LINES)
def test_official_tsv_bad_line_skipped_keeps_good_lines_aligned(tmp_path, case):
    bad, reason = BAD_TSV_LINES[case]
    path = write_lines(tmp_path / "d.tsv", [tsv_line(0), tsv_line(1), bad, tsv_line(3)])
    counter = SkipCounter("skip")
    records = list(iter_official_tsv(path, counter))
    assert numbers_of(records) == [0, 1, 3]
    assert_aligned(records)
    assert dict(counter.by_reason) == {reason.split(":")[0]: 1}
    assert f"{path}:3: " in counter.summary()


def test_official_tsv_many_bad_lines_counted_by_reason(tmp_path):
    lines, good = [], []
    for number, (bad, _) in enumerate(BAD_TSV_LINES.values()):
        lines += [bad, tsv_line(100 + number)]
        good.append(100 + number)
    path = write_lines(tmp_path / "d.tsv", lines)
    counter = SkipCounter("skip")
    records = list(iter_official_tsv(path, counter))
    assert numbers_of(records) == good
    assert_aligned(records)
    assert dict(counter.by_reason) == {
        "wrong column count": 2, "columns shifted": 1, "empty text": 1, "empty image id": 1, "empty base64": 1,
        "invalid base64": 2, "not UTF-8": 1, "blank line": 2,
    }


# ---------------------------------------------------------------- Chinese-CLIP layout

def write_clip_split(root, image_lines, texts, split="test"):
    """``texts`` are dicts (dumped as JSON) or raw bytes (written as they are)."""
    write_lines(root / f"{split}_imgs.tsv", image_lines)
    text_lines = [t if isinstance(t, bytes) else json.dumps(t, ensure_ascii=False).encode() for t in texts]
    write_lines(root / f"{split}_texts.jsonl", text_lines)
    return ChineseClipSplit(root, split)


def clip_image_line(number):
    return f"img{number}\t{b64(number)}".encode()


def clip_text(number, *image_numbers):
    return {"text_id": number, "text": f"text {number}", "image_ids": [f"img{n}" for n in image_numbers]}


GOOD_IMAGES = [clip_image_line(n) for n in range(4)]


def test_chinese_clip_pairs_one_per_text_and_image_id(tmp_path):
    split = write_clip_split(tmp_path, GOOD_IMAGES, [clip_text(3, 3, 0), clip_text(1, 1), clip_text(2, 2, 2)])
    counter = SkipCounter("raise")
    pairs = list(split.iter_pairs(counter))
    assert [(p.text, p.image_id) for p in pairs] == [
        ("text 3", "img3"), ("text 3", "img0"), ("text 1", "img1"), ("text 2", "img2"), ("text 2", "img2"),
    ]
    assert pairs[1].where == f"{split.texts_path}:1"
    assert pairs[1].image_where == f"{split.images_path}:1"
    images = list(split.iter_images(counter))
    assert [(i.image_id, i.image) for i in images] == [(f"img{n}", png_bytes(n)) for n in range(4)]
    texts = list(split.iter_texts(counter))
    assert [(t.text_id, t.image_ids) for t in texts] == [
        ("3", ("img3", "img0")), ("1", ("img1",)), ("2", ("img2", "img2")),
    ]


def test_chinese_clip_integer_ids_match_tsv_ids(tmp_path):
    images = [f"{n}\t{b64(n)}".encode() for n in (10, 11)]
    split = write_clip_split(tmp_path, images, [{"text_id": "a", "text": "t", "image_ids": [11, "10"]}])
    pairs = list(split.iter_pairs(SkipCounter()))
    assert [(p.image_id, p.image) for p in pairs] == [("11", png_bytes(11)), ("10", png_bytes(10))]


BAD_TEXT_LINES = {
    "malformed json": (b'{"text_id": 5, "text": "x", "image_ids": [1]', "malformed JSON: Expecting"),
    "not an object": (b'["text 5"]', "wrong type: line must be a JSON object"),
    "missing text": (b'{"text_id": 5, "image_ids": ["img1"]}', "missing key: 'text'"),
    "missing text_id": (b'{"text": "t", "image_ids": ["img1"]}', "missing key: 'text_id'"),
    "missing image_ids": (b'{"text_id": 5, "text": "t"}', "missing key: 'image_ids'"),
    "empty text": (b'{"text_id": 5, "text": "  ", "image_ids": ["img1"]}', "empty text"),
    "empty image_ids": (b'{"text_id": 5, "text": "t", "image_ids": []}', "empty image_ids"),
    "image_ids not list": (b'{"text_id": 5, "text": "t", "image_ids": "img1"}', "wrong type: 'image_ids'"),
    "float image id": (b'{"text_id": 5, "text": "t", "image_ids": [1.5]}', "wrong type: 'image_ids'"),
    "bool text id": (b'{"text_id": true, "text": "t", "image_ids": ["img1"]}', "wrong type: 'text_id'"),
    "unknown image": (b'{"text_id": 5, "text": "t", "image_ids": ["img1", "img77"]}', "unknown image id: 'img77'"),
    "not utf-8": (b'{"text_id": 5, "text": "\xc3", "image_ids": ["img1"]}', "not UTF-8"),
    "blank": (b"", "blank line"),
}


@pytest.mark.parametrize("case", BAD_TEXT_LINES)
def test_chinese_clip_bad_text_line_raises_with_file_line_and_reason(tmp_path, case):
    bad, reason = BAD_TEXT_LINES[case]
    split = write_clip_split(tmp_path, GOOD_IMAGES, [clip_text(0, 0), bad, clip_text(2, 2)])
    with pytest.raises(DataError) as info:
        list(split.iter_pairs(SkipCounter("raise")))
    assert (info.value.path, info.value.line) == (str(split.texts_path), 2)
    assert info.value.reason.startswith(reason)


@pytest.mark.parametrize("case", BAD_TEXT_LINES)
def test_chinese_clip_bad_text_line_skipped_keeps_pairs_aligned(tmp_path, case):
    bad, reason = BAD_TEXT_LINES[case]
    split = write_clip_split(tmp_path, GOOD_IMAGES, [clip_text(0, 0), bad, clip_text(2, 2, 3)])
    counter = SkipCounter("skip")
    pairs = list(split.iter_pairs(counter))
    assert numbers_of(pairs) == [0, 2, 3]
    assert [p.text for p in pairs] == ["text 0", "text 2", "text 2"]
    assert all(p.image == png_bytes(n) for p, n in zip(pairs, [0, 2, 3]))
    assert dict(counter.by_reason) == {reason.split(":")[0]: 1}


def test_chinese_clip_unknown_image_names_both_files(tmp_path):
    split = write_clip_split(tmp_path, GOOD_IMAGES, [clip_text(0, 9)])
    with pytest.raises(DataError, match="unknown image id") as info:
        list(split.iter_texts(SkipCounter("raise")))
    assert str(info.value).startswith(f"{split.texts_path}:1: ")
    assert str(split.images_path) in str(info.value)


def test_chinese_clip_duplicate_image_id_raises_at_second_line(tmp_path):
    images = GOOD_IMAGES + [f"img1\t{b64(5)}".encode()]
    split = write_clip_split(tmp_path, images, [clip_text(0, 0)])
    with pytest.raises(DataError) as info:
        list(split.iter_pairs(SkipCounter("raise")))
    assert (info.value.path, info.value.line) == (str(split.images_path), 2)
    assert info.value.reason == "duplicate image id: 'img1' is on lines 2, 5"


def test_chinese_clip_duplicate_image_id_is_never_used(tmp_path):
    images = GOOD_IMAGES + [f"img1\t{b64(5)}".encode()]
    split = write_clip_split(tmp_path, images, [clip_text(0, 0), clip_text(1, 1), clip_text(2, 2)])
    counter = SkipCounter("skip")
    pairs = list(split.iter_pairs(counter))
    assert [(p.text, p.image) for p in pairs] == [("text 0", png_bytes(0)), ("text 2", png_bytes(2))]
    assert dict(counter.by_reason) == {"duplicate image id": 2, "ambiguous image id": 1}
    assert [i.image_id for i in split.iter_images(counter)] == ["img0", "img2", "img3"]


BAD_IMAGE_LINES = {
    "one column": (b"img1", "wrong column count: found 1, expected 2"),
    "three columns": (b"img1\t" + b64(1).encode() + b"\tx", "wrong column count: found 3"),
    "empty id": (b" \t" + b64(1).encode(), "empty image id"),
    "not utf-8 id": (b"img\xff\t" + b64(1).encode(), "not UTF-8"),
    "blank": (b"", "blank line"),
}


@pytest.mark.parametrize("case", BAD_IMAGE_LINES)
def test_chinese_clip_bad_image_line_raises_and_skips(tmp_path, case):
    bad, reason = BAD_IMAGE_LINES[case]
    images = [clip_image_line(0), bad, clip_image_line(2)]
    split = write_clip_split(tmp_path, images, [clip_text(0, 0), clip_text(2, 2)])
    with pytest.raises(DataError) as info:
        list(split.iter_pairs(SkipCounter("raise")))
    assert (info.value.path, info.value.line) == (str(split.images_path), 2)
    assert info.value.reason.startswith(reason)
    counter = SkipCounter("skip")
    pairs = list(ChineseClipSplit(tmp_path, "test").iter_pairs(counter))
    assert [(p.text, p.image) for p in pairs] == [("text 0", png_bytes(0)), ("text 2", png_bytes(2))]
    assert dict(counter.by_reason) == {reason.split(":")[0]: 1}


def test_chinese_clip_invalid_base64_reported_at_image_line(tmp_path):
    images = [clip_image_line(0), b"img1\tnot base64!", clip_image_line(2)]
    split = write_clip_split(tmp_path, images, [clip_text(0, 0, 1), clip_text(2, 2)])
    with pytest.raises(DataError, match="invalid base64") as info:
        list(split.iter_pairs(SkipCounter("raise")))
    assert (info.value.path, info.value.line) == (str(split.images_path), 2)
    counter = SkipCounter("skip")
    pairs = list(split.iter_pairs(counter))
    assert [(p.text, p.image) for p in pairs] == [("text 0", png_bytes(0)), ("text 2", png_bytes(2))]
    assert dict(counter.by_reason) == {"invalid base64": 1}


def test_chinese_clip_image_file_rewritten_after_indexing_is_refused(tmp_path):
    split = write_clip_split(tmp_path, GOOD_IMAGES, [clip_text(0, 1)])
    split.image_index(SkipCounter())
    write_lines(split.images_path, [clip_image_line(9)] + GOOD_IMAGES)
    with pytest.raises(RuntimeError, match="changed while it was being read"):
        list(split.iter_pairs(SkipCounter("skip")))


def test_chinese_clip_missing_file_is_named(tmp_path):
    write_lines(tmp_path / "valid_imgs.tsv", GOOD_IMAGES)
    with pytest.raises(FileNotFoundError, match="valid_texts.jsonl"):
        ChineseClipSplit(tmp_path, "valid")


# ---------------------------------------------------------------- jsonl + image folder

def write_folder(root, entries):
    """Images ``img{n}.png`` under ``root/pics``; ``entries`` are dicts or raw bytes."""
    (root / "pics").mkdir(exist_ok=True)
    for n in range(4):
        (root / "pics" / f"img{n}.png").write_bytes(png_bytes(n))
    lines = [e if isinstance(e, bytes) else json.dumps(e, ensure_ascii=False).encode() for e in entries]
    return write_lines(root / "meta.jsonl", lines)


def folder_entry(number):
    return {"text": f"text {number}", "image": f"pics/img{number}.png", "image_id": f"img{number}"}


def test_jsonl_folder_resolves_paths_ids_and_tags(tmp_path):
    absolute = {"text": "text 3", "image": str(tmp_path / "pics/img3.png"), "image_id": "img3"}
    no_id = {"text": " 无编号 ", "image": "pics/img1.png", "tags": [" 猫 ", "", "狗"]}
    path = write_folder(tmp_path, [folder_entry(0), no_id, absolute])
    records = list(iter_jsonl_folder(path, SkipCounter("raise")))
    assert [r.image_id for r in records] == ["img0", "pics/img1.png", "img3"]
    assert [r.image for r in records] == [png_bytes(0), png_bytes(1), png_bytes(3)]
    assert (records[1].text, records[1].tags) == ("无编号", ("猫", "狗"))
    assert records[2].where == f"{path}:3"
    assert records[0].image_where == str(tmp_path / "pics/img0.png")


def test_jsonl_folder_image_root_overrides_jsonl_folder(tmp_path):
    write_folder(tmp_path, [])
    entry = {"text": "text 2", "image": "img2.png", "image_id": "img2"}
    meta = write_lines(tmp_path / "elsewhere.jsonl", [json.dumps(entry).encode()])
    records = list(iter_jsonl_folder(meta, SkipCounter(), image_root=tmp_path / "pics"))
    assert [(r.image_id, r.image) for r in records] == [("img2", png_bytes(2))]


BAD_FOLDER_LINES = {
    "malformed json": (b'{"text": "t", "image": ', "malformed JSON: Expecting value"),
    "missing text": (b'{"image": "pics/img1.png"}', "missing key: 'text'"),
    "missing image": (b'{"text": "t"}', "missing key: 'image'"),
    "empty text": (b'{"text": "", "image": "pics/img1.png"}', "empty text"),
    "empty image path": (b'{"text": "t", "image": " "}', "empty image path"),
    "tags not list": (b'{"text": "t", "image": "pics/img1.png", "tags": "a,b"}', "wrong type: 'tags'"),
    "missing image file": (b'{"text": "t", "image": "pics/nope.png"}', "missing image file: "),
    "image is a folder": (b'{"text": "t", "image": "pics"}', "unreadable image file: "),
}


@pytest.mark.parametrize("case", BAD_FOLDER_LINES)
def test_jsonl_folder_bad_line_raises_and_skips(tmp_path, case):
    bad, reason = BAD_FOLDER_LINES[case]
    path = write_folder(tmp_path, [folder_entry(0), bad, folder_entry(2)])
    with pytest.raises(DataError) as info:
        list(iter_jsonl_folder(path, SkipCounter("raise")))
    assert (info.value.path, info.value.line) == (str(path), 2)
    assert info.value.reason.startswith(reason)
    counter = SkipCounter("skip")
    records = list(iter_jsonl_folder(path, counter))
    assert [(r.image_id, r.image) for r in records] == [("img0", png_bytes(0)), ("img2", png_bytes(2))]
    assert dict(counter.by_reason) == {reason.split(":")[0]: 1}


def test_jsonl_folder_missing_and_empty_image_files_are_named(tmp_path):
    path = write_folder(tmp_path, [
        {"text": "t", "image": "pics/gone.png"},
        {"text": "t", "image": "pics/empty.png"},
    ])
    (tmp_path / "pics" / "empty.png").write_bytes(b"")
    counter = SkipCounter("skip")
    assert list(iter_jsonl_folder(path, counter)) == []
    assert counter.examples == [
        f"{path}:1: missing image file: {tmp_path / 'pics/gone.png'}",
        f"{path}:2: empty image file: {tmp_path / 'pics/empty.png'}",
    ]


# ---------------------------------------------------------------- sharding

def sharded_tsv(tmp_path):
    lines = [tsv_line(n) if n % 4 else BAD_TSV_LINES["invalid base64"][0] for n in range(1, 12)]
    lines.insert(5, b"")
    return write_lines(tmp_path / "d.tsv", lines)


def sharded_clip(tmp_path):
    texts = [clip_text(n, n % 4, (n + 1) % 4) if n % 3 else b"{" for n in range(1, 12)]
    write_clip_split(tmp_path, [clip_image_line(n) for n in range(4)] + [b"bad"], texts)
    return tmp_path


def sharded_folder(tmp_path):
    return write_folder(tmp_path, [folder_entry(n % 4) if n % 5 else b'{"text": ""}' for n in range(1, 12)])


def read_clip_pairs(root, counter, shard):
    # A fresh split per read, as each rank or worker builds its own.
    return ChineseClipSplit(root, "test").iter_pairs(counter, shard)


SHARDED_SOURCES = {
    "official_tsv": (sharded_tsv, lambda path, counter, shard: iter_official_tsv(path, counter, shard=shard)),
    "chinese_clip": (sharded_clip, read_clip_pairs),
    "jsonl_folder": (sharded_folder, lambda path, counter, shard: iter_jsonl_folder(path, counter, shard=shard)),
}


@pytest.mark.parametrize("name", SHARDED_SOURCES)
@pytest.mark.parametrize("count", [2, 3])
def test_shards_are_disjoint_and_cover_every_record_and_bad_line_once(tmp_path, name, count):
    make, read = SHARDED_SOURCES[name]
    source = make(tmp_path)
    whole_counter = SkipCounter("skip")
    whole = [(r.where, r.image_id, r.image) for r in read(source, whole_counter, None)]
    parts, merged = [], SkipCounter("skip")
    for index in range(count):
        counter = SkipCounter("skip")
        parts.append([(r.where, r.image_id, r.image) for r in read(source, counter, (index, count))])
        assert all((int(where.rpartition(":")[2]) - 1) % count == index for where, _, _ in parts[-1])
        merged.merge(counter)
    assert sorted(sum(parts, [])) == sorted(whole)
    assert len(set(sum(parts, []))) == len(whole)
    assert whole_counter.total > 0
    assert merged.by_reason == whole_counter.by_reason


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), [0, 2], (0, 0)])
def test_bad_shard_is_rejected(tmp_path, shard):
    path = write_lines(tmp_path / "d.tsv", [tsv_line(0)])
    with pytest.raises(ValueError, match="shard must be"):
        list(iter_official_tsv(path, SkipCounter(), shard=shard))


# ---------------------------------------------------------------- dispatch and helpers

def test_open_pairs_dispatches_each_format(tmp_path):
    tsv = write_lines(tmp_path / "d.tsv", [tsv_line(1)])
    write_clip_split(tmp_path, GOOD_IMAGES, [clip_text(2, 2)])
    meta = write_folder(tmp_path, [folder_entry(3)])
    specs = [
        {"format": "official_tsv", "path": str(tsv)},
        {"format": "chinese_clip", "root": str(tmp_path), "split": "test"},
        {"format": "jsonl_folder", "path": str(meta), "image_root": str(tmp_path)},
    ]
    got = [numbers_of(open_pairs(spec, SkipCounter())) for spec in specs]
    assert got == [[1], [2], [3]]


@pytest.mark.parametrize("spec, message", [
    ({"format": "offical_tsv", "path": "x"}, "unknown data format 'offical_tsv'; known formats: chinese_clip, jsonl_folder, official_tsv; did you mean 'official_tsv'?"),
    ({"path": "x"}, "data spec has no 'format' key"),
    ({"format": "official_tsv", "pth": "x"}, "unknown key 'pth' in 'official_tsv' data spec; allowed keys: path; did you mean 'path'?"),
    ({"format": "chinese_clip", "root": "x"}, "missing a required argument: 'split'"),
])
def test_open_pairs_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError) as info:
        open_pairs(spec, SkipCounter())
    assert message in str(info.value)


def test_decode_image_bytes_returns_rgb_uint8_hwc():
    image = decode_image_bytes(png_bytes(5), "x.tsv:1")
    assert image.dtype == np.uint8 and image.shape == (3, 2, 3)
    assert tuple(image[1, 1]) == rgb_of(5)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "undecodable image: 0 bytes"),
        (b"\xff\xd8\xff\xe0 truncated jpeg", "truncated JPEG"),
        (b"hello", "undecodable image: 5 bytes"),
    ],
)
def test_decode_image_bytes_locates_undecodable_bytes(data, reason):
    with pytest.raises(DataError) as info:
        decode_image_bytes(data, "/data/part-0.tsv:17")
    assert (info.value.path, info.value.line) == ("/data/part-0.tsv", 17)
    assert info.value.reason.startswith(reason)


def _encoded(extension, size=(16, 12)):
    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[::2] = 200
    ok, data = cv2.imencode(extension, image)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("extension, reason", [(".jpg", "truncated JPEG"), (".png", "truncated PNG")])
def test_cut_off_images_are_bad_records_although_the_decoder_accepts_them(extension, reason):
    whole = _encoded(extension)
    assert decode_image_bytes(whole, "a.tsv:1").shape == (12, 16, 3)
    assert decode_image_bytes(whole + b"\x00trailing", "a.tsv:1").shape == (12, 16, 3)
    for cut in (len(whole) - 2, len(whole) // 2 + 10):
        with pytest.raises(DataError) as info:
            decode_image_bytes(whole[:cut], "a.tsv:4")
        assert info.value.reason.startswith(reason) and info.value.line == 4


def test_a_one_pixel_image_is_a_bad_record():
    with pytest.raises(DataError, match="image too small: 1x1"):
        decode_image_bytes(_encoded(".png", (1, 1)), "a.tsv:2")


def test_decode_image_bytes_accepts_a_file_path_as_location():
    with pytest.raises(DataError) as info:
        decode_image_bytes(b"nope", "/pics/a.jpg")
    assert (info.value.path, info.value.line) == ("/pics/a.jpg", None)


def test_split_tags_normalises_separators():
    assert split_tags("a, b、c;d ；e，,") == ("a", "b", "c", "d", "e")


def test_pair_record_repr_leaves_out_image_bytes():
    record = PairRecord("t", "i", b"\x00" * 1000, (), "f:1", "f:1")
    assert "image=" not in repr(record) and "image_id='i'" in repr(record)


# ---------------------------------------------------------------- the official fixture

@pytest.fixture
def coco_cn_tsv(shared_dir):
    return shared_dir / "fixtures/official_ernievil2_tiny/test.coco_cn.data"


def test_official_fixture_yields_twenty_decodable_pairs(coco_cn_tsv):
    counter = SkipCounter("raise")
    records = list(iter_official_tsv(coco_cn_tsv, counter))
    assert len(records) == 20 and counter.total == 0
    columns = [line.split("\t") for line in coco_cn_tsv.read_text(encoding="utf-8").splitlines()]
    assert [(r.text, r.image_id) for r in records] == [(c[0], c[1]) for c in columns]
    assert records[4].text == "一张草莓的照片"
    for record in records:
        image = decode_image_bytes(record.image, record.image_where)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
