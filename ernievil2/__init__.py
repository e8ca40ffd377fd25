"""ernievil2: ERNIE-ViL 2.0 dual-encoder pre-training and retrieval in PaddlePaddle."""
from . import runtime

# Before anything imports Paddle: MKL reads its thread count and code path once, at load.
runtime.configure()
