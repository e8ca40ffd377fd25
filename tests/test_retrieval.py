"""Retrieval evaluation: official table, blocked ranks vs the full matrix, multi-GT, top-k, files, CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ernievil2.data.errors import DataError
from ernievil2.evaluation import retrieval
from ernievil2.evaluation.retrieval import (
    RetrievalInputError,
    dedup_gallery,
    evaluate_multi_gt,
    evaluate_official,
    load_features,
    official_table,
    one_to_one_pairs,
    read_official_embeddings,
    recall_metrics,
    retrieval_ranks,
    save_features,
    text_image_pairs,
    text_positives_csr,
    topk,
)

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "tools" / "eval_retrieval.py"


def unit_rows(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dyadic_rows(rng, n, dim):
    """Rows of multiples of 1/8: every dot product is exact in float32, whatever the BLAS kernel.

    Copies of a row then score exactly alike in any block shape; with real-valued rows a GEMM may
    round two equal columns differently (OpenBLAS on AMD Zen does), and the comparison would test
    the BLAS, not the ranking.
    """
    return (np.round(rng.standard_normal((n, dim)) * 4) / 8).astype(np.float32)


def full_matrix_ranks(text_emb, image_emb, pairs):
    """The official algorithm on the whole score matrix: min over positives of #items scoring higher."""
    scores = text_emb @ image_emb.T

    def ranks(matrix, query_of_pair, gallery_of_pair, n_queries):
        out = np.full(n_queries, -1, dtype=np.int64)
        for q in range(n_queries):
            positives = gallery_of_pair[query_of_pair == q]
            if positives.size:
                out[q] = min(int((matrix[q] > matrix[q, p]).sum()) for p in positives)
        return out

    return (
        ranks(scores, pairs.text, pairs.image, pairs.n_texts),
        ranks(scores.T, pairs.image, pairs.text, pairs.n_images),
    )


def random_pairs(rng, n_texts, n_images):
    """1-3 positives per text; some images are nobody's positive."""
    counts = rng.integers(1, 4, n_texts)
    text = np.repeat(np.arange(n_texts), counts)
    image = rng.integers(0, n_images - 5, len(text))
    return text_image_pairs(text, image, n_texts, n_images)


# ----------------------------------------------------------------------------
# official protocol


def test_official_fixture_table_is_byte_exact(shared_dir):
    folder = shared_dir / "fixtures" / "official_ernievil2_tiny"
    metrics = evaluate_official(np.load(folder / "text_emb.npy"), np.load(folder / "image_emb.npy"))
    expected = (folder / "official_eval_output.txt").read_text(encoding="utf-8")
    assert official_table(metrics).splitlines() == expected.splitlines()


def test_table_widens_a_column_for_100_percent():
    metrics = {
        key: {"r1": 1.0, "r5": 1.0, "r10": 1.0, "mean_recall": 1.0}
        for key in ("text2image", "image2text", "mean")
    }
    lines = official_table(metrics).splitlines()
    assert lines[0] == "| Name       |    R@1 |    R@5 |   R@10 |   meanRecall |"
    assert lines[1] == "|------------|--------|--------|--------|--------------|"
    assert lines[2] == "| Text2Image | 100.00 | 100.00 | 100.00 |       100.00 |"


def test_recall_metrics_by_hand():
    metrics = recall_metrics(np.array([0, 3, 12, 7, -1]))
    assert metrics["n_queries"] == 4
    assert metrics["r1"] == 0.25
    assert metrics["r5"] == 0.5
    assert metrics["r10"] == 0.75
    assert metrics["mean_recall"] == pytest.approx(0.5)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 13 + 1 / 8) / 4)


def test_official_protocol_needs_as_many_texts_as_images():
    rng = np.random.default_rng(0)
    with pytest.raises(RetrievalInputError, match="5 texts and 4 images"):
        evaluate_official(unit_rows(rng, 5, 8), unit_rows(rng, 4, 8))


def test_non_finite_embedding_is_refused():
    rng = np.random.default_rng(0)
    text = unit_rows(rng, 6, 8)
    text[4, 2] = np.nan
    with pytest.raises(RetrievalInputError, match="text_emb row 4 is not finite"):
        evaluate_official(text, unit_rows(rng, 6, 8))


