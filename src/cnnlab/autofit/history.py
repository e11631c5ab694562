"""The planner's priors kept up to date from this project's own results: the history file.

**What is kept.** Each auto-fit candidate that finishes appends one record to :func:`history_path`,
``$CNNLAB_HOME/priors/history.jsonl`` (default ``~/.cache/cnnlab/priors/history.jsonl``), one
JSON object a line::

    {"kind": "fastnet", "run": "fastnet_seed2", "width": 48, "per_class": 4500, "epochs": 9,
     "num_classes": 10, "image_side": 32, "predicted_val_accuracy": 0.881, "prior_correction": 0.0,
     "actual_val_accuracy": 0.8838, "balanced": false, "date": "2026-12-03T21:00:00+00:00",
     "cnnlab_version": "0.1.0"}

(``width``: the fast net's stem width, else null; ``per_class``: the smallest class's training
images; ``image_side``: the side the prior saw; ``balanced``: the fit selected by balanced
accuracy, i.e. the data was imbalanced). Only the last :data:`MAX_RECORDS` records are kept. A
candidate kept from before a kill (``--resume``) is not recorded twice; the few-shot path (no
planner) records nothing.

**Writes** take a file lock (``history.jsonl.lock``, the ``filelock`` package), read the file, add
the new records, keep the last :data:`MAX_RECORDS`, and write the whole through a temporary file
renamed over the old one (utils/io.py): two fits at once take turns, and neither a reader nor a
writer killed halfway ever sees half a file. A line that is no valid record (hand-edited, cut
short, another version's) is skipped with one warning line, and dropped by the next write. A
history that cannot be written (a read-only home, the lock held longer than
:data:`LOCK_TIMEOUT_S`) costs one warning line, never the fit.

**The correction** (empirical-Bayes shrinkage towards the bundled prior). For the data being
planned, the records of *similar data* are those of the same per-class decade (1-9, 10-99,
100-999, 1,000+ images in the smallest class), of photos or not (a side of at least 96 px, where
priors.PHOTO_BONUS applies) and of the same ``balanced`` flag. Each record of kind ``k`` gives a
residual in the priors' skill-over-chance space::

    r = skill(actual) - skill(prior),      skill(a) = (a - 1/C) / (1 - 1/C)

where ``prior`` is :func:`priors.predicted_accuracy` of *today's* anchors for the record's own
inputs (the epochs it trained, its width, its data), never the prediction the plan made: so a
correction does not feed on itself, and refreshed anchors do not count an old error twice. The
skill of kind ``k`` is then shifted by::

    shift = clip(n / (n + K) * mean(r), -MAX_SHIFT, +MAX_SHIFT),      K = SHRINKAGE_K = 5

the posterior mean of a normal mean whose prior is centred on the bundled priors' zero error with
a variance of 1/K of one record's: one record moves a prediction by a sixth of its error, five by
half, twenty by 80%; :data:`MAX_SHIFT` bounds what any history can do. plan.json records, per
candidate, the shift applied (``prior_correction``, in skill) and the records it came from
(``prior_records``), and under ``priors`` the file read and the shrinkage.

**Switches.** ``CNNLAB_PRIORS_HISTORY=0`` (or ``off``, ``false``, ``no``): nothing is read or
written, the bundled priors alone plan; a file path: that file instead of the default (the test
suite gives each integration test its own). ``cnnlab cache clean`` never deletes the history
(it is no cache); ``cnnlab cache list`` names it and its record count.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cnnlab.autofit.priors import PRIORS, predicted_accuracy, skill
from cnnlab.utils.paths import cnnlab_home

HISTORY_ENV = "CNNLAB_PRIORS_HISTORY"
MAX_RECORDS = 1000  #: the history keeps the last this many records
SHRINKAGE_K = 5.0  #: n records correct a kind by n / (n + K) of their mean residual
MAX_SHIFT = 0.2  #: the largest correction of a kind's skill over chance, either way
LOCK_TIMEOUT_S = 10.0
PHOTO_SIDE = 96  #: priors.PHOTO_BONUS's threshold: photos or not is part of "similar data"
_OFF = {"0", "off", "false", "no"}
_NUMBERS = ("per_class", "epochs", "num_classes", "image_side", "actual_val_accuracy")

Log = Callable[[str], None]


def _warn(line: str) -> None:
    print(f"cnnlab: {line}", file=sys.stderr)


def history_path() -> Path | None:
    """The history file, or None when ``CNNLAB_PRIORS_HISTORY`` turns it off."""
    env = os.environ.get(HISTORY_ENV, "").strip()
    if env.lower() in _OFF:
        return None
    if env and env.lower() not in ("1", "on", "true", "yes"):
        return Path(env).expanduser()
    return cnnlab_home() / "priors" / "history.jsonl"


def _valid(rec: Any) -> bool:
    if not isinstance(rec, dict) or not isinstance(rec.get("kind"), str):
        return False
    for k in _NUMBERS:
        v = rec.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
    w = rec.get("width")
    return (w is None or (isinstance(w, int) and w > 0)) and isinstance(rec.get("balanced"), bool) \
        and 0.0 <= rec["actual_val_accuracy"] <= 1.0 and rec["num_classes"] >= 2


def _read(path: Path, log: Log) -> list[dict[str, Any]]:
    """The valid records of ``path`` in file order; one warning line for all the lines skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records, bad = [], []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if _valid(rec):
            records.append(rec)
        else:
            bad.append(i)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        log(f"priors history {path}: {len(bad)} unreadable line(s) skipped (line {shown})")
    return records


