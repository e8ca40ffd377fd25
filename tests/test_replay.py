"""Data.replay: general-domain pairs mixed into every fine-tuning epoch (the interleaving, the replay
passes, the stream's sharding, determinism and exact resume, the config keys, a training run)."""
import copy
import itertools

import numpy as np
import pytest

from ernievil2.config import check_named_files, load_config
from ernievil2.data.augment import TrainTransform
from ernievil2.data.errors import DataError, SkipCounter
from ernievil2.data.pipeline import TrainStream, expand_sources, interleave, rank_sources, replay_records, stable_image_id
from ernievil2.engine.build import build_trainer
from ernievil2.engine.resume import check_resumable
from ernievil2.registry import ConfigError
from tests.conftest import REPO
from tests.helpers import write_pairs_tsv, write_train_config

BASE = str(REPO / "configs" / "ernievil2_base_vit16.yaml")
AUGMENT = {"image_size": 32, "resize_short": 32}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two train files (ids t0-*, t1-*) and two replay files (r0-*, r1-*)."""
    folder = tmp_path_factory.mktemp("replay")
    train = [write_pairs_tsv(folder / f"train-{i}.tsv", 12, seed=i, id_prefix=f"t{i}-") for i in range(2)]
    replay = [write_pairs_tsv(folder / f"replay-{i}.tsv", 10, seed=5 + i, id_prefix=f"r{i}-") for i in range(2)]
    return train, replay


def spec(paths):
    return {"format": "official_tsv", "path": [str(p) for p in paths]}


def ids(prefix, n):
    return {stable_image_id(f"{prefix}{i}") for i in range(n)}


def stream(train, tokenizer, **kwargs):
    defaults = dict(batch_size=4, image_views=1, seed=7, shuffle_buffer=8, transform=TrainTransform(AUGMENT))
    defaults.update(kwargs)
    return TrainStream(train, tokenizer, **defaults)


def batches_by_epoch(s, epochs):
    """The stream's batches, grouped by the epoch each came from, for its first ``epochs`` epochs."""
    out, it = [[] for _ in range(epochs)], iter(s)
    while True:
        batch = next(it)
        if s.position.epoch >= epochs:
            s.close()
            return out
        out[s.position.epoch].append(batch)


def image_ids(batches):
    return [int(i) for b in batches for i in b["image_id"]]


# --- the pure functions -----------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.1, 0.5, 0.8])
def test_the_replay_share_of_a_long_stream_is_within_4_sigma(share):
    out = list(interleave(range(20000), itertools.count(-1, -1), share, np.random.default_rng(3)))
    n, replayed = len(out), sum(r < 0 for r in out)
    assert abs(replayed / n - share) < 4 * np.sqrt(share * (1 - share) / n)


def test_interleave_keeps_every_train_record_once_and_both_orders():
    out = list(interleave(range(500), itertools.count(-1, -1), 0.5, np.random.default_rng(0)))
    assert [r for r in out if r >= 0] == list(range(500))
    replayed = [r for r in out if r < 0]
    assert replayed == list(range(-1, -len(replayed) - 1, -1))
    again = list(interleave(range(500), itertools.count(-1, -1), 0.5, np.random.default_rng(0)))
    other = list(interleave(range(500), itertools.count(-1, -1), 0.5, np.random.default_rng(1)))
    assert again == out and other != out


def test_replay_passes_cover_the_whole_corpus_before_repeating_each_in_its_own_order(corpora):
    _, replay = corpora
    sources = rank_sources(expand_sources(spec(replay)), 0, 1)
    counter = SkipCounter()
    records = replay_records(sources, counter, seed=7, epoch=0, rank=0, buffer_size=4, where="replay")
    passes = [[r.image_id for r in itertools.islice(records, 20)] for _ in range(3)]
    everything = sorted(f"r{f}-{i}" for f in range(2) for i in range(10))
    for one in passes:
        assert sorted(one) == everything
    assert len({tuple(one) for one in passes}) == 3
    # A pure function of (seed, epoch, rank): the same again, another epoch another order.
    same = replay_records(sources, counter, seed=7, epoch=0, rank=0, buffer_size=4, where="replay")
    assert [r.image_id for r in itertools.islice(same, 20)] == passes[0]
    later = replay_records(sources, counter, seed=7, epoch=1, rank=0, buffer_size=4, where="replay")
    assert [r.image_id for r in itertools.islice(later, 20)] != passes[0]


