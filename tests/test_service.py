"""The retrieval service: API, galleries, dynamic batching, and bad requests that leave it serving."""
import asyncio
import base64
import json
import struct
import subprocess
import sys
import threading
import zlib

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from ernievil2.commands.infer import print_hits
from ernievil2.config import load_config
from ernievil2.data.errors import DataError, SkipCounter
from ernievil2.inference.batching import DynamicBatcher, QueueFullError
from ernievil2.inference.errors import GalleryError
from ernievil2.inference.export import export_model, load_model
from ernievil2.inference.galleries import (
    build_galleries,
    caption_ids,
    caption_image_id,
    first_captions,
    load_galleries,
    save_galleries,
)
from ernievil2.inference.index import ITEMS_FILE, THUMBNAIL_SIZE, Gallery, load_gallery, make_thumbnail, save_embeddings
from ernievil2.inference.inputs import iter_tsv_images
from ernievil2.inference.predictor import ExportedModel, PredictorOptions
from ernievil2.inference.service import Engine, ServiceSettings, create_app, search_results
from tests.conftest import REPO

TINY_CONFIG = str(REPO / "configs" / "tiny_official_fixture.yaml")
ATOL = 1e-5
JUNK_IMAGE = base64.b64encode(b"this is not an image").decode()


def _cut_jpeg():
    ok, data = cv2.imencode(".jpg", np.full((40, 40, 3), 128, np.uint8))
    assert ok
    return base64.b64encode(data.tobytes()[:-30]).decode()


CUT_JPEG = _cut_jpeg()  # decodable by OpenCV (grey rows), but a cut-off download


