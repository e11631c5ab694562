"""Pick a backend for a run: ``create_backend("torch" | "onnxruntime", run_dir)``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cnnlab.errors import ConfigError
from cnnlab.export.runtime import BACKENDS, OnnxRuntimeBackend, TorchBackend, onnx_metadata


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
                   ) -> TorchBackend | OnnxRuntimeBackend:
    """A loaded backend. For ``onnxruntime`` without ``onnx_path``, the run's ``model.onnx``
    (``best.onnx`` for the best weights) is used, and exported first when missing or older than
    the weights."""
    if name not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "torch":
        return TorchBackend(run_dir, weights, threads=threads)
    if onnx_path is None:
        from cnnlab.export.onnx import default_path, export_onnx
        from cnnlab.export.runtime import weights_file

        onnx_path = default_path(run_dir, weights)
        if _stale(onnx_path, Path(run_dir) / weights_file(weights)):
            if log is not None:
                log(f"exporting {onnx_path} for the onnxruntime backend")
            export_onnx(run_dir, onnx_path, weights=weights, parity_count=0)
    return OnnxRuntimeBackend(onnx_path, threads=threads)