def load(path: Path | None = None, log: Log = _warn) -> list[dict[str, Any]]:
    """The history's valid records, oldest first ([] when off, missing or unreadable)."""
    path = path or history_path()
    if path is None:
        return []
    try:
        return _read(path, log)
    except OSError as exc:
        log(f"priors history {path}: not read ({exc.strerror or exc}); the bundled priors alone plan")
        return []


def append(records: Iterable[dict[str, Any]], path: Path | None = None, log: Log = _warn) -> bool:
    """Add ``records`` under the lock, keeping the last MAX_RECORDS (see the module docstring).
    False (and one warning line) when the history is off or could not be written."""
    from filelock import FileLock, Timeout

    from cnnlab.utils.io import atomic_write_text

    path = path or history_path()
    new = list(records)
    if path is None or not new:
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
            kept = (_read(path, log) + new)[-MAX_RECORDS:]
            atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    except Timeout:
        log(f"priors history {path}: locked by another process for {LOCK_TIMEOUT_S:g}s; this fit is not recorded")
        return False
    except OSError as exc:
        log(f"priors history {path}: not written ({exc.strerror or exc}); this fit is not recorded")
        return False
    return True


def data_side(profile: dict[str, Any]) -> int:
    """The image side the planner's prior sees (planner.choose): the files' median side or the decoded one."""
    return int(max((profile.get("file_sizes") or {}).get("median") or 0, profile.get("image_size") or 0))


def _bucket(per_class: float, side: float, balanced: bool) -> tuple[int, bool, bool]:
    return min(3, int(math.log10(max(per_class, 1)))), side >= PHOTO_SIDE, balanced


