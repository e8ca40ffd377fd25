"""The retrieval service: embeddings and text <-> image search over HTTP (FastAPI).

Endpoints (JSON in, JSON out; errors are ``{"detail": reason}``):

- ``POST /embed/text``   ``{"texts": [str, ...]}`` -> ``{"dim", "embeddings": [[float]]}``
- ``POST /embed/image``  ``{"images": [base64, ...]}`` -> same
- ``POST /search``       ``{"text": str, "k": int}`` -> top-k images;
                         ``{"image": base64, "k": int, "target": "texts"|"images"}`` -> top-k
                         captions (needs a text gallery) or images
- ``POST /search/image?target=texts|images&k=int``  the same for an uploaded image file (the raw body)
- ``GET /thumbnails/{position}``  JPEG thumbnail of a gallery image
- ``GET /healthz``       status, gallery sizes, batching statistics
- ``GET /``              the search page

Texts and images from concurrent requests are encoded together (see
:mod:`.batching`); all model and faiss work runs on one worker thread, so the
predictors are never entered twice at once. Request limits are in
:class:`ServiceSettings`; what each bad request gets back is listed in
``docs/export_and_serving.md``.
"""
import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import io
import os
import time
import unicodedata
import warnings
from typing import List, Literal, Optional

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, StrictInt
from starlette.requests import ClientDisconnect

from ..data.errors import DataError
from ..data.readers import decode_image_bytes
from .batching import DynamicBatcher, QueueFullError
from .galleries import caption_image_id

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    # Longer texts are rejected rather than truncated: nobody types a 512-character query,
    # so such a request is a mistake. Shorter ones are cut to the model's max_len tokens, as in training.
    max_text_chars: int = 512
    max_texts_per_request: int = 64
    max_images_per_request: int = 16
    max_k: int = 100
    default_k: int = 10
    max_body_bytes: int = 16 * 1024 * 1024
    # An uploaded query image (POST /search/image): a photo straight from a phone fits.
    max_upload_bytes: int = 8 * 1024 * 1024
    # Checked from the image header before decoding: a few kilobytes of PNG can declare
    # gigabytes of pixels. 40 Mpx is an 8000 x 5000 photo.
    max_image_pixels: int = 40_000_000


class RequestError(Exception):
    """A client mistake: answered with ``status`` and ``message``, and the service carries on."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self):
        return type(self), (self.status, self.message)


class TextsBody(BaseModel):
    texts: List[str]


class ImagesBody(BaseModel):
    images: List[str]


Target = Literal["texts", "images"]


class SearchBody(BaseModel):
    text: Optional[str] = None
    image: Optional[str] = None
    # Strict: JSON true would otherwise pass as k=1.
    k: Optional[StrictInt] = None
    # What an image query searches; text queries search images only.
    target: Optional[Target] = None


def check_count(items, name, limit):
    if not items:
        raise RequestError(422, f"{name} is empty")
    if len(items) > limit:
        raise RequestError(422, f"{name} has {len(items)} entries; the limit is {limit} per request")


def check_text(text, where, settings):
    # Control and format characters (NUL, zero-width spaces, ...) say nothing: a query of only those is empty.
    if not "".join(c for c in text if unicodedata.category(c)[0] != "C").strip():
        raise RequestError(422, f"{where} is empty")
    if len(text) > settings.max_text_chars:
        raise RequestError(
            422, f"{where} has {len(text)} characters; the limit is {settings.max_text_chars}"
        )


def check_k(k, settings):
    if not 1 <= k <= settings.max_k:
        raise RequestError(422, f"k must be between 1 and {settings.max_k}, got {k}")


def header_size(data):
    """(width, height) from the image header without decoding pixels; None when PIL cannot tell."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as err:
        # Over twice PIL's own limit: the message holds the pixel count, the size is not kept.
        raise RequestError(413, f"image too large: {err}") from None
    except Exception:
        # Not PIL's to judge: OpenCV decodes, and its reader says what is wrong with the bytes.
        return None


