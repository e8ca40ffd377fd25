"""Serve text -> image (and image -> text) search over HTTP, with a search page at /.

    python tools/build_index.py --model EXPORT --tsv test.coco_cn.data --output INDEX_DIR
    python tools/serve.py --model EXPORT --index INDEX_DIR --port 8000
    # then open http://127.0.0.1:8000/?q=一张草莓的照片 , or:
    curl -s 127.0.0.1:8000/search -H 'Content-Type: application/json' -d '{"text": "一张草莓的照片", "k": 5}'
    curl -s --data-binary @photo.jpg '127.0.0.1:8000/search/image?target=images&k=5'   # or target=texts

Listens on 127.0.0.1 unless --host says otherwise; there is no authentication, so put it behind a
proxy before exposing it. Endpoints, limits and error codes: docs/export_and_serving.md.
"""
import argparse
import sys

import uvicorn

from ernievil2.inference.cli import add_predictor_arguments, predictor_options
from ernievil2.inference.errors import USER_ERRORS
from ernievil2.inference.galleries import load_galleries
from ernievil2.inference.predictor import ExportedModel
from ernievil2.inference.service import ServiceSettings, create_app


def parse_args(argv=None):
    defaults = ServiceSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="export folder (tools/export_model.py)")
    parser.add_argument("--index", required=True, help="gallery folder (tools/build_index.py)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (the log line names it)")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch_size, help="items per model call")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms, help="batch collection window")
    parser.add_argument("--max-k", type=int, default=defaults.max_k)
    parser.add_argument("--faiss-gpu", action="store_true", help="search on GPU (needs faiss-gpu; untested here)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--no-access-log", action="store_true", help="no log line per request")
    add_predictor_arguments(parser)
    return parser.parse_args(argv)


def build_app(args):
    model = ExportedModel(args.model, predictor_options(args), max_len=args.max_len)
    images, texts = load_galleries(args.index, use_gpu=args.faiss_gpu)
    settings = ServiceSettings(max_batch_size=args.max_batch, max_wait_ms=args.max_wait_ms, max_k=args.max_k)
    return create_app(model, images, texts, settings)


def main(argv=None):
    args = parse_args(argv)
    try:
        app = build_app(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=not args.no_access_log)
    return 0
