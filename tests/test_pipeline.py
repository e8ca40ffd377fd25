"""The training stream: sharding, determinism, worker independence, exact resume, bad records."""
import numpy as np
import pytest

from ernievil2.data.augment import TrainTransform
from ernievil2.data.errors import DataError
from ernievil2.data.pipeline import (
    StreamPosition,
    TrainStream,
    expand_sources,
    rank_sources,
    shuffled,
    spread_images,
    stable_caption_id,
    stable_image_id,
)
from tests.helpers import write_pairs_tsv

AUGMENT = {"image_size": 32, "resize_short": 32}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    return [write_pairs_tsv(folder / f"part-{i}.tsv", 12, seed=i, id_prefix=f"p{i}-") for i in range(3)]


def stream(spec, tokenizer, **kwargs):
    defaults = dict(batch_size=4, image_views=2, need_tags=True, seed=7, shuffle_buffer=8, transform=TrainTransform(AUGMENT))
    defaults.update(kwargs)
    return TrainStream(spec, tokenizer, **defaults)


def take(s, n):
    it = iter(s)
    out = [next(it) for _ in range(n)]
    s.close()
    return out


def ids_of(batches):
    return [int(i) for b in batches for i in b["image_id"]]


def test_sources_glob_and_rank_assignment(shards):
    sources = expand_sources({"format": "official_tsv", "path": str(shards[0].parent / "part-*.tsv")})
    assert [s["path"] for s in sources] == [str(p) for p in shards]
    # enough files: whole files per rank; too few: every file, line-sharded
    assert rank_sources(sources, 1, 2) == [(sources[1], None)]
    assert rank_sources(sources, 0, 4)[0] == (sources[0], (0, 4)) and len(rank_sources(sources, 0, 4)) == 3
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_sources({"format": "official_tsv", "path": str(shards[0].parent / "nope-*.tsv")})


def test_ranks_read_disjoint_parts_that_cover_the_epoch(shards, tokenizer):
    spec = {"format": "official_tsv", "path": [str(p) for p in shards]}
    per_rank = [set(ids_of(take(stream(spec, tokenizer, rank=r, world=2, shuffle_buffer=1), 4))) for r in range(2)]
    assert not per_rank[0] & per_rank[1]
    everything = set(ids_of(take(stream(spec, tokenizer, shuffle_buffer=1), 9)))
    assert per_rank[0] | per_rank[1] <= everything and len(everything) == 36


def test_same_seed_same_batches_whatever_the_workers(shards, tokenizer):
    spec = {"format": "official_tsv", "path": str(shards[0])}
    serial = take(stream(spec, tokenizer), 5)
    parallel = take(stream(spec, tokenizer, num_workers=2), 5)
    for a, b in zip(serial, parallel):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(serial[0]["image_v1"], serial[0]["image_v2"])  # two different draws
    other = take(stream(spec, tokenizer, seed=8), 1)
    assert not np.array_equal(other[0]["image_v1"], serial[0]["image_v1"])


def test_resume_from_a_position_continues_exactly(shards, tokenizer):
    spec = {"format": "official_tsv", "path": str(shards[1])}
    straight = take(stream(spec, tokenizer), 7)  # crosses into epoch 2 (12 records, batch 4)
    first = stream(spec, tokenizer)
    take(first, 4)
    position = StreamPosition(**vars(first.position))
    assert position.epoch == 1
    rest = take(stream(spec, tokenizer, position=position), 3)
    for a, b in zip(straight[4:], rest):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_a_bad_image_is_replaced_and_counted(tmp_path, tokenizer):
    path = write_pairs_tsv(tmp_path / "t.tsv", 12)
    lines = path.read_text(encoding="utf-8").splitlines()
    text, image_id, _, tags = lines[2].split("\t")
    lines[2] = "\t".join([text, image_id, "bm90IGFuIGltYWdl", tags])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = {"format": "official_tsv", "path": str(path)}
    s = stream(spec, tokenizer, on_error="skip", shuffle_buffer=1)
    batches = take(s, 2)
    assert stable_image_id("img2") not in ids_of(batches) and len(ids_of(batches)) == 8
    assert s.counter.total == 1 and "t.tsv:3" in s.counter.examples[0]
    with pytest.raises(DataError, match=r"t.tsv:3"):
        take(stream(spec, tokenizer, shuffle_buffer=1), 2)


def test_a_bad_image_in_a_small_corpus_is_replaced_from_the_last_partial_group(tmp_path, tokenizer):
    """5 good records and 1 truncated JPEG at batch 4: the epoch's last group (2 records) fills the batch."""
    import base64

    path = write_pairs_tsv(tmp_path / "t.tsv", 6)
    lines = path.read_text(encoding="utf-8").splitlines()
    text, image_id, data, tags = lines[1].split("\t")
    lines[1] = "\t".join([text, image_id, base64.b64encode(base64.b64decode(data)[:-40]).decode("ascii"), tags])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = stream({"format": "official_tsv", "path": str(path)}, tokenizer, on_error="skip", shuffle_buffer=1)
    batches = take(s, 2)
    assert ids_of(batches[:1]) == [stable_image_id(f"img{i}") for i in (0, 2, 3, 4)]
    assert ids_of(batches[1:]) == [stable_image_id(f"img{i}") for i in (0, 2, 3, 4)]  # the next epoch, from the start
    assert list(s.counter.skipped) == [f"{path}:2"] and s.counter.skipped[f"{path}:2"].startswith("truncated JPEG")