# ----------------------------------------------------------------------------
# blocked ranks == full-matrix ranks


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_one_to_one_ranks_match_full_matrix(block_size):
    rng = np.random.default_rng(block_size)
    text, image = dyadic_rows(rng, 150, 32), dyadic_rows(rng, 150, 32)
    # Copies of a positive tie with it, in both directions.
    image[100:110] = image[:10]
    text[120:130] = text[20:30]
    pairs = one_to_one_pairs(150)
    got = retrieval_ranks(text, image, pairs, block_size)
    want = full_matrix_ranks(text, image, pairs)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("block_size", [3, 16, 50, 1000])
def test_multi_positive_ranks_match_full_matrix(block_size):
    rng = np.random.default_rng(10 + block_size)
    text, image = dyadic_rows(rng, 123, 24), dyadic_rows(rng, 77, 24)
    image[60:70] = image[5:15]
    text[100:110] = text[:10]
    pairs = random_pairs(rng, 123, 77)
    got = retrieval_ranks(text, image, pairs, block_size)
    want = full_matrix_ranks(text, image, pairs)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert (got[1] == -1).sum() >= 5  # the images no text names


@pytest.mark.parametrize("block_size", [4, 33, 1000])
def test_exact_ties_count_for_the_query(block_size):
    # Small integer vectors make every score exact, so ties are everywhere.
    rng = np.random.default_rng(20 + block_size)
    text = rng.integers(-1, 2, (90, 6)).astype(np.float32)
    image = rng.integers(-1, 2, (70, 6)).astype(np.float32)
    pairs = random_pairs(rng, 90, 70)
    got = retrieval_ranks(text, image, pairs, block_size)
    want = full_matrix_ranks(text, image, pairs)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_identical_rows_groups_equal_values():
    rng = np.random.default_rng(3)
    x = unit_rows(rng, 8, 5)
    x[5] = x[1]
    x[7] = x[1]
    x[2, 0], x[6] = 0.0, x[2]
    x[6, 0] = -0.0
    np.testing.assert_array_equal(retrieval.identical_rows(x), [0, 1, 2, 3, 4, 1, 2, 1])


def test_tied_items_are_copies_of_a_positive_but_not_positives():
    # Gallery rows 0, 2 and 3 are one vector; query 0's positives are 0 and 3, query 1's is 1.
    first = np.array([0, 1, 0, 0, 4])
    queries, items = retrieval.tied_items(np.array([0, 0, 1]), np.array([0, 3, 1]), first, 5)
    assert list(zip(queries, items)) == [(0, 2)]


def test_block_bounds_are_balanced():
    bounds = retrieval.block_bounds(10, 4)
    assert bounds == [(0, 3), (3, 6), (6, 10)]
    assert retrieval.block_bounds(5, 100) == [(0, 5)]


# ----------------------------------------------------------------------------
# multi-ground-truth protocol


def hand_made_features():
    """Gallery after dedup: a=(1,0) b=(0,1) c=(.75,.5) d=(-1,0); the second 'a' row is dropped."""
    image_emb = np.array([[1, 0], [0, 1], [2, 2], [0.75, 0.5], [-1, 0]], dtype=np.float32)
    image_ids = ["a", "b", "a", "c", "d"]
    text_emb = np.array([[1, 0], [0, 1], [1, 0], [0.5, 1]], dtype=np.float32)
    indptr, pos_ids = text_positives_csr([["a"], ["b", "c"], ["c"], ["a"]])
    return retrieval.make_features(text_emb, image_emb, image_ids, ["t0", "t1", "t2", "t3"], indptr, pos_ids)


def test_multi_gt_ranks_by_hand():
    f = hand_made_features()
    gallery_rows, pairs = dedup_gallery(f.image_ids, f.text_pos_indptr, f.text_pos_ids, f.text_ids)
    np.testing.assert_array_equal(gallery_rows, [0, 1, 3, 4])
    text_ranks, image_ranks = retrieval_ranks(f.text_emb, f.image_emb[gallery_rows], pairs)
    # t0: a=1 is best. t1: b=1 is best. t2 names c=.75, a=1 beats it.
    # t3 names a=.5; b=1 and c=.875 beat it.
    np.testing.assert_array_equal(text_ranks, [0, 0, 1, 2])
    # a: t0=1 (t2 ties). b: t1=1 (t3 ties). c: best positive t2=.75, t3=.875 beats it, t0 ties.
    # d: named by no text.
    np.testing.assert_array_equal(image_ranks, [0, 0, 1, -1])


