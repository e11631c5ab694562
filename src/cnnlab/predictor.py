"""ImagePredictor: one object that owns a trained model (scikit-learn's and AutoGluon's shape).

    from cnnlab import ImagePredictor
    predictor = ImagePredictor(label="label").fit(train_frame, config={"model": {"arch": "resnet18"}})
    predictor.predict(["cat.jpg"])            # a pandas Series of labels
    predictor.predict_proba(frame)            # a DataFrame: one column per class
    predictor.evaluate("my_images/")          # dict: accuracy, per_class, confusion_matrix ...
    predictor = ImagePredictor.load("runs/quick")

It owns the model (loaded once, kept warm), the model card, the decode size (one rule: see
:attr:`ImagePredictor.decode_size`), the precision (``train.precision``, resolved by
:func:`cnnlab.utils.hardware.resolve_precision`) and the test-time augmentation
(``train.tta``), so that predict, predict_proba, evaluate, extract_embedding and the run
report all see the same pixels through the same model and agree. Saved form: a run directory
(model.safetensors + model.json + config.yaml), or an auto-fit's folder (cnnlab.autofit); no pickle.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.config import ExperimentConfig
from cnnlab.data.dataset import DatasetBundle, ImageArrays, align_labels, with_tuning_split
from cnnlab.data.inputs import unlabelled_images
from cnnlab.errors import ConfigError, DataError, ModelError
from cnnlab.evaluation.after_training import Evaluation
from cnnlab.evaluation.metrics import classification_report
from cnnlab.evaluation.predict import predict_logits
from cnnlab.models.classifier import ImageClassifier
from cnnlab.models.io import CARD_NAME, WEIGHTS_NAME, load_model, model_card, read_card, save_model
from cnnlab.training.rundir import RunDir
from cnnlab.utils.hardware import default_device, resolve_precision

_DTYPE_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


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
                 batch_size: int | None = None, backend: str = "torch"):
        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
        self.label = label
        self.backend = backend
        self._runtime: Any = None  # the ONNX Runtime backend, created on first use
        self.path = Path(path) if path is not None else None
        self.image_column = image_column
        self.weights = weights
        self._tta, self._precision, self._batch_size = tta, precision, batch_size
        self._model: ImageClassifier | None = None
        self._card: dict[str, Any] | None = None
        self._config: ExperimentConfig | None = None
        self.run: Any = None  # the RunResult of fit()
        self._fit: dict[str, Any] | None = None  # an auto-fit's fit.json (cnnlab.autofit.folder)
        self._fit_path: Path | None = None
        self._members: list[tuple[ImagePredictor, float]] | None = None  # an ensemble's members and weights

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(cls, path: str | Path, *, weights: str = "final", tta: str | None = None,
             precision: str | None = None, batch_size: int | None = None, label: str = "label",
             backend: str = "torch") -> "ImagePredictor":
        """The predictor of a run directory, a folder :meth:`save` wrote, or an auto-fit folder (its
        leaderboard's best entry: one model or a weighted ensemble); the model loads once."""
        from cnnlab.autofit.folder import is_fit_folder, load_fit

        if is_fit_folder(path):
            return load_fit(cls, path, weights=weights, tta=tta, precision=precision, batch_size=batch_size,
                            label=label, backend=backend)
        pred = cls(label, path, weights=weights, tta=tta, precision=precision, batch_size=batch_size,
                   backend=backend)
        pred._card = read_card(pred.path)  # type: ignore[arg-type] - refuses a folder that is no model
        rd = RunDir(pred.path)  # type: ignore[arg-type]
        if (rd / "config.yaml").is_file():
            pred._config = rd.read_config()
        return pred

    @classmethod
    def from_model(cls, model: ImageClassifier, *, config: ExperimentConfig | None = None,
                   card: dict[str, Any] | None = None, path: str | Path | None = None, **kwargs: Any) -> "ImagePredictor":
        """Wrap a model already in memory (a freshly trained one, or a bare pretrained backbone)."""
        pred = cls(path=path, **kwargs)
        pred._model = model
        pred._card = card if card is not None else model_card(model)
        pred._config = config
        pred._place(model)
        return pred

    def fit(self, train_data: Any, tuning_data: Any = None, config: Any = None, *, time_limit: Any = None,
            presets: str | None = None, overrides: dict[str, Any] | list[str] | None = None, progress: bool = False,
            log: Callable[[str], None] = print, epoch_callback: Any = None) -> "ImagePredictor":
        """Train on ``train_data`` (any data source; ``tuning_data``: the validation split) and keep the model.

        With ``time_limit`` (seconds or "10m"; default 600 when only ``presets`` is given) and/or
        ``presets`` (medium_quality, high_quality, best_quality): auto-fit (cnnlab.autofit) into the
        folder ``path``, all within time_limit x 1.05.
        Else ``config`` is a config file, dict or object (default: the config defaults); the run
        directory is ``path``. Returns self, fitted: ``self.run`` holds the run's result.
        """
        if time_limit is not None or presets is not None:
            started_at = time.monotonic()  # the time limit counts from here: imports and loading included
            if config is not None or overrides:
                raise ConfigError("fit: give either config/overrides (one run) or time_limit/presets (auto-fit)")
            from cnnlab.autofit.fit import auto_fit

            return auto_fit(self, train_data, tuning_data, time_limit=600 if time_limit is None else time_limit,
                            presets=presets, log=log, started_at=started_at)
        from cnnlab.training import orchestrate


        cfg = orchestrate.resolve_config(config, overrides)
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
        self.run, self.path, self._config = run, Path(run.run_dir), run.config
        self._card = read_card(self.path)
        self._model = run.fit.model if run.fit is not None else None
        if self._model is not None:
            self._place(self._model)
        return self

    # ------------------------------------------------------------------ what it owns

    @property
    def model(self) -> ImageClassifier:
        """The classifier, loaded on first use and kept (repeated calls never reload weights)."""
        if self._model is None:
            if self.path is None:
                raise ModelError("this ImagePredictor has no model yet: call fit() or ImagePredictor.load(path)")
            self._model = self._place(load_model(self.path, self.weights))
        return self._model

    def _place(self, model: ImageClassifier) -> ImageClassifier:
        model.to(default_device())
        model.eval()
        return model

    @property
    def card(self) -> dict[str, Any]:
        if self._card is None:
            raise ModelError("this ImagePredictor has no model yet: call fit() or ImagePredictor.load(path)")
        return self._card

    @property
    def config(self) -> ExperimentConfig | None:
        return self._config

    @property
    def class_names(self) -> list[str]:
        return list(self.card["spec"]["class_names"])

    @property
    def decode_size(self) -> int | None:
        """The square size image files are decoded at: the one rule for every caller.

        The size the training images had (the card's ``data_image_size``); else the config's
        ``data.image_size``; for an old card without that entry, the model's ``input_size``;
        None keeps each image's own size (a bare backbone: the model resizes to its input size).
        """
        configured = self._config.data.image_size if self._config is not None else None
        if "data_image_size" in self.card:  # every card cnnlab writes; None for a bare backbone
            return self.card["data_image_size"] or configured
        return configured or self.card["spec"].get("input_size")

    @property
    def input_size(self) -> int | None:
        """The size the backbone sees (the model resizes decoded images to it when set)."""
        return self.card["spec"].get("input_size") or self.decode_size

    @property
    def device(self) -> torch.device:
        return default_device()

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32) of the precision setting on this machine."""
        setting = self._precision or (self._config.train.precision if self._config else "auto")
        return resolve_precision(setting, self.device)

    @property
    def precision(self) -> str:
        """The precision predictions run in here: "fp32", "bf16" or "fp16"."""
        return _DTYPE_NAMES[self.dtype]

    @property
    def tta(self) -> str:
        """The test-time augmentation: as given, else the card's (what the run chose), else ``train.tta``."""
        return self._tta or self.card.get("tta") or (self._config.train.tta if self._config else "none")

    @property
    def batch_size(self) -> int:
        return self._batch_size or (self._config.train.eval_batch_size if self._config else 256)

    # ------------------------------------------------------------------ inference

    def logits(self, x: np.ndarray, *, feature_cache: bool = False, compile: bool | None = None,
               progress: bool = False, log: Callable[[str], object] = print) -> torch.Tensor:
        """Logits (float32, CPU) of uint8 images (N, H, W, 3) at this predictor's precision and TTA.

        ``feature_cache``: take the frozen base's features from the feature cache (only without TTA).
        """
        if self._members:
            from cnnlab.autofit.folder import ensemble_logits

            return ensemble_logits(self._members, x)
        if self.backend != "torch":
            if self._runtime is None:
                from cnnlab.export.backends import create_backend

                if self.path is None:
                    raise ValueError("the onnxruntime backend needs a saved run directory (path)")
                self._runtime = create_backend(self.backend, self.path, self.weights)
            return torch.from_numpy(self._runtime.predict_logits(x, tta=self.tta))
        from cnnlab.utils.cores import compute_threads

        with compute_threads():  # this process's share of the cores; the caller's threads restored
            return self._torch_logits(x, feature_cache, compile, progress, log)

    def _torch_logits(self, x: np.ndarray, feature_cache: bool, compile: bool | None, progress: bool,
                      log: Callable[[str], object]) -> torch.Tensor:
        model = self.model
        if feature_cache and self.tta == "none":
            from cnnlab.training.features import cached_features

            feats, _ = cached_features(model, x, dtype=self.dtype, device=self.device, compile=compile,
                                       progress=progress, desc="test features", log=log)
            return predict_logits(model.head, feats, batch_size=self.batch_size, device=self.device, dtype=self.dtype)
        return predict_logits(model, x, batch_size=self.batch_size, device=self.device, dtype=self.dtype, tta=self.tta)

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
        """(probabilities (N, classes), image names, DataFrame index or None): predict_proba's arrays."""
        x, names, index = self._unlabelled(data)
        return self.logits(x).softmax(1).numpy(), names, index

    def iter_proba(self, paths: Any, chunk: int | None = None) -> Iterator[tuple[np.ndarray, list[str]]]:
        """:meth:`proba` of image files and folders, ``chunk`` images at a time (default: the batch
        size): each chunk is decoded and predicted before the next is read, so the first results
        come before the last image is decoded and memory does not grow with the folder."""
        from cnnlab.data.inputs import decode_paths, image_paths

        files = image_paths(paths)
        step = max(1, chunk or self.batch_size)
        for i in range(0, len(files), step):
            part = files[i : i + step]
            yield self.logits(decode_paths(part, self.decode_size)).softmax(1).numpy(), [str(p) for p in part]

    def predict(self, data: Any) -> Any:
        """The most probable label of each image: a pandas Series named after ``label``."""
        import pandas as pd

        probs, names, index = self.proba(data)
        labels = [self.class_names[i] for i in probs.argmax(1)]
        return pd.Series(labels, index=index if index is not None else names, name=self.label)

    def load_data(self, data: Any = None) -> DatasetBundle:
        """A labelled source (default: the run's own), decoded at :attr:`decode_size`."""
        from cnnlab.training import orchestrate

        source = data if data is not None else (self._config.data.source if self._config else None)
        if source is None:
            raise DataError("no data to evaluate on: pass data")
        kwargs: dict[str, Any] = {}
        if _has_column(source, self.label) and not (self._config and self._config.data.label_column):
            kwargs["label_column"] = self.label
        if self.image_column:
            kwargs["image_column"] = self.image_column
        return orchestrate.load_data(source, self._config, image_size=self.decode_size, **kwargs)

    def evaluate_details(self, data: Any = None, *, feature_cache: bool = False, compile: bool | None = None,
                         progress: bool = False, log: Callable[[str], object] = print) -> Evaluation:
        """:meth:`evaluate` with the probabilities and labels it was computed from."""
        if isinstance(data, ImageArrays):
            split, split_name, source = data, "given", "arrays"
        else:
            bundle = self.load_data(data)
            split = bundle.test if bundle.test is not None else bundle.all_images()
            split_name = "test" if bundle.test is not None else "all"
            source = data if data is not None else self._config.data.source  # type: ignore[union-attr]
        where = str(source) if isinstance(source, (str, Path)) else type(source).__name__
        y = align_labels(split, self.class_names, where)
        t0 = time.perf_counter()
        logits = self.logits(split.x, feature_cache=feature_cache, compile=compile, progress=progress, log=log)
        seconds = time.perf_counter() - t0
        report = classification_report(logits, y, self.class_names)
        report.update({"source": "DataFrame" if hasattr(source, "columns") else where, "split": split_name,
                       "weights": self.weights, "tta": self.tta, "precision": self.precision,
                       "decode_size": self.decode_size,
                       "images_per_second": len(y) / seconds if seconds else 0.0})
        return Evaluation(report, logits.softmax(1).numpy(), y, split, seconds)

    def evaluate(self, data: Any = None) -> dict[str, Any]:
        """Loss, accuracy, top-5, per-class P/R/F1, confusion matrix and ECE on a labelled source.

        ``data``: a source (folder tree, archive, CSV, DataFrame with a label column, "cifar10")
        scored on its test split (all its images when it has none), or an ImageArrays; default:
        the source the run trained on."""
        return self.evaluate_details(data).report

    def extract_embedding(self, data: Any, *, progress: bool = False) -> np.ndarray:
        """The pooled backbone features (N, D) float32 the head sees, at this predictor's precision."""
        from cnnlab.training.features import extract_features

        x, _, _ = self._unlabelled(data)
        return extract_features(self.model, x, batch_size=self._batch_size or 64, device=self.device,
                                dtype=self.dtype, progress=progress)

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
        if self._config is not None:
            RunDir(out).write_config(self._config)
        for name in ("metrics.json", "history.csv"):
            if self.path is not None and (self.path / name).is_file():
                shutil.copy2(self.path / name, out / name)
        return out

    def export_onnx(self, path: str | Path | None = None, *, quantize: str | None = None, opset: int | None = None,
                    data: Any = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Export this run's model to ONNX (uint8 NHWC input, preprocessing inside the graph) and run
        the parity check against PyTorch; returns the parity figures (see cnnlab.export.onnx)."""
        from cnnlab.export.onnx import DEFAULT_OPSET, export_onnx

        if self.path is None:
            raise ValueError("export_onnx needs a saved run directory: fit() or load() first")
        return export_onnx(self.path, path, weights=self.weights, opset=opset or DEFAULT_OPSET, quantize=quantize,
                           data=data, log=log)

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
        """An auto-fit's leaderboard: a pandas DataFrame, best validation accuracy first."""
        from cnnlab.autofit.leaderboard import to_frame

        return to_frame(self.fit_summary()["leaderboard"])

    def fit_summary(self) -> dict[str, Any]:
        """An auto-fit's fit.json (best entry, members, leaderboard, profile, elapsed time, overrun) and its folder."""
        if self._fit is None:
            raise ModelError("fit_summary: this predictor was not auto-fitted (fit with time_limit=...)")
        return dict(self._fit)

    def __repr__(self) -> str:
        arch = self._card["spec"]["arch"] if self._card else None
        return f"ImagePredictor(label={self.label!r}, path={str(self.path) if self.path else None!r}, arch={arch!r})"


def _has_column(data: Any, name: str) -> bool:
    return hasattr(data, "columns") and name in list(data.columns)


def evaluate_after_training(result: Any, prep: Any, cfg: ExperimentConfig, rd: RunDir, *, progress: bool,
                            log: Callable[[str], None]) -> dict[str, Any]:
    """The trainer's evaluator: the fresh model on the test split (else validation) -> metrics.json entries."""
    from cnnlab.evaluation.after_training import evaluate_fresh

    return evaluate_fresh(ImagePredictor, result, prep, cfg, rd, progress=progress, log=log)


__all__ = ["ImagePredictor", "Evaluation", "evaluate_after_training", "CARD_NAME", "WEIGHTS_NAME"]
