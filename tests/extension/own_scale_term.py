"""A loss term of one's own with a parameter, config keys and a log line: this file, and one registry line
(``LOSS_TERMS.register("own_scale_info_nce", OwnScaleInfoNCE)``, in ``toy_train.py``).

InfoNCE over a table of view pairs at a learnable scale of the term's own, not the
model's temperature (as a distillation or an intra-modal term might want)::

    Loss:
      terms:
        - {name: own_scale_info_nce, weight: 0.5, pairs: [[image_v1, image_v2, 1.0]], scale_init: 5.0}

The training log line shows ``own_scale=...`` and ``own_scale/<a>-<b>=...``; the
scale is trained (no weight decay), averaged over ranks and checkpointed with the
loss, because the term is a ``paddle.nn.Layer``.
"""
import math

import paddle.nn as nn

from ernievil2.losses import Term, parse_view_pairs, symmetric_info_nce
from ernievil2.losses.terms import views_of
from ernievil2.registry import ConfigError
from ernievil2.validate import is_real_number


class OwnScaleInfoNCE(nn.Layer, Term):
    uses_logit_scale = False  # its own scale, not the model's temperature
    logs = {"own_scale/scale": "own_scale"}

    def __init__(self, pairs, scale_init=10.0):
        super().__init__()
        self.pairs = self.check(pairs, scale_init)
        self.views = self.gathered_views = views_of(self.pairs)
        self.log_scale = self.create_parameter([1], default_initializer=nn.initializer.Constant(math.log(scale_init)))

    @staticmethod
    def check(pairs, scale_init=10.0):
        """Run when the config loads (and again when the term is built); errors are keyed inside the term."""
        if isinstance(scale_init, bool) or not is_real_number(scale_init) or not 1 <= scale_init <= 100:
            raise ConfigError("scale_init", f"must be a number in [1, 100], got {scale_init!r}")
        return parse_view_pairs(pairs)

    def forward(self, inputs):
        scale = self.log_scale.exp().squeeze()
        out, total = {}, 0.0
        for pair in self.pairs:
            a, b = pair.view_a, pair.view_b
            terms = symmetric_info_nce(
                inputs.local[a], inputs.local[b], scale, inputs.gathered.get(a), inputs.gathered.get(b), inputs.rank, inputs.positives
            )
            out[f"loss/own_scale/{pair.name}"] = terms["loss"]
            total = total + pair.weight * terms["loss"]
        out["own_scale/scale"] = scale.detach()
        out["loss"] = total
        return out

