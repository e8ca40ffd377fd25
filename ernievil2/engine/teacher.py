"""The frozen teacher of a distill term (``ernievil2.losses.distill``): built once, run on every step's micro-batches.

It has the student's ``Arch``, is loaded strictly from its source, runs in eval mode (no dropout) under
``no_grad`` and is never part of a checkpoint: a resumed run rebuilds it from the same source. It sees
every patch of the images (``Train.patch_keep`` thins the student's only).
"""
import paddle
import paddle.nn.functional as F

from ..checkpoint import load_pretrained
from ..losses.distill import TeacherBatch
from ..losses.loss import check_temperature
from ..models import build_model
from .steps import encode_views


class Teacher:
    """A frozen model and the views a distill term reads of it; :meth:`batch_for` gives the loss its rows."""

    def __init__(self, model, views):
        self.model, self.views = model, frozenset(views)
        for param in self.model.parameters():
            param.stop_gradient = True
        self.model.eval()

    def batch_for(self, micro_batches, tags_as_text=False, autocast=None):
        """The :class:`TeacherBatch` of a step: the micro-batches' unit rows concatenated in order, as the student's."""
        with paddle.no_grad():
            outs = [encode_views(self.model, batch, self.views, tags_as_text, autocast) for batch in micro_batches]
        features = {view: F.normalize(paddle.concat([out[0][view] for out in outs]), axis=-1) for view in self.views}
        return TeacherBatch(features, outs[0][1])


def build_teacher(config, needs, log=print):
    """The :class:`Teacher` of ``needs`` (a :class:`~ernievil2.losses.distill.TeacherNeeds`); its source is
    ``needs.source``, else ``Global.pretrained``."""
    source = needs.source or config["Global"]["pretrained"]
    model = build_model(config["Arch"], check_temperature(config["Loss"].get("temperature")))
    load_pretrained(model, source)
    teacher = Teacher(model, needs.views)
    count = sum(int(p.size) for p in model.parameters())
    log(f"distillation teacher: {source} ({count / 1e6:.2f}M parameters, frozen); it encodes {', '.join(sorted(needs.views))} every step")
    return teacher
