"""cnnlab: train, transfer-learn, tune, evaluate and explain image classifiers.

    import cnnlab
    run = cnnlab.train("experiments/mobilenet/I.yaml", overrides={"train.epochs": 2})
    cnnlab.evaluate(run.run_dir)
    predictor = cnnlab.ImagePredictor.load(run.run_dir)

``import cnnlab`` stays cheap: the API (:mod:`cnnlab.api`) and :class:`cnnlab.ImagePredictor`
are imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("train", "resume", "evaluate", "predict", "predict_proba", "embed", "inspect_data", "model_info",
        "load_data", "resolve_config")

__all__ = ["__version__", "ImagePredictor", *_API]


def __getattr__(name: str) -> Any:
    if name == "ImagePredictor":
        from cnnlab.predictor import ImagePredictor

        return ImagePredictor
    if name in _API:
        from cnnlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
