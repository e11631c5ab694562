"""The ONNX Runtime backend: ``predict_logits(images_uint8) -> np.ndarray`` of an exported file.

``images_uint8`` is an ``(N, H, W, 3)`` uint8 RGB batch, decoded as cnnlab decodes every image
(cnnlab.data.decode) at the run's image size (:func:`run_image_size`); the result is float32
logits ``(N, classes)`` before the card's temperature. :class:`OnnxRuntimeBackend` runs one
intra-op thread per physical core and leaves no spinning threads behind after a call.

The torch path has no backend here: cnnlab.inference.InferenceModel is the one path from images
to probabilities (it uses this backend for ``backend="onnxruntime"``). :func:`load_torch_model`
loads the plain modules that the exporter traces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import DataError, ModelError
from cnnlab.models.classifier import ImageClassifier
from cnnlab.models.io import WEIGHTS_NAME, read_card

#: Metadata keys written into exported ONNX files.
META_CARD = "cnnlab_card"
META_IMAGE_SIZE = "cnnlab_image_size"
META_LAYOUT = "cnnlab_input"
INPUT_LAYOUT = "uint8 NHWC RGB 0..255"



def weights_file(weights: str) -> str:
    return {"final": WEIGHTS_NAME, "last": WEIGHTS_NAME, "best": "best.safetensors"}.get(weights, weights)


def run_image_size(run_dir: str | Path, card: dict[str, Any] | None = None) -> int | None:
    """The square size images are decoded to before they reach the model: the card's
    ``data_image_size`` (every run cnnlab trains records it), else the config's
    ``data.image_size``, else the model's input size (the rule of cnnlab.inference.model)."""
    card = card if card is not None else read_card(run_dir)
    size = card.get("data_image_size")
    if size:
        return int(size)
    if (Path(run_dir) / "config.yaml").is_file():
        from cnnlab.training.rundir import RunDir

        cfg = RunDir(run_dir).read_config()
        if cfg.data.image_size:
            return int(cfg.data.image_size)
    spec_size = card["spec"].get("input_size")
    return int(spec_size) if spec_size else None


def load_torch_model(run_dir: str | Path, weights: str = "final") -> ImageClassifier:
    """A run's plain modules for tracing (no CPU kernel swaps, no gradients), in eval mode on the CPU."""
    from cnnlab.models.classifier import ModelSpec
    from cnnlab.models.io import load_weights
    from cnnlab.models.registry import model_from_spec

    card = read_card(run_dir)
    model = model_from_spec(ModelSpec.from_dict(card["spec"]))
    load_weights(model, Path(run_dir) / weights_file(weights))
    model.requires_grad_(False)
    return model.eval()


def check_images(x: np.ndarray, size: int | None) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"images must be an (N, H, W, 3) uint8 array, got shape {getattr(x, 'shape', None)}")
    if x.dtype != np.uint8:
        raise DataError(f"images must be uint8 (0..255), got {x.dtype}")
    if size is not None and x.shape[1:3] != (size, size):
        raise DataError(f"images must be {size}x{size} (decode them at the run's image size), "
                        f"got {x.shape[2]}x{x.shape[1]}")
    return np.ascontiguousarray(x)


def session_options(threads: int | None = None) -> Any:
    import onnxruntime as ort

    from cnnlab.utils.cores import threads_per_process

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or threads_per_process(1)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Worker threads sleep between calls instead of spinning on the cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


class OnnxRuntimeBackend:
    """An ONNX file written by ``cnnlab export`` in ONNX Runtime (CPU)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, *, threads: int | None = None, batch_size: int = 256):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("the onnxruntime backend needs onnxruntime: pip install 'cnnlab[serve]'") from None
        path = Path(onnx_path)
        if not path.is_file():
            raise ModelError(f"{path}: no such ONNX file")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types
            raise ModelError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_CARD not in meta:
            raise ModelError(f"{path}: not an ONNX file written by cnnlab export (no {META_CARD} metadata)")
        self.path = path
        self.card = json.loads(meta[META_CARD])
        self.image_size = int(meta[META_IMAGE_SIZE]) if meta.get(META_IMAGE_SIZE) else None
        self.class_names = list(self.card["spec"]["class_names"])
        self.input_name = self.session.get_inputs()[0].name
        self.batch_size = batch_size

    def _run(self, x: np.ndarray) -> np.ndarray:
        outs = [self.session.run(None, {self.input_name: x[i : i + self.batch_size]})[0]
                for i in range(0, len(x), self.batch_size)]
        return np.concatenate(outs).astype(np.float32, copy=False)

    def predict_logits(self, images: np.ndarray, tta: str = "none") -> np.ndarray:
        x = check_images(images, self.image_size)
        if len(x) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        acc = None
        for view, weight in tta_views(x, tta):
            v = self._run(np.ascontiguousarray(view)) * weight
            acc = v if acc is None else acc + v
        return acc  # type: ignore[return-value]


def tta_views(x: np.ndarray, mode: str) -> list[tuple[np.ndarray, float]]:
    """The test-time augmentation views of cnnlab.evaluation.predict on NHWC numpy batches."""
    from cnnlab.errors import ConfigError
    from cnnlab.evaluation.predict import TTA_MODES

    flip = lambda a: a[:, :, ::-1]  # noqa: E731 - horizontal flip of (N, H, W, C)
    if mode == "none":
        return [(x, 1.0)]
    if mode == "flip":
        return [(x, 0.5), (flip(x), 0.5)]
    if mode == "flip_translate":
        views = [(x, 0.25), (flip(x), 0.25)]
        h, w = x.shape[1:3]
        for dy, dx in ((-1, -1), (1, 1)):
            p = 1
            padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
            t = padded[:, p + dy : p + dy + h, p + dx : p + dx + w]
            views += [(t, 0.125), (flip(t), 0.125)]
        return views
    raise ConfigError(f"tta must be one of {TTA_MODES}, got {mode!r}")