def png_header(width, height):
    """A PNG that declares ``width`` x ``height`` pixels and holds none: what a decompression bomb's header says."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def png_bytes(height, width):
    ok, data = cv2.imencode(".png", np.full((height, width, 3), 200, np.uint8))
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def fixture_dir(shared_dir):
    return shared_dir / "fixtures" / "official_ernievil2_tiny"


@pytest.fixture(scope="module")
def tsv(fixture_dir):
    return fixture_dir / "test.coco_cn.data"


@pytest.fixture(scope="module")
def rows(tsv):
    return [line.split("\t") for line in tsv.read_text("utf-8").splitlines()]


@pytest.fixture(scope="module")
def model(tmp_path_factory, fixture_dir):
    config = load_config(TINY_CONFIG)
    weights = str(fixture_dir / "model.pdparams")
    folder = str(tmp_path_factory.mktemp("service") / "export")
    export_model(load_model(config, weights), config, weights, folder)
    return ExportedModel(folder, PredictorOptions(cpu_threads=2))


@pytest.fixture(scope="module")
def galleries(model, tsv, tmp_path_factory):
    """Built, saved and loaded back, so the service runs on what is on disk."""
    folder = tmp_path_factory.mktemp("service") / "index"
    save_galleries(str(folder), *build_galleries(model, iter_tsv_images(tsv), batch_size=8))
    return load_galleries(str(folder))


# The fixture photos are 512 x 512 JPEGs of at most 90 kB; the limits sit just above them.
SETTINGS = ServiceSettings(max_wait_ms=2.0, max_body_bytes=1 << 20, max_upload_bytes=200_000, max_image_pixels=600 * 600)


@pytest.fixture(scope="module")
def client(model, galleries):
    with TestClient(create_app(model, *galleries, settings=SETTINGS)) as client:
        yield client


# --- galleries ------------------------------------------------------------


def test_gallery_holds_each_image_once_and_every_caption(galleries, rows, fixture_dir):
    images, texts = galleries
    assert images.kind == "image" and texts.kind == "text"
    assert images.ids == list(dict.fromkeys(row[1] for row in rows))
    first_caption = {}
    for row in rows:
        first_caption.setdefault(row[1], row[0])
    assert images.texts == [first_caption[i] for i in images.ids]
    assert texts.texts == [row[0] for row in rows]
    assert texts.ids == caption_ids(row[1] for row in rows)
    # The stored vectors are the official image embeddings (faiss keeps them as given).
    stored = images.index.reconstruct_n(0, images.size)
    np.testing.assert_allclose(stored, np.load(fixture_dir / "image_emb.npy"), atol=ATOL, rtol=0)
    thumb = cv2.imdecode(np.frombuffer(images.thumbnail(0), np.uint8), cv2.IMREAD_COLOR)
    assert max(thumb.shape[:2]) == THUMBNAIL_SIZE  # the photos are 512 px, larger than a thumbnail


def test_caption_ids_number_the_captions_of_each_image():
    assert caption_ids(["a", "b", "a", "a"]) == ["a#0", "b#0", "a#1", "a#2"]


def test_caption_image_id_inverts_caption_ids():
    image_ids = ["a", "x#1", "a", "猫.jpg", "x#1"]
    assert [caption_image_id(i) for i in caption_ids(image_ids)] == image_ids
    assert [caption_image_id(i) for i in ["0", "a#", "a#b", ""]] == [None, None, None, None]


def test_first_captions_keep_each_images_first_and_none_for_the_uncaptioned():
    captions = [("b", "乙一"), ("a", "甲一"), ("b", "乙二")]
    assert first_captions(["a", "b", "c"], captions) == ["甲一", "乙一", None]


def test_captions_survive_saving_and_old_galleries_load_without_them(tmp_path):
    gallery = Gallery.from_embeddings(np.eye(3), ["a", "b", "c"], "image", texts=["甲", None, "丙"])
    gallery.save(str(tmp_path / "new"))
    loaded = Gallery.load(str(tmp_path / "new"))
    assert [loaded.text(p) for p in range(3)] == ["甲", None, "丙"]
    # A gallery from before captions were kept: items.json has no "texts".
    Gallery.from_embeddings(np.eye(3), ["a", "b", "c"], "image").save(str(tmp_path / "old"))
    items = json.loads((tmp_path / "old" / ITEMS_FILE).read_text("utf-8"))
    assert "texts" not in items
    old = Gallery.load(str(tmp_path / "old"))
    assert old.texts is None and old.text(1) is None and old.position_of("c") == 2


def test_thumbnail_fits_and_never_enlarges():
    wide = np.zeros((100, 400, 3), np.uint8)
    small = np.zeros((20, 30, 3), np.uint8)
    assert cv2.imdecode(np.frombuffer(make_thumbnail(wide, 160), np.uint8), 1).shape[:2] == (40, 160)
    assert cv2.imdecode(np.frombuffer(make_thumbnail(small, 160), np.uint8), 1).shape[:2] == (20, 30)


def test_gallery_search_clips_k_and_ranks_by_cosine():
    rng = np.random.RandomState(0)
    vectors = rng.randn(5, 8).astype(np.float32)
    gallery = Gallery.from_embeddings(vectors, list("abcde"), "image")
    scores, positions = gallery.search(vectors[2:3] * 3.0, 10)
    assert positions.shape == (1, 5) and positions[0, 0] == 2
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.diff(scores[0]) <= 0)


def test_gallery_file_round_trip(tmp_path):
    vectors = np.eye(3, dtype=np.float32)
    save_embeddings(tmp_path / "g.npz", vectors, ["x", "y", "z"], "text", "m1", texts=["甲", "乙", "丙"])
    gallery = load_gallery(str(tmp_path / "g.npz"))
    assert (gallery.kind, gallery.ids, gallery.model_id) == ("text", ["x", "y", "z"], "m1")
    assert gallery.texts == ["甲", "乙", "丙"]
    np.save(tmp_path / "plain.npy", vectors)
    assert load_gallery(str(tmp_path / "plain.npy")).ids == ["0", "1", "2"]


def test_gallery_rejects_zero_vectors_and_foreign_models():
    with pytest.raises(GalleryError, match="zero or not finite, first at row 1"):
        Gallery.from_embeddings(np.array([[1.0, 0], [0, 0]]), ["a", "b"], "image")
    gallery = Gallery.from_embeddings(np.eye(2), ["a", "b"], "image", model_id="aaa")
    with pytest.raises(GalleryError, match="rebuild the gallery"):
        gallery.check_model("bbb", 2)
    with pytest.raises(GalleryError, match="64-d embeddings, the gallery holds 2-d"):
        gallery.check_model("aaa", 64)


def test_service_refuses_a_gallery_of_another_model(model):
    foreign = Gallery.from_embeddings(np.eye(64)[:3], ["a", "b", "c"], "image", model_id="someone-else")
    with pytest.raises(GalleryError, match="rebuild the gallery"):
        create_app(model, foreign)


# --- API ------------------------------------------------------------------


def test_healthz(client, model):
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["model_id"] == model.model_id
    assert (body["embed_dim"], body["image_gallery"], body["text_gallery"]) == (64, 20, 20)


def test_embed_text_matches_the_model(client, model, rows):
    texts = [rows[0][0], rows[5][0], "猫"]
    response = client.post("/embed/text", json={"texts": texts})
    assert response.status_code == 200
    got = np.array(response.json()["embeddings"], np.float32)
    np.testing.assert_allclose(got, model.encode_texts(texts), atol=ATOL, rtol=0)


def test_embed_image_gives_the_official_embeddings(client, rows, fixture_dir):
    response = client.post("/embed/image", json={"images": [rows[3][2], rows[11][2]]})
    assert response.status_code == 200
    got = np.array(response.json()["embeddings"], np.float32)
    np.testing.assert_allclose(got, np.load(fixture_dir / "image_emb.npy")[[3, 11]], atol=ATOL, rtol=0)


def test_text_search_returns_the_gallerys_top_k(client, model, galleries, rows):
    images, _ = galleries
    response = client.post("/search", json={"text": rows[4][0], "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert (body["query"], body["gallery"], body["k"]) == ("text", "image", 5)
    assert isinstance(body["took_ms"], float) and body["took_ms"] > 0
    scores, positions = images.search(model.encode_texts([rows[4][0]]), 5)
    assert [hit["id"] for hit in body["results"]] == [images.ids[p] for p in positions[0]]
    # Each image comes with its (first) caption.
    first_caption = {}
    for row in rows:
        first_caption.setdefault(row[1], row[0])
    assert [hit["text"] for hit in body["results"]] == [first_caption[hit["id"]] for hit in body["results"]]
    np.testing.assert_allclose([hit["score"] for hit in body["results"]], scores[0], atol=1e-5)
    thumbnail = client.get(body["results"][0]["thumbnail"])
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(thumbnail.content, np.uint8), cv2.IMREAD_COLOR) is not None


def test_image_search_returns_captions(client, model, galleries, rows):
    _, texts = galleries
    response = client.post("/search", json={"image": rows[7][2], "k": 3})
    assert response.status_code == 200
    hits = response.json()["results"]
    query = model.encode_images([cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(rows[7][2]), np.uint8), 1),
                                              cv2.COLOR_BGR2RGB)])
    _, positions = texts.search(query, 3)
    assert [hit["text"] for hit in hits] == [texts.texts[p] for p in positions[0]]
    assert all("#" in hit["id"] for hit in hits)
    # Each caption shows the image it describes.
    images, _ = galleries
    for hit in hits:
        assert hit["image_id"] == hit["id"].rpartition("#")[0]
        assert hit["thumbnail"] == f"/thumbnails/{images.ids.index(hit['image_id'])}"


def jpeg_of(row):
    return base64.b64decode(row[2])


def rgb_of(row):
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg_of(row), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("target", ["images", "texts"])
def test_uploaded_image_searches_like_the_model_and_like_json(client, model, galleries, rows, target):
    images, texts = galleries
    gallery = images if target == "images" else texts
    response = client.post(f"/search/image?target={target}&k=4", content=jpeg_of(rows[7]),
                           headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["query"], body["gallery"], body["k"]) == ("image", gallery.kind, 4)
    assert body["took_ms"] > 0
    scores, positions = gallery.search(model.encode_images([rgb_of(rows[7])]), 4)
    assert [hit["id"] for hit in body["results"]] == [gallery.ids[p] for p in positions[0]]
    np.testing.assert_allclose([hit["score"] for hit in body["results"]], scores[0], atol=1e-5)
    if target == "images":
        # The gallery holds the uploaded photo itself: it comes first, at cosine 1.
        assert body["results"][0]["id"] == rows[7][1] and body["results"][0]["score"] == pytest.approx(1, abs=1e-4)
    as_json = client.post("/search", json={"image": rows[7][2], "target": target, "k": 4}).json()
    assert as_json["results"] == body["results"]


def test_upload_defaults_to_captions_and_needs_no_content_type(client, galleries, rows):
    response = client.post("/search/image", content=jpeg_of(rows[2]))
    assert response.status_code == 200
    body = response.json()
    assert (body["gallery"], body["k"]) == ("text", SETTINGS.default_k)


def test_k_larger_than_the_gallery_returns_the_whole_gallery(client):
    response = client.post("/search", json={"text": "猫", "k": 50})
    assert response.status_code == 200 and len(response.json()["results"]) == 20


def test_search_page_is_served_without_outside_resources(client):
    response = client.get("/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert 'runSearch("/search"' in response.text and "`/search/image?" in response.text
    # Dependency-free: no script, style or font from another host.
    assert "http://" not in response.text and "https://" not in response.text


def test_serve_tool_reports_a_missing_model_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "serve.py"), "--model", str(tmp_path / "none"), "--index", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: export folder not found")


def test_image_queries_need_a_text_gallery(model, galleries, rows):
    with TestClient(create_app(model, galleries[0], None, SETTINGS)) as client:
        response = client.post("/search", json={"image": rows[0][2]})
        assert response.status_code == 400 and "no text gallery" in response.json()["detail"]
        response = client.post("/search/image?target=texts", content=jpeg_of(rows[0]))
        assert response.status_code == 400 and "no text gallery" in response.json()["detail"]
        response = client.post("/search/image?target=images", content=jpeg_of(rows[0]))
        assert response.status_code == 200 and response.json()["results"][0]["id"] == rows[0][1]


def test_a_gallery_built_before_captions_serves_without_them(model, galleries, tmp_path):
    images, texts = galleries
    Gallery(images.index, images.ids, "image", images.model_id, thumbnails=images._thumbnails).save(str(tmp_path))
    assert "texts" not in json.loads((tmp_path / ITEMS_FILE).read_text("utf-8"))
    old, _ = load_galleries(str(tmp_path))
    # The rows the service answers with (an app of its own would start another model thread).
    scores, positions = old.search(model.encode_texts(["一张草莓的照片"]), 3)
    hits = search_results(old, scores[0], positions[0], old)
    assert [hit["id"] for hit in hits] == [images.ids[p] for p in positions[0]]
    assert all("text" not in hit and hit["thumbnail"] == f"/thumbnails/{hit['position']}" for hit in hits)
    # Captions of a text gallery still find their images in an old image gallery.
    caption_hits = search_results(texts, scores[0], [0, 1, 2], old)
    assert [hit["image_id"] for hit in caption_hits] == [texts.ids[p].rpartition("#")[0] for p in range(3)]


# --- bad requests ---------------------------------------------------------

BAD_REQUESTS = [
    ("malformed json", "/embed/text", b'{"texts": ["a"', 400, "malformed JSON at character 14: Expecting"),
    ("texts not a list", "/embed/text", {"texts": "猫"}, 422, "body.texts"),
    ("no texts", "/embed/text", {"texts": []}, 422, "texts is empty"),
    ("too many texts", "/embed/text", {"texts": ["猫"] * 65}, 422, "65 entries; the limit is 64"),
    ("over-long text", "/embed/text", {"texts": ["猫", "长" * 513]}, 422,
     "texts[1] has 513 characters; the limit is 512"),
    ("blank text", "/embed/text", {"texts": ["  "]}, 422, "texts[0] is empty"),
    ("undecodable image", "/embed/image", {"images": [JUNK_IMAGE]}, 400, "images[0]: undecodable image"),
    ("not base64", "/embed/image", {"images": ["%%%not base64%%%"]}, 400, "images[0] is not valid base64"),
    ("truncated JPEG", "/embed/image", {"images": [CUT_JPEG]}, 400, "images[0]: truncated JPEG"),
    ("k zero", "/search", {"text": "猫", "k": 0}, 422, "k must be between 1 and 100, got 0"),
    ("k negative", "/search", {"text": "猫", "k": -3}, 422, "got -3"),
    ("k too large", "/search", {"text": "猫", "k": 101}, 422, "got 101"),
    ("k not a number", "/search", {"text": "猫", "k": "ten"}, 422, "body.k"),
    ("k a boolean", "/search", {"text": "猫", "k": True}, 422, "body.k: Input should be a valid integer"),
    ("no query", "/search", {"k": 3}, 422, "exactly one of 'text'"),
    ("text query for texts", "/search", {"text": "猫", "target": "texts"}, 422, "a text query searches the images"),
    ("unknown target", "/search", {"image": JUNK_IMAGE, "target": "videos"}, 422, "body.target"),
    ("base64 image over the pixel limit", "/embed/image", {"images": [base64.b64encode(png_bytes(601, 600)).decode()]},
     413, "images[0] is 600x601 pixels; the limit is 360000 pixels"),
    ("two queries", "/search", {"text": "猫", "image": JUNK_IMAGE}, 422, "exactly one of 'text'"),
    ("over-long query", "/search", {"text": "长" * 600}, 422, "text has 600 characters"),
    ("control characters only", "/search", {"text": "\x00\x07\u200b\t\x1b"}, 422, "text is empty"),
    ("oversized body", "/embed/text", {"texts": ["长" * 400] * 1000}, 413, "over the limit of 1048576 bytes"),
]


def assert_still_serving(client):
    good = client.post("/search", json={"text": "一张草莓的照片", "k": 2})
    assert good.status_code == 200 and len(good.json()["results"]) == 2


@pytest.mark.parametrize("path, payload, status, reason", [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_a_reason_and_the_service_keeps_serving(client, path, payload, status, reason):
    if isinstance(payload, bytes):
        response = client.post(path, content=payload, headers={"Content-Type": "application/json"})
    else:
        response = client.post(path, json=payload)
    assert response.status_code == status
    assert reason in response.json()["detail"]
    assert_still_serving(client)


def multipart_body():
    return (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + base64.b64decode(CUT_JPEG) + b"\r\n--XyZ--\r\n")


BAD_UPLOADS = [
    ("empty body", "", b"", None, 400, "the request body is empty"),
    ("junk bytes", "", b"this is not an image", None, 400, "uploaded image: undecodable image: 20 bytes starting"),
    ("truncated JPEG", "", base64.b64decode(CUT_JPEG), "image/jpeg", 400, "uploaded image: truncated JPEG"),
    ("too small", "", png_bytes(1, 4), "image/png", 400, "uploaded image: image too small: 4x1"),
    ("over the byte limit", "", b"\xff" * 200_001, "image/jpeg", 413, "uploaded image over the limit of 200000 bytes"),
    ("over the pixel limit", "", png_bytes(700, 640), "image/png", 413,
     "uploaded image is 640x700 pixels; the limit is 360000 pixels"),
    ("a decompression bomb's header", "", png_header(30000, 30000), "image/png", 413, "image too large"),
    ("multipart form", "", multipart_body(), "multipart/form-data; boundary=XyZ", 415, "not a multipart form"),
    ("JSON", "", b'{"image": "..."}', "application/json", 415, "base64 images in JSON go to POST /search"),
    ("unknown target", "?target=videos", b"x", None, 422, "query.target: Input should be 'texts' or 'images'"),
    ("k zero", "?k=0", b"x", None, 422, "k must be between 1 and 100, got 0"),
    ("k not a number", "?k=ten", b"x", None, 422, "query.k"),
]


@pytest.mark.parametrize("query, body, content_type, status, reason", [case[1:] for case in BAD_UPLOADS],
                         ids=[case[0] for case in BAD_UPLOADS])
def test_bad_upload_gets_a_reason_and_the_service_keeps_serving(client, query, body, content_type, status, reason):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(f"/search/image{query}", content=body, headers=headers)
    assert response.status_code == status
    assert reason in response.json()["detail"]
    assert_still_serving(client)


def test_a_client_gone_mid_upload_is_a_client_error():
    import asyncio

    from starlette.requests import ClientDisconnect

    from ernievil2.inference.service import RequestError, read_upload

    class HalfUpload:
        headers = {"content-type": "image/jpeg"}

        async def stream(self):
            yield b"\xff\xd8" * 10
            raise ClientDisconnect()

    with pytest.raises(RequestError) as info:
        asyncio.run(read_upload(HalfUpload(), 1000))
    assert (info.value.status, info.value.message) == (400, "the client disconnected after 20 bytes of the upload")


def test_streamed_oversized_upload_is_cut_off(client):
    def chunks():
        for _ in range(60):
            yield b"\xff" * 4096

    response = client.post("/search/image?target=images", content=chunks())
    assert response.status_code == 413 and "over the limit of 200000 bytes" in response.json()["detail"]
    assert_still_serving(client)


def test_streamed_oversized_body_is_cut_off(client):
    def chunks():
        yield b'{"texts": ["'
        for _ in range(300):
            yield b"x" * 4096
        yield b'"]}'

    response = client.post("/embed/text", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert client.post("/embed/text", json={"texts": ["猫"]}).status_code == 200


def test_a_text_at_the_limit_is_accepted_and_truncated_like_training(client, model):
    text = "猫" * 512
    response = client.post("/embed/text", json={"texts": [text]})
    assert response.status_code == 200
    np.testing.assert_allclose(response.json()["embeddings"][0], model.encode_texts([text])[0], atol=ATOL)


def test_unknown_thumbnail_is_404(client):
    assert client.get("/thumbnails/20").status_code == 404
    assert client.get("/thumbnails/-1").status_code == 404


# --- dynamic batching -----------------------------------------------------


async def concurrent_requests(app, requests):
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(*(http.post(path, json=body) for path, body in requests))
            health = (await http.get("/healthz")).json()
    return responses, health


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(model, galleries, rows):
    images, texts = galleries
    calls = {"images": 0, "texts": 0}
    for name, gallery in (("images", images), ("texts", texts)):
        def counted(queries, k, search=gallery.search, name=name):
            calls[name] += 1
            return search(queries, k)

        gallery.search = counted
    try:
        app = create_app(model, images, texts, settings=ServiceSettings(max_wait_ms=300.0, max_batch_size=32))
        queries = [row[0] for row in rows[:12]]
        searches = list(zip(queries[:6], (3, 1, 5, 2, 4, 3)))
        image_searches = [(1, 2, "texts"), (2, 4, "images"), (3, 3, "texts")]
        requests = ([("/embed/text", {"texts": [t]}) for t in queries]
                    + [("/search", {"text": t, "k": k}) for t, k in searches]
                    + [("/search", {"image": rows[i][2], "k": k, "target": target}) for i, k, target in image_searches])
        responses, health = asyncio.run(concurrent_requests(app, requests))
    finally:
        for gallery in (images, texts):
            del gallery.search
    assert all(r.status_code == 200 for r in responses)
    expected = model.encode_texts(queries)
    for i, response in enumerate(responses[:12]):
        np.testing.assert_allclose(response.json()["embeddings"][0], expected[i], atol=ATOL)
    # Each query gets its own k, though a batch's queries are searched together.
    for i, ((_, k), response) in enumerate(zip(searches, responses[12:18])):
        _, positions = images.search(expected[i : i + 1], k)
        assert [hit["id"] for hit in response.json()["results"]] == [images.ids[p] for p in positions[0]]
    encoded = model.encode_images([rgb_of(rows[i]) for i, _, _ in image_searches])
    for j, ((_, k, target), response) in enumerate(zip(image_searches, responses[18:])):
        gallery = texts if target == "texts" else images
        _, positions = gallery.search(encoded[j : j + 1], k)
        assert [hit["id"] for hit in response.json()["results"]] == [gallery.ids[p] for p in positions[0]]
    stats = health["batching"]
    assert stats["text"]["items"] == 18 and stats["image"]["items"] == 3
    assert stats["text"]["largest"] > 1 and stats["text"]["batches"] < 18, stats
    # At most one faiss call per batch and gallery, however the requests fell into batches.
    assert calls["images"] <= stats["text"]["batches"] + stats["image"]["batches"], (calls, stats)
    assert calls["texts"] <= stats["image"]["batches"], (calls, stats)


class CountingGallery:
    def __init__(self, size):
        self.vectors = np.random.RandomState(size).randn(size, 4).astype(np.float32)
        self.calls = []

    def search(self, queries, k):
        self.calls.append((len(queries), k))
        scores = queries @ self.vectors.T
        positions = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, positions, 1), positions


def test_a_batch_is_searched_once_per_gallery_and_each_query_keeps_its_k():
    first, second = CountingGallery(20), CountingGallery(30)
    queries = np.random.RandomState(0).randn(5, 4).astype(np.float32)
    items = [(0, (first, 3)), (1, None), (2, (second, 5)), (3, (first, 7)), (4, (second, 1))]
    out = Engine._encode_and_search(lambda rows: queries[rows], items)
    assert first.calls == [(2, 7)] and second.calls == [(2, 5)]
    for (row, search), (embedding, hits) in zip(items, out):
        np.testing.assert_array_equal(embedding, queries[row])
        if search is None:
            assert hits is None
            continue
        gallery, k = search
        expected = np.argsort(-(queries[row] @ gallery.vectors.T))[:k]
        np.testing.assert_array_equal(hits[1], expected)
        assert len(hits[0]) == k


def run_batcher(batcher, items):
    async def main():
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(i) for i in items), return_exceptions=True)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_batcher_respects_the_batch_size_and_keeps_order():
    seen = []

    def double(items):
        seen.append(list(items))
        return [2 * i for i in items]

    results = run_batcher(DynamicBatcher(double, max_batch_size=4, max_wait_ms=50), list(range(10)))
    assert results == [2 * i for i in range(10)]
    assert [len(b) for b in seen] == [4, 4, 2]
    assert sorted(i for b in seen for i in b) == list(range(10))


def test_a_lone_item_is_not_held_for_the_collection_window():
    async def main():
        batcher = DynamicBatcher(lambda items: items, max_batch_size=8, max_wait_ms=60_000)
        batcher.start()
        try:
            # Far inside the window: the old batcher held a lone item for all of it.
            return await asyncio.wait_for(batcher.submit("a"), 20), batcher.stats.as_dict()
        finally:
            await batcher.stop()

    result, stats = asyncio.run(main())
    assert result == "a" and stats["sizes"] == {"1": 1}


def test_items_that_queue_while_a_batch_runs_form_the_next_batch():
    release = threading.Event()

    def blocked_first(items):
        release.wait(20)
        return items

    async def main():
        batcher = DynamicBatcher(blocked_first, max_batch_size=32, max_wait_ms=20)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        while batcher.stats.batches == 0:  # the worker has taken item 0 and is blocked in run_batch
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 9)]
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results, batcher.stats.as_dict()

    results, stats = asyncio.run(main())
    assert results == list(range(9))
    assert stats["sizes"] == {"1": 1, "8": 1}


def test_a_failing_batch_fails_its_requests_only():
    calls = []

    def flaky(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise ValueError("boom")
        return items

    async def main():
        batcher = DynamicBatcher(flaky, max_batch_size=2, max_wait_ms=20)
        batcher.start()
        first = await asyncio.gather(batcher.submit("a"), batcher.submit("b"), return_exceptions=True)
        second = await batcher.submit("c")
        await batcher.stop()
        return first, second

    first, second = asyncio.run(main())
    assert all(isinstance(r, ValueError) and str(r) == "boom" for r in first)
    assert second == "c"


def test_wrong_result_count_is_an_error_for_every_submitter():
    results = run_batcher(DynamicBatcher(lambda items: items[:1], max_batch_size=3, max_wait_ms=50), [1, 2, 3])
    assert all(isinstance(r, RuntimeError) and "1 results for 3 items" in str(r) for r in results)


def test_a_full_queue_refuses_new_items():
    release = threading.Event()

    def slow(items):
        release.wait(5)
        return items

    async def main():
        batcher = DynamicBatcher(slow, max_batch_size=1, max_wait_ms=0, max_queue=1)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)  # the worker has taken item 1 and is blocked in slow()
        queued = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await batcher.submit(3)
        release.set()
        done = await asyncio.gather(running, queued)
        await batcher.stop()
        return done

    assert asyncio.run(main()) == [1, 2]


def test_undecodable_tsv_image_is_skipped_or_raised(tmp_path, model, rows):
    tsv = tmp_path / "bad.tsv"
    lines = ["\t".join(rows[0][:3]), f"坏图\tbroken.jpg\t{JUNK_IMAGE}", "\t".join(rows[1][:3])]
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.tsv:2: undecodable image"):
        build_galleries(model, iter_tsv_images(tsv), batch_size=2)
    counter = SkipCounter("skip")
    images, texts = build_galleries(model, iter_tsv_images(tsv, counter), batch_size=2, counter=counter)
    assert images.ids == [rows[0][1], rows[1][1]] and counter.total == 1
    assert "坏图" not in texts.texts


def test_infer_search_prints_captions_where_the_gallery_has_them(capsys):
    gallery = Gallery.from_embeddings(np.eye(3), ["a.jpg", "b.jpg", "c.jpg"], "image", texts=["红色的外套", None, "蓝裤子"])
    print_hits("query", gallery, [0.9, 0.5, 0.1], [2, 1, 0])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[2:] == ["c.jpg", "蓝裤子"]
    assert lines[2].split()[2:] == ["b.jpg"]  # no caption: nothing printed, not "None"
    assert lines[3].split()[2:] == ["a.jpg", "红色的外套"]


@pytest.mark.parametrize("path", ["/embed/text", "/search", "/embed/image"])
@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", None])
def test_a_json_endpoint_sent_another_content_type_gets_415_naming_the_one_it_wants(client, path, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(path, content='{"text": "猫", "texts": ["猫"]}'.encode(), headers=headers)
    assert response.status_code == 415
    detail = response.json()["detail"]
    assert "Content-Type: application/json" in detail
    assert (repr(content_type) if content_type else "no Content-Type") in detail
    assert_still_serving(client)


def test_json_with_a_charset_is_json(client):
    response = client.post("/search", content='{"text": "猫", "k": 2}'.encode(),
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200 and len(response.json()["results"]) == 2
