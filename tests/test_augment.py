"""Training augmentation: each op's maths, crop geometry, draw statistics, reproducibility, config errors."""
import pickle
import random

import numpy as np
import pytest

from ernievil2.data.augment import (
    AUGMENT_DEFAULTS,
    ColorJitter,
    RandomCrop,
    RandomResizedCrop,
    TrainTransform,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    augment_settings,
    flip_horizontal,
    gaussian_blur,
    make_view_pair,
    random_resized_box,
    random_window_origin,
    rotate_hue,
    sample_generator,
    to_grayscale,
)
from ernievil2.data.image_ops import EvalTransform, resize_short
from ernievil2.registry import ConfigError

ALL_OFF = {"crop": "center", "hflip": 0, "color_jitter": None, "grayscale": 0, "blur": None}
# Identity normalisation: the output is the augmented uint8 image / 255, so tests can read it.
RAW = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def photo(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def pixels(*rgb):
    return np.array([rgb], dtype=np.uint8)


def as_uint8(view):
    """Undo the RAW normalisation: float CHW in [0, 1] -> uint8 HWC."""
    return np.rint(view.transpose(1, 2, 0) * 255).astype(np.uint8)


def checkerboard(size):
    board = (np.indices((size, size)).sum(axis=0) % 2 * 255).astype(np.uint8)
    return np.dstack([board] * 3)


# ---------------------------------------------------------------- reproducibility


def test_same_seed_gives_identical_views_and_leaves_the_input_alone():
    image = photo(224, 300)  # already at the short side: the random crop is a view of it
    original = image.copy()
    for crop in ("random", {"name": "random_resized"}):
        transform = TrainTransform({"crop": crop, "color_jitter": {"p": 1.0}, "blur": {"p": 1.0}})
        first = make_view_pair(image, transform, np.random.default_rng(7))
        second = make_view_pair(image, transform, np.random.default_rng(7))
        assert np.array_equal(first, second)
    assert np.array_equal(image, original)


def test_the_two_views_and_two_seeds_differ():
    image = photo(375, 500)
    transform = TrainTransform()
    views = make_view_pair(image, transform, np.random.default_rng(0))
    other = make_view_pair(image, transform, np.random.default_rng(1))
    assert views.shape == (2, 3, 224, 224) and views.dtype == np.float32
    assert not np.array_equal(views[0], views[1])
    assert not np.array_equal(views, other)


def test_view_pair_is_two_successive_draws_from_the_generator():
    image = photo(300, 260)
    transform = TrainTransform()
    pair = make_view_pair(image, transform, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    assert np.array_equal(pair[0], transform(image, rng))
    assert np.array_equal(pair[1], transform(image, rng))


def test_transform_pickles_for_spawned_workers():
    transform = TrainTransform({"crop": {"name": "random_resized"}})
    copy = pickle.loads(pickle.dumps(transform))
    image = photo(120, 160)
    assert np.array_equal(copy(image, np.random.default_rng(5)), transform(image, np.random.default_rng(5)))


def test_transform_leaves_global_random_state_alone():
    numpy_state, python_state = np.random.get_state()[1].copy(), random.getstate()
    make_view_pair(photo(240, 320), TrainTransform(), np.random.default_rng(0))
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert random.getstate() == python_state


def test_sample_generator_streams_depend_on_seed_epoch_and_index():
    def draw(*key):
        return sample_generator(*key).integers(0, 2**62, 4).tolist()

    assert draw(1, 2, 3) == draw(1, 2, 3)
    assert len({tuple(draw(*key)) for key in [(1, 2, 3), (1, 2, 4), (1, 3, 3), (2, 2, 3), (1, 23, 0)]}) == 5
    with pytest.raises(ValueError, match="index must be a non-negative integer"):
        sample_generator(1, 0, -1)


# ---------------------------------------------------------------- eval equivalence and input checks


@pytest.mark.parametrize("shape", [(375, 500), (500, 375), (224, 224), (40, 30)])
def test_everything_off_with_center_crop_is_the_eval_transform(shape):
    image = photo(*shape)
    transform = TrainTransform(ALL_OFF)
    assert transform.steps == []
    assert np.array_equal(transform(image, np.random.default_rng(0)), EvalTransform()(image))


def test_rejects_non_rgb_uint8_input():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        TrainTransform()(photo(50, 50).astype(np.float32), np.random.default_rng(0))


# ---------------------------------------------------------------- the ops' maths


def test_brightness_scales_and_saturates():
    assert adjust_brightness(pixels([10, 100, 200]), 1.5).tolist() == [[[15, 150, 255]]]
    assert adjust_brightness(pixels([10, 100, 200]), 0.5).tolist() == [[[5, 50, 100]]]
    assert adjust_brightness(pixels([10, 100, 200]), 0.0).tolist() == [[[0, 0, 0]]]


def test_contrast_blends_toward_the_mean_gray():
    # Channel means are 75, 75, 75, so the mean gray is 75 whatever the luma weights.
    image = np.array([[[200, 0, 0], [0, 200, 0]], [[0, 0, 200], [100, 100, 100]]], dtype=np.uint8)
    # 0.25 * v + 0.75 * 75: 200 -> 106.25, 0 -> 56.25, 100 -> 81.25
    expected = [[[106, 56, 56], [56, 106, 56]], [[56, 56, 106], [81, 81, 81]]]
    assert adjust_contrast(image, 0.25).tolist() == expected
    assert np.all(adjust_contrast(image, 0.0) == 75)
    # 1.5 * v - 0.5 * 75: 200 -> 262.5 saturates, 0 -> -37.5 saturates, 100 -> 112.5 -> 112
    assert adjust_contrast(image, 1.5)[1, 1].tolist() == [112, 112, 112]
    assert adjust_contrast(image, 1.5)[0, 0].tolist() == [255, 0, 0]


def test_grayscale_uses_bt601_luma_in_three_channels():
    # 0.299 * 255 = 76.2, 0.587 * 255 = 149.7, 0.114 * 255 = 29.1; gray stays gray
    image = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [90, 90, 90]]], dtype=np.uint8)
    assert to_grayscale(image).tolist() == [[[76] * 3, [150] * 3, [29] * 3, [90] * 3]]


