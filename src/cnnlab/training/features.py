"""Feature caching for frozen backbones.

When the base is frozen (BatchNorm in inference mode) and no augmentation runs, the base maps
each image to the same feature vector in every epoch. So compute the pooled features once,
keep them on disk, and train only the head on them: the study's 224x224 frozen run becomes one
pass of feature extraction plus seconds per epoch.

The cache key covers everything that changes the features: the backbone's weights (a hash of
its state dict), the preprocessing (mean, std, input size, resize mode), the head's pooling
and the images themselves (a hash of the uint8 arrays).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from cnnlab.evaluation.predict import batched_inference
from cnnlab.models.classifier import ImageClassifier
from cnnlab.utils.hardware import autocast
from cnnlab.utils.io import atomic_path
from cnnlab.utils.paths import cnnlab_home


@dataclass
class FeatureArrays:
    """Pooled feature vectors ``x`` (N, D) float32 with labels ``y``, standing in for images."""

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.y)


class HeadOnly(nn.Module):
    """Wraps a classifier's head so the trainer can train it on feature vectors."""

    def __init__(self, model: ImageClassifier):
        super().__init__()
        self.head = model.head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def l2_penalty(self) -> torch.Tensor | None:
        return self.head.l2_penalty()


def _hash_tensor_dict(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(state):
        v = state[k]
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def _hash_array(x: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str(x.shape).encode())
    h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()


def feature_key(model: ImageClassifier, x: np.ndarray, dtype: torch.dtype | None) -> str:
    spec = model.spec
    parts = [
        spec.arch, _hash_tensor_dict(model.backbone.state_dict()), list(spec.mean), list(spec.std),
        spec.input_size, spec.resize_mode, model.head.pooling, str(dtype), _hash_array(x),
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def extract_features(
    model: ImageClassifier,
    x: np.ndarray,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "features",
) -> np.ndarray:
    """Pooled backbone features (N, D) float32 for uint8 images (N, H, W, 3); no caching."""
    device = device or next(model.parameters()).device

    def embed(xb: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return model.embed(xb)

    bar = tqdm(total=len(x), desc=desc, unit="img", leave=False, disable=not progress or None, file=sys.stderr)
    try:
        out = batched_inference(model, x, embed, batch_size=batch_size, device=device, progress=bar.update)
    finally:
        bar.close()
    return torch.cat(out).numpy() if out else np.zeros((0, model.num_features), np.float32)


def cached_features(
    model: ImageClassifier,
    x: np.ndarray,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    desc: str = "features",
    log=print,
) -> tuple[np.ndarray, bool]:
    """Features from the disk cache, or extracted and stored there. Returns (features, hit)."""
    folder = cnnlab_home() / "features"
    path = folder / f"{feature_key(model, x, dtype)}.npy"
    if path.is_file():
        try:
            return np.load(path), True
        except (OSError, ValueError):
            pass  # unreadable entry: extract again
    feats = extract_features(model, x, device=device, dtype=dtype, progress=progress, desc=desc)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, feats)
    except OSError as exc:  # a full disk must not break training
        log(f"could not store features in the cache ({exc})")
    return feats, False
