"""Training augmentation: two independently drawn views of each image.

The published ERNIE-ViL 2.0 recipe, per view: the official short-side resize,
a random crop, horizontal flip, colour jitter, grayscale and Gaussian blur,
then the eval normalisation (:class:`~.image_ops.Normalizer`).

Everything runs on uint8 with OpenCV, and the crop comes first, so the colour
ops touch only ``image_size``² pixels whatever the photo's size.

Randomness comes only from the ``numpy.random.Generator`` passed to each call.
A sample's views therefore depend on its generator alone, not on which worker
handles it or in what order; :func:`sample_generator` derives one from
(seed, epoch, sample index).
"""
import math
import numbers

import cv2
import numpy as np

from ..registry import ConfigError, did_you_mean
from ..validate import check_known_keys, integer_at_least, is_real_number, number_in, probability
from .image_ops import Normalizer, center_crop, resize_short
from .imagenet import IMAGENET_MEAN, IMAGENET_STD

SECTION = "Augment"

AUGMENT_DEFAULTS = {
    "image_size": 224,
    "resize_short": 224,
    "crop": "random",
    "hflip": 0.5,
    "color_jitter": {"p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
    "grayscale": 0.2,
    "blur": {"p": 0.5, "kernel": 5, "sigma": [0.1, 2.0]},
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
}

# The options each crop takes, with their defaults.
CROP_DEFAULTS = {
    "random": {},
    "center": {},
    "random_resized": {"scale": [0.5, 1.0], "ratio": [3.0 / 4.0, 4.0 / 3.0]},
}

# ITU-R BT.601 luma weights (those of OpenCV's and PIL's RGB -> gray). They sum to
# exactly 1 in OpenCV's 10-bit fixed point too, so gray pixels map to themselves.
LUMA = np.array([0.299, 0.587, 0.114])

# OpenCV's 8-bit HSV stores hue in 2-degree steps, 0..179.
HUE_STEPS = 180

# Rejection sampling of a random-resized window gives up after this many draws.
RESIZED_CROP_ATTEMPTS = 10


# ---------------------------------------------------------------- pure image ops


def _level_table(scale, offset):
    """uint8 table of ``round(scale * v + offset)`` for v in 0..255, saturated."""
    return np.clip(np.rint(np.arange(256) * scale + offset), 0, 255).astype(np.uint8)


def adjust_brightness(image, factor):
    """Multiply every value by ``factor`` (0: black), rounded and saturated at 255."""
    # A LUT, not cv2.transform: OpenCV sends diagonal matrices down a slow float path.
    return cv2.LUT(image, _level_table(factor, 0.0))


def mean_gray(image):
    """Mean luma of an RGB image (equal to the mean of its gray image, before rounding)."""
    return float(np.dot(LUMA, cv2.mean(image)[:3]))


def adjust_contrast(image, factor):
    """Blend every value toward the image's mean gray level (0: flat gray)."""
    return cv2.LUT(image, _level_table(factor, (1.0 - factor) * mean_gray(image)))


def adjust_saturation(image, factor):
    """Blend every pixel toward its own gray level (0: grayscale); may round 1 off exact."""
    mix = factor * np.eye(3) + (1.0 - factor) * LUMA[None, :]
    return cv2.transform(image, mix)


def to_grayscale(image):
    """Luma in all three channels, so the model input keeps its shape."""
    return cv2.transform(image, np.tile(LUMA, (3, 1)))


def _hue_table(steps):
    """3-channel LUT turning hue by ``steps`` (mod 180) and keeping S and V."""
    levels = np.arange(256)
    hue = np.where(levels < HUE_STEPS, (levels + steps) % HUE_STEPS, levels)
    return np.stack([hue, levels, levels], axis=-1).astype(np.uint8).reshape(256, 1, 3)


def rotate_hue(image, turns):
    """Turn every pixel's hue by ``turns`` of the colour circle, to the nearest 2 degrees."""
    steps = round(turns * HUE_STEPS) % HUE_STEPS
    if steps == 0:
        # The uint8 HSV round trip is lossy; skip it when the hue would not move.
        return image
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    cv2.LUT(hsv, _hue_table(steps), dst=hsv)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def gaussian_blur(image, kernel, sigma):
    """Square Gaussian blur; borders reflect without repeating the edge pixel."""
    return cv2.GaussianBlur(image, (kernel, kernel), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def flip_horizontal(image):
    return cv2.flip(image, 1)


# ---------------------------------------------------------------- random draws


def random_window_origin(height, width, window_h, window_w, rng):
    """Top-left corner of a uniformly placed ``window_h`` x ``window_w`` window."""
    return int(rng.integers(0, height - window_h + 1)), int(rng.integers(0, width - window_w + 1))


def random_resized_box(height, width, scale, ratio, rng):
    """``(top, left, h, w)`` of a window covering a ``scale`` fraction of the area.

    The area fraction is uniform on ``scale`` and the aspect ratio (w / h)
    log-uniform on ``ratio``; draws that do not fit are retried. If none fits,
    the largest centred window whose aspect ratio lies in ``ratio``.
    """
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(RESIZED_CROP_ATTEMPTS):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return (*random_window_origin(height, width, h, w, rng), h, w)
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, max(1, round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = max(1, round(height * ratio[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# ---------------------------------------------------------------- crops


class CenterCrop:
    """The eval crop: official short-side resize, centred window."""

    def __init__(self, size, short):
        self.size, self.short = size, short

    def __call__(self, rgb, rng):
        return center_crop(resize_short(rgb, self.short), self.size)


class RandomCrop:
    """Official short-side resize, then a uniformly placed window (a view, no copy)."""

    def __init__(self, size, short):
        self.size, self.short = size, short

    def __call__(self, rgb, rng):
        image = resize_short(rgb, self.short)
        top, left = random_window_origin(image.shape[0], image.shape[1], self.size, self.size, rng)
        return image[top : top + self.size, left : left + self.size]


class RandomResizedCrop:
    """A random window of the decoded image, resized straight to ``size`` (INTER_LINEAR).

    ``scale`` and ``ratio`` are relative to the image, so a short-side resize
    first would pick the same window; skipping it saves a resize of the whole
    image and an interpolation.
    """

    def __init__(self, size, scale, ratio):
        self.size, self.scale, self.ratio = size, scale, ratio

    def __call__(self, rgb, rng):
        top, left, h, w = random_resized_box(rgb.shape[0], rgb.shape[1], self.scale, self.ratio, rng)
        window = rgb[top : top + h, left : left + w]
        return cv2.resize(window, (self.size, self.size), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------- composite ops


class ColorJitter:
    """Brightness, contrast, saturation and hue in a random order, each with a random factor.

    Factors are uniform on ``[max(0, 1 - x), 1 + x]``, the hue turn on
    ``[-hue, hue]``; an adjustment of strength 0 is left out.
    """

    def __init__(self, brightness, contrast, saturation, hue):
        self.adjustments = [
            (op, max(0.0, 1.0 - x), 1.0 + x)
            for op, x in ((adjust_brightness, brightness), (adjust_contrast, contrast), (adjust_saturation, saturation))
            if x > 0
        ]
        if hue > 0:
            self.adjustments.append((rotate_hue, -hue, hue))

    def __call__(self, image, rng):
        for index in rng.permutation(len(self.adjustments)):
            op, low, high = self.adjustments[index]
            image = op(image, rng.uniform(low, high))
        return image


class RandomGaussianBlur:
    """:func:`gaussian_blur` with sigma uniform on ``sigma`` = [low, high]."""

    def __init__(self, kernel, sigma):
        self.kernel, self.sigma = kernel, sigma

    def __call__(self, image, rng):
        return gaussian_blur(image, self.kernel, rng.uniform(self.sigma[0], self.sigma[1]))


# Module-level (not lambdas) so a transform pickles into spawned dataloader workers.
def _flip_step(image, rng):
    return flip_horizontal(image)


def _grayscale_step(image, rng):
    return to_grayscale(image)


def build_steps(settings):
    """``[(name, p, op)]`` for the enabled ops after the crop, in the published order.

    Each ``op(image, rng)`` runs with probability ``p``; ops with p = 0 are left
    out, so they cost nothing and draw no random numbers.
    """
    jitter, blur = settings["color_jitter"], settings["blur"]
    steps = [("hflip", settings["hflip"], _flip_step)]
    if jitter:
        colour = ColorJitter(jitter["brightness"], jitter["contrast"], jitter["saturation"], jitter["hue"])
        steps.append(("color_jitter", jitter["p"], colour))
    steps.append(("grayscale", settings["grayscale"], _grayscale_step))
    if blur:
        steps.append(("blur", blur["p"], RandomGaussianBlur(blur["kernel"], blur["sigma"])))
    return [step for step in steps if step[1] > 0]


class TrainTransform:
    """One augmented view: decoded RGB uint8 HWC -> normalised float32 CHW.

    Built from an ``Augment`` config section (a mapping; missing keys take the
    published values of :data:`AUGMENT_DEFAULTS`). Call as ``transform(rgb, rng)``
    with a ``numpy.random.Generator``; it is the only source of randomness.
    """

    def __init__(self, section=None):
        self.settings = augment_settings(section)
        self.crop = build_crop(self.settings["crop"], self.settings["image_size"], self.settings["resize_short"])
        self.steps = build_steps(self.settings)
        self.normalize = Normalizer(self.settings["mean"], self.settings["std"])

    def __call__(self, rgb, rng):
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        image = self.crop(rgb, rng)
        for _, p, op in self.steps:
            if rng.random() < p:
                image = op(image, rng)
        return self.normalize(image)


def make_view_pair(rgb, transform, rng):
    """Two independent draws of ``transform`` on one image, stacked ``[2, 3, H, W]``."""
    return np.stack([transform(rgb, rng), transform(rgb, rng)])


def sample_generator(seed, epoch, index):
    """The generator for one sample: independent streams for every (seed, epoch, index)."""
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def build_crop(crop, image_size, short):
    """The crop op for a validated ``crop`` setting (``{"name": ..., **options}``)."""
    if crop["name"] == "random_resized":
        return RandomResizedCrop(image_size, crop["scale"], crop["ratio"])
    cls = RandomCrop if crop["name"] == "random" else CenterCrop
    return cls(image_size, short)


# ---------------------------------------------------------------- config validation


def augment_settings(section=None):
    """Validate an ``Augment`` section and fill in defaults.

    Returns a new dict with every key of :data:`AUGMENT_DEFAULTS`: ``crop`` as
    ``{"name": ..., **options}``, a disabled ``color_jitter`` or ``blur`` as
    ``None``, probabilities and strengths as floats. Raises :class:`ConfigError`
    naming ``Augment.<key>``.
    """
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise ConfigError(SECTION, f"expected a mapping, got {section!r}")
    check_known_keys(section, AUGMENT_DEFAULTS, SECTION)
    raw = {**AUGMENT_DEFAULTS, **section}
    settings = {
        "image_size": integer_at_least(raw["image_size"], f"{SECTION}.image_size", 1),
        "resize_short": integer_at_least(raw["resize_short"], f"{SECTION}.resize_short", 1),
        "crop": _crop_setting(raw["crop"], f"{SECTION}.crop"),
        "hflip": _probability(raw["hflip"], f"{SECTION}.hflip"),
        "color_jitter": _jitter_setting(raw["color_jitter"], f"{SECTION}.color_jitter"),
        "grayscale": _probability(raw["grayscale"], f"{SECTION}.grayscale"),
        "blur": _blur_setting(raw["blur"], f"{SECTION}.blur"),
        "mean": _triple(raw["mean"], f"{SECTION}.mean", positive=False),
        "std": _triple(raw["std"], f"{SECTION}.std", positive=True),
    }
    if settings["crop"]["name"] != "random_resized" and settings["resize_short"] < settings["image_size"]:
        raise ConfigError(
            f"{SECTION}.resize_short",
            f"{settings['resize_short']} is smaller than image_size {settings['image_size']}; "
            f"a {settings['crop']['name']} crop needs resize_short >= image_size",
        )
    return settings


def _probability(value, key):
    """A probability; null means 0 (the op is off)."""
    return probability(0.0 if value is None else value, key)


def _strength(value, key, upper=math.inf):
    """A non-negative strength (at most ``upper``); null means 0 (the op is off)."""
    return number_in(0.0 if value is None else value, key, 0.0, upper)


def _interval(value, key, lowest, highest=math.inf):
    """``[low, high]`` with ``lowest < low <= high <= highest``."""
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(is_real_number(v) for v in value):
        raise ConfigError(key, f"expected [low, high], got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not lowest < low <= high <= highest:
        upper = "" if highest == math.inf else f" <= {highest:g}"
        raise ConfigError(key, f"need {lowest:g} < low <= high{upper}, got {value!r}")
    return [low, high]


def _triple(value, key, positive):
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(is_real_number(v) for v in value):
        raise ConfigError(key, f"expected 3 numbers (R, G, B), got {value!r}")
    if positive and min(value) <= 0:
        raise ConfigError(key, f"must be positive, got {value!r}")
    return [float(v) for v in value]


def _op_section(value, defaults, key):
    """A sub-mapping merged over its defaults; null or 0 -> None (the op is off)."""
    if value is None or (is_real_number(value) and value == 0):
        return None
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping (keys: {', '.join(defaults)}), or null/0 to disable; got {value!r}")
    check_known_keys(value, defaults, key)
    return {**defaults, **value}


def _jitter_setting(value, key):
    merged = _op_section(value, AUGMENT_DEFAULTS["color_jitter"], key)
    if merged is None:
        return None
    jitter = {"p": _probability(merged["p"], f"{key}.p")}
    for name in ("brightness", "contrast", "saturation"):
        jitter[name] = _strength(merged[name], f"{key}.{name}")
    # Half a turn either way already reaches every hue.
    jitter["hue"] = _strength(merged["hue"], f"{key}.hue", upper=0.5)
    strengths = [jitter[name] for name in ("brightness", "contrast", "saturation", "hue")]
    return jitter if jitter["p"] > 0 and any(strengths) else None


def _blur_setting(value, key):
    merged = _op_section(value, AUGMENT_DEFAULTS["blur"], key)
    if merged is None:
        return None
    p = _probability(merged["p"], f"{key}.p")
    kernel = merged["kernel"]
    if isinstance(kernel, bool) or not isinstance(kernel, numbers.Integral) or kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"{key}.kernel", f"must be an odd positive integer (the kernel is centred), got {kernel!r}")
    sigma = _interval(merged["sigma"], f"{key}.sigma", lowest=0.0)
    return {"p": p, "kernel": int(kernel), "sigma": sigma} if p > 0 else None


def _crop_setting(value, key):
    """``"random"`` or ``{name: random_resized, scale: [...], ratio: [...]}`` -> a full mapping."""
    section = {"name": value} if isinstance(value, str) else value
    if not isinstance(section, dict) or "name" not in section:
        raise ConfigError(key, f"expected one of {', '.join(CROP_DEFAULTS)}, or a mapping with a 'name'; got {value!r}")
    name = section["name"]
    if name not in CROP_DEFAULTS:
        raise ConfigError(
            f"{key}.name" if isinstance(value, dict) else key,
            f"unknown crop {name!r}; known: {', '.join(CROP_DEFAULTS)}" + did_you_mean(name, CROP_DEFAULTS),
        )
    defaults = CROP_DEFAULTS[name]
    options = {k: v for k, v in section.items() if k != "name"}
    if options and not defaults:
        raise ConfigError(f"{key}.{next(iter(options))}", f"the {name} crop takes no options")
    check_known_keys(options, defaults, key)
    merged = {**defaults, **options}
    crop = {"name": name}
    if name == "random_resized":
        crop["scale"] = _interval(merged["scale"], f"{key}.scale", lowest=0.0, highest=1.0)
        crop["ratio"] = _interval(merged["ratio"], f"{key}.ratio", lowest=0.0)
    return crop
