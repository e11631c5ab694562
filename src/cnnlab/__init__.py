"""cnnlab: train, transfer-learn, tune, evaluate and explain image classifiers."""

__version__ = "0.1.0"
