"""Data-parallel training under torchrun: 2 CPU processes (gloo) on 127.0.0.1 against 1 process.

Every job goes through cnnlab's launcher (training/launch.py -> torch.distributed.run, standalone
rendezvous on a free port). The subprocess timeouts are generous bounds so that a hang fails
the test instead of blocking the suite; nothing asserts on wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cnnlab import api
from cnnlab.cli.launch import strip_flags
from cnnlab.training.launch import torchrun_args

pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")
slow = pytest.mark.slow  # each starts a 2-process torchrun job (~15-30 s on a busy 2-core machine)

SRC = Path(__file__).resolve().parents[2] / "src"
TIMEOUT = 240  # seconds: a bound against hangs, far above the ~20 s these jobs take on a busy 2-core machine

#: The standard loop with nothing random that depends on the batch split: no augmentation, no
#: dropout, fp32, and GroupNorm instead of BatchNorm (SyncBatchNorm has no CPU kernel).
STANDARD = {
    "name": "ddp-test", "seed": 0, "data": {"validation_split": 0.25},
    "model": {"arch": "test_resnet", "kwargs": {"norm_layer": "groupnorm1"}, "head": {"pooling": "avg"}},
    "train": {"epochs": 3, "batch_size": 12, "precision": "fp32",
              "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
}

#: Weights of the 2-process run against the 1-process run: max |difference| / max |weight| per
#: tensor. Only the summation order differs (two half-batches averaged by an all-reduce);
#: measured 6e-7 after 15 steps.
REL_TOL = 1e-5


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["CNNLAB_DIST_TIMEOUT"] = "60"  # a collective waiting on a dead rank fails after a minute
    return env


def _cnnlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)


def _launch_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` as a 2-process torchrun job through cnnlab's launcher, errors as the CLI prints them."""
    (cwd / "job.py").write_text(textwrap.dedent(script))
    driver = textwrap.dedent("""
        import sys
        from cnnlab.training.launch import launch
        from cnnlab.errors import CnnlabError
        try:
            launch(["job.py", *sys.argv[1:]], nproc_per_node=2, module=False)
        except CnnlabError as exc:
            print(f"cnnlab: error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
    """)
    return subprocess.run([sys.executable, "-c", driver, *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12))
               for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from conftest import _write_tree

    return _write_tree(tmp_path_factory.mktemp("ddp") / "tree")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """The 1-process run of STANDARD (global batch 12)."""
    import torch as _torch

    before = _torch.get_num_threads()
    _torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("ref") / "run"
        api.train(STANDARD, data=str(data), run_dir=out, progress=False, log=lambda s: None)
    finally:
        _torch.set_num_threads(before)
    return out


def test_launcher_strips_its_flags_and_builds_torchrun_args():
    argv = ["train", "-c", "c.yaml", "--nproc-per-node", "2", "--nnodes=2", "--node-rank", "1",
            "--rdzv-endpoint", "10.0.0.1:29500", "--epochs", "3"]
    assert strip_flags(argv) == ["train", "-c", "c.yaml", "--epochs", "3"]
    one = torchrun_args(["cnnlab", "train"], nproc_per_node=2)
    assert one[-3:] == ["-m", "cnnlab", "train"] and "--standalone" in one
    many = torchrun_args(["cnnlab", "train"], nproc_per_node=4, nnodes=2, node_rank=1, rdzv_endpoint="h:1")
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-endpoint=h:1"} <= set(many) and "--standalone" not in many


