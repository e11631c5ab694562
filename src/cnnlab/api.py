"""The Python API: what a notebook user calls, and all the CLI does.

    import cnnlab
    run = cnnlab.train("experiments/mobilenet/I.yaml", overrides={"train.epochs": 2})
    print(run.metrics["test"]["accuracy"], run.run_dir)
    cnnlab.evaluate(run.run_dir)
    cnnlab.predict(run.run_dir, ["cat.jpg"])

or AutoGluon's shape: ``ImagePredictor().fit("cifar10").predict(["cat.jpg"])``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from cnnlab.config import ExperimentConfig, load_config
from cnnlab.data.dataset import DatasetBundle, ImageArrays
from cnnlab.data.sources import load_source
from cnnlab.data.split import limit_samples, split_train_val
from cnnlab.errors import DataError
from cnnlab.evaluation.metrics import classification_report
from cnnlab.evaluation.predict import predict_logits
from cnnlab.models.classifier import ImageClassifier
from cnnlab.models.io import load_model, read_card
from cnnlab.models.registry import create_model
from cnnlab.training.loop import EpochCallback, FitResult, finish, fit
from cnnlab.training.rundir import RunDir
from cnnlab.utils.hardware import default_device, machine_summary, resolve_precision

ConfigLike = ExperimentConfig | str | Path | dict[str, Any] | None

#: ``data.source`` recorded for a run trained on a pandas DataFrame (pass the frame again as ``data``).
DATAFRAME_SOURCE = "<DataFrame>"


@dataclass
class Prepared:
    bundle: DatasetBundle
    train: ImageArrays
    val: ImageArrays | None
    test: ImageArrays | None


@dataclass
class RunResult:
    run_dir: Path
    config: ExperimentConfig
    metrics: dict[str, Any]
    fit: FitResult | None = field(default=None, repr=False)

    @property
    def model(self) -> ImageClassifier:
        return self.fit.model if self.fit else load_model(self.run_dir)


def resolve_config(config: ConfigLike, overrides: dict[str, Any] | list[str] | None = None) -> ExperimentConfig:
    from cnnlab.config import apply_overrides, config_from_dict, parse_override

    if isinstance(config, ExperimentConfig):
        if not overrides:
            return config
        config = config.to_dict()
    if isinstance(config, dict):
        data = dict(config)
        if isinstance(overrides, list):
            overrides = dict(parse_override(o) for o in overrides)
        return config_from_dict(apply_overrides(data, overrides or {}))
    return load_config(config, overrides)


def load_data(source: Any, cfg: ExperimentConfig | None = None, **kwargs: Any) -> DatasetBundle:
    """Load a data source (see :func:`cnnlab.data.sources.load_source`) with a config's settings."""
    if isinstance(source, str) and source == DATAFRAME_SOURCE:
        raise DataError("this run was trained on a pandas DataFrame: pass that DataFrame (or another "
                        "source) as data (CLI: --data)")
    if cfg is not None:
        kwargs.setdefault("image_size", cfg.data.image_size)
        kwargs.setdefault("skip_bad", cfg.data.skip_bad)
        kwargs.setdefault("image_column", cfg.data.image_column)
        kwargs.setdefault("label_column", cfg.data.label_column)
    return load_source(source, **kwargs)


def prepare_data(cfg: ExperimentConfig, data: Any = None) -> Prepared:
    """Load the source and cut it into train / validation / test as the config says."""
    bundle = data if isinstance(data, DatasetBundle) else load_data(data if data is not None else cfg.data.source, cfg)
    train, val = bundle.train, bundle.val
    if val is None:
        train, val = split_train_val(train, cfg.data.validation_split, cfg.data.split_method, cfg.seed)
    train = limit_samples(train, cfg.data.max_train_samples, cfg.seed)
    return Prepared(bundle, train, val, bundle.test)


def _summary_metrics(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("count", "loss", "accuracy", "top5_accuracy", "macro_f1", "ece")}


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
) -> RunResult:
    """Train a model from a config (file, dict or object) and evaluate it on the test split.

    ``data`` overrides ``config.data.source`` (a source string, a DataFrame or a loaded bundle).
    The run directory (default ``runs/<name>-<time>``) receives everything; see rundir.py.
    """
    cfg = resolve_config(config, overrides)
    if isinstance(data, (str, Path)):
        cfg.data.source = str(data)
    elif data is not None and not isinstance(data, DatasetBundle):
        # An in-memory table has no name to record; never let config.yaml claim the default
        # source (cifar10), which `cnnlab evaluate RUN_DIR` would then fetch and score against.
        cfg.data.source = DATAFRAME_SOURCE
    rd = RunDir(run_dir) if run_dir else RunDir.new(cfg.name)
    rd.path.mkdir(parents=True, exist_ok=True)
    rd.write_config(cfg)
    return _run(cfg, rd, data, resume=False, progress=progress, epoch_callback=epoch_callback, log=log,
                evaluate_test=evaluate_test)


