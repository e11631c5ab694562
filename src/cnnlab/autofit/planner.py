"""The auto-fit planner: measure, predict, choose and share out the budget; plan.json.

In at most :data:`PROBE_SHARE` of the budget it measures this machine's speed for each candidate
of the preset with the code that will train it (speed.py: the fast recipe's own step and width
ladder, whose measurements its run reuses; the feature extractor at its batch; the standard
recipe's epoch at the fine-tuning resolution), no factor applied,
the cheapest to measure first, each only while its expected cost (:data:`PROBE_COST_S`) still fits in that
share; a candidate left unmeasured (all of them, for a budget under a minute) gets the speed of the
reference machine (:data:`REFERENCE_IPS`, 2-core Zen 3, fp32) scaled by how much faster or
slower the measured ones ran here. From the speed it predicts each candidate's time
(:func:`time_model`) and, from priors.py, its validation accuracy for the epochs that fit,
corrected per kind by what this project's own history of fits says the kind delivered
(history.py; plan.json records each correction and the records it came from).

The choice: the candidate with the best predicted accuracy in all the time there is (the
main one); then, when the preset allows more models, others that fit in the preset's
``extra_share`` of the time, best first, if each predicts within :data:`ENSEMBLE_GAP` of the
main one and the main one loses at most :data:`MAIN_LOSS` by giving the time up. Fixed-cost
candidates run first; the stretchable ones (epochs chosen to fit) last, so they absorb what the
others left. :data:`END_RESERVE` of the budget (at least :data:`END_RESERVE_MIN_S`) is kept for
the ensemble, the leaderboard, the report and the error analysis.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.autofit.candidates import base_kind, elastic, seed_kind
from cnnlab.autofit.presets import Preset
from cnnlab.autofit.priors import ensemble_accuracy, predicted_accuracy
from cnnlab.autofit.profile import DataProfile
from cnnlab.utils.io import atomic_write_text

PROBE_SHARE = 0.05
END_RESERVE = 0.025
END_RESERVE_MIN_S = 3.0
ENSEMBLE_GAP = 0.10
MAIN_LOSS = 0.02
SETUP_SECONDS = {"fastnet": 1.0, "frozen": 2.0, "finetune_last": 2.0, "finetune": 2.0}  # model build, weights
#: training (or, for frozen, feature) images/s on the reference machine, 2-core Zen 3, fp32
REFERENCE_IPS = {"fastnet": 700.0, "frozen": 33.0, "finetune_last": 30.0, "finetune": 50.0}
#: what measuring a candidate costs (model build, weights, warm-up, timed work), about, in seconds
PROBE_COST_S = {"fastnet": 1.5, "frozen": 3.0, "finetune_last": 4.0, "finetune": 3.0}
INFER_FACTOR = 3.0  #: inference runs about this many times a training step's rate
HEAD_IPS = 20000.0  #: a linear head on cached features trains at about this rate
EPOCHS = {"fastnet": (1.0, 16.0), "frozen": (3.0, 30.0), "finetune_last": (1.0, 8.0), "finetune": (1.0, 6.0)}
FASTNET_OVERHEAD = 0.15  #: share of a fast-net run spent on its own probe, whitening and evaluation
FINETUNE_MIN_STEPS = 60  #: fine-tuning fewer optimiser steps than this is not planned (a few images: more epochs)
FINETUNE_MAX_EPOCHS = 30  #: ... up to this many epochs on small data
FINETUNE_BATCH = 32  #: the fine-tuned candidates' batch (candidates.py)
SEED_MIN_EPOCHS = 8.0  #: a fast-net seed run is planned only when each run still trains this many epochs
SEED_MIN_GAIN = 0.002  #: ... and the ensemble is predicted to gain at least this much accuracy
FastSpeed = Callable[[float], "tuple[float, int | None]"]


@dataclass
class CandidatePlan:
    kind: str
    images_per_second: float
    measured: bool
    feasible: bool = False
    chosen: bool = False
    share_seconds: float = 0.0
    epochs: float = 0.0
    predicted_seconds: float = 0.0
    predicted_val_accuracy: float = 0.0
    why: str = ""
    prior_correction: float = 0.0  #: the history's shift of this kind's skill over chance (history.py)
    prior_records: int = 0  #: ... from this many records of similar data
    # filled in by the runner
    status: str = "planned"
    actual_seconds: float | None = None
    actual_epochs: int | None = None
    actual_val_accuracy: float | None = None
    actual_test_accuracy: float | None = None
    #: the speed the run itself reached: training images/s (frozen: feature extraction's), beside
    #: the planned ``images_per_second`` (None when not measured: e.g. the features came from the cache)
    actual_images_per_second: float | None = None


@dataclass
class FitPlan:
    time_limit: float
    preset: str
    precision: str
    device: str
    machine: str
    profile: dict[str, Any]
    probe_seconds: float
    available_seconds: float
    reserve_seconds: float
    candidates: list[CandidatePlan] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    actual: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1  #: data-parallel processes (cnnlab fit --nproc-per-node); each trains every candidate
    global_batch: dict[str, int] = field(default_factory=dict)  #: per candidate, split evenly over the processes
    excluded: dict[str, str] = field(default_factory=dict)  #: candidates left out under data parallelism, why
    priors: dict[str, Any] = field(default_factory=dict)  #: the history the priors were corrected from (history.py)

    def candidate(self, kind: str) -> CandidatePlan:
        return next(c for c in self.candidates if c.kind == kind)

    def seconds_for(self, position: int, end: float, now: float) -> float:
        """Seconds for the candidate at ``order[position]``: from ``now`` to ``end`` less the planned
        shares of the candidates after it (what an earlier one left unused goes to this one)."""
        later = sum(self.candidate(k).share_seconds for k in self.order[position + 1:])
        return end - later - now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FitPlan":
        """The plan written by :meth:`write` (a resumed fit keeps its plan)."""
        known = {f.name for f in dataclasses.fields(CandidatePlan)}
        cands = [CandidatePlan(**{k: v for k, v in c.items() if k in known}) for c in data.get("candidates", [])]
        fields = {f.name for f in dataclasses.fields(cls)} - {"candidates"}
        return cls(**{k: v for k, v in data.items() if k in fields}, candidates=cands)

    def write(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    def describe(self) -> list[str]:
        lines = [f"plan ({self.preset}, {self.precision} on {self.device}; {self.probe_seconds:.1f}s measuring, "
                 f"{self.available_seconds:.0f}s for the models, {self.reserve_seconds:.0f}s kept for the end):"]
        if self.world_size > 1:
            batches = ", ".join(f"{k} {b}" for k, b in self.global_batch.items() if k not in self.excluded)
            lines.append(f"  data-parallel: world size {self.world_size}; global batch {batches} "
                         f"(each split evenly over the {self.world_size} processes)")
        for c in self.candidates:
            mark = "*" if c.chosen else " "
            speed = f"{c.images_per_second:.0f} img/s {'measured' if c.measured else 'estimated'}"
            lines.append(f" {mark} {c.kind:<14} {speed:<24} " + (
                f"{c.share_seconds:5.0f}s, {c.epochs:.1f} epochs, predicted val {c.predicted_val_accuracy:.3f}"
                if c.chosen else c.why))
        lines += [f"   {k:<14} left out: {why}" for k, why in self.excluded.items()]
        return lines


def time_model(kind: str, ips: float, n_train: int, n_val: int, n_test: int, tta_views: int = 1
               ) -> tuple[float, float]:
    """(fixed seconds, seconds per epoch) of candidate ``kind`` at ``ips`` images/s.

    fixed: building the model (+ the frozen base's features of every image, + the final
    evaluation); per epoch: training and the validation pass."""
    ips = max(ips, 1e-6)
    kind = base_kind(kind)
    setup = SETUP_SECONDS[kind]
    if kind == "frozen":
        return setup + (n_train + n_val + n_test) / ips, (n_train + n_val) / HEAD_IPS
    infer = INFER_FACTOR * ips
    return setup + n_test * tta_views / infer, n_train / ips + n_val / infer


def epoch_range(kind: str, n_train: int | None = None) -> tuple[float, float]:
    """(fewest, most) epochs planned for ``kind``: EPOCHS, and for the fine-tuned candidates on
    ``n_train`` images at least FINETUNE_MIN_STEPS optimiser steps (small data: more epochs)."""
    kind = base_kind(kind)
    least, most = EPOCHS[kind]
    if kind.startswith("finetune") and n_train:
        need = math.ceil(FINETUNE_MIN_STEPS / max(1, math.ceil(n_train / FINETUNE_BATCH)))
        least, most = max(least, min(need, FINETUNE_MAX_EPOCHS)), max(most, min(need * 2, FINETUNE_MAX_EPOCHS))
    return least, most


def epochs_in(kind: str, seconds: float, fixed: float, per_epoch: float, n_train: int | None = None) -> float:
    """The epochs that fit in ``seconds`` (whole epochs, except the fast net's), capped."""
    _, most = epoch_range(kind, n_train)
    kind = base_kind(kind)
    usable = seconds * (1 - FASTNET_OVERHEAD) if kind == "fastnet" else seconds
    e = max(0.0, (usable - fixed) / per_epoch)
    return min(most, e if kind == "fastnet" else math.floor(e))


def choose(profile: DataProfile, preset: Preset, speeds: dict[str, tuple[float, bool]], available: float,
           tta_views: int = 1, fast_speed: FastSpeed | None = None, corrections: Any = None) -> list[CandidatePlan]:
    """Predict and choose (see the module docstring); pure: no clock, no measuring.

    ``fast_speed(seconds)`` -> (images/s, stem width) of the net the fast recipe picks for that
    much time (from its measured ladder); without it, the fast net's measured speed at any width.
    ``corrections``: history.PriorCorrections (None: the bundled priors alone)."""
    n, nv, nt = profile.count, profile.val_count, profile.test_count
    side = max(profile.file_sizes.get("median", 0), profile.image_size)

    def acc(kind: str, epochs: float, width: int | None = None) -> float:
        return predicted_accuracy(kind, per_class=profile.per_class_min, epochs=epochs,
                                  num_classes=profile.num_classes, image_side=side, width=width,
                                  shift=corrections.shift(kind) if corrections is not None else 0.0)

    def speed_of(kind: str, seconds: float) -> tuple[float, int | None]:
        if kind == "fastnet" and fast_speed is not None:
            return fast_speed(seconds)
        return speeds[kind][0], None

    def fit_in(kind: str, seconds: float) -> tuple[float, float, float]:
        """(epochs, predicted seconds, predicted accuracy) of ``kind`` given ``seconds``."""
        views = tta_views if kind.startswith("finetune") else 1
        ips, width = speed_of(kind, seconds)
        fixed, per_epoch = time_model(kind, ips, n, nv, nt, views)
        e = epochs_in(kind, seconds, fixed, per_epoch, n)
        least = epoch_range(kind, n)[0]
        if e < least:
            return e, fixed + least * per_epoch, 0.0
        used = seconds if kind == "fastnet" else fixed + e * per_epoch
        return e, used, acc(kind, e, width)

    plans = {k: CandidatePlan(k, speeds[k][0], speeds[k][1]) for k in preset.kinds}
    for k, c in plans.items():
        if corrections is not None:
            c.prior_correction, c.prior_records = corrections.shift(k), corrections.records(k)
        c.epochs, c.predicted_seconds, c.predicted_val_accuracy = fit_in(k, available)
        c.feasible = c.predicted_val_accuracy > 0
        if not c.feasible:
            c.why = (f"needs {c.predicted_seconds:.0f}s for {epoch_range(k, n)[0]:g} epochs; "
                     f"{available:.0f}s available")
    feasible = sorted((c for c in plans.values() if c.feasible), key=lambda c: -c.predicted_val_accuracy)
    if not feasible:  # nothing fits: the fast net for whatever time there is (it always trains a step)
        main = plans.get("fastnet") or next(iter(plans.values()))
        main.feasible, main.why = True, "nothing fits the budget: the fast net for the time there is"
        main.predicted_val_accuracy = acc(main.kind, main.epochs)  # a partial epoch: the prior still applies
        feasible = [main]
    main = feasible[0]
    main_acc = main.predicted_val_accuracy
    extras: list[CandidatePlan] = []
    spent = 0.0
    for c in feasible[1:]:
        if len(extras) + 1 >= preset.max_models:
            c.why = f"the preset trains at most {preset.max_models} model(s)"
            continue
        cap = preset.extra_share * available - spent
        e, secs, a = fit_in(c.kind, cap)
        if a <= 0 or a < main_acc - ENSEMBLE_GAP:
            c.why = (f"predicted {a:.3f}, more than {ENSEMBLE_GAP} below the main model" if a > 0
                     else f"does not fit in {max(cap, 0):.0f}s beside the main model")
            continue
        _, _, main_after = fit_in(main.kind, available - spent - secs)
        if main_after < main_acc - MAIN_LOSS:
            c.why = f"its {secs:.0f}s would cost the main model more than {MAIN_LOSS} accuracy"
            continue
        c.epochs, c.predicted_seconds, c.predicted_val_accuracy = e, secs, a
        c.share_seconds, c.chosen = secs, True
        c.why = "beside the main model, for the ensemble"
        extras.append(c)
        spent += secs
    e, secs, a = fit_in(main.kind, available - spent)
    main.epochs, main.predicted_seconds, main.predicted_val_accuracy = e, secs, a or acc(main.kind, e)
    main.share_seconds = available - spent if elastic(main.kind) else main.predicted_seconds
    main.chosen, main.why = True, main.why or "the best predicted validation accuracy"
    main.images_per_second = speed_of(main.kind, main.share_seconds)[0]
    for c in plans.values():
        if not c.chosen and not c.why:
            c.why = f"predicted {c.predicted_val_accuracy:.3f}, below the main model's {main_acc:.3f}"
    # seeds only with the measured ladder: it says how much narrower each shorter run's net is
    seeded = main.kind == "fastnet" and fast_speed is not None
    repeats = _seeds(main, preset.seeds, available - spent, fit_in, speed_of) if seeded else []
    return [plans[k] for k in preset.kinds] + repeats


def _seeds(main: CandidatePlan, most: int, seconds: float, fit_in: Callable[[str, float], tuple[float, float, float]],
           speed_of: Callable[[str, float], tuple[float, int | None]]) -> list[CandidatePlan]:
    """Split the main fast net's ``seconds`` into k runs from different seeds (k <= ``most``) when
    their ensemble is predicted to beat one run in all the time (priors.ensemble_accuracy); each
    run keeps at least SEED_MIN_EPOCHS epochs. Returns the extra runs; ``main`` gets its share."""
    best_k, best = 1, main.predicted_val_accuracy
    for k in range(2, most + 1):
        e, _, a = fit_in(main.kind, seconds / k)
        if a <= 0 or e < SEED_MIN_EPOCHS:
            break
        if ensemble_accuracy(a, k) > best + SEED_MIN_GAIN:
            best_k, best = k, ensemble_accuracy(a, k)
    if best_k == 1:
        return []
    e, _, a = fit_in(main.kind, seconds / best_k)
    why = (f"run {{}} of {best_k} from different seeds, ensembled: predicted {best:.3f} against "
           f"{main.predicted_val_accuracy:.3f} for one run in all {seconds:.0f}s")
    runs = []
    for i in range(1, best_k + 1):
        c = main if i == 1 else CandidatePlan(seed_kind(main.kind, i), 0.0, main.measured, feasible=True, chosen=True)
        c.epochs, c.predicted_seconds, c.share_seconds = e, seconds / best_k, seconds / best_k
        c.images_per_second = speed_of(main.kind, seconds / best_k)[0]
        c.predicted_val_accuracy, c.why = a, why.format(i)
        c.prior_correction, c.prior_records = main.prior_correction, main.prior_records
        runs.append(c)
    return runs[1:]


def run_order(cands: list[CandidatePlan]) -> list[str]:
    """Fixed-cost candidates first, the stretchable ones last (they absorb what is left)."""
    chosen = [c for c in cands if c.chosen]
    return [c.kind for c in sorted(chosen, key=lambda c: (elastic(c.kind), -c.predicted_val_accuracy))]


def make_plan(profile: DataProfile, preset: Preset, *, time_limit: float, elapsed: Callable[[], float],
              measure: Callable[[str], float], precision: str, device: str, machine: str,
              log: Callable[[str], None] = print, world_size: int = 1, global_batch: dict[str, int] | None = None,
              excluded: dict[str, str] | None = None, fast_speed: FastSpeed | None = None,
              corrections: Any = None) -> FitPlan:
    """Measure (within PROBE_SHARE of the budget), predict, choose. ``elapsed()``: seconds since the
    fit began (the caller's clock: tests pass a fake one). ``measure(kind)`` -> images/s;
    ``fast_speed``: the fast net's measured ladder (speed.FastLadder), used once it is measured.

    ``excluded``: candidates that cannot train here (data parallelism: ranks.unsupported), and
    why; they are neither measured nor chosen. ``corrections``: history.PriorCorrections, the
    priors' corrections from this project's own results (None: the bundled priors alone)."""
    from cnnlab.autofit.priors import predicted_accuracy as prior
    from cnnlab.errors import ConfigError

    excluded = {k: why for k, why in (excluded or {}).items() if k in preset.kinds}
    if excluded:
        kinds = tuple(k for k in preset.kinds if k not in excluded)
        if not kinds:
            raise ConfigError(f"preset {preset.name}: no candidate can train with {world_size} processes ("
                              + "; ".join(f"{k}: {w}" for k, w in excluded.items()) + ")")
        preset = dataclasses.replace(preset, kinds=kinds)
    t0 = elapsed()
    # The fast net's work grows with the pixels it trains on: REFERENCE_IPS and PROBE_COST_S are for
    # CIFAR's 32 px, and photos decoded at 224 px cost it 49 times that (the pretrained candidates
    # run at their own fixed resolutions). Without this, a 224-px fast-net probe ate the whole
    # probe share and the frozen base was estimated from it at 1 img/s (measured: about 30).
    area = max(1.0, (profile.image_size / 32) ** 2)
    cost = {k: PROBE_COST_S[k] * (area if k == "fastnet" else 1.0) for k in preset.kinds}
    reference = {k: REFERENCE_IPS[k] / (area if k == "fastnet" else 1.0) for k in preset.kinds}
    # the cheapest probe first (a speed ratio for the rest as early as possible), then the best prior
    order = sorted(preset.kinds, key=lambda k: (cost[k], -prior(
        k, per_class=profile.per_class_min, epochs=99, num_classes=profile.num_classes,
        image_side=profile.image_size)))
    speeds: dict[str, tuple[float, bool]] = {}
    for k in order:  # measured while the expected cost still fits in PROBE_SHARE of the budget
        if elapsed() - t0 + cost[k] > PROBE_SHARE * time_limit:
            continue  # a cheaper one later in the order may still fit
        speeds[k] = (measure(k), True)
    ratio = sum(speeds[k][0] / reference[k] for k in speeds) / len(speeds) if speeds else 1.0
    for k in order:
        speeds.setdefault(k, (reference[k] * ratio, False))
    probe = elapsed() - t0
    reserve = max(END_RESERVE_MIN_S, END_RESERVE * time_limit)
    available = max(1.0, time_limit - elapsed() - reserve)
    views = {"none": 1, "flip": 2, "flip_translate": 6}[preset.tta]
    ladder = fast_speed if speeds.get("fastnet", (0.0, False))[1] else None
    cands = choose(profile, preset, speeds, available, views, fast_speed=ladder, corrections=corrections)
    plan = FitPlan(time_limit=time_limit, preset=preset.name, precision=precision, device=device, machine=machine,
                   profile=profile.to_dict(), probe_seconds=round(probe, 2), available_seconds=round(available, 1),
                   reserve_seconds=round(reserve, 1), candidates=cands, order=run_order(cands),
                   world_size=world_size, global_batch=dict(global_batch or {}), excluded=excluded,
                   priors=corrections.to_dict() if corrections is not None else {})
    if corrections is not None:
        log(corrections.describe())
    for line in plan.describe():
        log(line)
    return plan