def test_saturation_blends_each_pixel_toward_its_gray():
    image = photo(16, 16)
    assert np.array_equal(adjust_saturation(image, 0.0), to_grayscale(image))
    assert np.array_equal(adjust_saturation(image, 1.0), image)
    # red at half saturation: 0.5 * 255 + 0.5 * 76.245 = 165.6, 0.5 * 76.245 = 38.1
    assert adjust_saturation(pixels([255, 0, 0]), 0.5).tolist() == [[[166, 38, 38]]]
    # OpenCV's 10-bit fixed point may round one level off the exact blend, never more.
    gray = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    exact = np.clip(np.rint(1.7 * image + (1 - 1.7) * gray[..., None]), 0, 255)
    assert np.abs(adjust_saturation(image, 1.7) - exact).max() <= 1


def test_hue_rotation_on_pure_colours_wraps_around():
    red, green, blue = [255, 0, 0], [0, 255, 0], [0, 0, 255]
    assert rotate_hue(pixels(red), 1 / 3).tolist() == [[green]]
    assert rotate_hue(pixels(red), -1 / 3).tolist() == [[blue]]  # 0 degrees - 120 wraps to 240
    assert rotate_hue(pixels(blue), 1 / 3).tolist() == [[red]]  # 240 + 120 wraps to 0
    # 8-bit hue 150 + 120 steps must wrap at 180, not overflow at 256: 300 + 240 degrees -> 180
    assert rotate_hue(pixels([255, 0, 255]), 2 / 3).tolist() == [[[0, 255, 255]]]
    # 0.1 turn = 36 degrees: in the red-to-yellow sector G = 255 * 36 / 60 = 153
    assert rotate_hue(pixels(red), 0.1).tolist() == [[[255, 153, 0]]]
    assert rotate_hue(pixels([90, 90, 90]), 0.25).tolist() == [[[90, 90, 90]]]