def resume(run_dir: str | Path, *, data: Any = None, progress: bool = True, log: Callable[[str], None] = print,
           epoch_callback: EpochCallback | None = None) -> RunResult:
    """Finish a run that was interrupted (even by SIGKILL), from its last finished epoch."""
    rd = RunDir(run_dir)
    cfg = rd.read_config()
    if rd.is_finished():
        log(f"{rd.path} is already finished")
        return RunResult(rd.path, cfg, rd.read_metrics())
    has_state = (rd.state / "train_state.json").is_file()
    return _run(cfg, rd, data, resume=has_state, progress=progress, epoch_callback=epoch_callback, log=log)


def _run(cfg: ExperimentConfig, rd: RunDir, data: Any, *, resume: bool, progress: bool,
         epoch_callback: EpochCallback | None, log: Callable[[str], None], evaluate_test: bool = True) -> RunResult:
    from cnnlab import figures

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    prep = prepare_data(cfg, data)
    load_seconds = time.perf_counter() - t0
    log(f"data: {len(prep.train):,} train, {len(prep.val) if prep.val else 0:,} val, "
        f"{len(prep.test) if prep.test else 0:,} test images of {prep.train.image_size[0]}x"
        f"{prep.train.image_size[1]}, {prep.train.num_classes} classes ({load_seconds:.1f}s)")
    model = create_model(cfg.model, prep.train.class_names)
    if cfg.train.recipe == "fast":
        from cnnlab.training.recipes.fast import fit as fast_fit

        result = fast_fit(cfg, model, prep.train, prep.val, rd, resume=resume, progress=progress,
                          epoch_callback=epoch_callback, log=log, test=prep.test)
    else:
        result = _fit_stages(cfg, model, prep, rd, resume=resume, progress=progress,
                             epoch_callback=epoch_callback, log=log)
    metrics: dict[str, Any] = {
        "name": cfg.name,
        **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.extra.items()},
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.train_seconds, 2),
        "train_images_per_second": round(result.images_per_second, 1),
        "train_samples": len(prep.train),
        "machine": machine_summary(),
    }
    figures.learning_curves(result.history, rd.figures / "curves.png", title=cfg.name)
    eval_split = prep.test if prep.test is not None else prep.val
    if evaluate_test and eval_split is not None:
        device = result.model.head.classifier.weight.device
        dtype = resolve_precision(cfg.train.precision, device)
        t1 = time.perf_counter()
        if "feature_cache" in result.extra and cfg.train.finetune is None and cfg.train.tta == "none":
            # The base is frozen: the test images' features come from (and go to) the cache too.
            from cnnlab.training.features import cached_features

            feats, _ = cached_features(result.model, eval_split.x, dtype=dtype, device=device,
                                       compile=_compile_features(cfg), progress=progress,
                                       desc="test features", log=log)
            logits = predict_logits(result.model.head, feats, batch_size=cfg.train.eval_batch_size,
                                    device=device, dtype=dtype)
        else:
            logits = predict_logits(result.model, eval_split.x, batch_size=cfg.train.eval_batch_size,
                                    device=device, dtype=dtype, tta=cfg.train.tta)
        infer_s = time.perf_counter() - t1
        report = classification_report(logits, eval_split.y, eval_split.class_names)
        split_name = "test" if prep.test is not None else "val"
        metrics[split_name] = _summary_metrics(report)
        metrics["inference_images_per_second"] = round(len(eval_split) / infer_s, 1)
        if (rd / "best.safetensors").is_file():
            best = load_model_weights_copy(result.model, rd / "best.safetensors")
            blog = predict_logits(best, eval_split.x, batch_size=cfg.train.eval_batch_size, device=device,
                                  dtype=dtype, tta=cfg.train.tta)
            metrics[f"{split_name}_best_checkpoint"] = _summary_metrics(
                classification_report(blog, eval_split.y, eval_split.class_names))
        figures.confusion_heatmap(np.array(report["confusion_matrix"]), report["class_names"],
                                  rd.figures / "confusion_matrix.png")
        log(f"{split_name} accuracy: {report['accuracy']:.4f} (top-5 {report['top5_accuracy']:.4f}, "
            f"loss {report['loss']:.4f}) on {len(eval_split):,} images")
    rd.write_metrics(metrics)
    finish(result, {"data_image_size": prep.train.image_size[0],
                    "train": {"epochs_run": result.epochs_run, "data": cfg.data.source,
                              "train_samples": len(prep.train)}})
    log(f"run directory: {rd.path}")
    return RunResult(rd.path, cfg, metrics, result)


