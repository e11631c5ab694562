"""The one precision rule (utils/hardware.py): bf16 only where the hardware runs it natively.

With the CPU reported as lacking bf16 (its flags monkeypatched), a training step of the fast
recipe, one of the standard loop and a frozen-feature extraction must execute no bf16
operation; counted with a TorchDispatchMode that records every operator's output dtypes. The
same counts with the CPU reported as having AMX show bf16 operators, so the check can fail.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cnnlab import api
from cnnlab.training.recipes.muon import Muon
from cnnlab.utils import hardware

pytestmark = pytest.mark.usefixtures("one_thread")


class DtypeCounter(TorchDispatchMode):
    """Counts the dtypes of every tensor an operator returns (this thread only)."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: Counter[torch.dtype] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.dtypes[t.dtype] += 1
        return out


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(hardware, "cpu_name", lambda: "Test CPU without bf16")


@pytest.fixture
def amx_cpu(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "amx_bf16"}))
    monkeypatch.setattr(hardware, "cpu_name", lambda: "Test CPU with AMX")


def test_rule_on_a_cpu_without_bf16(no_bf16_cpu):
    for asked in ("auto", "bf16", "fp16", "fp32"):
        p = hardware.choose_precision(asked, "cpu")
        assert p.dtype is None and p.name == "fp32"
        assert p.downgraded == (asked in ("bf16", "fp16"))
    note = hardware.choose_precision("bf16", "cpu").note()
    assert "fp32" in note and "Test CPU without bf16" in note and "bf16 instructions" in note
    assert hardware.matmul_dtype("cpu") == torch.float32


def test_rule_on_a_cpu_with_bf16(amx_cpu, monkeypatch):
    for asked in ("auto", "bf16", "fp16"):
        assert hardware.choose_precision(asked, "cpu").dtype == torch.bfloat16  # never fp16 on a CPU
    assert hardware.choose_precision("fp32", "cpu").dtype is None
    assert hardware.matmul_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv(hardware.BF16_ENV, "0")  # the switch that runs the fp32 path anywhere
    p = hardware.choose_precision("bf16", "cpu")
    assert p.dtype is None and hardware.BF16_ENV in p.reason


def test_avx512_bf16_alone_counts_as_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert hardware.choose_precision("auto", "cpu").dtype == torch.bfloat16
    assert not hardware.cpu_has_amx()


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        hardware.choose_precision("int4", "cpu")


def test_muon_orthogonalises_in_the_dtype_it_is_given():
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3))
    for dtype, expect_bf16 in ((torch.float32, False), (torch.bfloat16, True)):
        opt = Muon([w], lr=0.01, ns_dtype=dtype)
        w.grad = torch.randn_like(w)
        with DtypeCounter() as counter:
            opt.step()
        assert (counter.dtypes[torch.bfloat16] > 0) == expect_bf16


def _fast_cfg(precision: str = "bf16") -> dict:
    return {
        "name": "dtype-fast", "seed": 0, "data": {"validation_split": 0.0},
        "model": {"arch": "cifar_fastnet", "preprocessing": "keras_tf", "head": {"pooling": "max"},
                  "kwargs": {"widths": [8, 16, 16]}},
        "train": {"recipe": "fast", "epochs": 1, "batch_size": 32, "precision": precision,
                  "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.85, "nesterov": True},
                  "schedule": {"name": "linear", "warmup_epochs": 0.5},
                  "augment": {"crop_padding": 2, "flip": True},
                  # one worker: the dispatch mode sees the calling thread's operators only
                  "recipe_options": {"optimizer": "muon", "workers": 1}},
    }


def _count(cfg: dict, data, tmp_path, name: str) -> Counter:
    with DtypeCounter() as counter:
        api.train(cfg, data=str(data), run_dir=tmp_path / name, progress=False, log=lambda s: None,
                  evaluate_test=False)
    return counter.dtypes


def test_fast_recipe_step_runs_no_bf16_without_bf16_hardware(no_bf16_cpu, tiny_tree, tmp_path):
    logs: list[str] = []
    with DtypeCounter() as counter:
        api.train(_fast_cfg(), data=str(tiny_tree), run_dir=tmp_path / "f", progress=False, log=logs.append,
                  evaluate_test=False)
    assert counter.dtypes[torch.float32] > 0
    assert counter.dtypes[torch.bfloat16] == 0, counter.dtypes
    assert any("running in fp32" in line for line in logs)  # the one line saying so, and why


def test_fast_recipe_step_uses_bf16_with_bf16_hardware(amx_cpu, tiny_tree, tmp_path):
    # The counter above can fail: the same run on a CPU reported as having AMX runs bf16 operators.
    assert _count(_fast_cfg(), tiny_tree, tmp_path, "f")[torch.bfloat16] > 0


def _standard_cfg(**model) -> dict:
    return {
        "name": "dtype-std", "seed": 0, "data": {"validation_split": 0.25},
        "model": {"arch": "resnet18", "preprocessing": "keras_tf", "head": {"pooling": "avg"}, **model},
        "train": {"epochs": 1, "batch_size": 16, "precision": "bf16",
                  "optimizer": {"name": "adam", "lr": 1e-3}},
    }


def test_standard_loop_step_runs_no_bf16_without_bf16_hardware(no_bf16_cpu, tiny_tree, tmp_path):
    dtypes = _count(_standard_cfg(), tiny_tree, tmp_path, "s")
    assert dtypes[torch.float32] > 0 and dtypes[torch.bfloat16] == 0, dtypes


def test_standard_loop_step_uses_bf16_with_bf16_hardware(amx_cpu, tiny_tree, tmp_path):
    assert _count(_standard_cfg(), tiny_tree, tmp_path, "s")[torch.bfloat16] > 0


def test_feature_extraction_runs_no_bf16_without_bf16_hardware(no_bf16_cpu, tiny_tree, tmp_path):
    cfg = _standard_cfg(freeze_base=True)
    cfg["train"]["cache_features"] = "on"
    cfg["train"]["compile_features"] = "off"
    dtypes = _count(cfg, tiny_tree, tmp_path, "x")
    assert dtypes[torch.float32] > 0 and dtypes[torch.bfloat16] == 0, dtypes


def test_feature_extraction_uses_bf16_with_bf16_hardware(amx_cpu, tiny_tree, tmp_path):
    cfg = _standard_cfg(freeze_base=True)
    cfg["train"]["cache_features"] = "on"
    cfg["train"]["compile_features"] = "off"
    assert _count(cfg, tiny_tree, tmp_path, "x")[torch.bfloat16] > 0
