"""The one path from images to probabilities of a trained model (see :mod:`cnnlab.inference.model`)."""

from cnnlab.inference.model import Ensemble, InferenceModel, load_inference

__all__ = ["Ensemble", "InferenceModel", "load_inference"]
