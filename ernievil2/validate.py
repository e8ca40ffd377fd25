"""The checks that configs and specs are made of: each returns the clean value or raises
:class:`~ernievil2.registry.ConfigError` naming the key, so every section reads alike.
"""
import math
import numbers

from .registry import ConfigError, did_you_mean


def is_real_number(value):
    """A finite int or float; bool is an int in Python, and PyYAML reads ``1e-3`` (no dot) as a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_known_keys(mapping, known, key):
    """Every key of ``mapping`` is one of ``known``; else the first stranger, with a did-you-mean."""
    for name in mapping:
        if name not in known:
            raise ConfigError(f"{key}.{name}", f"unknown key; known: {', '.join(known)}" + did_you_mean(name, known))


def require_keys(mapping, required, key):
    for name in required:
        if name not in mapping:
            raise ConfigError(f"{key}.{name}", "missing (required)")


def real_number(value, key):
    if not is_real_number(value):
        raise ConfigError(key, f"must be a finite number, got {value!r} ({type(value).__name__})")
    return float(value)


def number_in(value, key, low, high=math.inf):
    """A finite number in ``[low, high]``."""
    number = real_number(value, key)
    if not low <= number <= high:
        raise ConfigError(key, f"must be in [{low:g}, {high:g}], got {number!r}" if high != math.inf else f"must be >= {low:g}, got {number!r}")
    return number


def probability(value, key):
    number = real_number(value, key)
    if not 0.0 <= number <= 1.0:
        raise ConfigError(key, f"a probability must be in [0, 1], got {value!r}")
    return number


def positive_number(value, key):
    number = real_number(value, key)
    if number <= 0:
        raise ConfigError(key, f"must be positive, got {number!r}")
    return number


def integer_at_least(value, key, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(key, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def boolean(value, key):
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def one_of(value, choices, key):
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(map(str, choices))}, got {value!r}" + did_you_mean(value, choices))
    return value