def test_multi_gt_metrics_by_hand():
    metrics = evaluate_multi_gt(hand_made_features())
    t2i, i2t = metrics["text2image"], metrics["image2text"]
    assert (t2i["n_queries"], t2i["n_gallery"], i2t["n_queries"], i2t["n_gallery"]) == (4, 4, 3, 4)
    assert (t2i["r1"], t2i["r5"]) == (0.5, 1.0)
    assert i2t["r1"] == pytest.approx(2 / 3)
    assert t2i["mrr"] == pytest.approx((1 + 1 + 1 / 2 + 1 / 3) / 4)
    assert metrics["mean"]["r1"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_multi_gt_unknown_image_id_names_text_and_id():
    f = hand_made_features()
    indptr, pos_ids = text_positives_csr([["a"], ["b"], ["zz9"], ["a"]])
    with pytest.raises(RetrievalInputError, match=r"text 2 \('t2'\) names image id 'zz9'"):
        dedup_gallery(f.image_ids, indptr, pos_ids, f.text_ids)


def test_multi_gt_text_without_image_is_refused():
    f = hand_made_features()
    indptr, pos_ids = text_positives_csr([["a"], [], ["c"], ["a"]])
    with pytest.raises(RetrievalInputError, match=r"text 1 \('t1'\) names no image id"):
        dedup_gallery(f.image_ids, indptr, pos_ids, f.text_ids)


# ----------------------------------------------------------------------------
# top-k


def argsort_topk(queries, gallery, k):
    scores = queries @ gallery.T
    index = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, index, axis=1), index


@pytest.mark.parametrize("block_size", [1, 6, 40, 1000])
def test_topk_equals_argsort(block_size):
    rng = np.random.default_rng(5)
    queries, gallery = unit_rows(rng, 37, 16), unit_rows(rng, 53, 16)
    scores, index = topk(queries, gallery, 10, block_size)
    want_scores, want_index = argsort_topk(queries, gallery, 10)
    np.testing.assert_array_equal(index, want_index)
    # 1-row blocks take BLAS's matrix-vector path, which may round the last bit differently.
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize("block_size", [3, 1000])
def test_topk_breaks_ties_by_lower_index(block_size):
    rng = np.random.default_rng(6)
    queries = rng.integers(-1, 2, (20, 4)).astype(np.float32)
    gallery = rng.integers(-1, 2, (30, 4)).astype(np.float32)
    scores, index = topk(queries, gallery, 7, block_size)
    want_scores, want_index = argsort_topk(queries, gallery, 7)
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_array_equal(scores, want_scores)


def test_topk_k_larger_than_gallery_returns_whole_gallery():
    rng = np.random.default_rng(7)
    queries, gallery = unit_rows(rng, 3, 8), unit_rows(rng, 4, 8)
    scores, index = topk(queries, gallery, 10, block_size=2)
    assert index.shape == (3, 4)
    np.testing.assert_array_equal(np.sort(index, axis=1), np.tile(np.arange(4), (3, 1)))
    assert (np.diff(scores, axis=1) <= 0).all()


# ----------------------------------------------------------------------------
# files


def test_features_round_trip(tmp_path):
    f = hand_made_features()
    path = tmp_path / "features.npz"
    save_features(path, **{name: getattr(f, name) for name in retrieval.Features.__dataclass_fields__})
    loaded = load_features(path)
    for name in retrieval.Features.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(f, name))
    assert loaded.text_emb.dtype == np.float32 and loaded.text_pos_indptr.dtype == np.int64
    assert loaded.image_ids.dtype.kind == "U"


def test_features_with_broken_csr_are_refused(tmp_path):
    f = hand_made_features()
    with pytest.raises(RetrievalInputError, match="ends at 6 but text_pos_ids has 5 entries"):
        save_features(
            tmp_path / "bad.npz", f.text_emb, f.image_emb, f.image_ids, f.text_ids, [0, 1, 3, 4, 6], f.text_pos_ids
        )
    assert not (tmp_path / "bad.npz").exists()


def test_load_features_names_missing_arrays(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, text_emb=np.zeros((2, 3), np.float32))
    with pytest.raises(RetrievalInputError, match="missing arrays.*image_emb"):
        load_features(path)


def write_official_file(path, text_emb, image_emb):
    with open(path, "w", encoding="utf-8") as f:
        for t, i in zip(text_emb, image_emb):
            f.write("\t".join([" ".join(map(str, t)), " ".join(map(str, i)), "1"]) + "\n")


