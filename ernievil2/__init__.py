"""ernievil2: ERNIE-ViL 2.0 dual-encoder pre-training and retrieval in PaddlePaddle.

``ernievil2.load(...)`` and the gallery helpers live in :mod:`ernievil2.api`; they are
imported on first use, so ``import ernievil2`` does not load Paddle.
"""
from . import runtime

# Before anything imports Paddle: MKL reads its thread count and code path once, at load.
runtime.configure()
runtime.quiet_start()

_API = ("Hit", "Model", "ModelSourceError", "build_gallery", "load", "load_gallery", "search")


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ernievil2' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
