"""Class imbalance maths (training/balance.py): weights, the balanced sampler, logit adjustment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import load_config
from cnnlab.errors import ConfigError
from cnnlab.training import balance as B

NAMES = ["a", "b", "c"]
Y = np.array([0] * 60 + [1] * 30 + [2] * 10)  # counts 60 / 30 / 10: ratio 6


def test_counts_ratio_and_auto():
    assert B.class_counts(Y, 3).tolist() == [60, 30, 10]
    assert B.imbalance_ratio([60, 30, 10]) == 6.0
    assert B.imbalance_ratio([5, 0]) == math.inf
    assert B.auto_mode([60, 30, 10]) == "logit_adjust"
    assert B.auto_mode([30, 20, 11]) == "none"  # 2.7x: under AUTO_RATIO
    assert B.auto_mode([30, 10]) == "logit_adjust"  # exactly 3x


def test_inverse_weights_are_sklearn_balanced_and_mean_one_per_image():
    w = B.class_weights(np.array([60, 30, 10]), "inverse")
    n, k = 100, 3
    assert np.allclose(w, [n / (k * 60), n / (k * 30), n / (k * 10)])
    assert math.isclose(float((w * [60, 30, 10]).sum()), 100.0)


def test_effective_number_weights_cui_2019():
    counts = np.array([5000, 50])
    w = B.class_weights(counts, "effective")
    raw = (1 - 0.999) / (1 - 0.999 ** counts)
    assert np.allclose(w / w[0], raw / raw[0])
    assert 19 < w[1] / w[0] < 21  # 1 - 0.999^5000 = 0.9933 vs 1 - 0.999^50 = 0.0488: a ratio of 20.4 (inverse: 100)
    assert math.isclose(float((w * counts).sum()), 5050.0)


def test_weighted_loss_equals_hand_computed():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 3), torch.tensor([0, 0, 1, 2, 2, 1, 0, 2])
    b = B.resolve("weights", Y, NAMES)
    per = F.cross_entropy(logits, y, reduction="none")
    expect = (per * b.weights[y]).mean()
    assert torch.allclose(b.loss(logits, y), expect)
    # none: exactly the plain loss
    assert torch.allclose(B.resolve("none", Y, NAMES).loss(logits, y), F.cross_entropy(logits, y))


def test_logit_adjustment_adds_tau_log_prior_in_training_only():
    b = B.resolve("logit_adjust", Y, NAMES)
    prior = torch.tensor([0.6, 0.3, 0.1])
    logits, y = torch.zeros(2, 3), torch.tensor([2, 0])
    assert torch.allclose(b.adjust(logits), torch.log(prior).expand(2, 3))
    assert torch.allclose(b.loss(logits, y), F.cross_entropy(torch.log(prior).expand(2, 3), y))
    # the loss is minimised when the plain logits are balanced: zero logits (uniform) beat the prior's
    assert b.loss(torch.zeros(1, 3), torch.tensor([2])) < b.loss(torch.log(prior)[None], torch.tensor([2]))


def test_logit_adjustment_smooths_labels_towards_the_prior():
    """Uninformative inputs with labels in the prior's proportions: zero (balanced) plain logits are
    the optimum with prior-smoothed targets; uniform smoothing would push the rare class up."""
    b = B.resolve("logit_adjust", Y, NAMES)
    y = torch.from_numpy(Y)
    f = torch.zeros(len(Y), 3, requires_grad=True)
    b.loss(f, y, label_smoothing=0.2).backward()
    assert f.grad.sum(0).abs().max() < 1e-6  # a stationary point at balanced logits
    g = torch.zeros(len(Y), 3, requires_grad=True)
    F.cross_entropy(b.adjust(g), y, label_smoothing=0.2).backward()  # uniform smoothing
    assert g.grad.sum(0)[2] < -1e-3  # descending would raise the rare class's plain logit everywhere
    # no smoothing: the plain logit-adjusted cross-entropy
    logits = torch.randn(5, 3)
    assert torch.allclose(b.loss(logits, y[:5]), F.cross_entropy(b.adjust(logits), y[:5]))


def test_auto_resolves_by_ratio():
    assert B.resolve("auto", Y, NAMES).mode == "logit_adjust"
    assert B.resolve("auto", np.array([0, 1, 2] * 5), NAMES).mode == "none"


def test_resample_draws_every_class_about_equally():
    y = np.array([1] * 90 + [0] * 9 + [2] * 1)
    rng = np.random.default_rng(0)
    y = y[rng.permutation(len(y))]  # labels in any order
    b = B.resolve("resample", y, NAMES)
    idx = torch.cat([b.order(len(y), torch.Generator().manual_seed(s)) for s in range(50)])
    assert idx.min() >= 0 and idx.max() < len(y)
    share = np.bincount(y[idx.numpy()], minlength=3) / len(idx)
    assert np.allclose(share, 1 / 3, atol=0.03), share
    # same generator seed, same draws (a resumed run is the same run)
    assert torch.equal(b.order(len(y), torch.Generator().manual_seed(3)),
                       b.order(len(y), torch.Generator().manual_seed(3)))
    # no resampling: a permutation
    p = B.resolve("none", y, NAMES).order(len(y), torch.Generator().manual_seed(0))
    assert sorted(p.tolist()) == list(range(len(y)))


def test_explicit_keras_class_weight_by_name_or_index():
    b = B.resolve("weights", Y, NAMES, class_weight={"c": 5.0, 0: 0.5})
    assert b.weights.tolist() == [0.5, 1.0, 5.0]
    assert np.allclose(B.explicit_weights("balanced", NAMES, np.array([60, 30, 10])),
                       B.class_weights(np.array([60, 30, 10]), "inverse"))
    with pytest.raises(ConfigError, match="no class 'dog'"):
        B.resolve("weights", Y, NAMES, class_weight={"dog": 2.0})
    with pytest.raises(ConfigError, match="class_weight"):
        B.resolve("resample", Y, NAMES, class_weight={"a": 2.0})


def test_config_keys_validated_with_clear_messages():
    cfg = load_config(overrides={"train.class_balance": "auto", "train.class_weight_kind": "effective"})
    assert cfg.train.class_balance == "auto" and cfg.train.class_weight_kind == "effective"
    with pytest.raises(ConfigError, match=r"train.class_balance: 'focal' is not one of 'none', 'weights'"):
        load_config(overrides={"train.class_balance": "focal"})
    with pytest.raises(ConfigError, match="train.class_weight_kind"):
        load_config(overrides={"train.class_weight_kind": "sqrt"})
    with pytest.raises(ConfigError, match="class_balance must be 'weights'"):
        load_config(overrides={"train.class_balance": "resample", "train.class_weight": {"a": 2}})
    with pytest.raises(ConfigError, match=r"train.class_weight\['a'\] must be a weight >= 0"):
        load_config(overrides={"train.class_weight": {"a": -1}})