def _use_feature_cache(cfg: ExperimentConfig, model: ImageClassifier) -> bool:
    aug = cfg.train.augment
    frozen = cfg.model.freeze_base
    if cfg.train.cache_features == "off" or not frozen:
        return False
    if cfg.train.cache_features == "on":
        return True
    return not (aug.crop_padding or aug.flip or aug.cutout) and not cfg.train.compile


def _compile_features(cfg: ExperimentConfig) -> bool | None:
    return {"auto": None, "on": True, "off": False}[cfg.train.compile_features]


def _fit_stages(cfg: ExperimentConfig, model: ImageClassifier, prep: Prepared, rd: RunDir, *, resume: bool,
                progress: bool, epoch_callback: EpochCallback | None, log: Callable[[str], None]) -> FitResult:
    """Stage 1 (frozen base, partly or fully trainable), then the optional fine-tuning stage."""
    import copy

    from cnnlab.training.features import FeatureArrays, HeadOnly, cached_features

    if cfg.model.freeze_base:
        model.set_base_trainable(False)
    elif cfg.model.unfreeze_last is not None:
        model.set_base_trainable(True, cfg.model.unfreeze_last)
    ft = cfg.train.finetune
    stage2_started = resume and ft is not None and (rd.state / "finetune" / "train_state.json").is_file()
    if stage2_started:
        result = None
    elif _use_feature_cache(cfg, model):
        device = default_device()
        model.to(device)
        dtype = resolve_precision(cfg.train.precision, device)
        t0 = time.perf_counter()
        ftrain, hit = cached_features(model, prep.train.x, dtype=dtype, device=device,
                                      compile=_compile_features(cfg), progress=progress,
                                      desc="train features", log=log)
        fval = None
        if prep.val is not None:
            fval, _ = cached_features(model, prep.val.x, dtype=dtype, device=device,
                                      compile=_compile_features(cfg), progress=progress,
                                      desc="val features", log=log)
        log(f"frozen base: {'reused cached' if hit else 'extracted'} features "
            f"{ftrain.shape} in {time.perf_counter() - t0:.1f}s; training the head on them")
        result = fit(cfg, HeadOnly(model), FeatureArrays(ftrain, prep.train.y, prep.train.class_names),
                     FeatureArrays(fval, prep.val.y, prep.val.class_names) if fval is not None else None,
                     rd, resume=resume, progress=progress, epoch_callback=epoch_callback, log=log)
        result.extra["feature_seconds"] = time.perf_counter() - t0 - result.train_seconds
        result.extra["feature_cache"] = "hit" if hit else "miss"
        result.model = model
    else:
        result = fit(cfg, model, prep.train, prep.val, rd, resume=resume, progress=progress,
                     epoch_callback=epoch_callback, log=log)
    if ft is None:
        return result  # type: ignore[return-value]
    prior = result.history if result is not None else [h for h in rd.read_history() if "stage" not in h]
    cfg2 = copy.deepcopy(cfg)
    cfg2.train.epochs = ft.epochs
    cfg2.train.optimizer.lr = ft.lr
    cfg2.train.optimizer.base_lr = ft.base_lr
    cfg2.train.schedule = ft.schedule
    model.set_base_trainable(True, ft.unfreeze_last)
    log(f"fine-tuning: base unfrozen ({'all blocks' if ft.unfreeze_last is None else f'last {ft.unfreeze_last} blocks'}), "
        f"lr {ft.lr:g} for {ft.epochs} epochs")
    result2 = fit(cfg2, model, prep.train, prep.val, rd, resume=stage2_started, progress=progress,
                  epoch_callback=epoch_callback, log=log, stage="finetune", prior_history=prior)
    first_seconds = result.train_seconds if result is not None else sum(h.get("seconds", 0) for h in prior)
    result2.train_seconds += first_seconds
    result2.history = prior + result2.history
    result2.epochs_run = len(result2.history)
    if result is not None:
        result2.extra.update(result.extra)
    return result2


def load_model_weights_copy(model: ImageClassifier, path: Path) -> ImageClassifier:
    import copy

    from cnnlab.models.io import load_weights

    other = copy.deepcopy(model)
    load_weights(other, path)
    return other.eval()