def decode_request_image(data, where, max_pixels):
    """Encoded image bytes from a request -> RGB uint8 HWC; a bad image is a 400 naming ``where``.

    Decoding is the data readers' (truncation, undecodable, too small); a
    query is one image, so their on_error policy is always 'raise' here and
    the reason goes back to the client.
    """
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise RequestError(413, f"{where} is {size[0]}x{size[1]} pixels; the limit is {max_pixels} pixels")
    try:
        return decode_image_bytes(data, where)
    except DataError as err:
        raise RequestError(400, f"{where}: {err.reason}") from None


def decode_base64_image(text, where, max_pixels):
    """Standard base64 (a ``data:image/...;base64,`` prefix is allowed) -> RGB uint8 HWC."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError as err:  # binascii.Error included
        raise RequestError(400, f"{where} is not valid base64: {err}") from None
    return decode_request_image(data, where, max_pixels)


async def read_upload(request, max_bytes):
    """The raw request body of an image upload, at most ``max_bytes``; refusals say what to send instead."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/"):
        raise RequestError(
            415, "send the image file itself as the request body (curl --data-binary @photo.jpg), not a multipart form"
        )
    if content_type.startswith("application/json"):
        raise RequestError(415, "this endpoint takes the image file as the body; base64 images in JSON go to POST /search")
    too_large = f"uploaded image over the limit of {max_bytes} bytes"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, too_large)
    chunks, received = [], 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise RequestError(413, too_large)
            chunks.append(chunk)
    except ClientDisconnect:
        # A client gone mid-upload is the client's doing: a 4xx line in the log, not an ERROR traceback.
        raise RequestError(400, f"the client disconnected after {received} bytes of the upload") from None
    if not received:
        raise RequestError(400, "the request body is empty: send the image file as the body")
    return b"".join(chunks)


def json_error_message(error):
    """``malformed JSON at character 14: Expecting ',' delimiter``."""
    return f"malformed JSON at character {error['loc'][-1]}: {error.get('ctx', {}).get('error', error['msg'])}"


def is_json_media_type(content_type):
    """``application/json`` or a ``+json`` type, parameters (``; charset=utf-8``) aside."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def json_body_refusal(content_type):
    """The 415 reason for a JSON endpoint's request sent as another content type; None for JSON."""
    if is_json_media_type(content_type):
        return None
    seen = f"got {content_type!r}" if content_type else "the request has no Content-Type"
    return (
        f"this endpoint takes a JSON body with Content-Type: application/json ({seen}); "
        "with curl: -H 'Content-Type: application/json' -d '{...}'"
    )


def validation_message(errors):
    """A one-line reason from pydantic errors: ``body.texts.0: Input should be a valid string``."""
    return "; ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in errors[:5])


class BodySizeLimit:
    """Reject request bodies over ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = JSONResponse({"detail": self._reason()}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI passes HTTPExceptions raised while reading the body through as they are.
                raise HTTPException(413, self._reason())
            return message

        await self.app(scope, limited_receive, send)

    def _reason(self):
        return f"request body over the limit of {self.max_bytes} bytes"


def search_results(gallery, scores, positions, image_gallery):
    """JSON rows for one query's hits: an image's caption, a caption's image when the galleries tell."""
    rows = []
    for rank, (score, position) in enumerate(zip(scores, positions), start=1):
        position = int(position)
        row = {"rank": rank, "id": gallery.ids[position], "score": round(float(score), 6), "position": position}
        text = gallery.text(position)
        if text is not None:
            row["text"] = text
        image_position = position
        if gallery is not image_gallery:
            # A caption hit (id image_id#n) shows the image it describes, when the image gallery has it.
            image_id = caption_image_id(row["id"])
            image_position = image_gallery.position_of(image_id)
            if image_position is not None:
                row["image_id"] = image_id
        if image_position is not None and image_gallery.has_thumbnails():
            row["thumbnail"] = f"/thumbnails/{image_position}"
        rows.append(row)
    return rows


