"""Model builders: towers by name from config, and the dual encoder around them."""
from ..registry import Registry
from .cnn import PaddleClasTower
from .dual_encoder import DualEncoder, LogitScale
from .ernie_text import ErnieTextEncoder
from .vit import VisionTransformer

# Arch.name: the model around the towers; ERNIE-ViL 2.0's is the dual encoder.
ARCHS = Registry("architecture", {"ErnieViL2": DualEncoder})
IMAGE_TOWERS = Registry("image tower", {"ViT": VisionTransformer, "PaddleClas": PaddleClasTower})
TEXT_TOWERS = Registry("text tower", {"ErnieText": ErnieTextEncoder})


def build_model(arch, temperature=None):
    """Build the dual encoder from the ``Arch`` section (and ``Loss.temperature`` when training)."""
    temperature = temperature or {}
    logit_scale = LogitScale(
        init_temperature=temperature.get("init", 0.07),
        learnable=temperature.get("learnable", True),
        max_logit_scale=temperature.get("max_logit_scale", 100.0),
    )
    visual = IMAGE_TOWERS.build(arch["image_tower"], "Arch.image_tower")
    text = TEXT_TOWERS.build(arch["text_tower"], "Arch.text_tower")
    return ARCHS.get(arch.get("name", "ErnieViL2"), key="Arch.name")(visual, text, logit_scale)


__all__ = ["ARCHS", "IMAGE_TOWERS", "TEXT_TOWERS", "build_model", "DualEncoder", "LogitScale"]
