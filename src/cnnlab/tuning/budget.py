"""A study's global time budget (``cnnlab tune --time-limit 20m``): trials, final fit and summary inside it.

Optuna's ``study.optimize(timeout=...)`` only stops *starting* trials; a trial in flight runs to
its last epoch. Here every phase gets an end time, and its training is stopped after the epoch
after which the next one would not fit (:class:`EpochGuard` raises
:class:`~cnnlab.training.callbacks.StopTraining` from the epoch callback; the run still finishes,
is saved and counts). The split of ``limit`` seconds, counted from the call's start (data
loading included):

- ``finish`` = 5% of the limit, at least 10 s and at most 60 s: the time kept for what comes after
  a training loop (the final fit's test evaluation and figures; the summary and its figures);
- trials: until ``limit - finish`` without a final fit; with one, until
  ``limit - 2 * finish - final_share * limit`` (``final_share`` = 20%). No trial starts when the
  trials' time left is less than the longest first epoch (set-up included) seen so far;
- the final fit's training: until ``limit - 2 * finish``; skipped when that has passed;
- the summary and its figures: the rest; a figure not started by ``limit`` is skipped.

An epoch cannot be cut in the middle: a single epoch longer than the time left overruns by up to
that epoch (the log says so). The limit counts from the call; ``cnnlab tune`` counts it from the
process's start (:func:`process_start_time`), so the Python start-up and imports are inside it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cnnlab.errors import ConfigError
from cnnlab.training.callbacks import StopTraining

Clock = Callable[[], float]
FINAL_SHARE = 0.2  # of the limit, for the final fit's training (when there is one)
FINISH_SHARE, FINISH_MIN_SECONDS, FINISH_MAX_SECONDS = 0.05, 10.0, 60.0


def parse_time_limit(value: str | float | int | None) -> float | None:
    """Seconds of ``--time-limit`` (the one duration parser: ``"90s"``, ``"20m"``, ``"1h30m"``, a number); None stays None."""
    from cnnlab.utils.durations import parse_optional_duration

    return parse_optional_duration(value, "--time-limit")


def process_start_time(max_age: float = 120.0) -> float | None:
    """The time.time() at which this process started (Linux's /proc), or None elsewhere.

    None too when that was more than ``max_age`` seconds ago: a long-lived process (a notebook,
    a test session) calling the CLI's main() counts from the call, not from its own start."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        started = time.time() - uptime + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return started if time.time() - started <= max_age else None


@dataclass(frozen=True)
class StudyBudget:
    """The end times (on ``clock``'s scale) of a study's phases."""

    start: float
    limit: float
    trials_end: float
    final_end: float  # the final fit's training

    @property
    def end(self) -> float:
        return self.start + self.limit

    @classmethod
    def plan(cls, start: float, limit: float, final_fit: bool) -> "StudyBudget":
        finish = min(FINISH_MAX_SECONDS, max(FINISH_MIN_SECONDS, FINISH_SHARE * limit))
        if not final_fit:
            return cls(start, limit, start + limit - finish, start + limit - finish)
        final_end = start + limit - 2 * finish
        return cls(start, limit, final_end - FINAL_SHARE * limit, final_end)

    def describe(self) -> dict[str, Any]:
        return {"time_limit_seconds": self.limit, "trials_until_seconds": round(self.trials_end - self.start, 1),
                "final_fit_training_until_seconds": round(self.final_end - self.start, 1)}


class EpochGuard:
    """An epoch callback applying the trainer core's one stop rule (:class:`cnnlab.training.callbacks.
    TimeBudget`: stop once the next epoch, as long as the last one, would end after ``end``)
    by raising StopTraining, for trials and the final fit whose deadline is on the study's clock
    (the rule reads that same clock: time.time, which the study's worker processes and /proc's
    process start share).

    The first epoch's duration counts from the guard's creation (set-up included), so its
    estimate errs on the long side.
    """

    def __init__(self, end: float, clock: Clock = time.time, what: str = "training"):
        from cnnlab.training.callbacks import TimeBudget

        self.end, self.clock, self.what = end, clock, what
        self.rule = TimeBudget(end, clock)
        self.started = self.last = clock()
        self.rule.start(self.started)
        self.first_epoch: float | None = None
        self.last_epoch: float | None = None
        self.stopped = False

    def __call__(self, epoch: int, logs: dict[str, float]) -> None:
        now = self.clock()
        self.last_epoch = now - self.last
        if self.first_epoch is None:
            self.first_epoch = self.last_epoch
        self.last = now
        if self.rule.should_stop():
            self.stopped = True
            raise StopTraining(f"time limit: {self.what} stopped after epoch {epoch + 1} "
                               f"({max(self.end - now, 0.0):.0f} s left, an epoch takes {self.last_epoch:.0f} s)")


__all__ = ["EpochGuard", "StudyBudget", "parse_time_limit", "process_start_time", "FINAL_SHARE"]
