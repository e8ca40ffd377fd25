"""Deployment: export to Paddle Inference, fast encoding, galleries, and the retrieval service.

- :mod:`.export`     dygraph model -> two static graphs + ``deploy.yaml`` (``tools/export_model.py``)
- :mod:`.deploy`     the export folder's layout and checks
- :mod:`.errors`     errors about the user's files or machine (printed by tools without a traceback)
- :mod:`.predictor`  ``ExportedModel``: paddle.inference predictors, batched text and image encoding
- :mod:`.inputs`     image files, folders and official TSVs to encode
- :mod:`.index`      ``Gallery``: faiss inner-product search with ids, captions and thumbnails
- :mod:`.build`      galleries from an exported model and images (``tools/build_index.py``)
- :mod:`.batching`   dynamic batching of concurrent requests
- :mod:`.service`    the FastAPI app (``tools/serve.py``); imported on its own, it needs fastapi
- :mod:`.cli`        command-line options shared by the tools
"""
from .errors import DeviceUnavailableError, ExportError, GalleryError, OptionsError
from .index import Gallery, load_gallery
from .predictor import ExportedModel, PredictorOptions

__all__ = [
    "DeviceUnavailableError",
    "ExportError",
    "ExportedModel",
    "Gallery",
    "GalleryError",
    "OptionsError",
    "PredictorOptions",
    "load_gallery",
]
