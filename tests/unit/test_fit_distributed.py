"""`cnnlab fit --nproc-per-node N`: a 2-process (gloo) auto-fit in which rank 0 alone plans and
writes the fit folder, plus the launcher flags' checks and the planner's exclusions under DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cnnlab.autofit import planner, ranks
from cnnlab.autofit.presets import get_preset
from cnnlab.cli.main import main
from cnnlab.errors import ConfigError

SRC = Path(__file__).resolve().parents[2] / "src"
TIMEOUT = 240  # seconds: a bound against hangs, far above the job's time limit
LIMIT = 30  # seconds: the fit's time limit

#: Loaded into every process of the job (PYTHONPATH): on ranks other than 0, creating a folder or
#: replacing a file (cnnlab writes every file atomically, through os.replace) under the test's
#: folder fails the job.
GUARD = """
import os
from pathlib import Path

_root = os.environ.get("CNNLAB_TEST_GUARD")
if _root and os.environ.get("RANK", "0") != "0":
    _root = Path(_root).resolve()

    def _guarded(real, which):
        def call(*a, **k):
            target = a[which]
            if Path(os.path.abspath(target)).is_relative_to(_root):
                raise AssertionError(f"rank {os.environ['RANK']} wrote {target}")
            return real(*a, **k)
        return call

    os.replace = _guarded(os.replace, 1)  # (src, dst)
    os.mkdir = _guarded(os.mkdir, 0)

_kill_at = int(os.environ.get("CNNLAB_TEST_KILL_AT", "0"))
if _kill_at and os.environ.get("RANK") == "1":  # rank 1 dies by SIGKILL in its n-th broadcast
    import signal

    import torch.distributed as dist

    _real, _calls = dist.broadcast_object_list, [0]

    def _broadcast(*a, **k):
        _calls[0] += 1
        if _calls[0] == _kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return _real(*a, **k)

    dist.broadcast_object_list = _broadcast

import cnnlab.autofit.fewshot as _fewshot  # 16 images a class: the planner's path, not the few-shot one

