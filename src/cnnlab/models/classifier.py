"""The model every cnnlab run trains: preprocessing -> backbone -> the study's head.

Preprocessing is part of the model (and saved with it), so a saved model takes raw uint8
pixels, as a user has them, and needs no separate normalisation code at prediction time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.errors import ModelError

KERAS_TF_MEAN = (0.5, 0.5, 0.5)  # x / 127.5 - 1 == (x / 255 - 0.5) / 0.5
KERAS_TF_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model before loading its weights (the model card's core)."""

    arch: str  # cnnlab registry name
    num_classes: int
    class_names: list[str]
    mean: tuple[float, float, float] = KERAS_TF_MEAN
    std: tuple[float, float, float] = KERAS_TF_STD
    preprocessing: str = "keras_tf"
    input_size: int | None = None
    resize_mode: str = "bilinear"
    head: dict[str, Any] = field(default_factory=dict)
    drop_rate: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    feature_stages: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


class Preprocess(nn.Module):
    """uint8 (or 0..255 float) NCHW pixels -> normalised float, resized to ``input_size``."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], input_size: int | None, mode: str):
        super().__init__()
        # Fold /255 and the mean/std into one multiply-add.
        scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.input_size = input_size
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() * self.scale + self.shift
        if self.input_size is not None and (x.shape[-2], x.shape[-1]) != (self.input_size,) * 2:
            kw = {} if self.mode == "nearest" else {"align_corners": False}
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode=self.mode, **kw)
        return x


class Head(nn.Module):
    """Global max/avg pooling -> [Dense(units) + activation] -> [Dropout] -> classifier.

    With ``units=512, pooling="max"`` this is the study's head on every model.
    ``l2`` is Keras's kernel regulariser on the hidden Dense: ``l2 * sum(w ** 2)`` is added to
    the loss (see :meth:`l2_penalty`), which is not the same as decoupled weight decay.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        pooling: str = "avg",
        units: int = 0,
        activation: str = "relu",
        l2: float = 0.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if pooling not in ("avg", "max"):
            raise ModelError(f"head.pooling must be 'avg' or 'max', got {pooling!r}")
        self.pooling = pooling
        self.l2 = l2
        acts = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
        if activation not in acts:
            raise ModelError(f"head.activation must be one of {sorted(acts)}, got {activation!r}")
        self.hidden = nn.Sequential(nn.Linear(in_features, units), acts[activation]()) if units else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(units or in_features, num_classes)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.ndim == 2:  # already pooled (cached features)
            return feats
        return feats.amax(dim=(2, 3)) if self.pooling == "max" else feats.mean(dim=(2, 3))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.pool(feats)
        if self.hidden is not None:
            x = self.hidden(x)
        return self.classifier(self.dropout(x))

    def l2_penalty(self) -> torch.Tensor | None:
        if self.l2 and self.hidden is not None:
            return self.l2 * self.hidden[0].weight.pow(2).sum()
        return None


def _stage_channels(backbone: nn.Module, stages: int, arch: str) -> list[int]:
    """Channels of the backbone's last ``stages`` feature stages (timm's feature_info)."""
    if not stages:
        return []
    info = getattr(backbone, "feature_info", None)
    if not hasattr(backbone, "forward_intermediates") or not isinstance(info, list) or not info:
        raise ModelError(f"model.feature_stages: {arch} does not expose its feature stages "
                         "(timm's forward_intermediates); use feature_stages: 0")
    if not 0 < stages <= len(info):
        raise ModelError(f"model.feature_stages={stages}, but {arch} has {len(info)} feature stages")
    return [int(f["num_chs"]) for f in info[-stages:]]


class ImageClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_features: int, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.preprocess = Preprocess(spec.mean, spec.std, spec.input_size, spec.resize_mode)
        self.backbone = backbone
        self.stage_channels = _stage_channels(backbone, spec.feature_stages, spec.arch)
        self.num_features = num_features + sum(self.stage_channels)
        self.head = Head(self.num_features, spec.num_classes, **spec.head)
        self.frozen_base = False

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map for raw pixels."""
        return self.backbone.forward_features(self.preprocess(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled feature vectors (the head's pooling), e.g. for feature caching or export.

        With ``feature_stages=N`` the outputs of the backbone's last N feature stages are pooled
        too and come first: [stage -N, ..., stage -1, final features].
        """
        return self.pool_backbone(self.preprocess(x))

    def pool_backbone(self, z: torch.Tensor) -> torch.Tensor:
        """:meth:`embed` for already preprocessed inputs ``z``."""
        if not self.stage_channels:
            return self.head.pool(self.backbone.forward_features(z))
        final, stages = self.backbone.forward_intermediates(z, indices=len(self.stage_channels))
        return torch.cat([self.head.pool(t) for t in (*stages, final)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))  # the head passes pooled (2-D) features through

    def l2_penalty(self) -> torch.Tensor | None:
        return self.head.l2_penalty()

    # -- freezing (Keras's trainable=False: weights fixed and BatchNorm in inference mode) --

    def set_base_trainable(self, trainable: bool, last_blocks: int | None = None) -> None:
        """Freeze or unfreeze the backbone; ``last_blocks=N`` unfreezes only its last N blocks."""
        from cnnlab.models.blocks import backbone_blocks

        for p in self.backbone.parameters():
            p.requires_grad_(trainable and last_blocks is None)
        self.frozen_base = not trainable or last_blocks is not None
        self._trainable_modules: list[nn.Module] = []
        if trainable and last_blocks is not None:
            blocks = backbone_blocks(self.backbone)
            if last_blocks > len(blocks):
                raise ModelError(f"unfreeze_last={last_blocks} but the backbone has {len(blocks)} blocks")
            self._trainable_modules = blocks[len(blocks) - last_blocks :] if last_blocks else []
            for m in self._trainable_modules:
                for p in m.parameters():
                    p.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ImageClassifier":
        super().train(mode)
        if mode and self.frozen_base:
            # Frozen parts keep BatchNorm statistics fixed (Keras runs them in inference mode).
            trainable = {id(m) for t in getattr(self, "_trainable_modules", []) for m in t.modules()}
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in trainable:
                    m.eval()
        return self