def test_hue_rotation_below_one_step_or_by_a_full_turn_is_exact_identity():
    image = photo(8, 8)
    assert rotate_hue(image, 1.0) is image
    assert rotate_hue(image, 0.001) is image


def test_flip_mirrors_columns():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(flip_horizontal(image), image[:, ::-1])


def test_blur_smooths_a_checkerboard_and_keeps_its_mean():
    board = checkerboard(16)
    blurred = gaussian_blur(board, 5, 1.0)
    assert np.abs(blurred.astype(int) - board).max() > 100
    assert abs(blurred.mean() - board.mean()) < 1.0


# ---------------------------------------------------------------- the ops inside the transform


def test_hflip_one_mirrors_the_eval_view():
    image = photo(300, 400)
    view = TrainTransform({**ALL_OFF, "hflip": 1.0})(image, np.random.default_rng(0))
    assert np.array_equal(view, EvalTransform()(image)[:, :, ::-1])


def test_grayscale_one_gives_equal_channels():
    view = TrainTransform({**ALL_OFF, **RAW, "grayscale": 1.0})(photo(230, 230), np.random.default_rng(0))
    assert np.array_equal(view[0], view[1]) and np.array_equal(view[1], view[2])


def test_blur_one_changes_a_checkerboard_and_keeps_its_mean():
    settings = {**ALL_OFF, **RAW, "image_size": 16, "resize_short": 16, "blur": {"p": 1.0}}
    board = checkerboard(16)
    view = as_uint8(TrainTransform(settings)(board, np.random.default_rng(0)))
    assert not np.array_equal(view, board)
    assert abs(view.mean() - board.mean()) < 1.0


def test_jitter_applies_the_four_adjustments_in_every_order_with_factors_in_range():
    jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=1.5, hue=0.1)
    calls = []
    jitter.adjustments = [
        (lambda image, f, name=name: calls.append((name, f)) or image, low, high)
        for name, (_, low, high) in zip("bcsh", jitter.adjustments)
    ]
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(400):
        calls.clear()
        jitter(None, rng)
        orders.add("".join(name for name, _ in calls))
        factors = dict(calls)
        assert 0.6 <= factors["b"] <= 1.4 and 0.6 <= factors["c"] <= 1.4
        assert 0.0 <= factors["s"] <= 2.5 and -0.1 <= factors["h"] <= 0.1
    assert len(orders) == 24


# ---------------------------------------------------------------- crops


@pytest.mark.parametrize("shape", [(500, 300), (300, 500), (256, 256), (224, 400), (20, 30), (5, 60)])
def test_random_crop_is_a_window_of_the_short_side_resize(shape):
    image = photo(*shape)
    resized = resize_short(image, 224)
    for seed in range(5):
        crop = RandomCrop(224, 224)(image, np.random.default_rng(seed))
        top, left = random_window_origin(resized.shape[0], resized.shape[1], 224, 224, np.random.default_rng(seed))
        assert 0 <= top <= resized.shape[0] - 224 and 0 <= left <= resized.shape[1] - 224
        assert np.array_equal(crop, resized[top : top + 224, left : left + 224])


def test_random_crop_reaches_every_edge():
    rng = np.random.default_rng(0)
    origins = np.array([random_window_origin(224, 299, 224, 224, rng) for _ in range(2000)])
    assert set(origins[:, 0]) == {0}
    assert origins[:, 1].min() == 0 and origins[:, 1].max() == 75


