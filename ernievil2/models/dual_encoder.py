"""The dual encoder: ``visual`` + ``text_model`` + the learned temperature.

Sub-layer names follow the official checkpoint, so that its state dict loads
as is: ``visual.*``, ``text_model.*`` and ``contrastive_loss_mm.temperature_b``
(the log of the logit scale).
"""
import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .tower import capability, no_weight_decay


def clamp_logit_scale(temperature_b, max_logit_scale=100.0):
    """``exp(temperature_b)`` clipped to ``[1, max_logit_scale]``.

    The official code calls ``temperature.clip(...)`` and drops the result, so
    its scale is never bounded. Clipping the output, rather than the parameter
    in place after each step as open_clip does, keeps this a pure function;
    outside the range the gradient is zero.
    """
    if not max_logit_scale >= 1:
        raise ValueError(f"max_logit_scale must be >= 1, got {max_logit_scale!r}")
    return paddle.clip(paddle.exp(temperature_b), min=1.0, max=float(max_logit_scale))


class LogitScale(nn.Layer):
    """Holds ``temperature_b`` = log(logit scale); the scale is clamped for real."""

    def __init__(self, init_temperature=0.07, learnable=True, max_logit_scale=100.0):
        super().__init__()
        if not 0 < init_temperature:
            raise ValueError(f"temperature init must be positive, got {init_temperature}")
        self.max_logit_scale = float(max_logit_scale)
        self.temperature_b = self.create_parameter(
            [1], default_initializer=nn.initializer.Constant(math.log(1.0 / init_temperature))
        )
        self.temperature_b.stop_gradient = not learnable

    def forward(self):
        return clamp_logit_scale(self.temperature_b, self.max_logit_scale).squeeze()


class DualEncoder(nn.Layer):
    # The towers by the name configs use (Optimizer.freeze, Optimizer.image, ...) -> their sub-layer.
    TOWERS = {"image": "visual", "text": "text_model"}

    def __init__(self, visual, text_model, logit_scale=None):
        super().__init__()
        if visual.out_dim != text_model.out_dim:
            raise ValueError(
                f"the image tower outputs {visual.out_dim}-d features and the text tower {text_model.out_dim}-d; "
                "set the image tower's out_dim (or the towers' widths) to match"
            )
        self.visual = visual
        self.text_model = text_model
        self.contrastive_loss_mm = logit_scale or LogitScale()
        self.embed_dim = visual.out_dim

    def towers(self):
        """``{"image": tower, "text": tower}``."""
        return {kind: getattr(self, attr) for kind, attr in self.TOWERS.items()}

    def tower_prefix(self, kind):
        """The parameter-name prefix of a tower, e.g. ``visual.``."""
        return self.TOWERS[kind] + "."

    def no_weight_decay(self):
        """Full names of the parameters without weight decay: each tower's, and the temperature."""
        names = {"contrastive_loss_mm.temperature_b"}
        for kind, tower in self.towers().items():
            names |= {self.tower_prefix(kind) + name for name in no_weight_decay(tower)}
        return names

    def set_grad_checkpointing(self, enable=True):
        """Recompute both towers' blocks in backward; a tower that cannot raises ``TowerCapabilityError``."""
        for tower in self.towers().values():
            capability(tower, "set_grad_checkpointing", "recompute its blocks")(enable)

    def encode_image(self, images, normalize=True):
        features = self.visual(images)
        return F.normalize(features, axis=-1) if normalize else features

    def encode_text(self, input_ids, normalize=True):
        features = self.text_model(input_ids)
        return F.normalize(features, axis=-1) if normalize else features

    def logit_scale(self):
        return self.contrastive_loss_mm()

    def drop_patches(self, images, keep):
        """Image features with patch dropout (``keep`` < 1), or the tower's plain forward."""
        if keep == 1:
            return self.visual(images)
        return capability(self.visual, "forward_patch_dropout", "drop patches (Train.patch_keep < 1)")(images, keep)

    def forward(self, images=None, input_ids=None, patch_keep=1.0):
        """Raw (unnormalised) features of whichever inputs are given, and the logit scale.

        Training calls the model once per step with every image view stacked
        in ``images`` and every text view in ``input_ids``: one entry point for
        DataParallel's gradient hooks. ``input_ids`` may also be a list of
        ``[B_i, L_i]`` batches of different lengths: each goes through the text
        tower at its own length, and their features are concatenated in order.
        Likewise ``images`` may be a list of batches with ``patch_keep`` a list of
        keep ratios, one per batch: each batch goes through the image tower with
        its own patch dropout (views that keep different shares of their patches
        have different token counts, so they cannot share a call).
        """
        if isinstance(input_ids, (list, tuple)):
            text = paddle.concat([self.text_model(ids) for ids in input_ids])
        else:
            text = None if input_ids is None else self.text_model(input_ids)
        if isinstance(images, (list, tuple)):
            if not isinstance(patch_keep, (list, tuple)) or len(patch_keep) != len(images):
                raise ValueError(f"{len(images)} image batches need as many keep ratios, got {patch_keep!r}")
            image = paddle.concat([self.drop_patches(batch, keep) for batch, keep in zip(images, patch_keep)])
        else:
            image = None if images is None else self.drop_patches(images, patch_keep)
        return {"image": image, "text": text, "logit_scale": self.logit_scale()}
