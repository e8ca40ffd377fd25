"""WordPiece vocab builder: layout, coverage of the demo captions, determinism.

Coverage is checked with a plain-Python BERT basic + WordPiece tokeniser written here,
independent of the builder's own splitting (HF ``tokenizers``).
"""
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from ernievil2.data import vocab_builder as vb
from ernievil2.demo import fashion_scenes as fs

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_TEXT_LENGTH = 48
DEMO_SPEC = fs.DemoSpec(num_train=60, num_val=20, num_test=30, canvas_size=16)


# ----------------------------------------------------------------------------- reference tokeniser


def is_cjk(ch):
    cp = ord(ch)
    return any(
        lo <= cp <= hi
        for lo, hi in (
            (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
            (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
        )
    )  # fmt: skip


def is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def reference_basic_tokens(text):
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    spaced = "".join(f" {ch} " if is_cjk(ch) or is_punctuation(ch) else ch for ch in text)
    return spaced.split()


def reference_wordpiece(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = ("##" if start else "") + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return [vb.UNK_TOKEN]
        pieces.append(piece)
        start = end
    return pieces


def reference_tokenize(text, vocab):
    return [piece for word in reference_basic_tokens(text) for piece in reference_wordpiece(word, vocab)]


def read_vocab_file(path):
    with open(path, encoding="utf-8") as f:
        return [tuple(line.rstrip("\n").split("\t")) for line in f]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    labels = {"train": np.arange(60, dtype=np.uint8) % 10, "t10k": (np.arange(40) * 3 % 10).astype(np.uint8)}
    images = {split: np.full((len(split_labels), 28, 28), 200, np.uint8) for split, split_labels in labels.items()}
    out_dir = tmp_path_factory.mktemp("demo")
    fs.build_demo_dataset(fs.FashionMnist(images, labels, sha256={}), DEMO_SPEC, out_dir)
    return out_dir


def demo_corpus_files(demo_dir):
    return [demo_dir / name for name in ("train.tsv", "val.tsv", "test.tsv", "test_texts.jsonl")]


def demo_texts(demo_dir):
    return [text for path in demo_corpus_files(demo_dir) for text in vb.corpus_texts(path)]


# ----------------------------------------------------------------------------- tests


def test_every_demo_caption_and_tag_tokenises_without_unk(demo_dir):
    tokens, _ = vb.build_vocab(demo_corpus_files(demo_dir))
    vocab = set(tokens)
    texts = demo_texts(demo_dir)
    assert len(texts) == 2 * (DEMO_SPEC.num_train + DEMO_SPEC.num_val + DEMO_SPEC.num_test) + 2 * DEMO_SPEC.num_test
    for text in texts:
        tokens = reference_tokenize(text, vocab)
        assert vb.UNK_TOKEN not in tokens, text
        # nothing is cut at the official text length 48 ([CLS] + 46 + [SEP])
        assert len(tokens) <= OFFICIAL_TEXT_LENGTH - 2, text
    assert reference_tokenize("红色T恤,蓝色运动鞋", vocab) == ["红", "色", "t", "恤", ",", "蓝", "色", "运", "动", "鞋"]


def test_vocab_file_has_fixed_specials_and_contiguous_unique_ids(demo_dir, tmp_path):
    tokens, _ = vb.build_vocab(demo_corpus_files(demo_dir))
    path = tmp_path / "vocab.txt"
    path.write_text(vb.format_vocab(tokens), encoding="utf-8")
    rows = read_vocab_file(path)
    assert [token for token, _ in rows[:4]] == ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]
    assert rows[-1] == ("[UNK]", str(len(rows) - 1))
    assert [int(index) for _, index in rows] == list(range(len(rows)))
    assert len({token for token, _ in rows}) == len(rows)


def test_official_ernie_vocab_has_the_same_special_layout(shared_dir):
    rows = read_vocab_file(shared_dir / "vocab" / "ernie-3.0-base-zh" / "vocab.txt")
    assert [token for token, _ in rows[:4]] == list(vb.SPECIAL_HEAD)
    assert rows[-1][0] == vb.UNK_TOKEN


def test_demo_captions_need_no_unk_with_the_official_ernie_vocab(demo_dir, shared_dir):
    vocab = {token for token, _ in read_vocab_file(shared_dir / "vocab" / "ernie-3.0-base-zh" / "vocab.txt")}
    for text in demo_texts(demo_dir):
        assert vb.UNK_TOKEN not in reference_tokenize(text, vocab), text


def test_output_is_deterministic_and_independent_of_input_order(demo_dir):
    files = demo_corpus_files(demo_dir)
    first = vb.format_vocab(vb.build_vocab(files)[0])
    assert first == vb.format_vocab(vb.build_vocab(files)[0])
    assert first == vb.format_vocab(vb.build_vocab(list(reversed(files)))[0])


def test_latin_words_stay_whole_or_fall_back_to_continuation_pieces(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Nike运动鞋\nNIKE跑鞋 2023款\n\nNiké凉鞋\n", encoding="utf-8")
    tokens, counts = vb.build_vocab([corpus])
    vocab = set(tokens)
    assert reference_tokenize("NIKE 2023", vocab) == ["nike", "2023"]
    assert {"n", "##i", "##k", "##e", "2", "##0", "##2", "##3"} <= vocab

    # With room for characters only, whole words are cut first and still tokenise piecewise.
    only_characters = vb.select_vocab(counts, size=vb.MIN_VOCAB_SIZE + len(counts.characters))
    assert "nike" not in only_characters
    assert reference_tokenize("Nike 2023", set(only_characters)) == ["n", "##i", "##k", "##e", "2", "##0", "##2", "##3"]


def test_min_freq_and_size_drop_the_rarest_pieces_first(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("红红红蓝蓝绿\n", encoding="utf-8")
    _, counts = vb.build_vocab([corpus])
    assert vb.select_vocab(counts, min_freq=2) == [*vb.SPECIAL_HEAD, "红", "蓝", vb.UNK_TOKEN]
    assert vb.select_vocab(counts, size=vb.MIN_VOCAB_SIZE + 1) == [*vb.SPECIAL_HEAD, "红", vb.UNK_TOKEN]
    with pytest.raises(ValueError, match="size must be at least"):
        vb.select_vocab(counts, size=vb.MIN_VOCAB_SIZE - 1)


def test_tsv_input_contributes_caption_and_tags_columns_only(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("一件红色的T恤\t10000000\tQUJD\t红色T恤\n一条裤子\t10000001\tREVG\n", encoding="utf-8")
    assert list(vb.corpus_texts(tsv)) == ["一件红色的T恤", "红色T恤", "一条裤子"]


def test_cli_writes_the_vocab_and_reports_unk_characters(demo_dir, tmp_path):
    output = tmp_path / "vocab.txt"
    inputs = [str(path) for path in demo_corpus_files(demo_dir)]
    command = [sys.executable, str(REPO / "tools" / "build_vocab.py"), "--input", *inputs]
    result = subprocess.run(command + ["--output", str(output)], capture_output=True, text=True, check=True)
    expected = vb.format_vocab(vb.build_vocab(demo_corpus_files(demo_dir))[0])
    assert output.read_text(encoding="utf-8") == expected
    assert f"wrote {expected.count(chr(10))} tokens" in result.stdout
    small = subprocess.run(command + ["--output", str(output), "--size", "10"], capture_output=True, text=True)
    assert small.returncode == 0 and "characters will tokenise as [UNK]" in small.stdout
