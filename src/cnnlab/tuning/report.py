"""The study's summary: what was tried, what it cost, what won (summary.json + summary.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.tuning import storage as st
from cnnlab.tuning.final import best_trial
from cnnlab.tuning.space import SearchSettings
from cnnlab.utils.io import atomic_write_json, atomic_write_text


def _reason(t: FrozenTrial, retried: dict[int, FrozenTrial]) -> str | None:
    if t.state != TrialState.FAIL:
        return None
    if "fail_reason" in t.user_attrs:
        return str(t.user_attrs["fail_reason"])
    if t.number in retried:
        return "interrupted: " + str(retried[t.number].user_attrs.get("retry_reason", "worker lost"))
    return "unknown (no reason recorded)"


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    trials = study.get_trials(deepcopy=False)
    retried = {int(t.user_attrs["retry_of"]): t for t in trials if "retry_of" in t.user_attrs}
    rows = []
    for t in trials:
        if st.is_surplus_marked(t):
            continue
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append({
            "number": t.number,
            "slot": st.slot_of(t),
            "state": t.state.name.lower(),
            "value": t.value,
            "epochs": len(t.intermediate_values),
            "params": dict(t.params),
            "retried": t.number in retried,
            "attempt": int(t.user_attrs.get("attempt", 1)),
            "fail_reason": _reason(t, retried),
            "seconds": round(duration, 1) if duration is not None else None,
            "host": t.user_attrs.get("host"),
        })
    return rows


def count_states(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Counts per slot, by its latest attempt; ``interrupted`` counts attempts that were retried."""
    latest: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["slot"] not in latest or r["number"] > latest[r["slot"]]["number"]:
            latest[r["slot"]] = r
    counts = {s: 0 for s in ("complete", "pruned", "fail", "running", "waiting")}
    for r in latest.values():
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {"slots": len(latest), "completed": counts["complete"], "pruned": counts["pruned"],
            "failed": counts["fail"], "running": counts["running"], "waiting": counts["waiting"],
            "interrupted_and_retried": sum(r["retried"] for r in rows)}


def build_summary(study: optuna.Study, settings: SearchSettings, storage_url: str, epochs_per_trial: int,
                  final: dict[str, Any] | None, figures: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
    rows = trial_rows(study)
    best = best_trial(study)
    surplus = sum(st.is_surplus_marked(t) for t in study.get_trials(deepcopy=False))
    epochs = sum(r["epochs"] for r in rows)
    return {
        "study_name": study.study_name,
        "storage": st.mask_url(storage_url),
        "objective": settings.objective,
        "direction": settings.direction,
        "sampler": settings.sampler,
        "initial_random": settings.initial_random,
        "pruner": settings.pruner,
        "trials_requested": settings.trials,
        "counts": count_states(rows) | {"surplus_discarded": surplus},
        "epochs_spent": epochs,
        "epochs_without_pruning": settings.trials * epochs_per_trial,
        "best": None if best is None else {
            "trial": best.number, "value": best.value, "params": dict(best.params),
            "epochs": len(best.intermediate_values), "best_epoch": best.user_attrs.get("best_epoch")},
        "space": {p.key: p.describe() for p in settings.params},
        "final_fit": final,
        "figures": figures,
        **extra,
        "trials": rows,
    }


def _v(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def to_markdown(s: dict[str, Any]) -> str:
    c = s["counts"]
    lines = [f"# Study {s['study_name']}", ""]
    lines += [f"- objective: {s['objective']} ({s['direction']}), sampler {s['sampler']} "
              f"({s['initial_random']} random first), pruner {s['pruner']}",
              f"- storage: `{s['storage']}`",
              f"- trials: {c['slots']} of {s['trials_requested']} - {c['completed']} completed, {c['pruned']} "
              f"pruned, {c['failed']} failed, {c['running']} running, {c['waiting']} waiting; "
              f"{c['interrupted_and_retried']} interrupted and retried",
              f"- epochs spent: {s['epochs_spent']} (all trials to the end: {s['epochs_without_pruning']})"]
    if s.get("wall_seconds") is not None:
        lines.append(f"- wall time of this run: {s['wall_seconds']:.0f} s")
    if s.get("machine"):
        lines.append(f"- machine: {s['machine']}")
    b = s["best"]
    lines += ["", "## Best trial", ""]
    if b is None:
        lines.append("No trial completed.")
    else:
        lines.append(f"Trial {b['trial']}: {s['objective']} **{b['value']:.4f}** "
                     f"(best epoch {b['best_epoch']} of {b['epochs']})")
        lines += ["", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {_v(v)} |" for k, v in b["params"].items()]
    f = s.get("final_fit") or {}
    lines += ["", "## Final fit", ""]
    if f.get("status", "").startswith("done"):
        test = f.get("test")
        acc = f"test accuracy **{test['accuracy']:.4f}** on {test['count']:,} images" if test else "no test split"
        lines.append(f"{f['mode']} (trial {f['trial']}'s setting): {acc}; run directory `{f.get('run_dir')}`")
    else:
        lines.append(f"{f.get('mode', '-')}: {f.get('status', 'not run')} ({f.get('reason', '')})")
    lines += ["", "## Search space", "", "| key | range |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s["space"].items()]
    keys = list(s["space"])
    lines += ["", "## Trials", "",
              "| # | state | value | epochs | " + " | ".join(k.rsplit(".", 1)[-1] for k in keys) + " | note |",
              "|" + "---|" * (5 + len(keys))]
    for r in s["trials"]:
        note = r["fail_reason"] or (f"attempt {r['attempt']}" if r["attempt"] > 1 else "")
        lines.append(f"| {r['number']} | {r['state']} | {_v(r['value'])} | {r['epochs']} | "
                     + " | ".join(_v(r["params"].get(k)) for k in keys) + f" | {note} |")
    lines += ["", "## Figures", ""]
    for name, where in s["figures"].items():
        lines.append(f"- {name}: " + (f"![{name}](figures/{Path(where).name})" if where.endswith(".png") else where))
    return "\n".join(lines) + "\n"


def write_summary(summary: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", to_markdown(summary))
    return out / "summary.json"
