"""The Python API: what a notebook user calls, and all the CLI does; a thin facade.

    import cnnlab
    run = cnnlab.train("experiments/mobilenet/I.yaml", overrides={"train.epochs": 2})
    print(run.metrics["test"]["accuracy"], run.run_dir)
    cnnlab.evaluate(run.run_dir)
    cnnlab.predict(run.run_dir, ["cat.jpg"])

or AutoGluon's shape: ``cnnlab.ImagePredictor(label="label").fit(frame).predict(["cat.jpg"])``.

Training is orchestrated in :mod:`cnnlab.training.orchestrate`; everything that uses a trained
model (evaluate, predict, predict_proba, embed, the run report) goes through
:class:`cnnlab.predictor.ImagePredictor`, so the load -> precision -> predict -> metrics path
exists once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from cnnlab.data.dataset import align_labels
from cnnlab.data.sources import load_source
from cnnlab.errors import DataError
from cnnlab.inference.after_training import evaluate_after_training
from cnnlab.predictor import ImagePredictor
from cnnlab.training import orchestrate
from cnnlab.training.recipes.standard import EpochCallback
from cnnlab.training.orchestrate import (
    DATAFRAME_SOURCE,
    ConfigLike,
    Prepared,
    RunResult,
    load_data,
    prepare_data,
    resolve_config,
)

__all__ = ["DATAFRAME_SOURCE", "ConfigLike", "ImagePredictor", "Prepared", "RunResult", "align_labels", "embed",
           "explain",
           "evaluate", "inspect_data", "load_data", "model_info", "predict", "predict_proba", "prepare_data",
           "resolve_config", "resume", "train"]


def train(
    config: ConfigLike = None,
    *,
    data: Any = None,
    run_dir: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    progress: bool = True,
    epoch_callback: EpochCallback | None = None,
    log: Callable[[str], None] = print,
    evaluate_test: bool = True,
    class_weight: dict[Any, float] | str | None = None,
    calibrate: bool = True,
) -> RunResult:
    """Train a model from a config (file, dict or object) and evaluate it on the test split.

    ``class_weight``: loss weights as Keras takes them, {class index or name: weight} or
    "balanced" (sets ``train.class_balance: weights``; see training/balance.py).
    ``calibrate=False``: no temperature is fitted on the validation split after training (sets
    ``train.calibrate: false``; the card records temperature 1.0 and ``calibration: off``).

    ``data`` overrides ``config.data.source`` (a source string, a DataFrame or a loaded bundle);
    the caller's config object is not changed. The run directory (default
    ``runs/<name>-<time>``) receives everything; see rundir.py.
    """
    from cnnlab.training.balance import with_class_weight

    overrides = with_class_weight(overrides, class_weight)
    if not calibrate:
        from cnnlab.config import parse_override

        given = dict(parse_override(o) for o in overrides) if isinstance(overrides, list) else dict(overrides or {})
        overrides = {**given, "train.calibrate": False}
    return orchestrate.train(config, data=data, run_dir=run_dir, overrides=overrides, progress=progress,
                             epoch_callback=epoch_callback, log=log,
                             evaluator=evaluate_after_training if evaluate_test else None)


def resume(run_dir: str | Path, *, data: Any = None, progress: bool = True, log: Callable[[str], None] = print,
           epoch_callback: EpochCallback | None = None) -> RunResult:
    """Finish a run that was interrupted (even by SIGKILL), from its last finished epoch."""
    return orchestrate.resume(run_dir, data=data, progress=progress, log=log, epoch_callback=epoch_callback,
                              evaluator=evaluate_after_training)


def evaluate(
    run_dir: str | Path,
    data: Any = None,
    *,
    weights: str = "final",
    tta: str | None = None,
    batch_size: int | None = None,
    figures_dir: str | Path | None = None,
    backend: str = "torch",
) -> dict[str, Any]:
    """Evaluate a saved run on a source's test split (or the whole source when it has none).

    Returns the full report (loss, accuracy, top-5, per-class P/R/F1, confusion matrix, ECE) and
    writes the confusion matrix (``figures/confusion_matrix.png`` and ``confusion_matrix.csv``
    in the run directory, or both in ``figures_dir``)."""
    from cnnlab import figures

    pred = ImagePredictor.load(run_dir, weights=weights, tta=tta, batch_size=batch_size, backend=backend)
    report = pred.evaluate(data)
    report["backend"] = backend
    rd = Path(run_dir)
    out = Path(figures_dir) if figures_dir else rd / "figures"
    figures.confusion_heatmap(np.array(report["confusion_matrix"]), pred.class_names, out / "confusion_matrix.png")
    _write_confusion_csv(report, rd / "confusion_matrix.csv" if figures_dir is None else out / "confusion_matrix.csv")
    return report


def _write_confusion_csv(report: dict[str, Any], path: Path) -> None:
    from cnnlab.utils.io import atomic_write_text

    names = report["class_names"]
    lines = ["true\\predicted," + ",".join(names)]
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(name + "," + ",".join(str(v) for v in row))
    atomic_write_text(path, "\n".join(lines) + "\n")


def predict_proba(run_dir: str | Path, inputs: Sequence[str | Path] | np.ndarray, *,
                  weights: str = "final", tta: str | None = None,
                  batch_size: int | None = None, backend: str = "torch") -> tuple[np.ndarray, list[str]]:
    """Class probabilities (N, classes) and image names for image files / folders, or an (N, H, W, 3)
    uint8 array; with the run's precision and TTA unless ``tta`` is given (see ImagePredictor)."""
    pred = ImagePredictor.load(run_dir, weights=weights, tta=tta, batch_size=batch_size, backend=backend)
    probs, names, _ = pred.proba(inputs)
    return probs, names


