"""The model the server runs: an :class:`~cnnlab.predictor.ImagePredictor` (its one inference path:
decode size, precision, micro-batches, TTA and temperature as ``cnnlab predict``), seen as the
micro-batcher's ``predict_logits(uint8 images) -> calibrated logits``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.export.runtime import check_images
from cnnlab.predictor import ImagePredictor


class ServedModel:
    def __init__(self, run_dir: str | Path, backend: str = "torch", *, weights: str = "final",
                 onnx_path: str | Path | None = None, threads: int | None = None):
        self.predictor = ImagePredictor.load(run_dir, weights=weights, backend=backend, threads=threads,
                                             onnx_path=onnx_path)
        self.name = backend
        self.card: dict[str, Any] = self.predictor.card
        self.class_names: list[str] = self.predictor.class_names
        self.image_size: int | None = self.predictor.decode_size

    def predict_logits(self, images: np.ndarray) -> np.ndarray:
        x = check_images(images, self.image_size)
        if len(x) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        return self.predictor.logits(x).numpy()
