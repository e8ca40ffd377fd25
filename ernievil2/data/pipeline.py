"""The training input stream: sharded, shuffled, multi-view, resumable to the batch.

Order of work, and why:
1. Each rank reads its own part of the corpus. With at least as many files as
   ranks, whole files go to ranks (file ``i`` to rank ``i % world``), so no
   byte is read twice; otherwise every rank reads every file and keeps lines
   ``n % world == rank``. Nothing is ever loaded whole.
2. Records (still encoded bytes) pass a seeded shuffle buffer and are grouped
   into batches in the main process. This order is a pure function of
   (seed, epoch, rank), so resuming skips the consumed batches without
   decoding a single image.
3. Decoding and augmentation run in worker processes, one batch per task, in
   order, with a bounded prefetch window. Each sample's augmentation draws
   from its own generator seeded by (seed, epoch, rank, sample index): the
   result does not depend on the number of workers.
Training is counted in steps, not epochs: a rank whose shard runs out starts
its next epoch on its own, so ranks with uneven shards never wait on each other.
"""
import collections
import dataclasses
import glob
import hashlib
import itertools

import numpy as np

from ..files import check_path
from ..views import IMAGE_VIEWS, TAG_VIEW
from .errors import DataError, SkipCounter, split_where
from .parallel import OrderedPool
from .readers import ChineseClipSplit, decode_image_bytes, open_pairs
from .tokenizer import trim_padding


@dataclasses.dataclass
class StreamPosition:
    """Where a rank's stream stands: the epoch, and how many of its records are used up.

    ``records`` counts records of the epoch's shuffled order up to and
    including the last one placed in a yielded batch (bad records included),
    so a resumed stream restarts right after it.
    """

    epoch: int = 0
    records: int = 0


def expand_sources(spec):
    """One spec per file: ``path`` may be a glob pattern or a list of paths/patterns."""
    spec = dict(spec)
    key = "path" if "path" in spec else None
    if key is None:
        return [spec]
    patterns = spec[key] if isinstance(spec[key], (list, tuple)) else [spec[key]]
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        files.extend(matched)
    for path in files:
        try:
            check_path(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"data file not found: {path}") from None
    return [{**spec, key: path} for path in files]


def check_spec_paths(spec):
    """Raise an OSError naming the path when a file or folder the data spec names is missing, of the
    other kind, unreadable or an empty file: ``path`` (files), ``root`` and ``image_root`` (folders),
    a Chinese-CLIP split's two files."""
    expand_sources(spec)
    for key in ("root", "image_root"):
        if spec.get(key) is not None:
            check_path(spec[key], folder=True)
    if spec.get("format") == "chinese_clip":
        for path in ChineseClipSplit.split_files(spec["root"], spec["split"]):
            check_path(path)


def describe_spec(spec):
    """The data a spec names, for messages: its path(s) or root."""
    named = spec.get("path", spec.get("root"))
    return ", ".join(map(str, named)) if isinstance(named, (list, tuple)) else str(named)


def rank_sources(sources, rank, world):
    """(spec, shard) pairs this rank reads; see the module docstring."""
    if len(sources) >= world:
        return [(spec, None) for i, spec in enumerate(sources) if i % world == rank]
    return [(spec, (rank, world)) for spec in sources]


