"""The trainer's last checks (training/sanity.py, issue 14): a non-finite validation loss or
weight, and a model whose eval-mode predictions collapse to one class, never make a finished run."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn as nn

from cnnlab import api
from cnnlab.data.dataset import DatasetBundle
from cnnlab.errors import TrainingError
from cnnlab.training.recipes import standard as loop
from cnnlab.training.sanity import check_finite_weights, check_not_collapsed

from test_grey_collapse import _cfg as grey_cfg
from test_grey_collapse import grey_stripes

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(epochs: int = 2) -> dict:
    return {"name": "t", "seed": 0, "data": {"validation_split": 0.25},
            "model": {"arch": "cifar_fastnet", "kwargs": {"widths": [8, 8, 8], "depth": 1}},
            "train": {"epochs": epochs, "batch_size": 8, "precision": "fp32",
                      "optimizer": {"name": "adam", "lr": 3e-3}}}


def test_a_nan_validation_loss_stops_training(tiny_tree, tmp_path, monkeypatch):
    real = loop.predict_logits
    monkeypatch.setattr(loop, "predict_logits",
                        lambda *a, **k: real(*a, **k) * float("nan"))  # the training loss stays finite
    with pytest.raises(TrainingError, match=r"validation loss became nan after epoch 1.*lower learning rate"):
        api.train(_tiny(), data=str(tiny_tree), run_dir=tmp_path / "r", progress=False, log=lambda s: None)
    assert not (tmp_path / "r" / "model.json").exists()


def test_a_non_finite_weight_is_not_saved_as_finished(tiny_tree, tmp_path):
    def poison(epoch, logs):  # a BatchNorm variance overflows while every loss stays finite
        if epoch == 1:
            bn = next(m for m in run_model[0].modules() if isinstance(m, nn.BatchNorm2d))
            bn.running_var[0] = float("inf")

    run_model: list[nn.Module] = []
    real_fit = loop.fit

    def fit(cfg, model, *a, **k):
        run_model.append(model)
        return real_fit(cfg, model, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cnnlab.training.orchestrate.fit", fit)
        with pytest.raises(TrainingError, match=r"weights are not finite: .*running_var holds NaN or inf"):
            api.train(_tiny(), data=str(tiny_tree), run_dir=tmp_path / "r", progress=False, log=lambda s: None,
                      epoch_callback=poison)
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_check_finite_weights_names_the_tensor():
    lin = nn.Linear(2, 2)
    check_finite_weights(lin)
    with torch.no_grad():
        lin.bias[1] = float("nan")
    with pytest.raises(TrainingError, match="bias holds NaN"):
        check_finite_weights(lin, lr=0.1)


class _Const(nn.Module):
    def __init__(self, k: int, classes: int = 3):
        super().__init__()
        self.k, self.classes, self.p = k, classes, nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(len(x), self.classes)
        out[:, self.k] = 1
        return out


def test_collapse_is_refused_only_when_training_accuracy_disagrees():
    x = np.zeros((200, 8, 8, 3), np.uint8)
    y = np.arange(200) % 4
    with pytest.raises(TrainingError, match=r"predicts class 'c2' for 200 of 200 .* training accuracy was 90.0%"):
        check_not_collapsed(_Const(2, 4), x, y, 0.9, class_names=["c0", "c1", "c2", "c3"])
    check_not_collapsed(_Const(2, 4), x, y, 0.3)  # an untrained model: nothing claims otherwise
    skewed = np.where(np.arange(200) < 190, 1, 0)  # 95% one class: predicting it is right
    check_not_collapsed(_Const(1, 4), x, skewed, 0.96)


def test_the_old_whitening_on_grey_images_is_caught_by_the_trainer(tmp_path, monkeypatch):
    """With the rank-deficient whitening of before (every direction kept), the fast recipe's run on
    grey images is refused instead of being saved as a one-class model."""
    from cnnlab.models.fastnet import init_whitening
    from cnnlab.training.recipes import fast

    def old_whitening(net, x, **kwargs):
        """The rank-deficient whitening of before, with its failure made CPU-independent: whether the
        null directions' biases drift far enough depends on eigenvalues ~1e-16 of the CPU's own
        rounding (they did on a Zen 3, not on a Zen 4), so the drift's effect is applied directly:
        in eval mode only (training-mode BatchNorm hid it) the whitened output is swamped by a
        constant, and every image looks alike to the saved model."""
        dropped = init_whitening(net, x, rel_tol=-float("inf"))
        net.backbone.whiten.register_forward_hook(
            lambda m, i, out: out if m.training else out * 1e-6 + 1e4)
        return dropped

    monkeypatch.setattr(fast, "init_whitening", old_whitening)
    bundle = DatasetBundle("grey", grey_stripes(60, 0), grey_stripes(20, 1))
    with pytest.raises(TrainingError, match="collapsed model"):
        api.train(grey_cfg(), data=bundle, run_dir=tmp_path / "run", progress=False, log=lambda s: None)
    assert not (tmp_path / "run" / "model.json").exists()
