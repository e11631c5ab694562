"""The ONNX Runtime backend of a run: ``create_backend("onnxruntime", run_dir)`` (exported when stale).

The torch path is cnnlab.inference.InferenceModel (``ImagePredictor.load(run, backend="torch")``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cnnlab.errors import ConfigError
from cnnlab.export.runtime import OnnxRuntimeBackend, onnx_metadata


def _stale(onnx_path: Path, weights_path: Path) -> bool:
    if not onnx_path.is_file():
        return True
    if weights_path.is_file() and weights_path.stat().st_mtime > onnx_path.stat().st_mtime:
        return True
    try:
        from cnnlab.export.runtime import META_CARD

        return META_CARD not in onnx_metadata(onnx_path)
    except Exception:  # unreadable: export again
        return True


def create_backend(name: str, run_dir: str | Path, weights: str = "final", *, onnx_path: str | Path | None = None,
                   threads: int | None = None, log: Callable[[str], None] | None = None
                   ) -> OnnxRuntimeBackend:
    """A loaded backend. For ``onnxruntime`` without ``onnx_path``, the run's ``model.onnx``
    (``best.onnx`` for the best weights) is used, and exported first when missing or older than
    the weights."""
    if name != "onnxruntime":
        raise ConfigError(f"backend must be one of onnxruntime, got {name!r} (the torch path: "
                          "ImagePredictor.load(run, backend='torch'))")
    if onnx_path is None:
        from cnnlab.export.onnx import default_path, export_onnx
        from cnnlab.export.runtime import weights_file

        onnx_path = default_path(run_dir, weights)
        if _stale(onnx_path, Path(run_dir) / weights_file(weights)):
            if log is not None:
                log(f"exporting {onnx_path} for the onnxruntime backend")
            export_onnx(run_dir, onnx_path, weights=weights, parity_count=0)
    return OnnxRuntimeBackend(onnx_path, threads=threads)
