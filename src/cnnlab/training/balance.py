"""Class imbalance: the one place its maths lives (``train.class_balance``).

Every trainer (the standard recipe, the fast recipe and the head trained on cached features)
asks :func:`resolve` for a :class:`Balance` from the training labels and then uses its two
hooks: :meth:`Balance.order` (which training images an epoch visits) and :meth:`Balance.loss`
(the training loss). Evaluation never sees any of it: predictions are the plain logits.

``train.class_balance``:

``none``          plain cross-entropy, every image once per epoch.
``weights``       per-class loss weights, ``train.class_weight_kind``: ``inverse`` (n / (K n_c),
                  scikit-learn's ``compute_class_weight("balanced")``, Keras's usual recipe) or
                  ``effective`` (the effective number of samples, Cui et al. 2019:
                  w_c proportional to (1 - beta) / (1 - beta ** n_c), beta = :data:`BETA`).
                  ``train.class_weight`` gives explicit weights instead (class name or index ->
                  weight, as Keras's ``fit(class_weight=...)`` takes them).
``resample``      class-balanced sampling: each epoch draws as many images as there are, with
                  replacement, each class equally likely (torch's WeightedRandomSampler).
``logit_adjust``  logit adjustment (Menon et al. 2021; the balanced softmax of Ren et al. 2020):
                  the training loss sees ``logits + tau * log(prior)`` (tau = :data:`TAU`), so
                  the plain logits at inference estimate the balanced (class-uniform) posterior.
``auto``          ``logit_adjust`` when the largest class has at least :data:`AUTO_RATIO` times
                  the images of the smallest, else ``none``. Logit adjustment is the default
                  because it costs nothing, keeps every image once per epoch (resampling repeats
                  the rare ones and drops common ones) and leaves the optimiser's step sizes alone
                  (large inverse weights make them noisy); Menon et al. report it above both.

Weights are normalised so the mean weight over the training images is 1: the loss keeps its
scale and the learning rate means what it meant without weighting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.data.dataset import imbalance_ratio
from cnnlab.errors import ConfigError

MODES = ("none", "weights", "resample", "logit_adjust", "auto")
KINDS = ("inverse", "effective")
BETA = 0.999  #: the effective-number hyper-parameter (Cui et al. 2019's choice for CIFAR-LT)
TAU = 1.0  #: logit-adjustment strength (Menon et al. 2021)
AUTO_RATIO = 3.0  #: ``auto`` handles imbalance from this largest / smallest class ratio on


def class_counts(y: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(y, dtype=np.int64).ravel(), minlength=num_classes)


def is_imbalanced(counts: np.ndarray | list[int]) -> bool:
    return imbalance_ratio(counts) >= AUTO_RATIO


def auto_mode(counts: np.ndarray | list[int]) -> str:
    """What ``class_balance: auto`` does for these class counts (see the module docstring)."""
    return "logit_adjust" if is_imbalanced(counts) else "none"


def class_weights(counts: np.ndarray, kind: str = "inverse", beta: float = BETA) -> np.ndarray:
    """Per-class loss weights, normalised so that sum_c n_c w_c = n (mean weight per image 1).
    A class with no training image gets weight 0 (it never appears in the loss anyway)."""
    counts = np.asarray(counts, dtype=np.int64)
    present = counts > 0
    if kind == "inverse":
        from sklearn.utils.class_weight import compute_class_weight

        y = np.repeat(np.arange(len(counts)), counts)
        w = np.zeros(len(counts))
        w[present] = compute_class_weight("balanced", classes=np.flatnonzero(present), y=y)
    elif kind == "effective":
        w = np.zeros(len(counts))
        w[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present].astype(float)))
    else:
        raise ConfigError(f"train.class_weight_kind: {kind!r} is not one of {', '.join(map(repr, KINDS))}")
    return _normalise(w, counts)


def _normalise(w: np.ndarray, counts: np.ndarray) -> np.ndarray:
    total = float((w * counts).sum())
    return w * (counts.sum() / total) if total > 0 else w


def explicit_weights(given: Mapping[Any, float] | str, class_names: list[str], counts: np.ndarray) -> np.ndarray:
    """Keras-style ``class_weight``: "balanced" (inverse frequency), or {class index or name: weight}
    with the classes left out at 1. Unknown classes and negative weights are refused by name."""
    if isinstance(given, str):
        if given != "balanced":
            raise ConfigError(f"class_weight: {given!r} is not 'balanced' or a mapping of class -> weight")
        return class_weights(counts, "inverse")
    w = np.ones(len(class_names))
    for key, value in given.items():
        if isinstance(key, str) and key in class_names:
            i = class_names.index(key)
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= int(key) < len(class_names):
            i = int(key)  # an index, as Keras takes it ...
            if str(key) in class_names and class_names.index(str(key)) != i:  # ... unless a class is named so
                raise ConfigError(f"class_weight: {key!r} is ambiguous: class index {key} is "
                                  f"{class_names[i]!r} but a class is named {str(key)!r}; give the name as a "
                                  f"string ({str(key)!r}) or the index of the class you mean")
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool) and str(key) in class_names:
            i = class_names.index(str(key))  # a numeric label past the last index: its name
        elif isinstance(key, str) and key.isdigit() and int(key) < len(class_names):
            i = int(key)  # an index written as text (YAML, JSON keys)
        else:
            raise ConfigError(f"class_weight: no class {key!r}; the classes are {', '.join(class_names)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"class_weight[{key!r}]: expected a weight >= 0, got {value!r}")
        w[i] = float(value)
    return w  # as given (Keras does not rescale them either)


@dataclass
class Balance:
    """How one training run handles its class counts (from :func:`resolve`)."""

    mode: str  # none | weights | resample | logit_adjust (``auto`` resolved)
    counts: np.ndarray
    weights: torch.Tensor | None = None  # per-class loss weights (mode "weights")
    log_prior: torch.Tensor | None = None  # log class frequencies (mode "logit_adjust")
    tau: float = TAU
    _by_class: torch.Tensor | None = field(default=None, repr=False)  # from bind()

    @property
    def ratio(self) -> float:
        return imbalance_ratio(self.counts)

    def describe(self) -> str:
        what = {"none": "plain cross-entropy", "weights": "class-weighted loss",
                "resample": "class-balanced sampling", "logit_adjust": f"logit-adjusted loss (tau {self.tau:g})"}
        return f"class balance: {what[self.mode]} (largest / smallest class {self.ratio:.1f}x)"

    def to(self, device: torch.device) -> Balance:
        if self.weights is not None:
            self.weights = self.weights.to(device)
        if self.log_prior is not None:
            self.log_prior = self.log_prior.to(device)
        return self

    def order(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The indices of one epoch's training images: a permutation, or (resample) n class-balanced
        draws with replacement."""
        if self.mode != "resample":
            return torch.randperm(n, generator=generator)
        from torch.utils.data import WeightedRandomSampler

        per_image = torch.from_numpy(sample_weights(self.counts))
        labels = torch.from_numpy(np.repeat(np.arange(len(self.counts)), self.counts))
        assert len(labels) == n and self._by_class is not None, "Balance.order: bind() the training labels first"
        sampler = WeightedRandomSampler(per_image[labels].double(), n, replacement=True, generator=generator)
        # the sampler draws positions in a class-sorted list; map them back to the training images
        return self._by_class[torch.as_tensor(list(sampler), dtype=torch.long)]

    def bind(self, y: np.ndarray | torch.Tensor) -> Balance:
        """Remember where each class's images sit in ``y`` (needed by :meth:`order` when resampling)."""
        y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
        self._by_class = torch.from_numpy(np.argsort(y, kind="stable").astype(np.int64))
        return self

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits the training loss sees (logit adjustment adds tau * log prior; else unchanged)."""
        if self.log_prior is None:
            return logits
        return logits + self.tau * self.log_prior.to(logits.device, logits.dtype)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """The training loss: mean over the batch of the (weighted, logit-adjusted) cross-entropy.
        Weighted, it is sum_i w_{y_i} l_i / batch (not / sum w): the batch sums the workers' slices
        add up to stay exact, and the normalised weights keep its expected scale at 1."""
        logits = self.adjust(logits)
        if self.log_prior is not None and label_smoothing > 0:
            return self._prior_smoothed(logits, y, label_smoothing)
        if self.weights is None:
            return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        per = F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction="none")
        return (per * self.weights.to(per.device)[y]).mean()


    def _prior_smoothed(self, adjusted: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """Label smoothing towards the class prior, not the uniform distribution, under logit
        adjustment. Uniform smoothing asks the adjusted softmax for eps / K of every class on every
        image; the adjustment has already scaled a class's share by its prior, so the model's own
        logits would have to rise by log(eps / (K prior)) for the rare classes everywhere (measured:
        long-tailed CIFAR-10 collapsed to predicting its rarest class). Smoothing towards the prior
        keeps the smoothing's floor where the adjustment puts it, and the plain logits balanced."""
        prior = self.log_prior.to(adjusted.device, adjusted.dtype).exp()
        target = (1.0 - eps) * F.one_hot(y, adjusted.shape[1]).to(adjusted.dtype) + eps * prior
        return -(target * F.log_softmax(adjusted, dim=1)).sum(1).mean()


