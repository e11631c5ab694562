"""The study's figures, drawn by optuna.visualization.matplotlib and saved as PNG.

Each figure is optional: a study too small for one (parameter importances need two completed
trials with different values) is recorded with the reason instead of failing the study.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from cnnlab.tuning import storage as st

FIGURES = ("optimization_history", "param_importances", "parallel_coordinate")


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not st.is_surplus_marked(t)]


def draw(study: optuna.Study, out_dir: str | Path, objective: str = "value", *, until: float | None = None,
         clock: Callable[[], float] = time.time) -> dict[str, str]:
    """Draw every figure into ``out_dir``; returns {name: path or 'skipped: reason'}.

    ``until`` (on ``clock``'s scale; the study's time limit): a figure not started by then is skipped."""
    late = "skipped: the time limit is reached"
    if until is not None and clock() >= until:
        return {name: late for name in FIGURES}
    import matplotlib.pyplot as plt  # optuna's plots draw through pyplot; each is closed once saved

    from cnnlab import figures
    from optuna.visualization import matplotlib as ovm

    out = Path(out_dir)
    done = _complete(study)
    varied = [k for k in {k for t in done for k in t.params}
              if len({repr(t.params.get(k)) for t in done}) > 1]
    reasons = {
        "optimization_history": None if done else "no completed trial",
        "parallel_coordinate": None if done else "no completed trial",
        "param_importances": None if len(done) >= 2 and varied else (
            f"needs at least 2 completed trials ({len(done)} so far)" if len(done) < 2
            else "no parameter took different values"),
    }
    makers = {
        "optimization_history": lambda: ovm.plot_optimization_history(study, target_name=objective),
        "param_importances": lambda: ovm.plot_param_importances(study, target_name=objective),
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target_name=objective),
    }
    result: dict[str, str] = {}
    for name in FIGURES:
        if reasons[name]:
            result[name] = f"skipped: {reasons[name]}"
            continue
        if until is not None and clock() >= until:
            result[name] = late
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax: Any = makers[name]()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(max(8.0, fig.get_size_inches()[0]), max(5.0, fig.get_size_inches()[1]))
            result[name] = str(figures.save(fig, out / f"{name}.png"))
        except Exception as exc:  # noqa: BLE001 - a figure must never sink the study
            plt.close("all")
            result[name] = f"skipped: {type(exc).__name__}: {exc}"
    return result