def test_read_official_embeddings(tmp_path):
    rng = np.random.default_rng(8)
    text, image = unit_rows(rng, 5, 12), unit_rows(rng, 5, 12)
    path = tmp_path / "infer.txt"
    write_official_file(path, text, image)
    got_text, got_image = read_official_embeddings(path)
    np.testing.assert_array_equal(got_text, text)
    np.testing.assert_array_equal(got_image, image)


def test_read_official_embeddings_names_bad_line(tmp_path):
    path = tmp_path / "infer.txt"
    path.write_text("0.6 0.8\t1 0\t1\n0.6 0.8\t1 0 0\t1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"infer.txt:2: vector sizes 2/3"):
        read_official_embeddings(path)


# ----------------------------------------------------------------------------
# CLI


def run_cli(*args):
    return subprocess.run([sys.executable, str(CLI), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_prints_tables_and_writes_json(tmp_path):
    f = hand_made_features()
    features = tmp_path / "features.npz"
    # The official protocol needs one image row per text: keep the first four.
    save_features(features, f.text_emb, f.image_emb[:4], f.image_ids[:4], f.text_ids, f.text_pos_indptr, f.text_pos_ids)
    out = tmp_path / "metrics.json"
    result = run_cli(features, "--protocol", "both", "--json", out, "--block-size", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["official"] == evaluate_official(f.text_emb, f.image_emb[:4])
    assert report["multi_gt"]["text2image"]["n_gallery"] == 3
    assert official_table(report["official"]) in result.stdout
    assert official_table(report["multi_gt"]) in result.stdout


def test_cli_reads_official_text_file(tmp_path, shared_dir):
    folder = shared_dir / "fixtures" / "official_ernievil2_tiny"
    path = tmp_path / "infer.txt"
    write_official_file(path, np.load(folder / "text_emb.npy"), np.load(folder / "image_emb.npy"))
    result = run_cli(path)
    assert result.returncode == 0, result.stderr
    expected = (folder / "official_eval_output.txt").read_text(encoding="utf-8")
    assert expected.rstrip("\n") in result.stdout


def test_cli_missing_file_exits_2_naming_it(tmp_path):
    missing = tmp_path / "no_such_features.npz"
    result = run_cli(missing)
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_multi_gt_without_ids_exits_2(tmp_path):
    rng = np.random.default_rng(9)
    text, image = tmp_path / "t.npy", tmp_path / "i.npy"
    np.save(text, unit_rows(rng, 4, 8))
    np.save(image, unit_rows(rng, 4, 8))
    result = run_cli("--text-emb", text, "--image-emb", image, "--protocol", "multi_gt")
    assert result.returncode == 2
    assert "needs image ids" in result.stderr


def test_cli_both_runs_what_the_set_allows_and_says_why_it_skipped_the_other(tmp_path):
    f = hand_made_features()
    assert len(f.text_emb) != len(f.image_emb)  # a caption names several images: no official pairing
    features = tmp_path / "features.npz"
    save_features(features, f.text_emb, f.image_emb, f.image_ids, f.text_ids, f.text_pos_indptr, f.text_pos_ids)
    out = tmp_path / "metrics.json"
    result = run_cli(features, "--protocol", "both", "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert official_table(report["multi_gt"]) in result.stdout
    reason = f"{len(f.text_emb)} texts for {len(f.image_emb)} images"
    assert f"official protocol skipped: it pairs text i with image i, and this set has {reason}" in result.stdout
    assert reason in report["official"]["skipped"]

    rng = np.random.default_rng(4)
    text, image = tmp_path / "t.npy", tmp_path / "i.npy"
    np.save(text, unit_rows(rng, 4, 8))
    np.save(image, unit_rows(rng, 4, 8))
    result = run_cli("--text-emb", text, "--image-emb", image, "--protocol", "both")
    assert result.returncode == 0, result.stderr
    assert "multi_gt protocol skipped: it needs image ids" in result.stdout
    assert "official protocol: 4 text-image pairs" in result.stdout


def test_cli_a_protocol_the_set_does_not_allow_is_one_error_line(tmp_path):
    f = hand_made_features()
    features = tmp_path / "features.npz"
    save_features(features, f.text_emb, f.image_emb, f.image_ids, f.text_ids, f.text_pos_indptr, f.text_pos_ids)
    result = run_cli(features, "--protocol", "official")
    assert result.returncode == 2
    assert result.stderr.startswith("error: the official protocol cannot score this set: it pairs text i with image i")
    assert result.stderr.count("\n") == 1
