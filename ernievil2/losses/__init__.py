"""Contrastive losses: pure maths, the gradient-carrying gather, the loss terms, the momentum queue, distillation.

``Loss`` is one list of terms (``loss.py``), each a :data:`LOSS_TERMS` entry.
"""
from ..views import KEY_VIEWS, KNOWN_VIEWS, VIEW_MODALITY
from .contrastive import (
    contrastive_labels,
    contrastive_logits,
    in_batch_accuracy,
    symmetric_info_nce,
)
from .distill import DistillTerm, TeacherBatch, TeacherNeeds, feature_distillation, similarity_distillation
from .distributed import check_equal_local_batch, gather_with_grad
from .loss import LOSS_TERMS, Loss, Needs, build_loss, check_loss_section
from .momentum import (
    QUEUE_MODES,
    CrossModalQueue,
    MomentumBatch,
    MomentumEncoder,
    MomentumQueue,
    MomentumQueueConfig,
    MomentumQueueTerm,
    ema_update_,
    extra_negative_info_nce,
    parse_momentum_queue,
    queue_info_nce,
    queue_share,
    same_image_mask,
)
from .sigmoid import SigmoidPairs, chunked_sigmoid_loss, ring_shift, ring_sigmoid_loss, sigmoid_block_loss, sigmoid_logits
from .terms import InfoNCEPairs, LossInputs, Term, ViewPair, pairwise_term, parse_view_pairs

__all__ = [
    "KEY_VIEWS",
    "KNOWN_VIEWS",
    "LOSS_TERMS",
    "InfoNCEPairs",
    "Loss",
    "LossInputs",
    "Needs",
    "QUEUE_MODES",
    "VIEW_MODALITY",
    "CrossModalQueue",
    "DistillTerm",
    "MomentumBatch",
    "MomentumEncoder",
    "MomentumQueue",
    "MomentumQueueConfig",
    "MomentumQueueTerm",
    "SigmoidPairs",
    "TeacherBatch",
    "TeacherNeeds",
    "Term",
    "ViewPair",
    "build_loss",
    "check_equal_local_batch",
    "check_loss_section",
    "chunked_sigmoid_loss",
    "contrastive_labels",
    "contrastive_logits",
    "ema_update_",
    "extra_negative_info_nce",
    "feature_distillation",
    "gather_with_grad",
    "in_batch_accuracy",
    "parse_momentum_queue",
    "pairwise_term",
    "parse_view_pairs",
    "queue_info_nce",
    "queue_share",
    "ring_shift",
    "ring_sigmoid_loss",
    "same_image_mask",
    "sigmoid_block_loss",
    "sigmoid_logits",
    "similarity_distillation",
    "symmetric_info_nce",
]
