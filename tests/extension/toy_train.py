"""Training with an image tower, loss terms and a data format of one's own, added through the registries alone.

This file stands for a project outside the package: it imports ernievil2,
registers its own builders, then trains from a config that names them
(docs/developing.md). ``python tests/extension/toy_train.py -c CONFIG [-o ...]``.
"""
import argparse
import os
import sys

import paddle.nn as nn
from own_scale_term import OwnScaleInfoNCE  # this script's folder: the project's own module

from ernievil2 import cli
from ernievil2.data.errors import DataError
from ernievil2.data.readers import DATA_FORMATS, PairRecord
from ernievil2.losses import LOSS_TERMS, pairwise_term
from ernievil2.models import IMAGE_TOWERS


class ToyImageTower(nn.Layer):
    """A linear map from the pixels to the feature: no blocks, so no layer groups or recompute."""

    def __init__(self, img_size=32, out_dim=32):
        super().__init__()
        self.out_dim = out_dim
        self.proj = nn.Linear(3 * img_size * img_size, out_dim)

    def forward(self, images):
        return self.proj(images.flatten(1))


def cosine_distance(a, b, logit_scale, a_all, b_all, rank):
    """Mean ``1 - cos`` of paired rows (both unit length): pulls positives together, no negatives."""
    return (1 - (a * b).sum(axis=-1)).mean()


def caption_folder(folder, counter, shard=None):
    """Pairs from a folder of ``<id>.jpg`` images, each captioned by the first line of ``<id>.txt``.

    A data format: its keys (here ``folder``; a key named ``path`` means data files, which
    the pipeline expands and shares out among ranks) come from the spec, ``counter`` takes
    a bad record (or raises, with ``on_error: raise``), ``shard`` = (index, count) keeps
    one rank's share of the records.
    """
    names = sorted(name[: -len(".jpg")] for name in os.listdir(folder) if name.endswith(".jpg"))
    for number, name in enumerate(names):
        if shard is not None and number % shard[1] != shard[0]:
            continue
        image, caption = os.path.join(folder, name + ".jpg"), os.path.join(folder, name + ".txt")
        if not os.path.isfile(caption):
            counter.report(DataError(image, None, f"no caption file {name}.txt beside it"))
            continue
        with open(caption, encoding="utf-8") as f, open(image, "rb") as g:
            text, data = f.readline().strip(), g.read()
        yield PairRecord(text, name, data, (), f"{caption}:1", image)


IMAGE_TOWERS.register("ToyImage", ToyImageTower)
DATA_FORMATS.register("caption_folder", caption_folder)
LOSS_TERMS.register("cosine_distance", pairwise_term("cosine_distance", cosine_distance))
LOSS_TERMS.register("own_scale_info_nce", OwnScaleInfoNCE)


def main(argv=None):
    from ernievil2.config import load_config
    from ernievil2.engine.build import build_trainer

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("-o", "--override", action="append", default=[])
    args = parser.parse_args(argv)
    build_trainer(load_config(args.config, args.override)).train()


if __name__ == "__main__":
    sys.exit(cli.run(main))
