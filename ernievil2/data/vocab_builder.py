"""Build a WordPiece vocabulary for the ERNIE/BERT tokenizer from a caption corpus.

Text is split the way the BERT basic tokenizer splits it (clean, lower-case, strip accents,
every CJK character its own token, punctuation split off); HF ``tokenizers`` does that part.
What goes into the vocabulary is counted here:

- every single-character token (CJK characters, punctuation, lone letters and digits);
- for longer non-CJK words (``nike``, ``2023``): the word's first character and a
  ``##``-continuation piece for each later character, so that any word built from seen
  characters tokenises without ``[UNK]``; and the whole word itself, so frequent words
  stay one token.

Characters are kept before whole words when ``size`` forces a cut, so a size limit costs
whole words first and coverage last. The file is ``token\\tid``, ids 0..n-1, with
``[PAD] [CLS] [SEP] [MASK]`` as ids 0-3 and ``[UNK]`` last, as in the ERNIE 3.0 vocab.
"""
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tokenizers import normalizers, pre_tokenizers

SPECIAL_HEAD = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
UNK_TOKEN = "[UNK]"
CONTINUATION_PREFIX = "##"
MIN_VOCAB_SIZE = len(SPECIAL_HEAD) + 1


def bert_basic_splitter():
    """text -> list of basic tokens, as the BERT basic tokenizer with lower-casing splits it."""
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    def split(text):
        return [word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]

    return split


def corpus_texts(path):
    """The texts in one corpus file, by extension: official ERNIE-ViL ``.tsv`` (caption
    column and, when present, the tags column), Chinese-CLIP ``.jsonl`` (its ``text``
    field), or anything else as plain text with one sentence per line."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if path.suffix == ".tsv":
                fields = line.split("\t")
                yield fields[0]
                if len(fields) >= 4:
                    yield fields[3]
            elif path.suffix == ".jsonl":
                yield json.loads(line)["text"]
            else:
                yield line


@dataclass(frozen=True)
class PieceCounts:
    characters: Counter  # single characters and ##-continuation characters
    words: Counter  # whole non-CJK words longer than one character


def count_pieces(words):
    """Count the vocabulary candidates in a stream of basic tokens."""
    characters, whole_words = Counter(), Counter()
    for word in words:
        characters[word[0]] += 1
        if len(word) > 1:
            whole_words[word] += 1
            characters.update(CONTINUATION_PREFIX + ch for ch in word[1:])
    return PieceCounts(characters, whole_words)


def ranked(counter, min_freq):
    """(token, count) with count >= min_freq, most frequent first, ties by token."""
    return sorted(((t, n) for t, n in counter.items() if n >= min_freq), key=lambda tn: (-tn[1], tn[0]))


def select_vocab(counts, size=None, min_freq=1):
    """The vocabulary tokens in id order: specials, then pieces by frequency, then [UNK]."""
    if size is not None and size < MIN_VOCAB_SIZE:
        raise ValueError(f"size must be at least {MIN_VOCAB_SIZE} (the special tokens), got {size}")
    if min_freq < 1:
        raise ValueError(f"min_freq must be >= 1, got {min_freq}")
    candidates = ranked(counts.characters, min_freq) + ranked(counts.words, min_freq)
    budget = len(candidates) if size is None else size - MIN_VOCAB_SIZE
    chosen = sorted(candidates[:budget], key=lambda tn: (-tn[1], tn[0]))
    return [*SPECIAL_HEAD, *(token for token, _ in chosen), UNK_TOKEN]


def build_vocab(paths, size=None, min_freq=1):
    """Count the corpus files and select their vocabulary; returns (tokens, counts)."""
    split = bert_basic_splitter()
    counts = count_pieces(word for path in paths for text in corpus_texts(path) for word in split(text))
    return select_vocab(counts, size, min_freq), counts


def format_vocab(tokens):
    """``token\\tid`` lines, ids 0..n-1 in order."""
    return "".join(f"{token}\t{index}\n" for index, token in enumerate(tokens))