# ----------------------------------------------------------------- evaluation and prediction


def align_labels(split: ImageArrays, class_names: list[str], where: str) -> np.ndarray:
    """Map a source's labels onto a model's classes by name; unknown classes are an error."""
    lookup = {n: i for i, n in enumerate(class_names)}
    present = sorted(set(np.unique(split.y).tolist()))
    unknown = [split.class_names[i] for i in present if split.class_names[i] not in lookup]
    if unknown:
        raise DataError(
            f"{where}: label {unknown[0]!r} is not a class the model knows ({', '.join(class_names)})"
        )
    mapping = np.array([lookup.get(n, -1) for n in split.class_names])
    return mapping[split.y]


def evaluate(
    run_dir: str | Path,
    data: Any = None,
    *,
    weights: str = "final",
    tta: str | None = None,
    batch_size: int = 256,
    figures_dir: str | Path | None = None,
    backend: str = "torch",
) -> dict[str, Any]:
    """Evaluate a saved run on a source's test split (or the whole source when it has none).

    Returns the full report (loss, accuracy, top-5, per-class P/R/F1, confusion matrix, ECE)."""
    from cnnlab import figures

    rd = RunDir(run_dir)
    model = load_model(rd.path, weights)
    cfg = rd.read_config()
    source = data if data is not None else cfg.data.source
    # The training source is decoded as in training; another source at the training image size.
    same = isinstance(source, str) and source == cfg.data.source
    size = cfg.data.image_size if same else read_card(rd.path).get("data_image_size")
    bundle = load_data(source, cfg, image_size=size)
    split = bundle.test if bundle.test is not None else bundle.all_images()
    y = align_labels(split, model.class_names, str(source))
    device = default_device()
    model.to(device)
    dtype = resolve_precision(cfg.train.precision, device)
    t0 = time.perf_counter()
    if backend == "torch":
        logits = predict_logits(model, split.x, batch_size=batch_size, device=device, dtype=dtype,
                                tta=tta or cfg.train.tta)
    else:
        logits = _backend_logits(backend, rd.path, weights, split.x, tta or cfg.train.tta)
    seconds = time.perf_counter() - t0
    report = classification_report(logits, y, model.class_names)
    report.update({"source": str(source) if not hasattr(source, "shape") else "DataFrame",
                   "split": "test" if bundle.test is not None else "all", "weights": weights,
                   "tta": tta or cfg.train.tta, "backend": backend, "images_per_second": len(y) / seconds if seconds else 0.0})
    out = Path(figures_dir) if figures_dir else rd.figures
    figures.confusion_heatmap(np.array(report["confusion_matrix"]), model.class_names,
                              out / "confusion_matrix.png")
    _write_confusion_csv(report, out.parent / "confusion_matrix.csv" if figures_dir is None else out / "confusion_matrix.csv")
    return report


def _write_confusion_csv(report: dict[str, Any], path: Path) -> None:
    from cnnlab.utils.io import atomic_write_text

    names = report["class_names"]
    lines = ["true\\predicted," + ",".join(names)]
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(name + "," + ",".join(str(v) for v in row))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _gather_images(inputs: Sequence[str | Path], size: int | None) -> tuple[np.ndarray, list[str]]:
    from cnnlab.data.decode import decode_image, is_image_name

    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.is_file() and is_image_name(q.name))
        elif p.exists():
            paths.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not paths:
        raise DataError("no images to predict")
    return np.stack([decode_image(p, size) for p in paths]), [str(p) for p in paths]


def _backend_logits(backend: str, run_dir: Path, weights: str, x: np.ndarray, tta: str) -> torch.Tensor:
    """Logits from another inference backend (cnnlab.export: onnxruntime)."""
    from cnnlab.export.backends import create_backend

    return torch.from_numpy(create_backend(backend, run_dir, weights).predict_logits(x, tta=tta))


def predict_proba(run_dir: str | Path, inputs: Sequence[str | Path] | np.ndarray, *,
                  weights: str = "final", tta: str = "none", batch_size: int = 256,
                  backend: str = "torch") -> tuple[np.ndarray, list[str]]:
    """Class probabilities (N, classes) for image files / folders, or an (N, H, W, 3) uint8 array."""
    rd = RunDir(run_dir)
    model = load_model(rd.path, weights)
    if isinstance(inputs, np.ndarray):
        x, names = inputs, [f"#{i}" for i in range(len(inputs))]
    else:
        card = read_card(rd.path)
        size = card.get("data_image_size") or _train_image_size(rd) or model.spec.input_size
        x, names = _gather_images(inputs, size)
    if backend != "torch":
        return _backend_logits(backend, rd.path, weights, x, tta).softmax(1).numpy(), names
    device = default_device()
    model.to(device)
    logits = predict_logits(model, x, batch_size=batch_size, device=device, tta=tta)
    return logits.softmax(1).numpy(), names


