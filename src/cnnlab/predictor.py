"""ImagePredictor: one object that owns a trained model (scikit-learn's and AutoGluon's shape).

    from cnnlab import ImagePredictor
    predictor = ImagePredictor(label="label").fit(train_frame, config={"model": {"arch": "resnet18"}})
    predictor.predict(["cat.jpg"])            # a pandas Series of labels
    predictor.predict_proba(frame)            # a DataFrame: one column per class
    predictor.evaluate("my_images/")          # dict: accuracy, per_class, confusion_matrix ...
    predictor = ImagePredictor.load("runs/quick")

It owns a trained model through its :class:`cnnlab.inference.InferenceModel` (loaded once, kept
warm), which holds the one rule for decode size, precision, micro-batches, test-time augmentation
and temperature: predict, predict_proba, evaluate, extract_embedding, the reports, the server and
the auto-fit all go through it and agree (see cnnlab.inference.model for what "agree" means).
Saved form: a run directory (model.safetensors + model.json + config.yaml), or an auto-fit's
folder (cnnlab.autofit); no pickle.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.config import ExperimentConfig
from cnnlab.data.dataset import DatasetBundle, ImageArrays, with_tuning_split
from cnnlab.data.inputs import decoded_chunks, input_paths, unlabelled_images
from cnnlab.errors import ConfigError, DataError, ModelError
from cnnlab.inference import Ensemble, InferenceModel
from cnnlab.inference.after_training import evaluate_after_training
from cnnlab.inference.model import Evaluation
from cnnlab.models.classifier import ImageClassifier
from cnnlab.models.io import CARD_NAME, WEIGHTS_NAME, save_model
from cnnlab.training.rundir import RunDir

#: Images decoded per chunk when predicting, embedding or explaining image files (rounded down to
#: whole micro-batches): 256 images at 224 px are 39 MB of pixels, however many files there are.
STREAM_CHUNK = 256


class ImagePredictor:
    """Fit, load, predict, evaluate and embed with one trained image classifier.

    ``label``: the label column of DataFrame / CSV data. ``path``: the run directory that
    :meth:`fit` writes to (default ``runs/<name>-<time>``) or that :meth:`load` read.
    ``tta`` / ``precision`` / ``batch_size`` override the run's ``train.tta``,
    ``train.precision`` and ``train.eval_batch_size``. ``backend``: "torch", or "onnxruntime"
    (the run's model.onnx, exported when missing or older than the weights: cnnlab.export).
    """

    def __init__(self, label: str = "label", path: str | Path | None = None, *, image_column: str | None = None,
                 weights: str = "final", tta: str | None = None, precision: str | None = None,
                 batch_size: int | None = None, backend: str = "torch", threads: int | None = None,
                 onnx_path: str | Path | None = None):
        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
        self.label = label
        self.backend = backend
        self.path = Path(path) if path is not None else None
        self.image_column = image_column
        self.weights = weights
        self._options: dict[str, Any] = {"tta": tta, "precision": precision, "batch_size": batch_size,
                                         "backend": backend, "threads": threads, "onnx_path": onnx_path}
        self._inf: InferenceModel | Ensemble | None = None  # the one inference path (cnnlab.inference)
        self.run: Any = None  # the RunResult of fit()
        self._fit: dict[str, Any] | None = None  # an auto-fit's fit.json (cnnlab.autofit.folder)
        self._fit_path: Path | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(cls, path: str | Path, *, weights: str = "final", tta: str | None = None,
             precision: str | None = None, batch_size: int | None = None, label: str = "label",
             backend: str = "torch", threads: int | None = None,
             onnx_path: str | Path | None = None) -> "ImagePredictor":
        """The predictor of a run directory, a folder :meth:`save` wrote, or an auto-fit folder (its
        leaderboard's best entry: one model or a weighted ensemble); the model loads once."""
        from cnnlab.autofit.folder import is_fit_folder, load_fit

        options = {"tta": tta, "precision": precision, "batch_size": batch_size, "backend": backend, "threads": threads,
                   "onnx_path": onnx_path}
        if is_fit_folder(path):
            info, inf = load_fit(path, weights=weights, **options)
            pred = cls(label if label != "label" else info.get("label", "label"), inf.path, weights=weights,
                       **options)
            pred.image_column = info.get("image_column")
            pred._inf = inf
            pred._fit, pred._fit_path = {**info, "folder": str(path)}, Path(path)
            return pred
        pred = cls(label, path, weights=weights, **options)
        pred._inf = InferenceModel.load(path, weights=weights, **options)  # refuses a folder that is no model
        return pred

    @classmethod
    def from_model(cls, model: ImageClassifier, *, config: ExperimentConfig | None = None,
                   card: dict[str, Any] | None = None, path: str | Path | None = None, **kwargs: Any) -> "ImagePredictor":
        """Wrap a model already in memory (a freshly trained one, or a bare pretrained backbone)."""
        pred = cls(path=path, **kwargs)
        pred._inf = InferenceModel.from_model(model, card=card, config=config, path=path, weights=pred.weights,
                                              **pred._options)
        return pred

    def fit(self, train_data: Any, tuning_data: Any = None, config: Any = None, *, time_limit: Any = None,
            presets: str | None = None, overrides: dict[str, Any] | list[str] | None = None, progress: bool = False,
            log: Callable[[str], None] = print, epoch_callback: Any = None,
            class_weight: dict[Any, float] | str | None = None, resume: bool = False,
            backbone: str | None = None, backbone_weights: str | None = None, drop_leaks: bool | None = None,
            calibrate: bool | None = None, started_at: float | None = None) -> "ImagePredictor":
        """Train on ``train_data`` (any data source; ``tuning_data``: the validation split) and keep the model.

        With ``time_limit`` (seconds or "10m"; default 600 when only ``presets`` is given) and/or
        ``presets`` (medium_quality, high_quality, best_quality): auto-fit (cnnlab.autofit) into the
        folder ``path``, all within time_limit x 1.05. ``resume=True``: continue the killed fit in
        ``path`` (its plan, finished models and the time it spent are kept; cnnlab.autofit.state).
        ``backbone`` / ``backbone_weights``: any timm backbone for the pretrained candidates, with
        its weights (``offline``, ``hub`` or a local file). ``drop_leaks``: remove the training images
        that duplicate a validation or test image (and say how many; cnnlab.data.duplicates).
        ``started_at``: the ``time.monotonic()`` value the time limit counts from (default: this call).
        ``calibrate=False``: no temperature is fitted after training (the card records temperature
        1.0 and ``calibration: off``), for the auto-fit and the one run alike (``train.calibrate``).
        ``drop_leaks`` / ``calibrate`` None (not given): False / True. A resumed fit keeps the
        ``drop_leaks`` and ``calibrate`` it was started with (its state.json) and refuses another
        value given explicitly (ConfigError).
        Else ``config`` is a config file, dict or object (default: the config defaults); the run
        directory is ``path``. Returns self, fitted: ``self.run`` holds the run's result.
        ``class_weight``: Keras-style loss weights ({class index or name: weight} or "balanced"),
        one run only (auto-fit chooses how to handle imbalance itself).
        """
        if time_limit is not None or presets is not None or resume:
            if started_at is None:
                started_at = time.monotonic()  # the time limit counts from here: imports and loading included
            if config is not None or overrides or class_weight is not None:
                raise ConfigError("fit: give either config/overrides/class_weight (one run) or time_limit/presets "
                                  "(auto-fit, which handles class imbalance itself)")
            from cnnlab.autofit.fit import auto_fit

            return auto_fit(self, train_data, tuning_data, log=log, started_at=started_at, resume=resume,
                            time_limit=600 if time_limit is None and not resume else time_limit, presets=presets,
                            backbone=backbone, backbone_weights=backbone_weights, drop_leaks=drop_leaks,
                            calibrate=calibrate)
        if drop_leaks:
            raise ConfigError("fit: drop_leaks goes with an auto-fit (time_limit/presets), which searches the "
                              "splits for duplicates; for one run, `cnnlab data inspect` lists them")
        from cnnlab.training import orchestrate


        from cnnlab.training.balance import with_class_weight

        cfg = orchestrate.resolve_config(config, with_class_weight(overrides, class_weight))
        if calibrate is False:  # None: not given (the config's train.calibrate holds)
            cfg.train.calibrate = False
        cfg.data.image_column = cfg.data.image_column or self.image_column
        if cfg.data.label_column is None and _has_column(train_data, self.label):
            cfg.data.label_column = self.label
        data = train_data
        if tuning_data is not None:
            data = with_tuning_split(orchestrate.load_data(train_data, cfg), orchestrate.load_data(tuning_data, cfg))
            # The bundle has no name to record: config.yaml names the training source, never the default.
            cfg.data.source = str(train_data) if isinstance(train_data, (str, Path)) else orchestrate.DATAFRAME_SOURCE
        run = orchestrate.train(cfg, data=data, run_dir=self.path, progress=progress, log=log,
                                epoch_callback=epoch_callback, evaluator=evaluate_after_training)
        self.run, self.path = run, Path(run.run_dir)
        self._inf = InferenceModel.load(self.path, weights=self.weights, **self._options)
        if run.fit is not None:  # the model in memory is the one just saved: no reload
            self._inf._model = self._inf._place(run.fit.model)
        return self

    # ------------------------------------------------------------------ what it owns

    @property
    def inference(self) -> InferenceModel | Ensemble:
        """The one inference path of this predictor's model (cnnlab.inference)."""
        if self._inf is None:
            raise ModelError("this ImagePredictor has no model yet: call fit() or ImagePredictor.load(path)")
        return self._inf

    @property
    def model(self) -> ImageClassifier:
        """The classifier, loaded on first use and kept (repeated calls never reload weights)."""
        return self.inference.model

    @property
    def card(self) -> dict[str, Any]:
        return self.inference.card

    @property
    def config(self) -> ExperimentConfig | None:
        return self._inf.config if self._inf is not None else None

    @property
    def class_names(self) -> list[str]:
        return self.inference.class_names

    @property
    def decode_size(self) -> int | None:
        """The square size image files are decoded at (cnnlab.inference.model's one rule)."""
        return self.inference.decode_size

    @property
    def input_size(self) -> int | None:
        """The size the backbone sees (the model resizes decoded images to it when set)."""
        return self.inference.input_size

    @property
    def device(self) -> torch.device:
        return self.inference.device

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32) inference runs in on this machine."""
        return self.inference.dtype

    @property
    def precision(self) -> str:
        """The precision predictions run in here: "fp32", "bf16" or "fp16"."""
        return self.inference.precision

    @property
    def tta(self) -> str:
        """The test-time augmentation: as given, else the card's (what the run chose), else ``train.tta``."""
        return self.inference.tta

    @property
    def temperature(self) -> float:
        """The temperature the logits are divided by (fitted on validation after training; 1.0: none)."""
        return self.inference.temperature

    @property
    def batch_size(self) -> int:
        # InferenceModel.batch_size is its micro-batch; an Ensemble forwards it to its first member
        # (an InferenceModel or an ImagePredictor, which has no ``micro_batch``).
        return int(self.inference.batch_size)

    # ------------------------------------------------------------------ inference

    def logits(self, x: np.ndarray, *, feature_cache: bool = False, compile: bool | None = None,
               progress: bool = False, log: Callable[[str], object] = print) -> torch.Tensor:
        """Calibrated logits (float32, CPU) of uint8 images (N, H, W, 3): the one inference path.

        ``feature_cache``: take the frozen base's features from the feature cache (only without TTA).
        """
        return self.inference.logits(x, feature_cache=feature_cache, compile=compile, progress=progress, log=log)

    def _unlabelled(self, data: Any) -> tuple[np.ndarray, list[str], Any]:
        if isinstance(data, DatasetBundle):
            data = data.test if data.test is not None else data.all_images()
        return unlabelled_images(data, self.decode_size, image_column=self.image_column)

    def predict_proba(self, data: Any) -> Any:
        """Class probabilities: a pandas DataFrame, one column per class name, one row per image.

        ``data``: image paths and folders, an (N, H, W, 3) uint8 array, a DataFrame with an
        image-path column (rows keep its index) or a loaded dataset. The index names the images.
        """
        import pandas as pd

        probs, names, index = self.proba(data)
        return pd.DataFrame(probs, columns=self.class_names, index=index if index is not None else names)

    def proba(self, data: Any) -> tuple[np.ndarray, list[str], Any]:
        """(probabilities (N, classes), image names, DataFrame index or None): predict_proba's arrays.

        Image files (paths, folders, a DataFrame of paths) are decoded a chunk at a time as they are
        predicted (:meth:`iter_proba`), so memory holds one chunk of pixels, not the whole set; chunks
        are whole micro-batches, so the probabilities are exactly those of decoding everything first."""
        files = self._files(data)
        if files is None:
            x, names, index = self._unlabelled(data)
            return self.inference.proba(x), names, index
        probs, names = [], []
        for p, n in self._stream(files[0], self._chunk_step()):
            probs.append(p)
            names += n
        out = np.concatenate(probs) if probs else np.zeros((0, len(self.class_names)), np.float32)
        return out, names, files[1]

    def iter_proba(self, paths: Any, chunk: int | None = None) -> Iterator[tuple[np.ndarray, list[str]]]:
        """:meth:`proba` of image files and folders (or a DataFrame of image paths), ``chunk`` images
        at a time (default: the batch size): each chunk is decoded and predicted before the next is
        read, so the first results come before the last image is decoded and memory does not grow
        with the folder."""
        found = input_paths(paths, image_column=self.image_column)
        if found is None:
            raise DataError("iter_proba: expects image files, folders or a DataFrame of image paths "
                            f"(got {type(paths).__name__}; use proba for pixels in memory)")
        return self._stream(found[0], max(1, chunk or self.batch_size))

    def _stream(self, files: list[Path], step: int) -> Iterator[tuple[np.ndarray, list[str]]]:
        for x, part in decoded_chunks(files, self.decode_size, step):
            yield self.logits(x).softmax(1).numpy(), [str(p) for p in part]

    def _chunk_step(self, multiple: int = 1) -> int:
        """Files decoded per chunk when streaming: about STREAM_CHUNK, a whole number of micro-batches
        (and of ``multiple``, the explainer's batch), so each chunk's results are exactly those of
        one call on every image. (An odd micro-batch whose common multiple with ``multiple`` is
        over 4 x STREAM_CHUNK keeps whole micro-batches only: memory first, explainer batches split.)"""
        unit = math.lcm(self.batch_size, multiple)
        unit = unit if unit <= 4 * STREAM_CHUNK else self.batch_size
        return unit * max(1, STREAM_CHUNK // unit)

    def _files(self, data: Any) -> tuple[list[Path], Any] | None:
        """(image files, DataFrame index or None) of paths, folders or a DataFrame of paths: the
        inputs that stream; None for pixels already in memory (arrays, loaded datasets)."""
        return input_paths(data, image_column=self.image_column) if not isinstance(data, DatasetBundle) else None

    def predict(self, data: Any) -> Any:
        """The most probable label of each image: a pandas Series named after ``label``."""
        import pandas as pd

        probs, names, index = self.proba(data)
        labels = [self.class_names[i] for i in probs.argmax(1)]
        return pd.Series(labels, index=index if index is not None else names, name=self.label)

    def load_data(self, data: Any = None) -> DatasetBundle:
        """A labelled source (default: the run's own), decoded at :attr:`decode_size`."""
        from cnnlab.training import orchestrate

        source = data if data is not None else (self.config.data.source if self.config else None)
        if source is None:
            raise DataError("no data to evaluate on: pass data")
        kwargs: dict[str, Any] = {}
        if _has_column(source, self.label) and not (self.config and self.config.data.label_column):
            kwargs["label_column"] = self.label
        if self.image_column:
            kwargs["image_column"] = self.image_column
        return orchestrate.load_data(source, self.config, image_size=self.decode_size, **kwargs)

    def evaluate_details(self, data: Any = None, *, feature_cache: bool = False, compile: bool | None = None,
                         progress: bool = False, log: Callable[[str], object] = print) -> Evaluation:
        """:meth:`evaluate` with the probabilities and labels it was computed from."""
        if isinstance(data, ImageArrays):
            split, split_name, source = data, "given", "arrays"
        else:
            bundle = self.load_data(data)
            split = bundle.test if bundle.test is not None else bundle.all_images()
            split_name = "test" if bundle.test is not None else "all"
            source = data if data is not None else self.config.data.source  # type: ignore[union-attr]
        where = "DataFrame" if hasattr(source, "columns") else (
            str(source) if isinstance(source, (str, Path)) else type(source).__name__)
        return self.inference.evaluate_details(split, where=where, split_name=split_name, feature_cache=feature_cache,
                                               compile=compile, progress=progress, log=log)

    def evaluate(self, data: Any = None) -> dict[str, Any]:
        """Loss, accuracy, top-5, per-class P/R/F1, confusion matrix and ECE on a labelled source.

        ``data``: a source (folder tree, archive, CSV, DataFrame with a label column, "cifar10")
        scored on its test split (all its images when it has none), or an ImageArrays; default:
        the source the run trained on."""
        return self.evaluate_details(data).report

    def extract_embedding(self, data: Any, *, progress: bool = False) -> np.ndarray:
        """The pooled backbone features (N, D) float32 the head sees, at this predictor's precision.

        Image files (paths, folders, a DataFrame of paths) are decoded and embedded a chunk at a
        time as :meth:`proba` does (whole micro-batches, compiled or not as for the whole set), so
        memory holds one chunk of pixels and the features are exactly those of decoding every
        file first; arrays and loaded datasets are embedded as they are."""
        files = self._files(data)
        if files is None:
            x, _, _ = self._unlabelled(data)
            return self.inference.embed(x, progress=progress)
        import sys

        from tqdm.auto import tqdm

        from cnnlab.training.features import COMPILE_MIN_IMAGES

        compile = len(files[0]) >= COMPILE_MIN_IMAGES  # the choice extract_features makes for the whole set
        parts = []
        with tqdm(total=len(files[0]), desc="features", unit="img", leave=False, disable=not progress or None,
                  file=sys.stderr) as bar:
            for x, _ in decoded_chunks(files[0], self.decode_size, self._chunk_step()):
                parts.append(self.inference.embed(x, compile=compile))
                bar.update(len(x))
        return np.concatenate(parts) if parts else np.zeros((0, self.model.num_features), np.float32)

    def explain(self, images: Any, target: Any = None, method: str = "gradcam", layer: str | None = None) -> np.ndarray:
        """Class-activation heatmaps (N, H, W) float32 in [0, 1], one per image at its decoded size,
        for the predicted class or ``target`` (a class name or index, or one per image).

        ``method``: "gradcam" or "occlusion" (gradient-free); ``layer``: Grad-CAM's layer by name
        (default: the last feature map larger than 1x1). Heatmaps are computed in fp32 (they need
        gradients); see :meth:`explanation` for the labels and probabilities with them."""
        return self.explanation(images, target, method=method, layer=layer).heatmaps

    def explanation(self, images: Any, target: Any = None, *, method: str = "gradcam",
                    layer: str | None = None) -> Any:
        """:meth:`explain` with the images, labels and probabilities (this predictor's precision
        and TTA): a cnnlab.evaluation.explain.Explanation. An ensemble shows its best member's map."""
        from cnnlab.evaluation.explain import join_explanations

        parts = list(self.iter_explanation(images, target, method=method, layer=layer))
        return parts[0] if len(parts) == 1 else join_explanations(parts)

    def iter_explanation(self, images: Any, target: Any = None, *, method: str = "gradcam",
                         layer: str | None = None) -> Iterator[Any]:
        """:meth:`explanation` a chunk at a time: image files (paths, folders, a DataFrame of paths)
        are decoded, predicted and explained one chunk after another (whole micro-batches and
        explainer batches, so the maps are exactly those of one call); pixels in memory give one
        Explanation. A list ``target`` (one per image) is checked against the number of files first."""
        from cnnlab.evaluation.explain import HEATMAP_BATCH, explain_images
        from cnnlab.utils.cores import compute_threads

        def explain(x: np.ndarray, names: list[str], target: Any) -> Any:
            probs = self.logits(x).softmax(1).numpy()
            with compute_threads():
                return explain_images(self.model, x, probs, self.class_names, names, target=target, method=method,
                                      layer=layer)

        files = self._files(images)
        if files is None:
            x, names, _ = self._unlabelled(images)
            yield explain(x, names, target)
            return
        paths = files[0]
        per_image = target is not None and not isinstance(target, (int, str, np.integer))
        if per_image:
            target = list(target)
            if len(target) != len(paths):  # resolve_targets' message, for the whole set rather than a chunk
                raise ConfigError(f"explain: target has {len(target)} entries for {len(paths)} images")
        done = 0
        for x, part in decoded_chunks(paths, self.decode_size, self._chunk_step(HEATMAP_BATCH)):
            yield explain(x, [str(p) for p in part], target[done : done + len(part)] if per_image else target)
            done += len(part)

    # ------------------------------------------------------------------ saved form

    def save(self, path: str | Path) -> Path:
        """Write the model as a run directory (model.safetensors + model.json + config.yaml); no pickle."""
        out = Path(path)
        if self._fit_path is not None:  # an auto-fit: the whole folder (models, leaderboard, report)
            from cnnlab.autofit.folder import save_fit

            return save_fit(self._fit_path, out)
        if self.path is not None and out.resolve() == self.path.resolve():
            return out
        out.mkdir(parents=True, exist_ok=True)
        extra = {k: v for k, v in self.card.items() if k not in ("format", "cnnlab_version", "spec", "parameters")}
        save_model(self.model, out, extra)
        if self.config is not None:
            RunDir(out).write_config(self.config)
        for name in ("metrics.json", "history.csv"):
            if self.path is not None and (self.path / name).is_file():
                shutil.copy2(self.path / name, out / name)
        return out

    def export_onnx(self, path: str | Path | None = None, *, quantize: str | None = None, opset: int | None = None,
                    data: Any = None, parity_count: int = 1000, exporter: str = "auto",
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Export this run's model to ONNX (uint8 NHWC input, preprocessing inside the graph) and run
        the parity check against this predictor's torch inference path, in the precision it serves
        in (without TTA: the graph is one view); returns the parity figures (see cnnlab.export.onnx)."""
        from cnnlab.export.onnx import DEFAULT_OPSET, export_onnx

        if self.path is None:
            raise ValueError("export_onnx needs a saved run directory: fit() or load() first")
        torch_path = InferenceModel.load(self.path, weights=self.weights, **{**self._options, "tta": "none",
                                                                               "backend": "torch", "onnx_path": None})
        return export_onnx(self.path, path, weights=self.weights, opset=opset or DEFAULT_OPSET, quantize=quantize,
                           data=data, parity_count=parity_count, exporter=exporter, log=log,
                           reference=lambda x: torch_path.raw_logits(x).numpy(),
                           reference_precision=torch_path.precision)

    def summary(self) -> dict[str, Any]:
        """What the predictor is: architecture, classes, sizes, precision, TTA, parameters, metrics."""
        spec = self.card["spec"]
        metrics = RunDir(self.path).read_metrics() if self.path is not None else {}
        return {"path": str(self.path) if self.path else None, "arch": spec["arch"], "class_names": self.class_names,
                "num_classes": len(self.class_names), "decode_size": self.decode_size, "input_size": self.input_size,
                "precision": self.precision, "tta": self.tta, "weights": self.weights,
                "parameters": self.card.get("parameters"), "format": self.card.get("format"),
                "metrics": {k: metrics[k] for k in ("test", "val") if k in metrics}}

    def leaderboard(self) -> Any:
        """An auto-fit's leaderboard: a pandas DataFrame, best first (validation accuracy, or balanced
        validation accuracy on imbalanced data)."""
        from cnnlab.autofit.leaderboard import to_frame

        return to_frame(self.fit_summary()["leaderboard"])

    def fit_summary(self) -> dict[str, Any]:
        """An auto-fit's fit.json (best entry, members, leaderboard, profile, elapsed time, overrun) and its folder."""
        if self._fit is None:
            raise ModelError("fit_summary: this predictor was not auto-fitted (fit with time_limit=...)")
        return dict(self._fit)

    def __repr__(self) -> str:
        arch = self._inf.card["spec"]["arch"] if self._inf is not None else None
        return f"ImagePredictor(label={self.label!r}, path={str(self.path) if self.path else None!r}, arch={arch!r})"


def _has_column(data: Any, name: str) -> bool:
    return hasattr(data, "columns") and name in list(data.columns)


__all__ = ["ImagePredictor", "Evaluation", "CARD_NAME", "WEIGHTS_NAME"]
