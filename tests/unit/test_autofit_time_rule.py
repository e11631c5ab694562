"""Auto-fit's candidates stop by the trainer core's one rule (training.callbacks.TimeBudget), on
the fit's clock, keeping the seconds their scoring will take (a fake clock: no wall time)."""

from __future__ import annotations

import numpy as np

from cnnlab.autofit.runner import run_candidate
from cnnlab.data.dataset import ImageArrays
from cnnlab.training.orchestrate import resolve_config


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def arrays(n: int, seed: int) -> ImageArrays:
    """Dark and bright noise images, two classes a small net tells apart."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 100, (n, 16, 16, 3)).astype(np.uint8) + (y * 150).astype(np.uint8)[:, None, None, None]
    return ImageArrays(x, y, ["dark", "bright"])


def config(epochs: int):
    return resolve_config({"name": "rule", "seed": 0,
                           "model": {"arch": "cifar_fastnet", "kwargs": {"widths": [8, 8, 8], "depth": 1}},
                           "train": {"epochs": epochs, "batch_size": 8, "precision": "fp32",
                                     "optimizer": {"name": "adam", "lr": 3e-3}}})


def test_a_candidate_stops_by_the_core_rule_keeping_its_scoring_time(tmp_path, one_thread):
    """Each epoch takes 10 s on the fit's clock (advanced by the per-epoch hook); the share ends
    100 s after the start, 75 s of them kept for the scoring: training must end by start + 25 s,
    so 3 of the 6 epochs (a 4th would end at +30), while all 6 would fit without the reserve."""
    clock = FakeClock()
    start = clock.t

    def tick() -> None:
        clock.t += 10.0

    res = run_candidate("standard", config(6), arrays(48, 0), arrays(16, 1), None, tmp_path / "run",
                        end=start + 100.0, eval_seconds=75.0, clock=clock, log=lambda s: None, on_epoch=tick)
    assert res is not None and res.epochs == 3
    assert res.stop_reason.startswith("time budget: the next epoch (about 10.0 s)")
    assert "80.0 s left, 75.0 s of them kept for the evaluation" in res.stop_reason
    assert res.val_probs.shape == (16, 2)  # the run finished normally: saved and scored

    clock = FakeClock()
    res = run_candidate("standard", config(6), arrays(48, 0), arrays(16, 1), None, tmp_path / "far",
                        end=clock.t + 100.0, eval_seconds=0.0, clock=clock, log=lambda s: None,
                        on_epoch=lambda: setattr(clock, "t", clock.t + 10.0))
    assert res is not None and res.epochs == 6 and not res.stop_reason
