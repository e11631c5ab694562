"""Using the budget: time left after the planned models goes to another seed of the best one
(high_quality, best_quality), and the fit says how much of its limit it used.

A candidate that stops early (early stopping, its recipe's end, a faster machine than measured)
leaves time: the next candidate's share is computed when it starts (fit.py), so the time flows
on; what the last one leaves goes, past :data:`FILL_MIN_SHARE` of the limit, to another run of the
best elastic candidate from a new seed (``<kind>_seedN``), which the ensemble then weighs in.
"""

from __future__ import annotations

from typing import Any

from cnnlab.autofit.candidates import base_kind, seed_kind
from cnnlab.autofit.planner import FitPlan

FILL_MIN_SHARE = 0.08  #: high/best_quality: time left past this share of the limit is used (another seed)
FILL_MIN_S = 10.0  #: ... and never for less than this
MAX_FILLS = 3


def fill(plan: FitPlan, results: list[Any], preset: Any, left: float, limit: float, n: int, nv: int,
          test: Any) -> Any:
    """Another run (a new seed) of the best elastic candidate for the ``left`` seconds, when the
    preset uses leftover time and enough is left (None otherwise). The ensemble weighs it in."""
    from cnnlab.autofit.candidates import elastic
    from cnnlab.autofit.planner import CandidatePlan, epoch_range, epochs_in, time_model

    fills = sum(1 for c in plan.candidates if c.why.startswith("time left"))
    if not preset.fill or left < max(FILL_MIN_S, FILL_MIN_SHARE * limit) or fills >= MAX_FILLS:
        return None
    done = sorted((r for r in results if elastic(r.kind)), key=lambda r: -r.val_accuracy)
    planned = sorted((c for c in plan.candidates if c.feasible and elastic(c.kind) and c.kind in preset.kinds),
                     key=lambda c: -c.predicted_val_accuracy)
    base = base_kind(done[0].kind) if done else (planned[0].kind if planned else None)
    if base is None:
        return None
    ref = plan.candidate(base)
    views = {"none": 1, "flip": 2, "flip_translate": 6}[preset.tta] if base.startswith("finetune") else 1
    fixed, per_epoch = time_model(base, ref.images_per_second, n, nv, len(test) if test is not None else 0, views)
    e = epochs_in(base, left, fixed, per_epoch, n)
    if e < epoch_range(base, n)[0]:
        return None
    k = 2
    while seed_kind(base, k) in plan.order:
        k += 1
    acc = done[0].val_accuracy if done else ref.predicted_val_accuracy
    return CandidatePlan(seed_kind(base, k), ref.images_per_second, ref.measured, feasible=True, chosen=True,
                         share_seconds=round(left, 1), epochs=e, predicted_seconds=round(left, 1),
                         predicted_val_accuracy=acc,
                         why=f"time left after the planned models ({left:.0f}s): another seed of {base}, "
                             f"for the ensemble")


def budget_use(results: list[Any], elapsed: float, limit: float) -> dict[str, Any]:
    """How much of the limit the fit used and, below 85%, whether every model stopped early on its
    own (early stopping or its recipe's end, not the clock): the report says so."""
    own = [r.kind for r in results if r.stop_reason and not str(r.stop_reason).startswith("time")]
    used = elapsed / limit
    note = f"{used:.0%} of the time limit used"
    if used < 0.85:
        note += ("; every model stopped early on its own (" + ", ".join(own) + ")" if len(own) == len(results)
                 else "; less than 85%: " + ", ".join(f"{r.kind} stopped: {r.stop_reason or 'its plan ended'}"
                                                      for r in results))
    return {"used": round(used, 3), "stopped_on_their_own": own, "note": note}
