"""WordPiece tokenisation identical to the official ERNIE-ViL 2.0 reader, and fast.

Text ids are ``[CLS] + first (max_len - 2) pieces + [SEP]``, right-padded with
``[PAD]`` (id 0) to ``max_len``, as the official reader builds them.

Two backends give the same ids: ``python``, a plain BERT basic + WordPiece
tokeniser (the reference), and ``fast`` (the default), which exploits what
the reference does to Chinese text. Every CJK ideograph and every punctuation
character becomes a token of its own, whatever surrounds it, so a text splits
into such single characters (looked up directly) and runs of anything else,
which go through the reference and are cached. A text of single characters
only is one dict lookup per character. ``tests/test_tokenizer.py`` proves the
two backends equal on every BMP character in context; the fast one is an
order of magnitude quicker (docs/benchmarks.md).
"""
import os
import re
import unicodedata

import numpy as np

from ..resource_files import resolve_resource

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
MAX_CHARS_PER_WORD = 100


def load_vocab(path):
    """Read ``token`` or ``token\\tid`` lines (both forms exist) into {token: id}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocab file not found: {path}")
    vocab = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f):
            fields = line.rstrip("\n").split("\t")
            token = fields[0].strip()
            if len(fields) > 2 or not token:
                raise ValueError(f"{path}:{number + 1}: expected 'token' or 'token<TAB>id', got {line!r}")
            vocab[token] = int(fields[1]) if len(fields) == 2 else number
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{path}: vocab lacks special token(s) {missing}")
    return vocab


def trim_padding(input_ids, pad_id=0):
    """Drop the trailing columns that are padding in every row.

    The text tower masks padding keys, so the embeddings do not change; the
    work does, since attention is quadratic in the length.
    """
    used = np.flatnonzero((input_ids != pad_id).any(axis=0))
    return input_ids[:, : used[-1] + 1] if used.size else input_ids


def _is_cjk(cp):
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _is_punctuation(ch):
    cp = ord(ch)
    # All non-alphanumeric ASCII counts as punctuation, as in BERT.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch):
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def basic_tokenize(text, lower=True):
    """Clean, split CJK characters and punctuation, lower-case and strip accents."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_whitespace(ch):
            chars.append(" ")
        elif _is_cjk(cp):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    words = []
    for word in "".join(chars).split():
        if lower:
            word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        current = ""
        for ch in word:
            if _is_punctuation(ch):
                if current:
                    words.append(current)
                    current = ""
                words.append(ch)
            else:
                current += ch
        if current:
            words.append(current)
    return words


def wordpiece(word, vocab, unk="[UNK]"):
    """Greedy longest-match-first split of one word; the whole word is [UNK] if any part fails."""
    if len(word) > MAX_CHARS_PER_WORD:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


def _ranges(codepoints):
    start = prev = codepoints[0]
    for cp in codepoints[1:]:
        if cp != prev + 1:
            yield start, prev
            start = cp
        prev = cp
    yield start, prev


def _char_class(codepoints):
    return "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in _ranges(codepoints))


_SEGMENTERS = None


def segmenters():
    """(whole-text matcher, segment finder), built once per process (~0.2 s).

    Single characters: BMP CJK ideographs and punctuation that the reference
    maps to themselves (so not, e.g., compatibility ideographs that NFD changes).
    Runs: maximal stretches of anything but single characters and the
    reference's whitespace; supplementary-plane characters always land in runs.
    """
    global _SEGMENTERS
    if _SEGMENTERS is None:
        bmp = [cp for cp in range(0x10000) if not 0xD800 <= cp <= 0xDFFF]
        single = [
            cp for cp in bmp if (_is_cjk(cp) or _is_punctuation(chr(cp))) and basic_tokenize(chr(cp)) == [chr(cp)]
        ]
        space = [cp for cp in bmp if _is_whitespace(chr(cp))]
        singles, spaces = _char_class(single), _char_class(space)
        _SEGMENTERS = (re.compile(f"[{singles}]*"), re.compile(f"([{singles}])|[^{singles}{spaces}]+"))
    return _SEGMENTERS


class ErnieTokenizer:
    RUN_CACHE_SIZE = 200_000

    def __init__(self, vocab_file, max_len=48, do_lower_case=True, backend="fast"):
        if max_len < 3:
            raise ValueError(f"max_len must be at least 3 ([CLS] x [SEP]), got {max_len}")
        if backend not in ("fast", "python"):
            raise ValueError(f"unknown tokenizer backend {backend!r}; use fast or python")
        self.vocab_file = vocab_file
        self.vocab = load_vocab(vocab_file)
        self.max_len = max_len
        self.lower = do_lower_case
        self.backend = backend
        self.pad_id, self.cls_id = self.vocab["[PAD]"], self.vocab["[CLS]"]
        self.sep_id, self.unk_id = self.vocab["[SEP]"], self.vocab["[UNK]"]
        self._runs = {}

    def tokenize(self, text):
        """Word pieces of ``text`` (no special tokens), via the reference path."""
        return [p for w in basic_tokenize(text, self.lower) for p in wordpiece(w, self.vocab)]

    def _ids_python(self, text):
        return [self.vocab.get(p, self.unk_id) for p in self.tokenize(text)]

    def _run_ids(self, run):
        ids = self._runs.get(run)
        if ids is None:
            ids = self._ids_python(run)
            if len(self._runs) < self.RUN_CACHE_SIZE:
                self._runs[run] = ids
        return ids

    def _ids_fast(self, text):
        whole, segment = segmenters()
        get, unk = self.vocab.get, self.unk_id
        if whole.fullmatch(text):
            return [get(ch, unk) for ch in text]
        ids = []
        for match in segment.finditer(text):
            single = match.group(1)
            if single:
                ids.append(get(single, unk))
            else:
                ids.extend(self._run_ids(match.group(0)))
        return ids

    def token_ids(self, texts):
        """Piece ids of each text, without special tokens or truncation."""
        ids_of = self._ids_fast if self.backend == "fast" and self.lower else self._ids_python
        return [ids_of(t) for t in texts]

    def encode(self, texts, max_len=None, return_truncated=False):
        """``[N, max_len]`` int64 ids: [CLS] + pieces[:max_len-2] + [SEP], padded with [PAD].

        ``return_truncated``: also a bool mask of the texts that lost pieces to ``max_len``.
        """
        max_len = max_len or self.max_len
        out = np.full((len(texts), max_len), self.pad_id, dtype=np.int64)
        truncated = np.zeros(len(texts), dtype=bool)
        out[:, 0] = self.cls_id
        for row, ids in enumerate(self.token_ids(texts)):
            truncated[row] = len(ids) > max_len - 2
            ids = ids[: max_len - 2]
            out[row, 1 : 1 + len(ids)] = ids
            out[row, 1 + len(ids)] = self.sep_id
        return (out, truncated) if return_truncated else out


def build_tokenizer(config):
    """The tokenizer of a loaded config's ``Tokenizer`` section; the vocab is found by ``resolve_resource``."""
    section = config["Tokenizer"]
    vocab_file = resolve_resource(section["vocab_file"], config)
    return ErnieTokenizer(vocab_file, section["max_len"], section["do_lower_case"], section["backend"])
