"""Grey images (R = G = B) and the fast recipe: the saved model must not collapse to one class.

The 2x2x3 patch covariance of grey images has rank 4 of 12: the other 8 whitening directions have
eigenvalues ~1e-16 of the largest and respond to nothing. Their biases used to train freely
(drifting to thousands), which training-mode BatchNorm hid and eval mode did not: the saved
model predicted one class for every image (issue 14). models/fastnet.py's init_whitening now
zeroes those directions and keeps their biases at zero.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab import api
from cnnlab.data.dataset import DatasetBundle, ImageArrays
from cnnlab.evaluation.predict import predict_logits
from cnnlab.models.fastnet import FastNet, init_whitening

pytestmark = pytest.mark.usefixtures("one_thread")


def grey_stripes(per_class: int, seed: int, size: int = 28, classes: int = 10) -> ImageArrays:
    """Class c: stripes at angle c * 18 degrees, random phase, noise; three identical channels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    xs, ys = [], []
    for c in range(classes):
        angle = np.pi * c / classes
        for _ in range(per_class):
            wave = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 0.6 + rng.uniform(0, 2 * np.pi))
            g = np.clip(128 + 80 * wave + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
            xs.append(np.stack([g, g, g], -1))
            ys.append(c)
    return ImageArrays(np.stack(xs), np.array(ys), [f"c{i}" for i in range(classes)])


def _cfg() -> dict:
    return {
        "name": "grey", "seed": 0, "data": {"validation_split": 0.0},
        "model": {"arch": "cifar_fastnet", "preprocessing": "keras_tf", "head": {"pooling": "max"},
                  "kwargs": {"widths": [16, 32, 32]}},
        "train": {"recipe": "fast", "epochs": 2, "batch_size": 32, "precision": "fp32",
                  "optimizer": {"name": "sgd", "lr": 1.0, "momentum": 0.85, "nesterov": True,
                                "weight_decay": 5e-5},
                  "schedule": {"name": "linear", "warmup_epochs": 0.5}, "label_smoothing": 0.2,
                  "augment": {"crop_padding": 2, "flip": True},
                  "recipe_options": {"optimizer": "muon", "muon_lr": 0.2, "workers": 1}},
    }


def test_whitening_of_grey_images_drops_the_null_directions():
    x = torch.from_numpy(grey_stripes(20, 0).x)
    net = FastNet(widths=[8], depth=1)
    dropped = init_whitening(net, x)
    assert dropped == 8  # 12 directions, 4 with signal
    w = net.whiten.weight.detach().reshape(24, -1)
    norms = w.norm(dim=1)
    assert (norms[4:12] == 0).all() and (norms[16:] == 0).all() and (norms[:4] > 0).all()
    assert torch.all(net.whiten.bias.detach()[norms == 0] == 0)
    # the dead channels' bias cannot train away from zero
    net.whiten.bias.requires_grad_(True)
    out = net(x[:8].permute(0, 3, 1, 2).float() / 255).sum()
    (g,) = torch.autograd.grad(out, [net.whiten.bias])
    assert torch.all(g[norms == 0] == 0) and g[norms > 0].abs().sum() > 0


def test_colour_images_keep_every_direction():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (50, 16, 16, 3), dtype=np.uint8))
    assert init_whitening(FastNet(widths=[8], depth=1), x) == 0


def test_fast_recipe_on_grey_images_predicts_more_than_one_class(tmp_path):
    bundle = DatasetBundle("grey", grey_stripes(60, 0), grey_stripes(20, 1))
    run = api.train(_cfg(), data=bundle, run_dir=tmp_path / "run", progress=False, log=lambda s: None)
    logits = predict_logits(run.fit.model, bundle.train.x[:300])
    pred = logits.argmax(1).numpy()
    # Before the fix: every image went to one class (10% test accuracy, 0% on these 300).
    assert len(np.unique(pred)) >= 4, np.bincount(pred)
    assert (pred == bundle.train.y[:300]).mean() > 0.5
    assert run.metrics["test"]["accuracy"] > 0.3