class Engine:
    """The service's model-side state: batchers over one worker thread, and the galleries."""

    def __init__(self, model, image_gallery, text_gallery, settings):
        for gallery in filter(None, (image_gallery, text_gallery)):
            gallery.check_model(model.model_id, model.embed_dim)
        if image_gallery.kind != "image":
            raise ValueError(f"the image gallery holds {image_gallery.kind} embeddings")
        if text_gallery is not None and text_gallery.kind != "text":
            raise ValueError(f"the text gallery holds {text_gallery.kind} embeddings")
        self.model = model
        self.image_gallery = image_gallery
        self.text_gallery = text_gallery
        self.settings = settings
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        batching = dict(
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            executor=self.executor,
        )
        # Items are (input, search): search is None for an embedding, (gallery, k) for a query.
        self.text_batcher = DynamicBatcher(lambda items: self._encode_and_search(self._encode_texts, items), **batching)
        self.image_batcher = DynamicBatcher(lambda items: self._encode_and_search(self._encode_pixels, items), **batching)

    def _encode_texts(self, texts):
        return self.model.encode_texts(texts, batch_size=len(texts))

    def _encode_pixels(self, pixels):
        return self.model.encode_pixels(np.stack(pixels))

    @staticmethod
    def _encode_and_search(encode, items):
        """``[(embedding, hits or None)]`` for a batch of ``(input, search)`` items.

        The queries are searched here, on the worker thread that has just encoded them, with
        one faiss call per gallery for the whole batch: a query is not handed back to the event
        loop and out to the worker again for its search. At demo size such hand-offs and the
        Python path around them, not the model, are most of a query's answer (docs/benchmarks.md).
        """
        embeddings = encode([query for query, _ in items])
        hits = [None] * len(items)
        by_gallery = {}
        for i, (_, search) in enumerate(items):
            if search is not None:
                by_gallery.setdefault(id(search[0]), []).append(i)
        for rows in by_gallery.values():
            gallery, ks = items[rows[0]][1][0], [items[i][1][1] for i in rows]
            scores, positions = gallery.search(embeddings[rows], max(ks))
            for row, (i, k) in enumerate(zip(rows, ks)):
                hits[i] = (scores[row, :k], positions[row, :k])
        return list(zip(embeddings, hits))

    async def start(self):
        await asyncio.get_running_loop().run_in_executor(self.executor, self.model.warm_up)
        self.text_batcher.start()
        self.image_batcher.start()

    async def stop(self):
        await self.text_batcher.stop()
        await self.image_batcher.stop()
        self.executor.shutdown(wait=True)

    @staticmethod
    async def _embed(batcher, inputs):
        return [embedding for embedding, _ in await asyncio.gather(*(batcher.submit((x, None)) for x in inputs))]

    async def _search(self, batcher, query, gallery, k):
        _, (scores, positions) = await batcher.submit((query, (gallery, k)))
        return search_results(gallery, scores, positions, self.image_gallery)

    async def embed_texts(self, texts):
        return await self._embed(self.text_batcher, texts)

    async def search_text(self, text, k):
        """Text -> images: the hits' JSON rows."""
        return await self._search(self.text_batcher, text, self.image_gallery, k)

    def prepare_images(self, images):
        """Decode and preprocess (on a request thread, before batching): bad images fail only their request."""
        limit = self.settings.max_image_pixels
        return [self.model.preprocess(decode_base64_image(b64, f"images[{i}]", limit)) for i, b64 in enumerate(images)]

    def prepare_upload(self, data):
        return self.model.preprocess(decode_request_image(data, "uploaded image", self.settings.max_image_pixels))

    async def embed_images(self, images):
        pixels = await run_in_threadpool(self.prepare_images, images)
        return await self._embed(self.image_batcher, pixels)

    async def search_image(self, image, gallery, k):
        """A base64 image -> ``gallery``: the hits' JSON rows."""
        (pixels,) = await run_in_threadpool(self.prepare_images, [image])
        return await self._search(self.image_batcher, pixels, gallery, k)

    async def search_upload(self, data, gallery, k):
        """An uploaded image file -> ``gallery``: the hits' JSON rows."""
        pixels = await run_in_threadpool(self.prepare_upload, data)
        return await self._search(self.image_batcher, pixels, gallery, k)

    def gallery_for(self, target):
        if target == "images":
            return self.image_gallery
        if self.text_gallery is None:
            raise RequestError(400, "this service has no text gallery: image -> text queries cannot be answered "
                               "(tools/build_index.py makes one from a TSV's captions unless --no-texts)")
        return self.text_gallery

    def health(self):
        return {
            "status": "ok",
            "model_id": self.model.model_id,
            "runtime": {"format": self.model.format, "precision": self.model.precision},
            "embed_dim": self.model.embed_dim,
            "image_gallery": self.image_gallery.size,
            "text_gallery": self.text_gallery.size if self.text_gallery else None,
            "batching": {"text": self.text_batcher.stats.as_dict(), "image": self.image_batcher.stats.as_dict()},
        }