def predict(run_dir: str | Path, inputs: Sequence[str | Path] | np.ndarray, *, top_k: int = 3,
            weights: str = "final", tta: str | None = None, backend: str = "torch") -> list[dict[str, Any]]:
    """Top-k labels with probabilities for each input image (``backend``: torch or onnxruntime)."""
    from cnnlab.validation import at_least, check_value

    check_value("top_k", top_k, at_least(1))
    pred = ImagePredictor.load(run_dir, weights=weights, tta=tta, backend=backend)
    probs, names, _ = pred.proba(inputs)
    classes = pred.class_names
    k = min(top_k, probs.shape[1])
    out = []
    for name, p in zip(names, probs):
        order = np.argsort(-p)[:k]
        out.append({"image": name, "top": [{"label": classes[i], "probability": float(p[i])} for i in order]})
    return out


def explain(run_dir: str | Path, inputs: Sequence[str | Path] | np.ndarray, out_dir: str | Path = "explanations", *,
            method: str = "gradcam", target: str | int | None = None, layer: str | None = None,
            weights: str = "final") -> list[dict[str, Any]]:
    """Class-activation heatmaps for image files / folders: one overlay PNG each in ``out_dir`` and,
    per image, {"image", "label", "probability", "heatmap_png", "peak": [x, y]} (see ImagePredictor.explain).
    Files are decoded, explained and written a chunk at a time (ImagePredictor.iter_explanation)."""
    from cnnlab.evaluation.overlay import write_overlays

    pred = ImagePredictor.load(run_dir, weights=weights)
    rows: list[dict[str, Any]] = []
    used: set[str] = set()  # overlay file names so far: the names one call on every image gives
    for part in pred.iter_explanation(inputs, target, method=method, layer=layer):
        rows += write_overlays(part, out_dir, pred.decode_size, start=len(rows), used=used)
    return rows


def iter_predict(run_dir: str | Path, inputs: Sequence[str | Path], *, top_k: int = 3, weights: str = "final",
                 tta: str | None = None, backend: str = "torch", chunk: int | None = None
                 ) -> Iterator[dict[str, Any]]:
    """:func:`predict` for image files and folders, streamed: images are decoded and predicted a
    chunk at a time (ImagePredictor.iter_proba), each result yielded as soon as it is known."""
    from cnnlab.validation import at_least, check_value

    check_value("top_k", top_k, at_least(1))
    pred = ImagePredictor.load(run_dir, weights=weights, tta=tta, backend=backend)
    for probs, names in pred.iter_proba(inputs, chunk):
        classes = pred.class_names  # after the model loaded: a damaged model card is reported there
        k = min(top_k, probs.shape[1])
        for name, p in zip(names, probs):
            order = np.argsort(-p)[:k]
            yield {"image": name, "top": [{"label": classes[i], "probability": float(p[i])} for i in order]}