def test_replay_data_without_a_good_record_is_an_error_not_a_hang(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("only one column\nstill one\n", encoding="utf-8")
    sources = rank_sources(expand_sources(spec([bad])), 0, 1)
    with pytest.raises(DataError, match="bad.tsv.*no good record"):
        next(replay_records(sources, SkipCounter("skip"), seed=0, epoch=0, rank=0, buffer_size=4, where=str(bad)))


# --- the stream ------------------------------------------------------------------------------------


def test_an_epoch_is_one_pass_over_train_with_replay_mixed_in(corpora, tokenizer):
    train, replay = corpora
    epochs = batches_by_epoch(stream(spec(train[:1]), tokenizer, replay=spec(replay), replay_share=0.5), 3)
    train_ids, replay_ids = ids("t0-", 12), ids("r0-", 10) | ids("r1-", 10)
    for batches in epochs:
        seen = image_ids(batches)
        from_train = [i for i in seen if i in train_ids]
        assert len(from_train) == len(set(from_train))  # each train record at most once per epoch
        # All of them but the epoch's last incomplete batch, which is dropped.
        assert len(from_train) > 12 - 4
        assert set(seen) <= train_ids | replay_ids and set(seen) & replay_ids


def test_same_seed_same_batches_another_seed_another_mix(corpora, tokenizer):
    train, replay = corpora

    def first(seed):
        return batches_by_epoch(stream(spec(train), tokenizer, replay=spec(replay), seed=seed), 2)

    one, two, other = first(7), first(7), first(8)
    for a, b in zip(sum(one, []), sum(two, []), strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert image_ids(sum(one, [])) != image_ids(sum(other, []))


def test_a_stream_restored_mid_epoch_continues_with_the_identical_batches(corpora, tokenizer):
    train, replay = corpora
    kwargs = dict(replay=spec(replay), replay_share=0.6, one_caption_per_image=4)
    straight = stream(spec(train[:1]), tokenizer, **kwargs)
    it = iter(straight)
    expected = [next(it) for _ in range(12)]  # 12 train records at share 0.6: ~7 batches an epoch
    assert straight.position.epoch >= 1
    straight.close()

    first = stream(spec(train[:1]), tokenizer, **kwargs)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    first.close()
    assert state["position"]["epoch"] == 0
    resumed = stream(spec(train[:1]), tokenizer, **kwargs)
    resumed.load_state_dict(state)
    it = iter(resumed)
    rest = [next(it) for _ in range(9)]
    resumed.close()
    for a, b in zip(expected[3:], rest, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert set(image_ids(rest)) & (ids("r0-", 10) | ids("r1-", 10))
    for batch in expected:  # one caption per image holds with replay records mixed in
        assert len(set(batch["image_id"].tolist())) == 4


@pytest.mark.parametrize("replay_files", [2, 1])
def test_two_ranks_read_disjoint_train_records_and_each_its_replay_shard(corpora, tokenizer, replay_files):
    train, replay = corpora
    seen = []
    for rank in range(2):
        s = stream(spec(train), tokenizer, replay=spec(replay[:replay_files]), rank=rank, world=2)
        seen.append(set(image_ids(sum(batches_by_epoch(s, 2), []))))
    train_ids = [ids("t0-", 12), ids("t1-", 12)]
    for rank in range(2):
        assert seen[rank] & train_ids[rank] and not seen[rank] & train_ids[1 - rank]
    replayed = [ids - train_ids[0] - train_ids[1] for ids in seen]
    assert replayed[0] and replayed[1] and not replayed[0] & replayed[1]
    if replay_files == 2:  # whole files per rank
        assert replayed[0] <= ids("r0-", 10) and replayed[1] <= ids("r1-", 10)


def test_a_bad_replay_record_is_skipped_and_named_by_its_file(tmp_path, corpora, tokenizer):
    train, _ = corpora
    replay = write_pairs_tsv(tmp_path / "general.tsv", 6, id_prefix="g")
    lines = replay.read_text(encoding="utf-8").splitlines()
    text, image_id, _, tags = lines[2].split("\t")
    lines[2] = "\t".join([text, image_id, "bm90IGFuIGltYWdl", tags])
    replay.write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = stream(spec(train[:1]), tokenizer, replay=spec([replay]), on_error="skip")
    seen = image_ids(sum(batches_by_epoch(s, 2), []))
    assert stable_image_id("g2") not in seen and set(seen) & ids("g", 6)
    assert s.counter.total == 1 and "general.tsv:3" in s.counter.examples[0]
    with pytest.raises(DataError, match="general.tsv:3"):
        batches_by_epoch(stream(spec(train[:1]), tokenizer, replay=spec([replay])), 2)


def test_the_stream_refuses_a_share_outside_0_1(corpora, tokenizer):
    train, replay = corpora
    for share in (0, 1, 1.5):
        with pytest.raises(ValueError, match="replay_share"):
            stream(spec(train), tokenizer, replay=spec(replay), replay_share=share)


# --- the config and a training run -----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, key, words",
    [
        (["Data.replay={format: official_tsvv, path: a.tsv}"], "Data.replay", "did you mean 'official_tsv'"),
        (["Data.replay={path: a.tsv}"], "Data.replay", "no 'format' key"),
        (["Data.replay_share=1.0"], "Data.replay_share", "(0, 1)"),
        (["Data.replay_share=0"], "Data.replay_share", "(0, 1)"),
        (["Data.replay_share=half"], "Data.replay_share", ""),
        (["Data.replay={format: official_tsv, path: a.tsv}", "Data.replay_share=null"], "Data.replay_share", "null"),
    ],
)
def test_config_errors_name_the_replay_keys(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(BASE, overrides)
    assert info.value.key == key and words in str(info.value)


def test_replay_share_alone_is_allowed_and_a_missing_replay_file_is_named_at_training_start(tmp_path):
    assert load_config(BASE, ["Data.replay_share=0.3"])["Data"]["replay"] is None
    train = write_pairs_tsv(tmp_path / "train.tsv", 4)
    config = load_config(BASE, [f"Data.train={{format: official_tsv, path: {train}}}", "Data.val=null", f"Data.replay={{format: official_tsv, path: {tmp_path}/none.tsv}}"])
    with pytest.raises(ConfigError) as info:
        check_named_files(config)
    assert info.value.key == "Data.replay" and "none.tsv" in str(info.value)


def test_two_training_steps_with_replay(tmp_path):
    train = write_pairs_tsv(tmp_path / "train.tsv", 12, id_prefix="t")
    replay = write_pairs_tsv(tmp_path / "general.tsv", 12, seed=4, id_prefix="g")
    config = write_train_config(
        tmp_path, train, Train={"max_steps": 2, "save_every": 0},
        Data={"replay": {"format": "official_tsv", "path": str(replay)}, "replay_share": 0.5},
    )
    trainer = build_trainer(load_config(str(config)))
    collate, seen = trainer.stream._collate, []

    def watched(records, views):
        seen.extend(r.image_id for r in records)
        return collate(records, views)

    trainer.stream._collate = watched
    trainer.train()
    assert len(seen) == 8 and any(i.startswith("g") for i in seen) and any(i.startswith("t") for i in seen)
    assert f"replay: {replay} at share 0.5" in (tmp_path / "out" / "train.log").read_text(encoding="utf-8")


def test_a_checkpoint_from_before_the_replay_keys_resumes_unless_replay_is_set(tmp_path):
    config = load_config(str(write_train_config(tmp_path, "a.tsv")))
    older = copy.deepcopy(config)
    del older["Data"]["replay"], older["Data"]["replay_share"]
    state = {"step": 1, "world_size": 1, "config": older}
    logged = []
    check_resumable(config, "ckpt", state, 1, logged.append)  # the new keys at their defaults: the same run
    assert logged == []
    config["Data"]["replay"] = {"format": "official_tsv", "path": "general.tsv"}
    with pytest.raises(ConfigError, match=r"Data.replay.path \(None -> 'general.tsv'\)"):
        check_resumable(config, "ckpt", state, 1, logged.append)
