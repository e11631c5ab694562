"""InferenceModel: the one path from uint8 images to logits and probabilities of a trained model.

Everything that turns images into probabilities with a trained model goes through this object:
``ImagePredictor`` (predict, predict_proba, evaluate, extract_embedding), the evaluation written
after training, the auto-fit's scoring, leaderboard and soup, tuning summaries, ``cnnlab serve``
with either backend and the ONNX export's parity check. It holds one rule for each of:

- **decode size**: the size the training images had (the card's ``data_image_size``), else the
  config's ``data.image_size``, else the model's ``input_size``; None keeps each image's size.
- **precision**: the setting (an explicit ``precision=``, else the card's
  ``inference.precision``, else the run's ``train.precision``, else "auto") resolved once per
  process by :func:`cnnlab.utils.hardware.choose_precision`: bf16 where the CPU or GPU runs it
  natively, fp32 elsewhere. The card records the setting, not the dtype, so a model trained in
  bf16 on a Sapphire Rapids runs fp32 on a CPU without bf16 (where bf16 is ~40x slower).
- **micro-batches**: images go through the model in fixed micro-batches of :attr:`micro_batch`
  (32 in fp32, 8 in reduced precision); in reduced precision the last one is padded to full
  size, so an image's probabilities never depend on how many other images came with it (one
  request or a whole test set); fp32 results differ by rounding alone (< 1e-6).
- **test-time augmentation**: as given, else the card's (what the run chose), else ``train.tta``.
- **temperature**: the card's ``temperature`` (fitted on the validation split after training,
  Guo et al. 2017; 1.0 when absent) divides every logit this object returns; argmax is unchanged.

"The same answer" therefore means, on one machine: the same top-1 labels and probabilities
within 1e-5 from predict, evaluate, serve (torch backend) and the fit's reported figures, in
either precision (tests/unit/test_one_path.py holds every path to it, fp32 and forced bf16), at
the same thread count: oneDNN's bf16 kernels split their reductions by thread count (1 against
2 threads moved a frozen efficientnet_lite0's probabilities by 2.8e-3 on a Zen 4; fp32 ~1e-6),
and the thread count is the process's share of the cores (utils/cores.py), which shrinks while
other cnnlab processes compute. ``OMP_NUM_THREADS`` pins it.
The onnxruntime backend runs the exported fp32 graph; the export's parity check compares it with
this object's torch path in the precision that path serves in (see cnnlab.export.onnx).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.config import ExperimentConfig
from cnnlab.data.dataset import ImageArrays
from cnnlab.errors import ConfigError, ModelError
from cnnlab.evaluation.metrics import classification_report
from cnnlab.evaluation.predict import TTA_MODES, micro_batch_for, predict_logits
from cnnlab.models.classifier import ImageClassifier
from cnnlab.models.io import load_model, model_card, read_card
from cnnlab.utils.hardware import choose_precision, default_device

BACKENDS = ("torch", "onnxruntime")
#: Images per chunk the onnxruntime backend is given from pixels on disk (rounded to whole batches).
ONNX_CHUNK = 4096


@dataclass
class Evaluation:
    """An evaluation's report with what it was computed from (for galleries and label errors)."""

    report: dict[str, Any]
    probabilities: np.ndarray  # (N, classes)
    y: np.ndarray  # true labels as the model's class indices
    images: ImageArrays
    seconds: float