def test_images_stay_with_their_captions(tmp_path, tokenizer):
    """Every caption names its shape's colour; the decoded view must show that colour."""
    from tests.helpers import COLOURS

    path = write_pairs_tsv(tmp_path / "t.tsv", 16, seed=5)
    spec = {"format": "official_tsv", "path": str(path)}
    eval_like = TrainTransform({**AUGMENT, "crop": "center", "hflip": 0, "color_jitter": None, "grayscale": 0, "blur": None})
    batches = take(stream(spec, tokenizer, transform=eval_like, need_tags=False), 4)
    colour_of = {name: tokenizer.encode([name])[0][1:3].tolist() for name in COLOURS}
    for batch in batches:
        for ids, image in zip(batch["text"], batch["image_v1"]):
            name = next(n for n, piece in colour_of.items() if piece == ids[3:5].tolist())
            centre = image[:, 16, 16] * np.array([0.229, 0.224, 0.225]) + np.array([0.485, 0.456, 0.406])
            assert np.argmax(centre) == np.argmax(COLOURS[name]), name


def test_caption_and_tag_ids_trimmed_each_to_its_longest_row(tmp_path, tokenizer):
    path = write_pairs_tsv(tmp_path / "t.tsv", 8, seed=3)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[0] = "很长很长的" + lines[0]  # 14 ids; the others 9, the tags 10
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    batch = take(stream({"format": "official_tsv", "path": str(path)}, tokenizer, batch_size=8, shuffle_buffer=0), 1)[0]
    for name in ("text", "tag"):
        ids = batch[name]
        assert (ids[:, -1] != 0).any(), f"{name}: a padding column was left"
        assert ids.shape[1] < 16 and (ids[:, 0] == 1).all()
    assert batch["text"].shape[1] > batch["tag"].shape[1]


def test_shuffle_buffer_is_a_permutation():
    rng = np.random.default_rng(0)
    out = list(shuffled(range(100), 10, rng))
    assert sorted(out) == list(range(100)) and out != list(range(100))


# --- one caption per image ------------------------------------------------------


def windows_repeat(keys, gap):
    """Positions where an image comes back within ``gap`` records of its last appearance."""
    last, repeats = {}, []
    for position, key in enumerate(keys):
        if key in last and position - last[key] < gap:
            repeats.append(position)
        last[key] = position
    return repeats


def test_spread_images_keeps_one_record_per_image_in_every_window():
    rng = np.random.default_rng(0)
    images = [int(i) for i in rng.integers(0, 30, 300)]  # ~10 captions per image, in clumps
    records = list(enumerate(images))  # (record number, image)
    assert windows_repeat(images, 8)  # guards the test: the input does repeat within windows
    out = list(spread_images(records, 8, max_waiting=300, key=lambda r: r[1]))
    assert windows_repeat([r[1] for r in out], 8) == []
    assert len(set(out)) == len(out) and set(out) <= set(records)  # nothing made up or duplicated
    assert len(records) - len(out) < 8 * 2  # only a tail that cannot be placed is left out
    assert out == list(spread_images(records, 8, max_waiting=300, key=lambda r: r[1]))  # a pure function


def test_spread_images_leaves_distinct_images_in_order_and_bounds_waiting():
    assert list(spread_images(range(10), 4, max_waiting=4, key=lambda r: r)) == list(range(10))
    one_image = [(i, "same") for i in range(10)]
    # Nothing may go but the first; a bounded wait lets the oldest go early.
    assert [r[0] for r in spread_images(one_image, 4, max_waiting=100, key=lambda r: r[1])] == [0]
    assert len(list(spread_images(one_image, 4, max_waiting=2, key=lambda r: r[1]))) == 8


def test_stream_with_one_caption_per_image_and_caption_ids(tmp_path, tokenizer):
    path = write_pairs_tsv(tmp_path / "t.tsv", 48, seed=4)
    lines = path.read_text(encoding="utf-8").splitlines()
    # 12 images with 4 captions each, next to each other in the file
    lines = ["\t".join([line.split("\t")[0], f"img{i // 4}", *line.split("\t")[2:]]) for i, line in enumerate(lines)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = {"format": "official_tsv", "path": str(path)}
    kwargs = dict(batch_size=4, image_views=1, need_tags=False, shuffle_buffer=0)
    plain = take(stream(spec, tokenizer, **kwargs), 6)
    assert all(len(set(b["image_id"])) == 1 for b in plain)  # guards: unspread, a batch is one image
    spread = take(stream(spec, tokenizer, one_caption_per_image=4, **kwargs), 9)
    assert all(len(set(b["image_id"])) == 4 for b in spread)
    texts = [line.split("\t")[0] for line in lines]
    assert {int(c) for b in spread for c in b["caption_id"]} <= {stable_caption_id(t) for t in texts}
    assert len({stable_caption_id(t) for t in texts}) < len(texts)  # the demo-like captions repeat
    # resuming counts records of the spread order, so it continues exactly
    first = stream(spec, tokenizer, one_caption_per_image=4, **kwargs)
    take(first, 5)
    rest = take(stream(spec, tokenizer, one_caption_per_image=4, position=StreamPosition(**vars(first.position)), **kwargs), 4)
    for a, b in zip(spread[5:], rest):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(ValueError, match="one_caption_per_image must be a gap"):
        stream(spec, tokenizer, one_caption_per_image=True, **kwargs)