def create_app(model, image_gallery, text_gallery=None, settings=None):
    """The FastAPI app over an :class:`~.predictor.ExportedModel` and its galleries."""
    settings = settings or ServiceSettings()
    engine = Engine(model, image_gallery, text_gallery, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="ernievil2 retrieval", lifespan=lifespan)
    app.state.engine = engine
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError):
        return JSONResponse({"detail": err.message}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        errors = err.errors()
        if any(e["loc"][:1] == ("body",) for e in errors):
            # FastAPI reads a body as JSON only when it is declared so: curl -d alone sends a form.
            refusal = json_body_refusal(request.headers.get("content-type", ""))
            if refusal:
                return JSONResponse({"detail": refusal}, status_code=415)
        invalid_json = [e for e in errors if e["type"] == "json_invalid"]
        if invalid_json:
            return JSONResponse({"detail": json_error_message(invalid_json[0])}, status_code=400)
        return JSONResponse({"detail": validation_message(errors)}, status_code=422)

    @app.exception_handler(QueueFullError)
    async def busy(request: Request, err: QueueFullError):
        return JSONResponse({"detail": f"service busy: {err}"}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/healthz")
    async def healthz():
        return engine.health()

    @app.post("/embed/text")
    async def embed_text(body: TextsBody):
        check_count(body.texts, "texts", settings.max_texts_per_request)
        for i, text in enumerate(body.texts):
            check_text(text, f"texts[{i}]", settings)
        rows = await engine.embed_texts(body.texts)
        return {"dim": model.embed_dim, "embeddings": [row.tolist() for row in rows]}

    @app.post("/embed/image")
    async def embed_image(body: ImagesBody):
        check_count(body.images, "images", settings.max_images_per_request)
        rows = await engine.embed_images(body.images)
        return {"dim": model.embed_dim, "embeddings": [row.tolist() for row in rows]}

    def answer(query_kind, gallery, k, results, started):
        took_ms = round((time.perf_counter() - started) * 1000, 1)
        return {"query": query_kind, "gallery": gallery.kind, "k": k, "took_ms": took_ms, "results": results}

    @app.post("/search")
    async def search(body: SearchBody):
        started = time.perf_counter()
        if (body.text is None) == (body.image is None):
            raise RequestError(422, "give exactly one of 'text' (searches images) or 'image' (searches texts or images)")
        k = settings.default_k if body.k is None else body.k
        check_k(k, settings)
        if body.text is not None:
            if body.target not in (None, "images"):
                raise RequestError(422, "a text query searches the images: target must be 'images' or left out")
            check_text(body.text, "text", settings)
            return answer("text", engine.image_gallery, k, await engine.search_text(body.text, k), started)
        gallery = engine.gallery_for(body.target or "texts")
        return answer("image", gallery, k, await engine.search_image(body.image, gallery, k), started)

    @app.post("/search/image")
    async def search_uploaded_image(request: Request, target: Target = "texts", k: Optional[int] = None):
        k = settings.default_k if k is None else k
        check_k(k, settings)
        gallery = engine.gallery_for(target)
        data = await read_upload(request, settings.max_upload_bytes)
        # Timed from here: the upload's transfer time is the network's, not the search's.
        started = time.perf_counter()
        return answer("image", gallery, k, await engine.search_upload(data, gallery, k), started)

    @app.get("/thumbnails/{position}")
    async def thumbnail(position: int):
        try:
            data = engine.image_gallery.thumbnail(position)
        except KeyError as err:
            raise HTTPException(404, str(err.args[0])) from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    @app.get("/")
    async def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html; charset=utf-8")

    return app