def sample_weights(counts: np.ndarray) -> np.ndarray:
    """Per-class sampling probabilities' image weights: 1 / n_c (each class equally likely)."""
    counts = np.asarray(counts, dtype=float)
    return np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)


def resolve(mode: str, y: np.ndarray | torch.Tensor, class_names: list[str], *, kind: str = "inverse",
            class_weight: Mapping[Any, float] | str | None = None) -> Balance:
    """The :class:`Balance` for ``train.class_balance`` = ``mode`` and these training labels."""
    if mode not in MODES:
        raise ConfigError(f"train.class_balance: {mode!r} is not one of {', '.join(map(repr, MODES))}")
    counts = class_counts(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y), len(class_names))
    if class_weight is not None:
        if mode not in ("none", "weights"):
            raise ConfigError(f"train.class_weight is given, so train.class_balance must be 'weights' "
                              f"(or 'none'), not {mode!r}")
        w = explicit_weights(class_weight, class_names, counts)
        return Balance("weights", counts, weights=torch.tensor(w, dtype=torch.float32)).bind(y)
    if mode == "auto":
        mode = auto_mode(counts)
    out = Balance(mode, counts)
    if mode == "weights":
        out.weights = torch.tensor(class_weights(counts, kind), dtype=torch.float32)
    elif mode == "logit_adjust":
        prior = counts / max(1, counts.sum())
        # a class with no training image: a very small prior, not log(0)
        out.log_prior = torch.tensor(np.log(np.maximum(prior, 1e-12)), dtype=torch.float32)
    return out.bind(y)