@slow
def test_two_processes_equal_one_process_with_the_same_global_batch(data, reference, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(STANDARD))
    proc = _cnnlab("train", "-c", "c.yaml", "--data", str(data), "--run-dir", "two", "--no-progress",
                   "--nproc-per-node", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global batch 12 = 2 x 6 per rank" in proc.stdout
    assert proc.stdout.count("Epoch 1/3") == 1  # rank 0 alone logs
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 12,
                                      "per_rank_batch": 6, "lr_scaling": "none"}
    diff = _max_rel_diff(load_file(reference / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors"))
    assert diff < REL_TOL
    ref_hist = (reference / "history.csv").read_text().splitlines()
    two_hist = (tmp_path / "two" / "history.csv").read_text().splitlines()
    assert len(two_hist) == len(ref_hist) == 4  # header + 3 epochs; the losses agree to the same noise
    ref_m = json.loads((reference / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] == ref_m["val"]["accuracy"]
    assert metrics["val"]["loss"] == pytest.approx(ref_m["val"]["loss"], rel=1e-3, abs=1e-5)


FAST_JOB = """
    import os, sys
    from pathlib import Path
    import yaml
    import cnnlab
    from cnnlab.training.distributed import session

    cfg, data, run_dir = yaml.safe_load(open(sys.argv[1])), sys.argv[2], Path(sys.argv[3]).resolve()
    if os.environ["RANK"] != "0":
        # Every file cnnlab writes is written atomically, through os.replace: on this rank, any
        # replace into the run directory fails the job.
        real = os.replace
        def guarded(src, dst, *a, **k):
            if Path(dst).resolve().is_relative_to(run_dir):
                raise AssertionError(f"rank {os.environ['RANK']} wrote {dst}")
            return real(src, dst, *a, **k)
        os.replace = guarded
    with session():
        cnnlab.train(cfg, data=data, run_dir=run_dir, progress=False)
"""

FAST = {
    "name": "ddp-fast", "seed": 3, "data": {"validation_split": 0.25},
    "model": {"arch": "cifar_fastnet", "preprocessing": "keras_tf", "head": {"pooling": "max"},
              "kwargs": {"widths": [8, 16, 16]}},
    "train": {"recipe": "fast", "epochs": 6, "batch_size": 12, "precision": "fp32",
              "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.85, "nesterov": True},
              "schedule": {"name": "linear", "warmup_epochs": 1}, "label_smoothing": 0.2,
              "augment": {"crop_padding": 2, "flip": True}, "checkpoint": {"monitor": "val_accuracy"},
              "recipe_options": {"workers": 1}},
}


@slow
def test_fast_recipe_under_two_processes_rank0_alone_writes(data, tmp_path):
    one = api.train(FAST, data=str(data), run_dir=tmp_path / "one", progress=False, log=lambda s: None)
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump(FAST))
    proc = _launch_script(FAST_JOB, "fast.yaml", str(data), "two", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["distributed"]["world_size"] == 2 and two["epochs_run"] == one.metrics["epochs_run"] == 6
    assert (tmp_path / "two" / "model.safetensors").is_file() and not (tmp_path / "two" / "state").exists()
    # The same accuracy band: the three colour classes are learned by both (augmentation and
    # the half-batches' BatchNorm statistics differ, so the weights do not match exactly).
    print("val accuracy, 1 vs 2 processes:", one.metrics["val"]["accuracy"], two["val"]["accuracy"])
    assert one.metrics["val"]["accuracy"] >= 0.9 and two["val"]["accuracy"] >= 0.9
    assert abs(two["val"]["accuracy"] - one.metrics["val"]["accuracy"]) <= 0.1


KILL_JOB = """
    import os, signal, sys
    import yaml
    import cnnlab
    from cnnlab.training.distributed import session

    def kill_rank1_in_epoch_2(epoch, logs):
        if epoch == 1 and os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGKILL)  # rank 0 saved epoch 1 and waits in a collective

    with session():
        cnnlab.train(yaml.safe_load(open(sys.argv[1])), data=sys.argv[2], run_dir=sys.argv[3], progress=False,
                     epoch_callback=kill_rank1_in_epoch_2)
"""


@slow
def test_killed_rank_ends_the_job_and_the_run_resumes_under_ddp(data, reference, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(STANDARD))
    proc = _launch_script(KILL_JOB, "c.yaml", str(data), "killed", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cnnlab: error: data-parallel job failed: rank 1 ")
    assert "was killed by SIGKILL" in last
    assert f"cnnlab train --resume {(tmp_path / 'killed').resolve()} --nproc-per-node 2" in last
    state = json.loads((tmp_path / "killed" / "state" / "train_state.json").read_text())
    assert state["epoch"] == 0 and not (tmp_path / "killed" / "model.safetensors").exists()

    # Resume under DDP: both ranks continue from rank 0's state, to the uninterrupted weights.
    proc = _cnnlab("train", "--resume", "killed", "--nproc-per-node", "2", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stdout and proc.stdout.count("Epoch 2/3") == 1
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["distributed"]["world_size"] == 2
    diff = _max_rel_diff(load_file(reference / "model.safetensors"),
                         load_file(tmp_path / "killed" / "model.safetensors"))
    assert diff < REL_TOL


def test_launcher_flags_are_checked(capsys):
    from cnnlab.cli.main import main

    assert main(["train", "--nnodes", "2"]) == 2
    assert "--nnodes goes with --nproc-per-node N" in capsys.readouterr().err
    assert main(["train", "--nproc-per-node", "2", "--nnodes", "2"]) == 2
    assert "needs --node-rank R and --rdzv-endpoint HOST:PORT" in capsys.readouterr().err


def test_global_batch_must_divide_over_the_processes(monkeypatch):
    from cnnlab.errors import ConfigError
    from cnnlab.training import distributed as ddp
    from cnnlab.utils.distributed import Dist

    monkeypatch.setattr(ddp, "current", lambda: Dist(rank=1, world_size=2, local_rank=1))
    assert ddp.per_rank_batch(12) == 6
    with pytest.raises(ConfigError, match="train.batch_size=13 is the global batch and must be a multiple of the 2"):
        ddp.per_rank_batch(13)


@slow
def test_docs_python_example_runs_under_two_processes(make_tree, tmp_path):
    text = (Path(__file__).resolve().parents[2] / "docs" / "distributed.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    make_tree(tmp_path / "my_images")
    proc = _launch_script(block, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [line for line in proc.stdout.splitlines() if "'world_size': 2" in line]
    assert len(printed) == 1  # rank 0 prints the metrics; rank 1 prints {} ... None
    run_dir = tmp_path / printed[0].split()[0]
    assert (run_dir / "model.safetensors").is_file()
