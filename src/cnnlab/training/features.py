"""Feature caching for frozen backbones.

When the base is frozen (BatchNorm in inference mode) and no augmentation runs, the base maps
each image to the same feature vector in every epoch. So compute the pooled features once,
keep them on disk, and train only the head on them: the study's 224x224 frozen run becomes one
pass of feature extraction plus seconds per epoch.

The cache key covers everything that changes the features: the backbone's weights (a hash of
its state dict), the preprocessing (mean, std, input size, resize mode), the head's pooling,
the pooled feature stages and the images themselves (a hash of the uint8 arrays).
"""

from __future__ import annotations

import hashlib
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from cnnlab.evaluation.predict import batched_inference
from cnnlab.models.classifier import ImageClassifier
from cnnlab.utils.hardware import autocast
from cnnlab.utils.io import atomic_path


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
    from cnnlab.data.rows import release_pages

    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(x.shape)).encode())
    for i in range(0, len(x), 4096):  # a chunk at a time: pixels decoded to disk are never all in memory
        h.update(np.ascontiguousarray(np.asarray(x[i : i + 4096])).data)
        release_pages(x)
    return h.hexdigest()


def feature_key(model: ImageClassifier, x: np.ndarray, dtype: torch.dtype | None) -> str:
    spec = model.spec
    parts = [
        spec.arch, _hash_tensor_dict(model.backbone.state_dict()), list(spec.mean), list(spec.std),
        spec.input_size, spec.resize_mode, model.head.pooling, str(dtype), _hash_array(x),
    ]
    if spec.feature_stages:  # appended only when used, so existing cache entries keep their keys
        parts.append(("feature_stages", spec.feature_stages))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


# Below this many images, compiling the extractor (about 20 s for an EfficientNet-Lite on 2
# cores) costs more than it saves; above it, Inductor with frozen weights measured 1.7-2.0x
# faster than eager bf16 autocast here (benchmarks/transfer_frozen.py measures both).
COMPILE_MIN_IMAGES = 4096


