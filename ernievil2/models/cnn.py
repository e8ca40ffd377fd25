"""Image towers from PaddleClas backbones (the official Base-CNN variant and BriVL use EfficientNet-B5).

The backbone's classifier is built with ``class_num=out_dim`` so that its final
linear layer, after global pooling, is the projection to the shared embedding
dimension.
"""
import paddle
import paddle.nn as nn

from ..registry import did_you_mean
from .tower import norms_and_biases


def _paddleclas_backbones():
    # Imported lazily: paddleclas pulls in faiss and a large model zoo at import.
    from paddleclas.ppcls.arch import backbone

    return backbone


class PaddleClasTower(nn.Layer):
    """A PaddleClas backbone; it has no layer groups and no recompute (the backbones differ in structure)."""

    def __init__(self, backbone="EfficientNetB5", out_dim=768, pretrained=None, **backbone_kwargs):
        super().__init__()
        zoo = _paddleclas_backbones()
        names = [n for n in dir(zoo) if not n.startswith("_") and n[0].isupper()]
        if backbone not in names:
            raise ValueError(f"unknown paddleclas backbone {backbone!r}" + did_you_mean(backbone, names))
        self.out_dim = out_dim
        # PaddleClas gives parameters fixed names, and dygraph refuses a name twice per
        # process: a fresh name scope lets a second tower (a test, an ablation) be built.
        with paddle.utils.unique_name.guard():
            self.net = getattr(zoo, backbone)(class_num=out_dim, **backbone_kwargs)
        if pretrained:
            self._load_backbone(pretrained)

    def _load_backbone(self, path):
        """Load ImageNet weights, keeping our projection: only the classifier may differ in shape."""
        state = paddle.load(path)
        own = self.net.state_dict()
        unexpected = sorted(set(state) - set(own))
        missing = sorted(set(own) - set(state))
        mismatched = sorted(k for k in set(state) & set(own) if list(state[k].shape) != list(own[k].shape))
        if unexpected or len(missing + mismatched) > 2:
            raise ValueError(
                f"{path}: not a checkpoint of this backbone (unexpected: {unexpected[:5]}, "
                f"missing: {missing[:5]}, shape mismatch: {mismatched[:5]})"
            )
        self.net.set_state_dict({k: v for k, v in state.items() if k not in mismatched})

    def no_weight_decay(self):
        return norms_and_biases(self)

    def forward(self, images):
        return self.net(images)