@pytest.mark.parametrize("shape", [(500, 300), (300, 500), (256, 256), (20, 30), (2, 900)])
def test_random_resized_box_lies_inside_with_the_drawn_area(shape):
    height, width = shape
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = random_resized_box(height, width, (0.5, 1.0), (3 / 4, 4 / 3), rng)
        assert h >= 1 and w >= 1 and top >= 0 and left >= 0
        assert top + h <= height and left + w <= width
        if min(shape) >= 20:  # small images round too coarsely to pin the area
            assert 0.45 <= h * w / (height * width) <= 1.0


def test_random_resized_box_falls_back_to_the_largest_centred_window_in_ratio():
    # A 2x900 strip fits no 3/4..4/3 window of half its area: the fallback is 2 high, 3 wide.
    assert random_resized_box(2, 900, (0.5, 1.0), (3 / 4, 4 / 3), np.random.default_rng(0)) == (0, 448, 2, 3)


@pytest.mark.parametrize("shape", [(500, 300), (300, 500), (256, 256), (20, 30)])
def test_every_crop_gives_the_model_size(shape):
    image = photo(*shape)
    for crop in ("random", "center", {"name": "random_resized"}):
        view = TrainTransform({"crop": crop})(image, np.random.default_rng(0))
        assert view.shape == (3, 224, 224) and view.dtype == np.float32
    assert RandomResizedCrop(64, (0.5, 1.0), (0.75, 1.33))(image, np.random.default_rng(0)).shape == (64, 64, 3)


# ---------------------------------------------------------------- probabilities


def flip_rate(p, draws=2000):
    # An 8x8 image whose mirror differs from it tells flipped and unflipped views apart.
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    transform = TrainTransform({**ALL_OFF, "image_size": 8, "resize_short": 8, "hflip": p})
    plain = EvalTransform(8, 8)(image)
    rng = np.random.default_rng(0)
    return np.mean([not np.array_equal(transform(image, rng), plain) for _ in range(draws)])


def test_flip_probability_is_respected():
    assert abs(flip_rate(0.5) - 0.5) < 0.04
    assert flip_rate(0.0, 200) == 0.0 and flip_rate(1.0, 200) == 1.0


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"grayscale": 0.2}, 0.2),
        # brightness with factor in [0, 2] leaves a 100-level image unchanged only within 0.5%
        ({"color_jitter": {"p": 0.8, "brightness": 1.0, "contrast": 0, "saturation": 0, "hue": 0}}, 0.8),
        ({"blur": {"p": 0.5, "sigma": [1.0, 2.0]}}, 0.5),
    ],
)
def test_op_probabilities_are_respected(settings, expected):
    image = checkerboard(8)
    image[..., 0] = 100  # coloured, so grayscale shows
    transform = TrainTransform({**ALL_OFF, **settings, "image_size": 8, "resize_short": 8})
    plain = EvalTransform(8, 8)(image)
    rng = np.random.default_rng(1)
    rate = np.mean([not np.array_equal(transform(image, rng), plain) for _ in range(2000)])
    assert abs(rate - expected) < 0.04


# ---------------------------------------------------------------- config