class InferenceModel:
    """A trained model's inference: ``logits(x)`` / ``proba(x)`` of uint8 images (N, H, W, 3).

    ``precision`` / ``tta`` / ``batch_size`` override the card's and the run's settings;
    ``backend``: "torch" or "onnxruntime" (the run's model.onnx, exported when missing or stale).
    """

    def __init__(self, model: ImageClassifier | None, card: dict[str, Any], config: ExperimentConfig | None = None,
                 path: str | Path | None = None, *, weights: str = "final", tta: str | None = None,
                 precision: str | None = None, batch_size: int | None = None, backend: str = "torch",
                 threads: int | None = None, onnx_path: str | Path | None = None):
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if tta is not None and tta not in TTA_MODES:
            raise ConfigError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        self._model, self.card, self.config = model, card, config
        self.path = Path(path) if path is not None else None
        self.weights, self.backend, self.threads = weights, backend, threads
        self.onnx_path = Path(onnx_path) if onnx_path is not None else None
        self._tta, self._precision_setting, self._batch_size = tta, precision, batch_size
        self._runtime: Any = None
        self._resolved: Any = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(cls, path: str | Path, *, weights: str = "final", **kwargs: Any) -> "InferenceModel":
        """A run directory's inference (the weights load on first use)."""
        from cnnlab.training.rundir import RunDir

        card = read_card(path)  # refuses a folder that is no model
        rd = RunDir(path)
        config = rd.read_config() if (rd / "config.yaml").is_file() else None
        return cls(None, card, config, path, weights=weights, **kwargs)

    @classmethod
    def from_model(cls, model: ImageClassifier, *, card: dict[str, Any] | None = None,
                   config: ExperimentConfig | None = None, path: str | Path | None = None,
                   **kwargs: Any) -> "InferenceModel":
        """A model already in memory (freshly trained, or a bare pretrained backbone)."""
        inf = cls(model, card if card is not None else model_card(model), config, path, **kwargs)
        inf._place(model)
        return inf

    # ------------------------------------------------------------------ the rules

    @property
    def model(self) -> ImageClassifier:
        if self._model is None:
            if self.path is None:
                raise ModelError("this model has no weights yet: fit it or load a run directory")
            self._model = self._place(load_model(self.path, self.weights))
        return self._model

    def _place(self, model: ImageClassifier) -> ImageClassifier:
        model.to(self.device)
        model.eval()
        return model

    @property
    def device(self) -> torch.device:
        return default_device()

    @property
    def class_names(self) -> list[str]:
        return list(self.card["spec"]["class_names"])

    @property
    def decode_size(self) -> int | None:
        """The square size image files are decoded at: the one rule for every caller."""
        configured = self.config.data.image_size if self.config is not None else None
        if "data_image_size" in self.card:  # every card cnnlab writes; None for a bare backbone
            return self.card["data_image_size"] or configured
        return configured or self.card["spec"].get("input_size")

    @property
    def input_size(self) -> int | None:
        return self.card["spec"].get("input_size") or self.decode_size

    @property
    def precision_setting(self) -> str:
        inference = self.card.get("inference") if isinstance(self.card.get("inference"), dict) else {}
        return (self._precision_setting or inference.get("precision")
                or (self.config.train.precision if self.config is not None else None) or "auto")

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32), resolved once per object."""
        if self._resolved is None:
            self._resolved = choose_precision(self.precision_setting, self.device)
        return self._resolved.dtype

    @property
    def precision(self) -> str:
        """The precision inference runs in here: "fp32", "bf16" or "fp16"."""
        return "fp32" if self.dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def tta(self) -> str:
        return self._tta or self.card.get("tta") or (self.config.train.tta if self.config is not None else "none")

    @property
    def micro_batch(self) -> int:
        return int(self._batch_size or micro_batch_for(self.dtype))

    @property
    def batch_size(self) -> int:
        return self.micro_batch

    @property
    def temperature(self) -> float:
        t = self.card.get("temperature", 1.0)
        return float(t) if isinstance(t, (int, float)) and t > 0 else 1.0

    # ------------------------------------------------------------------ inference

    def raw_logits(self, x: np.ndarray, *, feature_cache: bool = False, compile: bool | None = None,
                   progress: bool = False, log: Callable[[str], object] = print) -> torch.Tensor:
        """Logits before the temperature (float32, CPU) of uint8 images (N, H, W, 3)."""
        if self.backend == "onnxruntime":
            return torch.from_numpy(self._onnx_logits(x))
        from cnnlab.utils.cores import compute_threads

        with compute_threads(self.threads):  # this process's share of the cores; the caller's threads restored
            model = self.model
            if feature_cache and self.tta == "none":
                from cnnlab.training.features import cached_features

                feats, _ = cached_features(model, x, dtype=self.dtype, device=self.device, compile=compile,
                                           progress=progress, desc="test features", log=log)
                return self._micro_batched(model.head, feats, "none")
            return self._micro_batched(model, x, self.tta)

    def _micro_batched(self, module: torch.nn.Module, x: Any, tta: str) -> torch.Tensor:
        """``x`` (an array, a tensor or a view of pixels on disk) in micro-batches; in reduced precision the
        last one is padded to full size (only those few rows are copied into memory)."""
        n, mb = len(x), self.micro_batch
        tail = n % mb if self.dtype is not None else 0
        parts = []
        if n - tail:
            body = x if not tail else x[: n - tail]
            parts.append(predict_logits(module, body, batch_size=mb, device=self.device, dtype=self.dtype, tta=tta))
        if tail:
            last = x[n - tail:]
            last = last if torch.is_tensor(last) else torch.from_numpy(np.ascontiguousarray(np.asarray(last)))
            padded = torch.cat([last, torch.zeros((mb - tail, *last.shape[1:]), dtype=last.dtype)])
            parts.append(predict_logits(module, padded, batch_size=mb, device=self.device, dtype=self.dtype,
                                        tta=tta)[:tail])
        if not parts or sum(len(p) for p in parts) == 0:
            return torch.zeros(0, len(self.class_names))
        return torch.cat(parts)

    def logits(self, x: np.ndarray, **kwargs: Any) -> torch.Tensor:
        """Calibrated logits: :meth:`raw_logits` divided by the card's temperature."""
        return self.with_temperature(self.raw_logits(x, **kwargs))

    def with_temperature(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw logits divided by the card's temperature (the one place it is applied)."""
        t = self.temperature
        return raw if t == 1.0 else raw / t

    def proba(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Class probabilities (N, classes) of uint8 images."""
        return self.logits(x, **kwargs).softmax(1).numpy()

    def _onnx_logits(self, x: Any) -> np.ndarray:
        """The ONNX backend's logits; pixels read from disk, or joined splits (data/rows.py), go in
        chunks of whole backend batches, so only one chunk (and its TTA views) is ever in memory."""
        from cnnlab.data.rows import chunks, is_disk_backed, read_all

        runtime = self._onnx()
        if not is_disk_backed(x):
            return runtime.predict_logits(x, tta=self.tta)
        if not len(x):
            return runtime.predict_logits(read_all(x), tta=self.tta)
        batch = int(getattr(runtime, "batch_size", 256))
        step = batch * max(1, ONNX_CHUNK // batch)
        return np.concatenate([runtime.predict_logits(c, tta=self.tta) for c in chunks(x, step)])

    def _onnx(self) -> Any:
        if self._runtime is None:
            from cnnlab.export.backends import create_backend

            if self.path is None:
                raise ConfigError("the onnxruntime backend needs a saved run directory")
            self._runtime = create_backend("onnxruntime", self.path, self.weights, onnx_path=self.onnx_path,
                                           threads=self.threads)
        return self._runtime

    def evaluate_details(self, split: ImageArrays, *, where: str = "arrays", split_name: str = "given",
                         feature_cache: bool = False, compile: bool | None = None, progress: bool = False,
                         log: Callable[[str], object] = print, raw_logits: torch.Tensor | None = None,
                         raw_seconds: float | None = None) -> Evaluation:
        """The classification report of a labelled split, with the probabilities it came from.

        ``raw_logits``: this model's :meth:`raw_logits` of ``split.x``, computed already (the
        calibration after training does), so the split is not inferred twice; ``raw_seconds``
        what computing them took."""
        from cnnlab.data.dataset import align_labels

        y = align_labels(split, self.class_names, where)
        t0 = time.perf_counter()
        if raw_logits is not None:
            logits = self.with_temperature(raw_logits)
            seconds = raw_seconds or time.perf_counter() - t0
        else:
            logits = self.logits(split.x, feature_cache=feature_cache, compile=compile, progress=progress, log=log)
            seconds = time.perf_counter() - t0
        report = classification_report(logits, y, self.class_names)
        report.update({"source": where, "split": split_name, "weights": self.weights, "tta": self.tta,
                       "precision": self.precision, "decode_size": self.decode_size, "temperature": self.temperature,
                       "images_per_second": len(y) / seconds if seconds else 0.0})
        return Evaluation(report, logits.softmax(1).numpy(), y, split, seconds)

    def embed(self, x: np.ndarray, *, progress: bool = False, compile: bool | None = None) -> np.ndarray:
        """The pooled backbone features (N, D) float32 the head sees, at this object's precision.

        ``compile``: as extract_features (None: when ``x`` is large); a caller that embeds a large
        set a chunk at a time passes the whole set's choice, so every chunk runs the same way."""
        from cnnlab.training.features import extract_features
        from cnnlab.utils.cores import compute_threads

        with compute_threads(self.threads):
            return extract_features(self.model, x, batch_size=self.micro_batch, device=self.device,
                                    dtype=self.dtype, compile=compile, progress=progress)


class Ensemble:
    """Weighted members (InferenceModel) whose probabilities are averaged: an auto-fit's best entry.

    ``logits`` returns the log of the weighted mean probabilities (a softmax gives them back)."""

    def __init__(self, members: list[tuple[InferenceModel, float]]):
        if not members:
            raise ModelError("an ensemble needs at least one member")
        self.members = members
        first = members[0][0]
        self.card, self.config, self.path, self.weights = first.card, first.config, first.path, first.weights

    def __getattr__(self, name: str) -> Any:  # decode size, classes, precision ...: the first member's
        if name == "members":
            raise AttributeError(name)
        return getattr(self.members[0][0], name)

    def logits(self, x: np.ndarray, **kwargs: Any) -> torch.Tensor:
        total = None
        for m, w in self.members:
            p = m.logits(x).softmax(1) * w
            total = p if total is None else total + p
        assert total is not None
        return torch.log((total / sum(w for _, w in self.members)).clamp_min(1e-12))

    raw_logits = logits

    def proba(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        return self.logits(x).softmax(1).numpy()

    def evaluate_details(self, split: ImageArrays, **kwargs: Any) -> Evaluation:
        return InferenceModel.evaluate_details(self, split, **kwargs)  # type: ignore[arg-type]


def load_inference(path: str | Path, **kwargs: Any) -> InferenceModel:
    """:meth:`InferenceModel.load` (a function for callers that only need one)."""
    return InferenceModel.load(path, **kwargs)
