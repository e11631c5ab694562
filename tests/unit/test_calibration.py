"""Temperature scaling (evaluation/calibration.py): fitted on held-out logits, it brings the expected
calibration error down on miscalibrated logits and leaves the argmax alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.evaluation.calibration import ece, fit_temperature, uncalibrated


def _logits(n: int, scale: float, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Logits whose softmax at temperature 1 / ``scale`` is calibrated: the label is drawn from it."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 5, generator=g) * 2.0
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1).numpy()
    return z * scale, y


@pytest.mark.parametrize("scale", [0.3, 3.0])  # under- and overconfident by a factor of 3
def test_temperature_recovers_calibration(scale):
    z, y = _logits(20_000, scale, seed=0)
    t, before, after = fit_temperature(z, y)
    assert t == pytest.approx(scale, rel=0.1)
    assert before > 0.08 and after < 0.02
    zt, yt = _logits(20_000, scale, seed=1)  # held out: the fitted T calibrates new logits too
    assert ece((zt / t).softmax(1), yt) < 0.02
    assert torch.equal((z / t).argmax(1), z.argmax(1))


def test_uncalibrated_inverts_the_temperature():
    z, _ = _logits(100, 1.0, seed=2)
    t = 0.54
    np.testing.assert_allclose(uncalibrated((z / t).softmax(1).numpy(), t), z.softmax(1).numpy(), atol=1e-5)


def test_degenerate_inputs_keep_temperature_one():
    assert fit_temperature(torch.zeros(1, 3), np.array([0]))[0] == 1.0
    separable = torch.tensor([[5.0, 0.0], [0.0, 5.0]] * 10)
    assert fit_temperature(separable, np.array([0, 1] * 10))[0] == 1.0  # all right: no sharpening to T -> 0
