"""Image preprocessing identical to the official ERNIE-ViL 2.0 reader.

Eval: decode (cv2, BGR->RGB), resize so the short side is ``resize_short``
with INTER_LINEAR (long side ``int(short / s * l) + 1``, the official rule,
one pixel longer than plain rounding), center crop with the official
``ceil`` offsets, then ``(x / 255 - mean) / std`` and HWC->CHW.
"""
import math

import cv2
import numpy as np

from .imagenet import IMAGENET_MEAN, IMAGENET_STD


def resize_short(image, short):
    """Official short-side resize; images already at ``short`` are returned as is."""
    h, w = image.shape[:2]
    if (w <= h and w == short) or (h <= w and h == short):
        return image
    if w < h:
        size = (short, int(float(short) / w * h) + 1)
    else:
        size = (int(float(short) / h * w) + 1, short)
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def center_crop(image, size):
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot center-crop {size}x{size} from a {w}x{h} image")
    x0, y0 = math.ceil((w - size) / 2.0), math.ceil((h - size) / 2.0)
    return image[y0 : y0 + size, x0 : x0 + size]


class Normalizer:
    """uint8 HWC RGB -> float32 CHW normalised, via a per-channel lookup table.

    A 256-entry table per channel replaces a float divide, subtract and divide
    over every pixel; the values equal ``(v / 255 - mean) / std`` in float32.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {mean} and {std}")
        levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
        self.table = np.stack(
            [(levels - np.float32(m)) / np.float32(s) for m, s in zip(mean, std)]
        ).astype(np.float32)

    def __call__(self, image):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        return np.stack([self.table[c][chw[c]] for c in range(3)])


class EvalTransform:
    """The official test-time pipeline, from a decoded RGB image to a model input."""

    def __init__(self, image_size=224, resize_short=224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if resize_short < image_size:
            raise ValueError(f"resize_short ({resize_short}) must be at least image_size ({image_size})")
        self.image_size = image_size
        self.short = resize_short
        self.normalize = Normalizer(mean, std)

    def __call__(self, rgb, rng=None):
        """``rng`` is accepted (and unused) so that eval and train transforms are interchangeable."""
        return self.normalize(center_crop(resize_short(rgb, self.short), self.image_size))

    @classmethod
    def from_config(cls, preprocess):
        return cls(preprocess["image_size"], preprocess["resize_short"], preprocess["mean"], preprocess["std"])
