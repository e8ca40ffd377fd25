"""Distillation from a frozen teacher: a loss term that keeps a fine-tuned model close to where it started.

::

    Loss:
      terms:
        - {name: info_nce, pairs: [[image_v1, text_v1, 1.0]]}
        - {name: distill, weight: 1.0, mode: similarity, views: [image_v1, text_v1], teacher: null, temperature: null}

The teacher has the student's ``Arch``; ``teacher: null`` is the weights of
``Global.pretrained`` (the model fine-tuning started from), a path any weights
``ernievil2.checkpoint.read_model_state`` reads otherwise. The trainer builds it
once, frozen (``ernievil2.engine.teacher``), and hands the loss its unit
embeddings of the views the term reads, row for row with the student's
(:class:`TeacherBatch`). Two modes, ``s``/``t`` the student's and teacher's unit
rows, ``B`` the rows::

    feature:     mean over the views of  (1/B) Σ_i (1 - s_i·t_i)
    similarity:  rows i of the image view a, columns j of the text view b (and b -> a):
                 KL(softmax_j(τ_t · t_a,i·t_b,j) || softmax_j(τ_s · s_a,i·s_b,j)), mean over rows,
                 the two directions averaged

``feature`` is Chinese-CLIP's feature distillation (ZSCL's feature term);
``similarity`` is ZSCL's: the student keeps the teacher's image-text similarity
structure, not its coordinates. ``τ``: with ``temperature: null`` each model's
own logit scale (the teacher's frozen one, the student's current one), or
``1/temperature`` for both. KL(teacher || student) is 0 when the student is the
teacher. With several ranks the similarity matrix is over the global batch (the
student's columns gathered with gradient as the InfoNCE term's, the teacher's
without), so that ranks give the single-process loss and gradients.
"""
from typing import NamedTuple, Optional

import paddle.nn.functional as F

from ..registry import ConfigError
from ..validate import positive_number
from ..views import VIEW_MODALITY
from .contrastive import check_gathered, contrastive_logits
from .terms import Term, check_view

DISTILL_MODES = ("feature", "similarity")


class TeacherBatch(NamedTuple):
    """What the loss reads of the teacher for one step."""

    features: dict  # view -> the teacher's unit rows, this rank's, in the student's row order
    logit_scale: object  # the teacher's (frozen) scale
    gathered: Optional[dict] = None  # view -> every rank's rows (the loss fills it in on several ranks)


class TeacherNeeds(NamedTuple):
    """What the trainer must build and run for a distill term."""

    source: Optional[str]  # weights of the teacher; None: those of Global.pretrained
    views: frozenset  # the views whose teacher embeddings the loss reads


def feature_distillation(student, teacher):
    """``mean_i (1 - cos(student_i, teacher_i))`` of ``[B, D]`` rows (normalised here; unit rows stay unit)."""
    if student.shape != teacher.shape:
        raise ValueError(f"student and teacher rows differ in shape: {student.shape} and {teacher.shape}")
    cosine = (F.normalize(student, axis=-1) * F.normalize(teacher, axis=-1)).sum(axis=-1)
    return (1.0 - cosine).mean()


def soft_target_kl(teacher_logits, student_logits):
    """``mean over rows of KL(softmax(teacher) || softmax(student))``: 0 when the two agree."""
    target = F.softmax(teacher_logits, axis=-1)
    return (target * (F.log_softmax(teacher_logits, axis=-1) - F.log_softmax(student_logits, axis=-1))).sum(axis=-1).mean()


def similarity_distillation(student_a, student_b, teacher_a, teacher_b, student_scale, teacher_scale,
                            student_a_all=None, student_b_all=None, teacher_a_all=None, teacher_b_all=None, rank=0):
    """ZSCL's similarity distillation of two paired views, both directions averaged.

    ``*_a``, ``*_b``: this rank's unit rows (row ``i`` of ``a`` and ``b`` the same
    sample); ``*_all``: every rank's rows, this rank's at ``rank * B``, as
    :func:`~ernievil2.losses.contrastive.symmetric_info_nce` takes them (all four
    or none). Each local row is scored against every candidate; the loss is the
    mean over the local rows, so the mean over equal ranks is the global batch's.
    """
    check_gathered(student_a, student_b, student_a_all, student_b_all, rank)
    check_gathered(teacher_a, teacher_b, teacher_a_all, teacher_b_all, rank)
    if (student_a_all is None) != (teacher_a_all is None):
        raise ValueError("the student's and the teacher's rows must be gathered together (both or neither)")
    if student_a_all is None:
        student_a_all, student_b_all, teacher_a_all, teacher_b_all = student_a, student_b, teacher_a, teacher_b
    a2b = soft_target_kl(contrastive_logits(teacher_a, teacher_b_all, teacher_scale), contrastive_logits(student_a, student_b_all, student_scale))
    b2a = soft_target_kl(contrastive_logits(teacher_b, teacher_a_all, teacher_scale), contrastive_logits(student_b, student_a_all, student_scale))
    return (a2b + b2a) / 2