def _train_image_size(rd: RunDir) -> int | None:
    cfg = rd.read_config()
    if cfg.data.image_size:
        return cfg.data.image_size
    if cfg.data.source == "cifar10":
        return 32
    return None


def predict(run_dir: str | Path, inputs: Sequence[str | Path] | np.ndarray, *, top_k: int = 3,
            weights: str = "final", tta: str = "none", backend: str = "torch") -> list[dict[str, Any]]:
    """Top-k labels with probabilities for each input image (``backend``: torch or onnxruntime)."""
    probs, names = predict_proba(run_dir, inputs, weights=weights, tta=tta, backend=backend)
    classes = read_card(run_dir)["spec"]["class_names"]
    k = min(top_k, probs.shape[1])
    out = []
    for name, p in zip(names, probs):
        order = np.argsort(-p)[:k]
        out.append({"image": name, "top": [{"label": classes[i], "probability": float(p[i])} for i in order]})
    return out


def inspect_data(source: Any, out_dir: str | Path | None = None, **load_kwargs: Any) -> dict[str, Any]:
    """The study's sanity check; with ``out_dir``, also its example-images and label-order figures."""
    from cnnlab import figures
    from cnnlab.data.inspect import summarize

    bundle = load_source(source, **load_kwargs)
    summary = summarize(bundle)
    if out_dir is not None:
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise DataError(f"--out {out}: exists and is not a folder")
        tr = bundle.train
        summary["figures"] = {
            "example_images": str(figures.example_images(tr.x, tr.y, tr.class_names, out / "example_images.png")),
            "label_scatter": str(figures.label_scatter(tr.y, tr.class_names, out / "label_scatter.png")),
        }
    return summary


def model_info(name: str, *, input_size: int = 32, num_classes: int = 10, units: int = 0,
               pooling: str = "avg") -> dict[str, Any]:
    """Parameter counts (Keras's total too) and forward FLOPs of a model at ``input_size``."""
    from cnnlab.config import HeadConfig, ModelConfig
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

    ``source_model`` is a run directory (its trained backbone and pooling) or a backbone name
    (built with ``pretrained`` weights and ``input_size``). The .npy file holds the (N, D)
    matrix, with labels and image paths in a ``.labels.csv`` beside it; a .parquet file holds
    one row per image: path, label, f0..f{D-1}.
    """
    import pandas as pd

    from cnnlab.config import HeadConfig, ModelConfig
    from cnnlab.training.features import extract_features
    from cnnlab.utils.io import atomic_path

    if Path(source_model).is_dir():
        model = load_model(source_model)
        size = read_card(source_model).get("data_image_size")
    else:
        cfg = ModelConfig(arch=str(source_model), pretrained=pretrained, input_size=input_size,
                          head=HeadConfig(pooling=pooling))  # type: ignore[arg-type]
        model = create_model(cfg, ["a", "b"])
        size = None
    bundle = load_source(data, image_size=size)
    arrays = bundle.all_images() if split == "all" else bundle.splits().get(split)
    if arrays is None:
        raise DataError(f"{data}: has no {split!r} split (splits: {', '.join(bundle.splits())})")
    device = default_device()
    model.to(device)
    dtype = resolve_precision("auto", device)
    feats = extract_features(model, arrays.x, batch_size=batch_size, device=device, dtype=dtype, progress=progress)
    out = Path(out)
    labels = [arrays.class_names[i] for i in arrays.y]
    paths = arrays.paths or [f"#{i}" for i in range(len(labels))]
    if out.suffix == ".parquet":
        df = pd.DataFrame(feats, columns=[f"f{i}" for i in range(feats.shape[1])])
        df.insert(0, "label", labels)
        df.insert(0, "path", paths)
        with atomic_path(out) as tmp:
            df.to_parquet(tmp, index=False)
    else:
        if out.suffix != ".npy":
            raise DataError(f"{out}: embeddings are written as .npy or .parquet")
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, feats)
        side = out.with_suffix(".labels.csv")
        with atomic_path(side) as tmp:
            pd.DataFrame({"path": paths, "label": labels}).to_csv(tmp, index=False)
    return {"path": str(out), "shape": list(feats.shape), "images": len(labels)}
