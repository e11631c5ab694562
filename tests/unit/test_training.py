"""The trainer: schedules, Keras-like callbacks, L2 and label smoothing in the loss, optimisers,
NaN handling, and what a run directory holds. Tiny models on tiny synthetic images."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

pytest.importorskip("timm")

from cnnlab import api  # noqa: E402
from cnnlab.cli.main import main  # noqa: E402
from cnnlab.config import ScheduleConfig, config_from_dict  # noqa: E402
from cnnlab.data.dataset import ImageArrays  # noqa: E402
from cnnlab.errors import ConfigError, TrainingError  # noqa: E402
from cnnlab.models.io import load_weights  # noqa: E402
from cnnlab.models.registry import create_model  # noqa: E402
from cnnlab.training.callbacks import BestCheckpoint, EarlyStopping  # noqa: E402
from cnnlab.training.recipes.standard import fit  # noqa: E402
from cnnlab.training.optim import build_optimizer  # noqa: E402
from cnnlab.training.rundir import RunDir  # noqa: E402
from cnnlab.training.schedules import lr_factor, resolve_decay_steps  # noqa: E402


ARCH = "test_resnet"  # timm's tiny test ResNet: trains in milliseconds per step at 16 px
COLOURS = {"blue": (30, 40, 210), "green": (35, 200, 45), "red": (215, 35, 30)}


pytestmark = pytest.mark.usefixtures("one_thread")



def _arrays(per_class: int, seed: int = 0, size: int = 16) -> ImageArrays:
    """Like the tiny_tree fixture, in memory: class colour + seeded noise, shuffled."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(COLOURS)), per_class)
    base = np.array(list(COLOURS.values()), dtype=np.int16)[y][:, None, None, :]
    x = np.clip(base + rng.integers(-20, 21, (len(y), size, size, 3)), 0, 255).astype(np.uint8)
    order = rng.permutation(len(y))
    return ImageArrays(x[order], y[order], list(COLOURS))


def _cfg(train: dict | None = None, model: dict | None = None, **top):
    t = {"epochs": 3, "batch_size": 16, "precision": "fp32", "optimizer": {"name": "adam", "lr": 3e-3}}
    t.update(train or {})
    m = {"arch": ARCH}
    m.update(model or {})
    return config_from_dict({"name": "t", "seed": 0, "model": m, "train": t, **top})