class _Embedder:
    """``model.embed`` in ``dtype`` (autocast), optionally compiled by Inductor with weight freezing.

    Freezing folds BatchNorm into the convolutions and pre-packs the weights for oneDNN, which
    only pays for a model whose weights stay fixed for the whole call, as a frozen base does.
    (A bf16 copy of the backbone instead of autocast measured no faster: 84.8 vs 85.4 img/s.)
    Batches are padded to the first batch's size, so one compiled graph serves them all. If
    compilation fails (no C++ compiler, an unsupported operator), the call runs eagerly.
    """

    def __init__(self, model: ImageClassifier, device: torch.device, dtype: torch.dtype | None,
                 compile: bool, log: Callable[[str], object]):
        self.model, self.device, self.dtype, self.log = model, device, dtype, log
        self.compiled = torch.compile(_fresh_method(self, _Embedder._compiled_body), dynamic=False) if compile else None
        self.batch: int | None = None
        self.compiled_ok = False

    def _eager(self, xb: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            return self.model.embed(xb)

    def _compiled_body(self, z: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            return self.model.pool_backbone(z)

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self._eager(xb)
        n = xb.shape[0]
        self.batch = self.batch or n
        if n < self.batch:
            pad = xb.new_zeros((self.batch - n, *xb.shape[1:])).contiguous(memory_format=_memory_format(xb))
            xb = torch.cat([xb, pad])
        try:
            from torch._inductor import config as inductor_config

            # Preprocessing (the 32 -> 224 resize) runs eagerly: with it inside the compiled graph
            # extraction measured 58.6 img/s, with ATen's channels-last resize outside 82.2
            # (efficientnet_lite2 at 224 px, bf16, 2 cores).
            z = self.model.preprocess(xb)
            with inductor_config.patch(freezing=True):
                out = self.compiled(z)[:n]
            self.compiled_ok = True
            return out
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
            if self.compiled_ok:
                raise
            self.log(f"could not compile the feature extractor ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0] if str(exc) else ''}); extracting eagerly")
            self.compiled = None
            return self._eager(xb[:n])


def _fresh_method(obj: object, fn: Callable) -> Callable:
    """``fn`` bound to ``obj`` with a code object of its own.

    torch.compile keeps its compiled graphs (and their guards) on the code object. Frozen
    weights are constants of the graph and the guards do not look at weight values, so each
    extractor compiles its own copy of the code: a new extractor never meets an old graph, and
    nothing process-wide (``torch.compiler.reset()``, which would also drop the caller's own
    compiled functions) has to be cleared. The copy's graphs go when the extractor goes.
    """
    fresh = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return types.MethodType(fresh, obj)


# The compiled extractor, reused while the model, its weights, device and dtype stay the same
# (train, val and test features then compile once). A new extractor (another model, or this one
# after any in-place update: tensor version counters change on optimiser steps and
# load_state_dict) compiles afresh (see _fresh_method); one slot, so no stale graph is reused.
_LAST: tuple[tuple, _Embedder] | None = None


def _embedder(model: ImageClassifier, device: torch.device, dtype: torch.dtype | None, compile: bool,
              log: Callable[[str], object]) -> _Embedder:
    global _LAST
    if not compile:
        return _Embedder(model, device, dtype, False, log)
    try:
        # The backbone's tensors only: training the head must not cost a recompilation.
        versions = tuple(t._version for t in model.backbone.state_dict(keep_vars=True).values())
    except RuntimeError:  # inference tensors have no version counter: never reuse
        versions = None
    key = (id(model), str(device), str(dtype), versions)
    if versions is not None and _LAST is not None and _LAST[0] == key:  # also when it fell back to eager
        _LAST[1].log = log
        return _LAST[1]
    _LAST = None
    emb = _Embedder(model, device, dtype, True, log)
    _LAST = (key, emb)
    return emb


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format


def extract_features(
    model: ImageClassifier,
    x: np.ndarray,
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    compile: bool | None = None,
    progress: bool = True,
    desc: str = "features",
    log: Callable[[str], object] = print,
) -> np.ndarray:
    """Pooled backbone features (N, D) float32 for uint8 images (N, H, W, 3); no caching.

    ``batch_size`` 64: at 224 px it measured 1.2x faster than 256 (85.4 vs 71.1 img/s,
    efficientnet_lite2, compiled, bf16, 2 cores); larger batches leave the caches.

    ``compile``: run the extractor compiled with frozen weights (None: when there are at least
    ``COMPILE_MIN_IMAGES`` images).
    """
    device = device or next(model.parameters()).device
    if compile is None:
        compile = len(x) >= COMPILE_MIN_IMAGES
    embed = _embedder(model, device, dtype, compile, log)
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
    compile: bool | None = None,
    progress: bool = True,
    desc: str = "features",
    log=print,
) -> tuple[np.ndarray, bool]:
    """Features from the disk cache, or extracted and stored there. Returns (features, hit).

    The entry's modification time is its last use (LRU eviction under CNNLAB_CACHE_MAX_GB, see
    data/cache.py); two processes extracting the same features take turns (a file lock), so the
    second one reads the first one's entry."""
    from cnnlab.data import cache

    folder = cache.features_root()
    key = feature_key(model, x, dtype)
    path = folder / f"{key}.npy"

    def hit() -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            feats = np.load(path)
            os.utime(path)
            return feats
        except (OSError, ValueError):
            return None  # unreadable entry: extract again

    found = hit()
    if found is not None:
        return found, True
    with cache.build_lock(f"features-{key}"):
        found = hit()
        if found is not None:
            return found, True
        feats = extract_features(model, x, device=device, dtype=dtype, compile=compile, progress=progress,
                                 desc=desc, log=log)
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, feats)
        except OSError as exc:  # a full disk must not break training
            log(f"could not store features in the cache ({exc})")
            return feats, False
    cache.enforce_cap(keep={path})
    return feats, False
