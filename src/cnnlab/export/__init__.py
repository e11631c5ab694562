"""Export trained runs (ONNX) and run the exported graph in ONNX Runtime.

    from cnnlab.export import export_onnx, create_backend
    export_onnx("runs/quick")                      # runs/quick/model.onnx (the graph alone)
    ImagePredictor.load("runs/quick").export_onnx()  # the same + the parity check against the torch path
    backend = create_backend("onnxruntime", "runs/quick")
    logits = backend.predict_logits(images_uint8)  # (N, H, W, 3) uint8 -> (N, classes), before the temperature
"""

from __future__ import annotations

from typing import Any


def export_onnx(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from cnnlab.export.onnx import export_onnx as _export

    return _export(*args, **kwargs)


def create_backend(*args: Any, **kwargs: Any) -> Any:
    from cnnlab.export.backends import create_backend as _create

    return _create(*args, **kwargs)