_fewshot.FEW_SHOT_MAX = 0
"""


def _guard(tmp_path: Path) -> Path:
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(textwrap.dedent(GUARD))
    return guard


def _env(guard_dir: Path, watched: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(guard_dir), str(SRC), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["CNNLAB_DIST_TIMEOUT"] = "60"
    env["CNNLAB_TEST_GUARD"] = str(watched)
    env["CNNLAB_HOME"] = str(watched.parent / "home")
    return env


@pytest.mark.slow
def test_two_process_fit_rank0_alone_writes_the_fit_folder(make_tree, tmp_path):
    from cnnlab.predictor import ImagePredictor

    data = make_tree(tmp_path / "tree", per_class=16)
    guard = _guard(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "cnnlab", "fit", "--data", str(data), "--time-limit", f"{LIMIT}s",
                           "--out", "fit", "--nproc-per-node", "2"], cwd=work, env=_env(guard, work),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "data-parallel: world size 2; global batch" in proc.stdout
    assert proc.stdout.count("fit folder:") == 1  # rank 0 alone prints the summary
    assert sorted(p.name for p in work.iterdir()) == ["fit"]  # one fit folder, no runs/ elsewhere
    fit = work / "fit"
    info = json.loads((fit / "fit.json").read_text())
    plan = json.loads((fit / "plan.json").read_text())
    assert (fit / "leaderboard.csv").is_file() and (fit / "report.md").is_file()
    assert plan["world_size"] == 2 and plan["global_batch"]
    assert info["elapsed_seconds"] <= LIMIT * 1.05  # the feature's contract, on rank 0's clock
    trained = [c for c in plan["candidates"] if c["status"] == "done"]
    assert trained and all(json.loads((fit / "models" / c["kind"] / "metrics.json").read_text())
                           ["distributed"]["world_size"] == 2 for c in trained)
    pred = ImagePredictor.load(fit)
    labels = pred.predict(str(data))
    assert len(labels) == 48 and set(labels) <= set(info["class_names"])


@pytest.mark.slow
def test_a_killed_rank_ends_the_fit_with_the_launchers_line(make_tree, tmp_path):
    data = make_tree(tmp_path / "tree", per_class=16)
    work = tmp_path / "work"
    work.mkdir()
    env = _env(_guard(tmp_path), work)
    env["CNNLAB_TEST_KILL_AT"] = "10"  # after the plan (4th) and the first share (5th): in training
    proc = subprocess.run([sys.executable, "-m", "cnnlab", "fit", "--data", str(data), "--time-limit", f"{LIMIT}s",
                           "--out", "fit", "--nproc-per-node", "2"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cnnlab: error: data-parallel job failed: rank 1 (pid ")
    assert last.endswith("was killed by SIGKILL, so torchrun stopped the others")  # no resume hint for a fit
    assert not (work / "fit" / "fit.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--nnodes", "2"], "--nnodes goes with --nproc-per-node N"),
    (["--nproc-per-node", "0"], "--nproc-per-node 0: expected at least 1"),
    (["--nproc-per-node", "2", "--nnodes", "2"], "needs --node-rank R and --rdzv-endpoint HOST:PORT"),
    (["--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"],
     "--node-rank 2: expected 0 .. 1"),
    (["--nproc-per-node", "2", "--time-limit", "soon"], "time_limit: 'soon' is not a duration"),
    (["--nproc-per-node", "2", "--quality", "fastest"], "unknown preset 'fastest'"),
])
def test_fit_launcher_flags_are_checked_before_any_process_starts(argv, message, capsys, monkeypatch, tmp_path):
    import cnnlab.training.launch as launch

    monkeypatch.setattr(launch, "launch", lambda *a, **k: pytest.fail("launched"))
    args = ["fit", "--data", str(tmp_path), "--time-limit", "10s", *argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_fit_relaunches_itself_without_the_launcher_flags(monkeypatch, tmp_path):
    import cnnlab.training.launch as launch

    seen = {}
    monkeypatch.setattr(launch, "launch", lambda program, **k: seen.update(program=program, **k) or 0)
    assert main(["fit", "--data", "d", "--time-limit", "30s", "--nproc-per-node", "2", "--out", "f"]) == 0
    assert seen["program"] == ["cnnlab", "fit", "--data", "d", "--time-limit", "30s", "--out", "f"]
    assert seen["nproc_per_node"] == 2 and seen["resumable"] is False  # a fit is not resumed


def test_fit_help_lists_the_launcher_flags(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    for flag in ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint"):
        assert flag in out


def test_candidates_whose_batch_does_not_divide_are_left_out(monkeypatch):
    from test_autofit_plan import PHOTOS

    monkeypatch.setattr(ranks, "world_size", lambda: 3)
    out = ranks.unsupported(("fastnet", "frozen"), 48)  # fast net: batch 48 for 48 images; frozen: 64
    assert list(out) == ["frozen"] and "64 does not divide over the 3 processes" in out["frozen"]
    lines: list[str] = []
    plan = planner.make_plan(PHOTOS, get_preset("medium_quality"), time_limit=19, elapsed=lambda: 0.0,
                             measure=lambda k: 1.0, precision="fp32", device="cpu", machine="test",
                             log=lines.append, world_size=3, global_batch={"fastnet": 48, "frozen": 64},
                             excluded=out)
    assert [c.kind for c in plan.candidates] == ["fastnet"] and plan.order == ["fastnet"]
    assert plan.to_dict()["excluded"] == out and plan.to_dict()["world_size"] == 3
    assert any("world size 3; global batch fastnet 48 (" in line for line in lines)
    assert any("frozen" in line and "left out: its global batch 64" in line for line in lines)
    with pytest.raises(ConfigError, match="no candidate can train with 3 processes"):
        planner.make_plan(PHOTOS, get_preset("medium_quality"), time_limit=19, elapsed=lambda: 0.0,
                          measure=lambda k: 1.0, precision="fp32", device="cpu", machine="test",
                          log=lines.append, world_size=3, excluded={"fastnet": "x", "frozen": "y"})


def test_the_data_check_tells_splits_apart_and_is_a_no_op_for_one_process(make_tree, tmp_path):
    from cnnlab.autofit.profile import load_bundle, with_validation

    bundle, _ = load_bundle(str(make_tree(tmp_path / "t", per_class=8)), log=lambda s: None)
    same = with_validation(bundle, None, seed=0)[:3]
    other = with_validation(bundle, None, seed=1)[:3]
    assert ranks._fingerprint(*same) == ranks._fingerprint(*with_validation(bundle, None, seed=0)[:3])
    assert ranks._fingerprint(*same) != ranks._fingerprint(*other)
    ranks.check_same_data(*same)  # one process: nothing to compare
    assert ranks.synced_start(12.5, lambda: 99.0) == 12.5
