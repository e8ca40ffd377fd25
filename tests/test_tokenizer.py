"""The tokenizer: official ids, backend equality over the whole BMP, vocab forms, padding."""

import numpy as np
import pytest

from ernievil2.data.tokenizer import ErnieTokenizer, basic_tokenize, load_vocab, wordpiece
from ernievil2.resource_files import resolve_resource

VOCAB = resolve_resource("ernie-3.0-base-zh/vocab.txt")


@pytest.fixture(scope="module")
def backends():
    return ErnieTokenizer(VOCAB, backend="python"), ErnieTokenizer(VOCAB, backend="fast")


def test_bundled_vocab_is_the_official_one(shared_dir):
    official = shared_dir / "vocab" / "ernie-3.0-base-zh" / "vocab.txt"
    assert open(VOCAB, "rb").read() == official.read_bytes()
    vocab = load_vocab(VOCAB)
    assert len(vocab) == 39979 and vocab["[PAD]"] == 0 and vocab["[CLS]"] == 1 and vocab["[SEP]"] == 2
    assert vocab["[UNK]"] == 39979  # ids are read from the file, not from line numbers


def test_plain_vocab_form(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[CLS]\n[SEP]\n[UNK]\n红\n##色\n", encoding="utf-8")
    tok = ErnieTokenizer(str(path), max_len=6, backend="python")
    assert tok.vocab["红"] == 4 and tok.vocab["##色"] == 5
    np.testing.assert_array_equal(tok.encode(["红", "红绿"]), [[1, 4, 2, 0, 0, 0], [1, 4, 3, 2, 0, 0]])


def test_bad_vocab_lines_are_located(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\t0\n[CLS]\t1\tx\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.txt:2"):
        load_vocab(str(path))
    path.write_text("[PAD]\n[CLS]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[SEP\]"):
        load_vocab(str(path))


def test_basic_and_wordpiece_rules():
    assert basic_tokenize("Hello, 世界!\tÉcole") == ["hello", ",", "世", "界", "!", "ecole"]
    assert basic_tokenize("a\x00b\ufffd c") == ["ab", "c"]
    vocab = {"un": 0, "##aff": 1, "##able": 2}
    assert wordpiece("unaffable", vocab) == ["un", "##aff", "##able"]
    assert wordpiece("unaffx", vocab) == ["[UNK]"]
    assert wordpiece("a" * 101, {"a": 0, "##a": 1}) == ["[UNK]"]


def test_truncation_and_padding(backends):
    tok = backends[0]
    ids = tok.encode(["的" * 100, "", "的"], max_len=8)
    de = tok.vocab["的"]
    np.testing.assert_array_equal(ids[0], [1] + [de] * 6 + [2])
    np.testing.assert_array_equal(ids[1], [1, 2, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(ids[2], [1, de, 2, 0, 0, 0, 0, 0])
    assert ids.dtype == np.int64


def test_backends_agree_on_mixed_text(backends):
    python, fast = backends
    texts = [
        "一只戴着红色帽子的小狗在草地上奔跑",
        "2022年北京冬奥会，ERNIE-ViL 2.0 发布！",
        "Café naïve résumé ＡＢＣ１２３，全角标点。",
        "emoji 😀 and tabs\tand\u3000ideographic space",
        "\u061d\u2e55 new-Unicode punctuation \U0002B820 ext-E 𠀀",
        "",
        "a" * 150 + " x",
    ]
    np.testing.assert_array_equal(python.encode(texts), fast.encode(texts))


@pytest.mark.parametrize("context", ["a{}b中", "中{}1", "{}", "T{}恤 x"])
def test_backends_agree_on_every_bmp_character(backends, context):
    python, fast = backends
    chars = [chr(cp) for cp in range(0x10000) if not 0xD800 <= cp <= 0xDFFF]
    texts = [context.format(c) for c in chars]
    got, expected = fast.token_ids(texts), python.token_ids(texts)
    bad = [hex(ord(c)) for c, g, e in zip(chars, got, expected) if g != e]
    assert bad == []


def test_backends_agree_beyond_the_bmp_and_without_lower_casing(backends):
    python, fast = backends
    texts = ["𠀀𠀁 ext-B", "\U0002B820 ext-E", "😀😃", "中\U0001F600文"]
    assert fast.token_ids(texts) == python.token_ids(texts)
    cased = ErnieTokenizer(VOCAB, do_lower_case=False)
    assert cased.token_ids(["ABC Déjà"]) == ErnieTokenizer(VOCAB, do_lower_case=False, backend="python").token_ids(["ABC Déjà"])


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown tokenizer backend 'rust'"):
        ErnieTokenizer(VOCAB, backend="rust")