def _model(cfg, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(cfg.model, list(COLOURS))


def _fit(cfg, tmp_path, train=None, val=None, **kw):
    train = train if train is not None else _arrays(16, seed=0)
    val = val if val is not None else _arrays(5, seed=1)
    model = _model(cfg)
    return fit(cfg, model, train, val, RunDir(tmp_path / "run"), progress=False, log=lambda s: None, **kw)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ schedules


def _sched(**kw) -> ScheduleConfig:
    return ScheduleConfig(**kw)


@pytest.mark.parametrize("step", [0, 1, 17, 2500, 5164, 9389])
def test_exponential_is_keras_exponential_decay(step):
    cfg = _sched(name="exponential", decay_steps=5164, decay_rate=0.9)
    keras = 1e-2 * 0.9 ** (step / 5164)  # ExponentialDecay(1e-2, 5164, 0.9)(step)
    assert 1e-2 * lr_factor(cfg, step, 9390, 313, 1e-2) == pytest.approx(keras, rel=1e-12)


def test_exponential_staircase_floors():
    cfg = _sched(name="exponential", decay_steps=100, decay_rate=0.5, staircase=True)
    got = [lr_factor(cfg, s, 1000, 10, 1.0) for s in (0, 99, 100, 199, 200, 250)]
    assert got == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    smooth = _sched(name="exponential", decay_steps=100, decay_rate=0.5)
    assert lr_factor(smooth, 150, 1000, 10, 1.0) == pytest.approx(0.5 ** 1.5)


def test_decay_steps_fraction_resolves_against_total_steps():
    cfg = _sched(name="exponential", decay_steps_fraction=0.55, decay_rate=0.9)
    assert resolve_decay_steps(cfg, 9375) == 5156  # the study's 30 * 40,000 / 128 steps
    assert resolve_decay_steps(cfg, 9390) == 5164  # cnnlab's 30 * 313 whole batches
    assert lr_factor(cfg, 5164, 9390, 313, 1e-2) == pytest.approx(0.9)
    assert lr_factor(cfg, 9390, 9390, 313, 1e-2) == pytest.approx(0.9 ** (9390 / 5164))
    # A fraction beats an explicit decay_steps, and a tiny run still decays (never 0 steps).
    both = _sched(name="exponential", decay_steps=10, decay_steps_fraction=0.5)
    assert resolve_decay_steps(both, 40) == 20
    assert resolve_decay_steps(_sched(name="exponential", decay_steps_fraction=0.001), 10) == 1
    with pytest.raises(ConfigError, match="decay_steps"):
        lr_factor(_sched(name="exponential"), 0, 100, 10, 1.0)


def test_linear_warmup_then_the_schedule():
    cfg = _sched(name="constant", warmup_epochs=2)
    got = [lr_factor(cfg, s, 100, 10, 1.0) for s in range(22)]
    assert got[:20] == pytest.approx([(s + 1) / 20 for s in range(20)])
    assert np.allclose(np.diff(got[:20]), 1 / 20)  # linear: equal increments
    assert got[20:] == [1.0, 1.0]


def test_cosine_goes_from_lr_to_min_lr():
    cfg = _sched(name="cosine", min_lr=1e-4)
    total = 200
    f = [lr_factor(cfg, s, total, 10, 1e-2) for s in range(total + 1)]
    assert f[0] == pytest.approx(1.0)
    assert f[total // 2] == pytest.approx((1 + 0.01) / 2)
    assert f[-1] == pytest.approx(0.01)  # min_lr / lr
    assert all(a >= b for a, b in zip(f, f[1:]))
    warm = _sched(name="cosine", warmup_epochs=1, min_lr=0.0)
    assert lr_factor(warm, 9, 100, 10, 1.0) == pytest.approx(1.0)  # end of warm-up
    assert lr_factor(warm, 10, 100, 10, 1.0) == pytest.approx(1.0)  # cosine starts at the top
    assert lr_factor(warm, 100, 100, 10, 1.0) == pytest.approx(0.0)


def test_linear_decay_and_constant():
    lin = _sched(name="linear", min_lr=0.1)
    assert lr_factor(lin, 50, 100, 10, 1.0) == pytest.approx(0.55)
    assert lr_factor(lin, 100, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_factor(_sched(), 12345, 100, 10, 1.0) == 1.0


# ------------------------------------------------------------------ callbacks (unit level)


def _run_es(es: EarlyStopping, values, key="val_loss"):
    out = []
    for epoch, v in enumerate(values):
        out.append(es.on_epoch_end(epoch, {key: v}))
        if out[-1][1]:
            break
    return out


def test_early_stopping_patience_and_min_delta():
    es = EarlyStopping(patience=2, min_delta=0.1)
    # 0.95 and 0.93 improve on 1.0 by less than min_delta: not improvements (Keras).
    assert _run_es(es, [1.0, 0.95, 0.93, 0.5]) == [(True, False), (False, False), (False, True)]
    assert (es.best, es.best_epoch, es.stopped_epoch) == (1.0, 0, 2)
    es = EarlyStopping(patience=2, min_delta=0.1)
    assert _run_es(es, [1.0, 0.95, 0.85, 0.8, 0.79]) == [
        (True, False), (False, False), (True, False), (False, False), (False, True)]
    assert es.best == 0.85 and es.best_epoch == 2


def test_early_stopping_start_from_epoch_does_not_watch_early_epochs():
    values = [0.1, 0.2, 0.3, 0.9, 0.95, 0.97]
    plain = EarlyStopping(patience=1, min_delta=0.0)
    assert _run_es(plain, values)[-1] == (False, True) and plain.stopped_epoch == 1
    late = EarlyStopping(patience=1, min_delta=0.0, start_from_epoch=3)
    out = _run_es(late, values)
    assert out[:3] == [(False, False)] * 3  # not watched, however good
    assert out[3] == (True, False)  # the first watched epoch sets the best
    assert late.best == 0.9 and late.best_epoch == 3 and late.stopped_epoch == 4
    # Unwatched epochs need not even log the metric (Keras returns before reading it).
    assert EarlyStopping(start_from_epoch=2).on_epoch_end(0, {}) == (False, False)


def test_early_stopping_modes_and_missing_metric():
    acc = EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.0)
    assert acc.mode == "max"
    assert _run_es(acc, [0.5, 0.6, 0.6], key="val_accuracy") == [(True, False), (True, False), (False, True)]
    with pytest.raises(ConfigError, match="val_los"):
        EarlyStopping(monitor="val_los").on_epoch_end(0, {"val_loss": 1.0})


def test_early_stopping_state_round_trip():
    a = EarlyStopping(patience=2)
    _run_es(a, [1.0, 0.5, 0.6])
    b = EarlyStopping(patience=2)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # the state travels as JSON
    assert b.on_epoch_end(3, {"val_loss": 0.7}) == a.on_epoch_end(3, {"val_loss": 0.7}) == (False, True)


def test_best_checkpoint_signals_only_improvements():
    ck = BestCheckpoint("val_accuracy", "auto")
    got = [ck.on_epoch_end(e, {"val_accuracy": v}) for e, v in enumerate([0.5, 0.7, 0.6, 0.7, 0.8])]
    assert got == [True, True, False, False, True]
    assert (ck.best, ck.best_epoch) == (0.8, 4)
    ck = BestCheckpoint("val_loss", "auto")
    assert [ck.on_epoch_end(e, {"val_loss": v}) for e, v in enumerate([2.0, 2.5, 1.0])] == [True, False, True]


# ------------------------------------------------------------------ callbacks through fit


def test_fit_early_stopping_restores_best_weights_and_checkpoints_on_improvement(tmp_path):
    # "lr" is a logged metric; with a constant schedule and mode max only the first watched
    # epoch improves, which makes the best epoch known in advance.
    cfg = _cfg({"epochs": 6,
                "early_stopping": {"monitor": "lr", "mode": "max", "patience": 2, "min_delta": 0.0,
                                   "start_from_epoch": 1, "restore_best_weights": True},
                "checkpoint": {"monitor": "lr", "mode": "max"}})
    run = RunDir(tmp_path / "run")
    model = _model(cfg)
    snaps, best_hash = [], []

    def on_epoch(epoch, logs):
        snaps.append(_state(model))
        best_hash.append(hashlib.sha256((run / "best.safetensors").read_bytes()).hexdigest())

    res = fit(cfg, model, _arrays(16), _arrays(5, seed=1), run, progress=False, log=lambda s: None,
              epoch_callback=on_epoch)
    # Epoch 1 is not watched; epoch 2 is the best; 2 epochs without improvement stop after epoch 4.
    assert res.stopped_early and res.epochs_run == 4 and len(res.history) == 4
    assert "early stopping" in res.stop_reason
    assert not _same(snaps[1], snaps[3])  # training did change the weights after the best epoch
    assert _same(_state(res.model), snaps[1])  # restored: the best epoch's weights, BN statistics too
    # best.safetensors was written after epoch 1 and never again.
    assert len(set(best_hash)) == 1
    ckpt = copy.deepcopy(res.model)
    load_weights(ckpt, run / "best.safetensors")
    assert _same(_state(ckpt), snaps[0])


def test_fit_best_checkpoint_follows_val_loss(tmp_path):
    cfg = _cfg({"epochs": 4, "checkpoint": {"monitor": "val_loss"}})
    run = RunDir(tmp_path / "run")
    model = _model(cfg)
    snaps, hashes = [], []

    def on_epoch(epoch, logs):
        snaps.append(_state(model))
        hashes.append(hashlib.sha256((run / "best.safetensors").read_bytes()).hexdigest())

    res = fit(cfg, model, _arrays(16), _arrays(5, seed=1), run, progress=False, log=lambda s: None,
              epoch_callback=on_epoch)
    vl = [h["val_loss"] for h in res.history]
    improved = [e == 0 or vl[e] < min(vl[:e]) for e in range(len(vl))]
    rewritten = [e == 0 or hashes[e] != hashes[e - 1] for e in range(len(vl))]
    assert rewritten == improved
    best = int(np.argmin(vl))
    assert res.best_epoch == best + 1
    ckpt = copy.deepcopy(res.model)
    load_weights(ckpt, run / "best.safetensors")
    assert _same(_state(ckpt), snaps[best])


# ------------------------------------------------------------------ the loss


def test_loss_is_label_smoothed_cross_entropy_plus_keras_l2(tmp_path):
    # lr ~0 (1e-30: 0 is refused by validation) and one batch: the logged loss is the loss of the initial weights.
    cfg = _cfg({"epochs": 1, "batch_size": 64, "label_smoothing": 0.1, "optimizer": {"name": "adam", "lr": 1e-30}},
               {"head": {"units": 8, "l2": 0.05, "pooling": "max"}})
    train, val = _arrays(12), _arrays(4, seed=1)
    model = _model(cfg)
    before = copy.deepcopy(model).train()
    w = before.head.hidden[0].weight.detach()
    penalty = 0.05 * float(w.pow(2).sum())
    assert penalty > 0.01
    with torch.no_grad():
        logits = before(torch.from_numpy(train.x).permute(0, 3, 1, 2))
        ce = float(F.cross_entropy(logits, torch.from_numpy(train.y), label_smoothing=0.1))
        ce_plain = float(F.cross_entropy(logits, torch.from_numpy(train.y)))
    assert abs(ce - ce_plain) > 1e-3  # smoothing makes a measurable difference here
    res = fit(cfg, model, train, val, RunDir(tmp_path / "run"), progress=False, log=lambda s: None)
    assert res.history[0]["loss"] == pytest.approx(ce + penalty, rel=1e-4)
    # The validation loss carries the regularisation term too (as Keras reports it).
    with torch.no_grad():
        vlogits = res.model.eval()(torch.from_numpy(val.x).permute(0, 3, 1, 2))
    vce = float(F.cross_entropy(vlogits, torch.from_numpy(val.y)))
    assert res.history[0]["val_loss"] == pytest.approx(vce + penalty, rel=1e-4)


def test_l2_pulls_the_hidden_kernel_towards_zero(tmp_path):
    norms = {}
    for l2 in (0.0, 1.0):
        cfg = _cfg({"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.0}},
                   {"head": {"units": 8, "l2": l2}})
        res = _fit(cfg, tmp_path / f"l2-{l2}")
        norms[l2] = float(res.model.head.hidden[0].weight.detach().pow(2).sum())
        assert math.isfinite(res.history[-1]["loss"])
    assert norms[1.0] < 0.5 * norms[0.0]


@pytest.mark.parametrize("optimizer", [
    {"name": "adam", "lr": 3e-3},
    {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-2},
    {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
])
def test_optimisers_train(tmp_path, optimizer):
    cfg = _cfg({"epochs": 3, "optimizer": optimizer})
    opt = build_optimizer(_model(cfg), cfg.train.optimizer)
    expected = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer["name"]]
    assert type(opt) is expected
    if optimizer["name"] == "sgd":
        assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    if optimizer["name"] == "adamw":
        decays = {g["weight_decay"] for g in opt.param_groups}
        assert decays == {0.0, 1e-2}  # biases and norm parameters are not decayed
    res = _fit(cfg, tmp_path)
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0]
    assert res.history[-1]["accuracy"] > 0.5


def test_sgd_nesterov_without_momentum_is_a_config_error():
    cfg = _cfg({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": True}})
    with pytest.raises(ConfigError, match="nesterov"):
        build_optimizer(_model(cfg), cfg.train.optimizer)


def test_exploding_loss_stops_with_training_error(tmp_path):
    cfg = _cfg({"epochs": 2, "optimizer": {"name": "adam", "lr": 1e30}})
    with pytest.raises(TrainingError, match=r"loss became (nan|inf|-inf).*learning rate"):
        _fit(cfg, tmp_path)
    assert not (tmp_path / "run" / "history.csv").exists()  # not even one epoch finished


def test_nan_loss_from_any_cause_stops(tmp_path, monkeypatch):
    import cnnlab.training.recipes.standard as loop

    real = loop.F.cross_entropy
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(loop.F, "cross_entropy", flaky)
    with pytest.raises(TrainingError, match="nan at epoch 1, step 3"):
        _fit(_cfg({"epochs": 1}), tmp_path)


def test_cli_reports_an_exploding_loss_without_a_traceback(tmp_path, tiny_tree, capsys):
    run_dir = tmp_path / "boom"
    rc = main(["train", "--data", str(tiny_tree), "--epochs", "2", "--batch-size", "16", "--run-dir", str(run_dir),
               "--no-progress", "--set", f"model.arch={ARCH}", "--set", "train.precision=fp32",
               "--set", "train.optimizer.lr=1e30"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "cnnlab: error: the loss became" in err and "Traceback" not in err
    assert not (run_dir / "model.safetensors").exists()


# ------------------------------------------------------------------ a whole run through the API


@pytest.fixture(scope="module")
def tree_run(tmp_path_factory):
    """One small run on a tiny_tree-like folder, shared by the tests below."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tree")
    data = root / "tiny"
    arrays = _arrays(24, seed=3)
    for i, (img, label) in enumerate(zip(arrays.x, arrays.y)):
        folder = data / arrays.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    config = {
        "name": "tiny", "seed": 0,
        "data": {"source": str(data), "validation_split": 0.25},
        "model": {"arch": ARCH, "head": {"pooling": "max"}},
        "train": {"epochs": 3, "batch_size": 16, "precision": "fp32", "optimizer": {"name": "adam", "lr": 3e-3},
                  "schedule": {"name": "exponential", "decay_steps_fraction": 0.5, "decay_rate": 0.5},
                  "checkpoint": {"monitor": "val_accuracy"}},
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(root / "home"))
        mp.setenv("OMP_NUM_THREADS", "1")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        result = api.train(config, run_dir=root / "run", progress=False, log=lambda s: None)
        torch.set_num_threads(threads)
    return result, config


def test_tree_run_learns(tree_run):
    result, _ = tree_run
    h = result.fit.history
    assert [row["epoch"] for row in h] == [1, 2, 3]
    assert h[-1]["loss"] < h[0]["loss"]
    assert h[-1]["val_loss"] < h[0]["val_loss"]
    assert h[-1]["val_accuracy"] > 0.6  # chance is 1/3
    assert result.metrics["val"]["accuracy"] > 0.6  # no test split: the final evaluation is on val
    assert result.metrics["epochs_run"] == 3


def test_history_csv_has_one_row_per_epoch(tree_run):
    result, _ = tree_run
    with open(result.run_dir / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    for col in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"):
        assert col in rows[0], col
        assert all(math.isfinite(float(r[col])) for r in rows)
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)


def test_history_lr_follows_the_schedule(tree_run):
    result, config = tree_run
    h = result.fit.history
    n_train = result.metrics["train_samples"]
    steps = math.ceil(n_train / 16)
    decay_steps = round(0.5 * steps * 3)
    for e, row in enumerate(h):  # the lr of the epoch's last step
        last = (e + 1) * steps - 1
        assert row["lr"] == pytest.approx(3e-3 * 0.5 ** (last / decay_steps), rel=1e-9)


def test_run_directory_contents(tree_run):
    result, config = tree_run
    rd = RunDir(result.run_dir)
    for name in ("config.yaml", "history.csv", "model.safetensors", "model.json", "metrics.json",
                 "best.safetensors", "figures/curves.png", "figures/confusion_matrix.png"):
        assert (rd.path / name).is_file(), name
        assert (rd.path / name).stat().st_size > 0, name
    for png in ("figures/curves.png", "figures/confusion_matrix.png"):
        assert (rd.path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not rd.state.exists()  # resume state is dropped once the run is complete
    assert rd.is_finished()
    # config.yaml is the fully resolved config
    saved = yaml.safe_load((rd.path / "config.yaml").read_text())
    assert saved["model"]["arch"] == ARCH and saved["train"]["epochs"] == 3
    assert rd.read_config() == result.config
    card = json.loads((rd.path / "model.json").read_text())
    assert card["spec"]["class_names"] == ["blue", "green", "red"]
    assert card["spec"]["preprocessing"] == "keras_tf"
    assert card["spec"]["mean"] == [0.5, 0.5, 0.5] and card["spec"]["std"] == [0.5, 0.5, 0.5]
    params = card["parameters"]
    assert params["keras_total"] == params["total"] + params["bn_statistics"] > 0
    assert params["trainable"] == params["total"]
    metrics = json.loads((rd.path / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3
    accs = [h["val_accuracy"] for h in result.fit.history]  # the checkpoint watches val_accuracy (max)
    assert metrics["best_epoch"] == accs.index(max(accs)) + 1  # the first epoch that reached the best
    assert set(metrics["val"]) >= {"loss", "accuracy", "top5_accuracy"}
    assert "val_best_checkpoint" in metrics


def test_resume_of_a_finished_run_does_nothing(tree_run):
    result, _ = tree_run
    before = (result.run_dir / "model.safetensors").read_bytes()
    lines = []
    again = api.resume(result.run_dir, progress=False, log=lines.append)
    assert any("already finished" in line for line in lines)
    assert again.metrics["epochs_run"] == 3
    assert (result.run_dir / "model.safetensors").read_bytes() == before