def stable_image_id(image_id):
    """A non-negative int64 for an image id string, equal on every rank and run."""
    return int.from_bytes(hashlib.blake2b(image_id.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def stable_caption_id(text):
    """A non-negative int64 for a caption's exact text (the loss's same-caption positives)."""
    return stable_image_id(text)


def spread_images(records, gap, max_waiting, key=lambda record: record.image_id):
    """The records reordered so that two of one image are at least ``gap`` places apart.

    Any ``gap`` consecutive records then show ``gap`` different images: with
    ``gap`` the step's batch, a batch holds one caption per image. A record
    that comes too soon after its image's last one waits, and the oldest
    waiting record that may go goes before each new one. The order is a pure
    function of the input, so a resumed stream (which counts records of this
    order) continues it exactly. Records still waiting when the input ends
    are left out, like the epoch's last incomplete batch. More than
    ``max_waiting`` waiting records (a corpus with runs of one image) let the
    oldest go early, bounding memory at the cost of the guarantee.
    """
    last = {}  # image -> its latest output position
    waiting = collections.deque()
    position = 0

    def may_go(record):
        seen = last.get(key(record))
        return seen is None or position - seen >= gap

    def release():
        for index, record in enumerate(waiting):
            if may_go(record):
                del waiting[index]
                return record
        return None

    def emit(record):
        nonlocal position
        last[key(record)] = position
        position += 1
        return record

    for record in records:
        while (ready := release()) is not None:
            yield emit(ready)
        if may_go(record):
            yield emit(record)
        else:
            waiting.append(record)
            if len(waiting) > max_waiting:
                yield emit(waiting.popleft())
    while (ready := release()) is not None:
        yield emit(ready)


def tag_text(tags, prompt, separator):
    return prompt + separator.join(tags)


def shuffled(records, buffer_size, rng):
    """Reservoir-style shuffle with a bounded buffer."""
    if buffer_size <= 1:
        yield from records
        return
    buffer = []
    for record in records:
        if len(buffer) < buffer_size:
            buffer.append(record)
            continue
        index = int(rng.integers(len(buffer)))
        yield buffer[index]
        buffer[index] = record
    order = rng.permutation(len(buffer))
    for index in order:
        yield buffer[index]


# The last number of the generator seeds [seed, epoch, rank, code, ...] that draw an epoch's order
# (augmentation's is 1, in TrainStream._jobs): one stream of numbers per purpose.
EPOCH_ORDER, REPLAY_DRAWS, REPLAY_PASS = 0, 2, 3


def shuffled_pass(sources, counter, rng, buffer_size):
    """One pass over (spec, shard) ``sources``: the files in an order drawn from ``rng``, then its shuffle buffer."""
    order = rng.permutation(len(sources)) if len(sources) > 1 else [0]

    def read():
        for index in order:
            spec, shard = sources[index]
            yield from open_pairs(spec, counter, shard)

    return shuffled(read(), buffer_size, rng)


def epoch_records(sources, counter, seed, epoch, rank, buffer_size):
    """This rank's records for one epoch, in their shuffled order."""
    return shuffled_pass(sources, counter, np.random.default_rng([seed, epoch, rank, EPOCH_ORDER]), buffer_size)


def replay_records(sources, counter, seed, epoch, rank, buffer_size, where):
    """This rank's replay records for one epoch: pass after pass over ``sources``, each in its own order.

    Pass ``p`` is shuffled by a generator seeded from (seed, epoch, rank, p), so the
    whole endless stream is a pure function of them. A pass without a single good
    record (an empty shard, every record bad) raises a DataError naming ``where``:
    the next pass would find none either.
    """
    for n in itertools.count():
        empty = True
        for record in shuffled_pass(sources, counter, np.random.default_rng([seed, epoch, rank, REPLAY_PASS, n]), buffer_size):
            empty = False
            yield record
        if empty:
            raise DataError(where, None, f"rank {rank}: the replay data gave no good record ({counter.summary()})")


def interleave(train, replay, share, rng):
    """``train``'s records with ``replay``'s mixed in, each in its own order.

    Before each output record one draw from ``rng`` picks ``replay``'s next record
    with probability ``share``, else ``train``'s next; the output ends at the first
    draw for ``train`` once it is used up. So every train record comes once, and a
    share ``share`` of the output is replay on average (``share / (1 - share)``
    replay records per train record).
    """
    train = iter(train)
    while True:
        if rng.random() < share:
            yield next(replay)
        else:
            record = next(train, None)
            if record is None:
                return
            yield record


# --- per-batch work, run in worker processes ----------------------------------

_WORKER_TRANSFORM = None


def _init_worker(transform):
    global _WORKER_TRANSFORM
    _WORKER_TRANSFORM = transform
    try:
        import cv2

        cv2.setNumThreads(1)  # one worker, one core: cv2's own threads would oversubscribe
    except ImportError:
        pass


def decode_views(job):
    """Decode and augment one batch: returns (views array [n_views, B, 3, H, W], kept mask, errors)."""
    transform = _WORKER_TRANSFORM
    images, wheres, seeds, n_views = job
    out, kept, errors = [], [], []
    for data, where, seed in zip(images, wheres, seeds):
        try:
            rgb = decode_image_bytes(data, where)
        except DataError as err:
            kept.append(False)
            errors.append(err)
            continue
        rng = np.random.default_rng(seed)
        out.append(np.stack([transform(rgb, rng) for _ in range(n_views)]))
        kept.append(True)
    views = np.stack(out, axis=1) if out else None
    return views, np.array(kept, dtype=bool), errors


class TrainStream:
    """Infinite iterator of training batches (dicts of numpy arrays) for one rank.

    Batch keys: ``image_v1`` (and ``image_v2`` when two image views are
    needed) float32 [B, 3, H, W]; ``text`` int64 [B, L] caption ids; ``tag``
    int64 [B, L] tag-prompt ids when ``need_tags``; ``image_id`` int64 [B];
    ``caption_id`` int64 [B] (a hash of the caption text).
    A record whose image fails to decode is counted (or raised, per policy)
    and replaced by the next record, so every batch is full.

    ``one_caption_per_image``: a positive ``gap`` (the step's batch, over its
    micro-batches) reorders the epoch with :func:`spread_images`, so no image
    appears twice within ``gap`` consecutive records of this rank; 0 keeps
    the shuffled order. A record replacing one that failed to decode can
    still repeat an image of its batch.

    ``replay``: a second pair spec (general-domain pairs, against forgetting
    when fine-tuning), sharded like ``spec``, whose records are mixed into
    each epoch with :func:`interleave` so that on average a share
    ``replay_share`` of the records is theirs. An epoch is still one pass over
    ``spec``; the replay records cycle through their corpus in passes of their
    own order (:func:`replay_records`). The merged order is a pure function of
    (seed, epoch, rank), so the position still resumes it exactly.
    """

    def __init__(
        self,
        spec,
        tokenizer,
        transform,
        batch_size,
        image_views=1,
        need_tags=False,
        tag_prompt="图中有：",
        tag_separator="、",
        rank=0,
        world=1,
        seed=0,
        shuffle_buffer=1024,
        num_workers=0,
        prefetch=2,
        on_error="raise",
        position=None,
        one_caption_per_image=0,
        replay=None,
        replay_share=0.5,
    ):
        if image_views not in (1, 2):
            raise ValueError(f"image_views must be 1 or 2, got {image_views}")
        self.sources = rank_sources(expand_sources(spec), rank, world)
        if not self.sources:
            raise DataError(
                describe_spec(spec), None, f"rank {rank} has no data file: {len(expand_sources(spec))} file(s) for {world} ranks"
            )
        self.spec = spec
        self.tokenizer = tokenizer
        self.transform = transform
        self.batch_size = batch_size
        self.image_views = image_views
        self.need_tags = need_tags
        self.tag_prompt, self.tag_separator = tag_prompt, tag_separator
        self.rank, self.seed = rank, seed
        self.shuffle_buffer = shuffle_buffer
        if isinstance(one_caption_per_image, bool) or not isinstance(one_caption_per_image, int) or one_caption_per_image < 0:
            raise ValueError(f"one_caption_per_image must be a gap of records >= 0, got {one_caption_per_image!r}")
        self.image_gap = one_caption_per_image
        if not 0 < replay_share < 1:
            raise ValueError(f"replay_share must be in (0, 1), got {replay_share!r}")
        self.replay = replay
        self.replay_sources = None if replay is None else rank_sources(expand_sources(replay), rank, world)
        self.replay_share = replay_share
        self.pool = OrderedPool(num_workers, _init_worker, (transform,), prefetch)
        self.counter = SkipCounter(on_error)
        self.position = position or StreamPosition()

    def _record_jobs(self, epoch, start):
        """Groups of ``batch_size`` (index, record) from the epoch order, from record ``start`` on; the last may be short."""
        records = epoch_records(self.sources, self.counter, self.seed, epoch, self.rank, self.shuffle_buffer)
        if self.replay is not None:
            replay = replay_records(
                self.replay_sources, self.counter, self.seed, epoch, self.rank, self.shuffle_buffer, describe_spec(self.replay)
            )
            records = interleave(records, replay, self.replay_share, np.random.default_rng([self.seed, epoch, self.rank, REPLAY_DRAWS]))
        if self.image_gap:
            # Waiting records hold their image bytes: bounded like the shuffle buffer, with
            # room for a few captions of each image of a step even when nothing is shuffled.
            records = spread_images(records, self.image_gap, max(8 * self.image_gap, self.shuffle_buffer))
        group = []
        for index, record in enumerate(records):
            if index < start or not self._has_needed_fields(record):
                continue
            group.append((index, record))
            if len(group) == self.batch_size:
                yield group
                group = []
        if group:
            # Too few for a batch alone, but it replaces records of the groups before that failed to decode.
            yield group

    def _has_needed_fields(self, record):
        if self.need_tags and not record.tags:
            self.counter.report(DataError(*split_where(record.where), "missing tags: the tag view needs a tags column"))
            return False
        return True

    def _jobs(self, groups, epoch):
        for group in groups:
            seeds = [[self.seed, epoch, self.rank, 1, index] for index, _ in group]
            images = [r.image for _, r in group]
            wheres = [r.image_where for _, r in group]
            yield group, (images, wheres, seeds, self.image_views)

    def _epoch(self, epoch, start):
        """Full batches of one epoch; a record whose image fails to decode is replaced by the next one."""
        ready_views, ready = [], []  # decoded samples not yet yielded, with (index, record)
        yielded = 0
        jobs = self._jobs(self._record_jobs(epoch, start), epoch)
        for group, (views, kept, errors) in self.pool.map(decode_views, jobs):
            for err in errors:
                self.counter.report(err)
            if views is not None:
                ready_views.append(views)
            ready.extend(item for item, ok in zip(group, kept) if ok)
            while len(ready) >= self.batch_size:
                views_all = np.concatenate(ready_views, axis=1)
                batch_items, ready = ready[: self.batch_size], ready[self.batch_size :]
                ready_views = [views_all[:, self.batch_size :]] if ready else []
                self.position.records = batch_items[-1][0] + 1
                yielded += 1
                yield self._collate([r for _, r in batch_items], views_all[:, : self.batch_size])
        if yielded == 0 and start == 0:
            raise DataError(
                describe_spec(self.spec), None,
                f"rank {self.rank}: an epoch produced no full batch of {self.batch_size} "
                f"({self.counter.summary()}); use fewer ranks, a smaller batch or more data",
            )

    def _collate(self, records, views):
        batch = {IMAGE_VIEWS[i]: views[i] for i in range(self.image_views)}
        captions, cut = self.tokenizer.encode([r.text for r in records], return_truncated=True)
        for record in (r for r, c in zip(records, cut) if c):
            self.counter.note_truncated(record.where)
        texts = {"text": captions}
        if self.need_tags:
            texts[TAG_VIEW] = self.tokenizer.encode([tag_text(r.tags, self.tag_prompt, self.tag_separator) for r in records])
        # Each array to its own longest row: the tag view, usually shorter than the
        # captions, goes through the text tower at its own length (engine/steps.py).
        batch.update({name: trim_padding(ids, self.tokenizer.pad_id) for name, ids in texts.items()})
        batch["image_id"] = np.array([stable_image_id(r.image_id) for r in records], dtype=np.int64)
        batch["caption_id"] = np.array([stable_caption_id(r.text) for r in records], dtype=np.int64)
        return batch

    def state_dict(self):
        """Where the stream stands and what it skipped: enough to continue it exactly."""
        return {
            "position": vars(self.position).copy(),
            "skipped": dict(self.counter.skipped),
            "truncated": sorted(self.counter.truncated),
        }

    def load_state_dict(self, state):
        self.position = StreamPosition(**state["position"])
        # Checkpoints written before skip reports kept counts by reason, with no places to list.
        if all(isinstance(reason, str) for reason in state["skipped"].values()):
            self.counter.skipped.update(state["skipped"])
        self.counter.truncated.update(state.get("truncated", ()))

    def __iter__(self):
        while True:
            yield from self._epoch(self.position.epoch, self.position.records)
            self.position = StreamPosition(self.position.epoch + 1, 0)

    def close(self):
        self.pool.close()