def fastnet_width(run_dir: Path) -> int | None:
    """The stem width the fast net trained (its recipe's plan in metrics.json), or None."""
    try:
        widths = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))["plan"]["widths"]
        return int(widths[0])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def make_record(plan: Any, cand: Any, *, width: int | None, balanced: bool) -> dict[str, Any]:
    """The history record of finished candidate ``cand`` (planner.CandidatePlan) of ``plan`` (FitPlan)."""
    from cnnlab import __version__
    from cnnlab.autofit.candidates import base_kind

    p = plan.profile
    return {"kind": base_kind(cand.kind), "run": cand.kind, "width": width, "per_class": int(p["per_class_min"]),
            "epochs": float(cand.actual_epochs if cand.actual_epochs is not None else cand.epochs),
            "num_classes": int(p["num_classes"]), "image_side": data_side(p),
            "predicted_val_accuracy": round(float(cand.predicted_val_accuracy), 4),
            "prior_correction": round(float(getattr(cand, "prior_correction", 0.0)), 4),
            "actual_val_accuracy": round(float(cand.actual_val_accuracy), 4), "balanced": bool(balanced),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cnnlab_version": __version__}


def record(plan: Any, cand: Any, run_dir: Path, *, balanced: bool, log: Log = _warn) -> bool:
    """Append finished candidate ``cand``'s record (fit.py calls this once per candidate)."""
    if cand.actual_val_accuracy is None or history_path() is None:
        return False
    width = fastnet_width(run_dir) if cand.kind.startswith("fastnet") else None
    return append([make_record(plan, cand, width=width, balanced=balanced)], log=log)


def residual(rec: dict[str, Any]) -> float:
    """A record's error against today's bundled prior for its own inputs, in skill over chance."""
    prior = predicted_accuracy(rec["kind"], per_class=int(rec["per_class"]), epochs=float(rec["epochs"]),
                               num_classes=int(rec["num_classes"]), image_side=int(rec["image_side"]),
                               width=rec.get("width"))
    c = int(rec["num_classes"])
    return skill(float(rec["actual_val_accuracy"]), c) - skill(prior, c)


@dataclass
class PriorCorrections:
    """Per candidate kind: the skill shift the history gives, from how many records (see the docstring)."""

    source: str | None = None  #: the history file read (None: off)
    records_read: int = 0
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)  #: kind -> shift, records, mean_residual

    def shift(self, kind: str) -> float:
        from cnnlab.autofit.candidates import base_kind

        return float(self.by_kind.get(base_kind(kind), {}).get("shift", 0.0))

    def records(self, kind: str) -> int:
        from cnnlab.autofit.candidates import base_kind

        return int(self.by_kind.get(base_kind(kind), {}).get("records", 0))

    def to_dict(self) -> dict[str, Any]:
        return {"history": self.source, "records_read": self.records_read, "shrinkage_k": SHRINKAGE_K,
                "max_shift": MAX_SHIFT, "by_kind": self.by_kind}

    def describe(self) -> str:
        if self.source is None:
            return f"priors: the bundled ones alone (history off: {HISTORY_ENV}=0)"
        used = ", ".join(f"{k} {v['shift']:+.3f} ({int(v['records'])} record{'s' if v['records'] != 1 else ''})"
                         for k, v in self.by_kind.items())
        return (f"priors: corrected from this project's history ({self.source}): {used}" if used else
                f"priors: the bundled ones ({self.records_read} history records, none of similar data)")


def corrections(records: list[dict[str, Any]], *, per_class: int, image_side: int, balanced: bool,
                source: str | None = None) -> PriorCorrections:
    """The corrections ``records`` give for data of ``per_class`` / ``image_side`` / ``balanced``."""
    key = _bucket(per_class, image_side, balanced)
    out = PriorCorrections(source=source, records_read=len(records))
    for kind in PRIORS:
        rs = [residual(r) for r in records if r["kind"] == kind
              and _bucket(r["per_class"], r["image_side"], r["balanced"]) == key]
        if not rs:
            continue
        mean = sum(rs) / len(rs)
        shift = max(-MAX_SHIFT, min(MAX_SHIFT, len(rs) / (len(rs) + SHRINKAGE_K) * mean))
        out.by_kind[kind] = {"shift": round(shift, 4), "records": len(rs), "mean_residual": round(mean, 4)}
    return out


def corrections_for(profile: Any, *, balanced: bool, log: Log = _warn) -> PriorCorrections:
    """The corrections the history file gives the data of ``profile`` (autofit.profile.DataProfile)."""
    path = history_path()
    if path is None:
        return PriorCorrections()
    p = profile.to_dict()
    return corrections([r for r in load(path, log) if r["kind"] in PRIORS], per_class=int(p["per_class_min"]),
                       image_side=data_side(p), balanced=balanced, source=str(path))