def inspect_data(source: Any, out_dir: str | Path | None = None, **load_kwargs: Any) -> dict[str, Any]:
    """The study's sanity check and its duplicates search (exact and near-duplicate pairs within and
    across splits); with ``out_dir``, also its example-images and label-order figures and a page of
    example duplicate pairs (duplicates.html)."""
    from cnnlab import figures
    from cnnlab.data.duplicates import write_pairs_page
    from cnnlab.data.inspect import summarize

    bundle = load_source(source, **load_kwargs)
    summary = summarize(bundle, duplicates=True)
    if out_dir is not None:
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise DataError(f"--out {out}: exists and is not a folder")
        tr = bundle.train
        summary["figures"] = {
            "example_images": str(figures.example_images(tr.x, tr.y, tr.class_names, out / "example_images.png")),
            "label_scatter": str(figures.label_scatter(tr.y, tr.class_names, out / "label_scatter.png")),
            "duplicates_page": str(write_pairs_page(summary, bundle.splits(), out / "duplicates.html")),
        }
    return summary


def model_info(name: str, *, input_size: int = 32, num_classes: int = 10, units: int = 0,
               pooling: str = "avg") -> dict[str, Any]:
    """Parameter counts (Keras's total too) and forward FLOPs of a model at ``input_size``."""
    from cnnlab.config import HeadConfig, ModelConfig
    from cnnlab.models.registry import create_model
    from cnnlab.models.summary import count_flops, count_parameters

    cfg = ModelConfig(arch=name, head=HeadConfig(units=units, pooling=pooling))  # type: ignore[arg-type]
    model = create_model(cfg, [f"class_{i}" for i in range(num_classes)])
    base = count_parameters(model.backbone)
    whole = count_parameters(model)
    return {
        "base_parameters": base["total"],
        "base_parameters_keras": base["keras_total"],
        "model_parameters": whole["total"],
        "model_parameters_keras": whole["keras_total"],
        "trainable_parameters": whole["trainable"],
        "num_features": model.num_features,
        "input_size": input_size,
        "forward_gflops": round(count_flops(model, input_size) / 1e9, 4),
    }


def embed(
    source_model: str | Path,
    data: Any,
    out: str | Path,
    *,
    pretrained: str | None = "offline",
    input_size: int | None = None,
    pooling: str = "avg",
    split: str = "all",
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Write feature vectors of a source's images for use elsewhere (.npy or .parquet).

    ``source_model`` is a run directory (its trained backbone, pooling, decode size and
    precision: its ImagePredictor) or a backbone name (built with ``pretrained`` weights and
    ``input_size``). The .npy file holds the (N, D) matrix, with labels and image paths in a
    ``.labels.csv`` beside it; a .parquet file holds one row per image: path, label, f0..f{D-1}.
    """
    import pandas as pd

    from cnnlab.config import HeadConfig, ModelConfig
    from cnnlab.models.io import model_card
    from cnnlab.models.registry import create_model
    from cnnlab.utils.io import atomic_path

    out = Path(out)
    if out.suffix not in (".npy", ".parquet"):
        raise DataError(f"{out}: embeddings are written as .npy or .parquet")
    if Path(source_model).is_dir():
        pred = ImagePredictor.load(source_model, batch_size=batch_size)
    else:
        cfg = ModelConfig(arch=str(source_model), pretrained=pretrained, input_size=input_size,
                          head=HeadConfig(pooling=pooling))  # type: ignore[arg-type]
        model = create_model(cfg, ["a", "b"])
        pred = ImagePredictor.from_model(model, card=model_card(model, {"data_image_size": None}), precision="auto",
                                         batch_size=batch_size)
    bundle = load_source(data, image_size=pred.decode_size)
    arrays = bundle.all_images() if split == "all" else bundle.splits().get(split)
    if arrays is None:
        raise DataError(f"{data}: has no {split!r} split (splits: {', '.join(bundle.splits())})")
    feats = pred.extract_embedding(arrays, progress=progress)
    labels = [arrays.class_names[i] for i in arrays.y]
    paths = arrays.paths or [f"#{i}" for i in range(len(labels))]
    if out.suffix == ".parquet":
        df = pd.DataFrame(feats, columns=[f"f{i}" for i in range(feats.shape[1])])
        df.insert(0, "label", labels)
        df.insert(0, "path", paths)
        with atomic_path(out) as tmp:
            df.to_parquet(tmp, index=False)
    else:
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, feats)
        side = out.with_suffix(".labels.csv")
        with atomic_path(side) as tmp:
            from cnnlab.utils.io import csv_safe

            pd.DataFrame({"path": [csv_safe(p) for p in paths], "label": [csv_safe(x) for x in labels]}
                         ).to_csv(tmp, index=False)
    return {"path": str(out), "shape": list(feats.shape), "images": len(labels)}
