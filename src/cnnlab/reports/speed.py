"""Inference speed of a trained model: throughput at a batch size and latency at batch 1."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cnnlab.evaluation.predict import predict_logits


def batch1_latency(model: nn.Module, x: np.ndarray, *, runs: int = 30, warmup: int = 3,
                   device: torch.device | None = None, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Milliseconds to classify one image (median and 90th percentile over ``runs`` images)."""
    n = len(x)
    if n == 0 or runs <= 0:
        return {"runs": 0, "median_ms": None, "p90_ms": None}
    for i in range(min(warmup, n)):
        predict_logits(model, x[i : i + 1], batch_size=1, device=device, dtype=dtype)
    times = []
    for k in range(runs):
        i = k % n
        t0 = time.perf_counter()
        predict_logits(model, x[i : i + 1], batch_size=1, device=device, dtype=dtype)
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return {"runs": runs, "median_ms": statistics.median(times), "p90_ms": p90}


def speed_summary(train_images_per_second: float | None, eval_images: int, eval_seconds: float,
                  eval_batch_size: int, latency: dict[str, Any], device: torch.device,
                  machine: str | None) -> dict[str, Any]:
    """The report's speed section as one mapping."""
    return {
        "train_images_per_second": train_images_per_second,
        "inference_images_per_second": eval_images / eval_seconds if eval_seconds > 0 else None,
        "inference_batch_size": eval_batch_size,
        "inference_images": eval_images,
        "latency_batch1_median_ms": latency.get("median_ms"),
        "latency_batch1_p90_ms": latency.get("p90_ms"),
        "latency_runs": latency.get("runs"),
        "device": str(device),
        "machine": machine,
    }