def _parse_views(views, mode):
    if not isinstance(views, (list, tuple)) or not views:
        raise ConfigError("views", f"expected a non-empty list of view names, got {views!r}")
    for index, view in enumerate(views):
        check_view(f"views[{index}]", view)
    if len(set(views)) != len(views):
        raise ConfigError("views", f"a view is listed twice: {list(views)}")
    if mode == "similarity":
        if sorted(VIEW_MODALITY[v] for v in views) != ["image", "text"]:
            raise ConfigError("views", f"mode similarity scores one image view against one text view, got {list(views)}")
        views = sorted(views, key=lambda v: VIEW_MODALITY[v] != "image")  # image first
    return tuple(views)


class DistillTerm(Term):
    """Distillation from a frozen teacher (the module's docstring); logs ``loss/distill``.

    ``{name: distill, weight, mode: similarity | feature, views: [...], teacher: null | path,
    temperature: null | number}``.
    """

    def __init__(self, mode="similarity", views=("image_v1", "text_v1"), teacher=None, temperature=None):
        self.mode, self.views_order, self.scale = self.check(mode, views, teacher, temperature)
        self.views = frozenset(self.views_order)
        self.gathered_views = self.views if self.mode == "similarity" else frozenset()
        self.uses_logit_scale = self.mode == "similarity" and self.scale is None
        self.teacher = TeacherNeeds(teacher, self.views)

    @staticmethod
    def check(mode="similarity", views=("image_v1", "text_v1"), teacher=None, temperature=None):
        """(mode, views in order (image first in similarity mode), fixed logit scale or None)."""
        if mode not in DISTILL_MODES:
            raise ConfigError("mode", f"unknown distillation mode {mode!r}; known: {', '.join(DISTILL_MODES)}")
        views = _parse_views(views, mode)
        if teacher is not None and (not isinstance(teacher, str) or not teacher):
            raise ConfigError("teacher", f"expected null (the weights of Global.pretrained) or a path of weights, got {teacher!r}")
        if temperature is not None and mode == "feature":
            raise ConfigError("temperature", "only mode similarity uses it")
        scale = None if temperature is None else 1.0 / positive_number(temperature, "temperature")
        return mode, views, scale

    def __call__(self, inputs):
        teacher = inputs.teacher
        if self.mode == "feature":
            loss = sum(feature_distillation(inputs.local[v], teacher.features[v]) for v in self.views_order) / len(self.views_order)
        else:
            a, b = self.views_order
            student_scale = inputs.logit_scale if self.scale is None else self.scale
            teacher_scale = teacher.logit_scale if self.scale is None else self.scale
            gathered, teacher_all = inputs.gathered, teacher.gathered or {}
            loss = similarity_distillation(
                inputs.local[a], inputs.local[b], teacher.features[a], teacher.features[b], student_scale, teacher_scale,
                gathered.get(a), gathered.get(b), teacher_all.get(a), teacher_all.get(b), inputs.rank,
            )
        return {"loss": loss, "loss/distill": loss}


def distill_entries(loss_section):
    """``[(key, teacher)]`` of the distill terms of a checked ``Loss`` section (``key``: ``Loss.terms[i].teacher``)."""
    terms = (loss_section or {}).get("terms") or []
    return [(f"Loss.terms[{index}].teacher", entry.get("teacher")) for index, entry in enumerate(terms) if entry.get("name") == "distill"]


def check_teacher_source(loss_section, pretrained):
    """A distill term's ``teacher: null`` needs ``Global.pretrained``: a ConfigError naming the term's key otherwise.

    Checked when training starts, not at load: a config that names its starting weights with
    ``-o Global.pretrained=...`` still loads in the tools that only read its ``Arch``."""
    for key, teacher in distill_entries(loss_section):
        if teacher is None and not pretrained:
            raise ConfigError(key, "null is the weights of Global.pretrained, and none is given: set Global.pretrained or a teacher path")
