"""Small iterator helpers shared by the data, evaluation and inference paths."""
import itertools


def batched(iterable, size):
    """Lists of up to ``size`` consecutive items (``itertools.batched`` from Python 3.12 on)."""
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def first_of_each(items, key):
    """The first item of each ``key(item)``, in order: e.g. each image of a caption file once."""
    seen = set()
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            yield item