def test_defaults_are_the_published_recipe():
    settings = augment_settings()
    assert settings["crop"] == {"name": "random"} and settings["hflip"] == 0.5 and settings["grayscale"] == 0.2
    assert settings["color_jitter"] == {"p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
    assert settings["blur"] == {"p": 0.5, "kernel": 5, "sigma": [0.1, 2.0]}
    assert [name for name, _, _ in TrainTransform().steps] == ["hflip", "color_jitter", "grayscale", "blur"]


def test_partial_sections_take_the_remaining_defaults():
    settings = augment_settings({"blur": {"p": 1.0}, "crop": {"name": "random_resized", "scale": [0.2, 1.0]}})
    assert settings["blur"] == {"p": 1.0, "kernel": 5, "sigma": [0.1, 2.0]}
    assert settings["crop"] == {"name": "random_resized", "scale": [0.2, 1.0], "ratio": [0.75, 4 / 3]}


@pytest.mark.parametrize(
    "section",
    [
        {"hflip": None, "grayscale": 0, "color_jitter": None, "blur": 0},
        {"hflip": 0.0, "grayscale": None, "color_jitter": 0, "blur": {"p": 0}},
        {"hflip": 0, "grayscale": 0, "blur": None, "color_jitter": {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}},
    ],
)
def test_null_or_zero_disables_an_op(section):
    assert TrainTransform(section).steps == []


@pytest.mark.parametrize(
    "section, key, message",
    [
        ({"hflp": 0.5}, "Augment.hflp", "did you mean 'hflip'"),
        ({"blur": {"kernal": 3}}, "Augment.blur.kernal", "did you mean 'kernel'"),
        ({"color_jitter": {"brightnes": 0.2}}, "Augment.color_jitter.brightnes", "did you mean 'brightness'"),
        ({"hflip": 1.5}, "Augment.hflip", r"probability must be in \[0, 1\]"),
        ({"hflip": True}, "Augment.hflip", "must be a finite number, got True"),
        ({"grayscale": -0.1}, "Augment.grayscale", "probability"),
        ({"color_jitter": {"p": 2}}, "Augment.color_jitter.p", "probability"),
        ({"color_jitter": {"contrast": -0.4}}, "Augment.color_jitter.contrast", ">= 0"),
        ({"color_jitter": {"hue": 0.6}}, "Augment.color_jitter.hue", r"in \[0, 0.5\]"),
        ({"color_jitter": "strong"}, "Augment.color_jitter", "expected a mapping"),
        ({"blur": {"kernel": 4}}, "Augment.blur.kernel", "odd positive integer"),
        ({"blur": {"kernel": 0}}, "Augment.blur.kernel", "odd positive integer"),
        ({"blur": {"sigma": [2.0, 1.0]}}, "Augment.blur.sigma", "low <= high"),
        ({"blur": {"sigma": [0.0, 1.0]}}, "Augment.blur.sigma", "0 < low"),
        ({"blur": {"sigma": 1.0}}, "Augment.blur.sigma", r"expected \[low, high\]"),
        ({"crop": "randm"}, "Augment.crop", "did you mean 'random'"),
        ({"crop": {"name": "random_resize"}}, "Augment.crop.name", "did you mean 'random_resized'"),
        ({"crop": {"name": "random", "scale": [0.5, 1]}}, "Augment.crop.scale", "takes no options"),
        ({"crop": {"name": "random_resized", "scale": [0.5, 1.5]}}, "Augment.crop.scale", "high <= 1"),
        ({"crop": {"name": "random_resized", "ratio": [0, 1]}}, "Augment.crop.ratio", "0 < low"),
        ({"crop": None}, "Augment.crop", "expected one of"),
        ({"resize_short": 200}, "Augment.resize_short", "smaller than image_size 224"),
        ({"image_size": 0}, "Augment.image_size", "must be an integer >= 1, got 0"),
        ({"mean": [0.5, 0.5]}, "Augment.mean", "3 numbers"),
        ({"std": [0.2, 0.0, 0.2]}, "Augment.std", "positive"),
    ],
)
def test_bad_settings_name_the_key(section, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        TrainTransform(section)
    assert err.value.key == key


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError) as err:
        augment_settings(["hflip", 0.5])
    assert err.value.key == "Augment"


def test_random_resized_crop_does_not_need_resize_short():
    transform = TrainTransform({"crop": {"name": "random_resized"}, "image_size": 256})
    assert transform(photo(200, 300), np.random.default_rng(0)).shape == (3, 256, 256)


def test_defaults_table_is_not_mutated_by_a_section():
    augment_settings({"blur": {"p": 1.0}, "color_jitter": {"hue": 0.0}})
    assert AUGMENT_DEFAULTS["blur"]["p"] == 0.5 and AUGMENT_DEFAULTS["color_jitter"]["hue"] == 0.1