def class_weight_overrides(class_weight: Mapping[Any, float] | str | None) -> dict[str, Any]:
    """The config overrides for Keras-style ``class_weight=`` (the Python API's ``train`` and
    ``ImagePredictor.fit``): "balanced" is inverse-frequency weights, a mapping is taken as given."""
    if class_weight is None:
        return {}
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ConfigError(f"class_weight: {class_weight!r} is not 'balanced' or a mapping of class -> weight")
        return {"train.class_balance": "weights", "train.class_weight_kind": "inverse"}
    if not isinstance(class_weight, Mapping):
        raise ConfigError(f"class_weight: expected 'balanced' or a mapping of class -> weight, got {class_weight!r}")
    return {"train.class_balance": "weights",
            "train.class_weight": {(int(k) if isinstance(k, np.integer) else k): v for k, v in class_weight.items()}}


def with_class_weight(overrides: dict[str, Any] | list[str] | None, class_weight: Any) -> Any:
    """``overrides`` (a mapping or ``key=value`` strings) with :func:`class_weight_overrides` added."""
    from cnnlab.config import parse_override

    extra = class_weight_overrides(class_weight)
    if not extra:
        return overrides
    given = dict(parse_override(o) for o in overrides) if isinstance(overrides, list) else dict(overrides or {})
    return {**given, **extra}


def from_config(tc: Any, y: np.ndarray | torch.Tensor, class_names: list[str]) -> Balance:
    """:func:`resolve` with a ``TrainConfig``'s keys."""
    return resolve(tc.class_balance, y, class_names, kind=tc.class_weight_kind, class_weight=tc.class_weight)
