"""What a fit folder keeps so that a killed fit (even by SIGKILL) continues where it was.

    FIT_DIR/state.json                 the fit's arguments (data source, preset, time limit, seed,
                                       label), the seconds it has spent so far and the candidate
                                       running now; rewritten atomically after each step and, while
                                       the fit runs, every :data:`HEARTBEAT_S` seconds (a kill loses
                                       at most that much of the count)
    FIT_DIR/plan.json                  the plan (kept: a resumed fit does not plan again)
    FIT_DIR/models/<kind>/autofit.json a finished candidate's figures (written last) beside
    FIT_DIR/models/<kind>/autofit.npz  its validation / test probabilities (for the ensemble)

``cnnlab fit --resume FIT_DIR`` (``ImagePredictor(path=FIT_DIR).fit(data, resume=True)``) reads
them: finished candidates are kept, the one that was running continues from its last finished
epoch (its run directory is resumable: training.orchestrate.resume), one killed before its
first epoch ended starts again, and the time limit counts the seconds already spent.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import ConfigError
from cnnlab.utils.io import atomic_write_bytes, atomic_write_text

STATE_NAME = "state.json"
FORMAT = "cnnlab-fit-state/1"
RESULT_NAME = "autofit.json"
PROBS_NAME = "autofit.npz"
HEARTBEAT_S = 2.0  #: while a fit runs, state.json's elapsed seconds are rewritten this often
#: the fit's arguments a resume takes from state.json
ARGS = ("time_limit", "preset", "seed", "data_source", "tuning_source", "label", "image_column")


class FitState:
    """state.json of one fit folder; ``elapsed()``: the seconds the fit has spent (before a kill included)."""

    def __init__(self, folder: Path, args: dict[str, Any], clock: Callable[[], float], start: float,
                 running: dict[str, Any] | None = None) -> None:
        self.path = Path(folder) / STATE_NAME
        self.args = args
        self.clock = clock
        self.start = start  #: ``clock()`` value the fit's time counts from (a resumed fit's: now - seconds spent)
        self.running = running  #: {"kind", "elapsed_at_start"} of the candidate being trained
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def elapsed(self) -> float:
        return self.clock() - self.start

    def write(self, **changes: Any) -> None:
        """Rewrite state.json (atomically) with the seconds spent so far and ``changes``."""
        with self._lock:
            if "running" in changes:
                self.running = changes.pop("running")
            data = {"format": FORMAT, **self.args, "elapsed_seconds": round(self.elapsed(), 2),
                    "running": self.running, **changes}
            atomic_write_text(self.path, json.dumps(data, indent=2, default=str))

    def __enter__(self) -> "FitState":
        """Rewrite state.json every HEARTBEAT_S seconds until the block ends (a daemon thread)."""
        self.write()

        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                self.write()

        self._thread = threading.Thread(target=beat, name="cnnlab-fit-state", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def read_state(folder: Path) -> dict[str, Any]:
    """state.json of a fit folder to resume; a ConfigError naming the file when there is none."""
    path = Path(folder) / STATE_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: not found; --resume takes the folder of a fit started by this version "
                          f"of cnnlab fit")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a {FORMAT} file")
    return data


def save_result(res: Any) -> None:
    """A finished candidate's figures and probabilities, in its run directory (the JSON last)."""
    buf = io.BytesIO()
    probs = {"val": res.val_probs} | ({"test": res.test_probs} if res.test_probs is not None else {})
    np.savez(buf, **probs)
    atomic_write_bytes(res.run_dir / PROBS_NAME, buf.getvalue())
    meta = {k: getattr(res, k) for k in ("kind", "seconds", "epochs", "stop_reason", "val_accuracy",
                                          "test_accuracy", "parameters", "tta", "extra")}
    atomic_write_text(res.run_dir / RESULT_NAME, json.dumps(meta, indent=2, default=str))


def load_result(run_dir: Path) -> Any | None:
    """The saved result of a finished candidate (None when it did not finish)."""
    from cnnlab.autofit.runner import CandidateResult

    meta_path = Path(run_dir) / RESULT_NAME
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    with np.load(Path(run_dir) / PROBS_NAME) as z:
        val, test = z["val"], (z["test"] if "test" in z.files else None)
    return CandidateResult(meta["kind"], Path(run_dir), meta["seconds"], meta["epochs"], meta["stop_reason"], val,
                           test, meta["val_accuracy"], meta["test_accuracy"], meta["parameters"], meta["tta"],
                           meta.get("extra") or {})

