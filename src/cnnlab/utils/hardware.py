"""Facts about the machine: device, physical cores, bf16 support; and the autocast choice."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch


@functools.cache
def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share a core's FPU, so skip them)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            return max(1, len(allowed))
    return max(1, len(cores))


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


#: Set to 0 to treat this CPU as lacking bf16 instructions (run the fp32 path on any machine,
#: e.g. to check on an AMX Xeon what a user on an AVX2-only CPU gets); 1 to trust the CPU flags;
#: "force" to take the bf16 path on any CPU (the test mode that lets a developer on a CPU without
#: bf16 run what a Sapphire Rapids runs: correct, but emulated and slow, so for tiny models only).
BF16_ENV = "CNNLAB_CPU_BF16"


def bf16_forced() -> bool:
    return os.environ.get(BF16_ENV, "1").lower() == "force"


def cpu_has_amx() -> bool:
    """True when the CPU has AMX tiles for bf16 matrix products (Sapphire Rapids and later)."""
    return os.environ.get(BF16_ENV, "1") != "0" and "amx_bf16" in cpu_flags()


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16).

    Without them PyTorch emulates bf16 with conversions: a bf16 matrix product measured 0.8
    GFLOP/s against 34 GFLOP/s in fp32 on an AVX2-only AMD EPYC (Zen 3) core.
    """
    return bf16_forced() or (os.environ.get(BF16_ENV, "1") != "0" and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"}))


@functools.cache
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_summary() -> str:
    dev = f", GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    bf16 = "bf16" if cpu_has_bf16() else "no bf16"
    return (f"{cpu_name()} ({physical_cores()} physical cores, {os.cpu_count()} logical, {bf16}), "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads{dev}")


def setup_threads() -> None:
    """One compute thread per physical core (more only fight over the same FPU)."""
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(physical_cores())


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """The one precision rule's answer: the autocast dtype (None: plain fp32), its name, and why."""

    dtype: torch.dtype | None
    requested: str
    reason: str

    @property
    def name(self) -> str:
        return "fp32" if self.dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def downgraded(self) -> bool:
        """True when a reduced precision was asked for and the hardware cannot run it natively."""
        return self.requested in ("bf16", "fp16") and self.dtype is None

    def note(self) -> str:
        """One line for the log: what runs, and why."""
        if self.downgraded:
            return f"precision: {self.requested} was asked for, running in fp32: {self.reason}"
        return f"precision: {self.name} ({self.reason})"


def choose_precision(precision: str, device: torch.device | str) -> Precision:
    """The one precision rule every compute path uses (training, Muon, evaluation, features, export,
    benchmarks): bf16 only where the hardware runs it natively, fp32 elsewhere.

    - "fp32": fp32.
    - "bf16" / "fp16" / "auto" on a CPU: bf16 where the CPU has AVX512-BF16 or AMX-BF16, fp32 on
      any other CPU (emulated bf16 runs about 40x slower than fp32 there). fp16 is never used on a
      CPU (no fast kernels): a CPU that runs bf16 gets bf16 instead.
    - on a GPU: "fp16" is fp16 (the caller scales the loss); "bf16" and "auto" are bf16 where
      the GPU supports it, fp32 elsewhere.
    """
    device = torch.device(device)
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be one of auto, fp32, bf16, fp16; got {precision!r}")
    if precision == "fp32":
        return Precision(None, precision, "asked for")
    if device.type == "cpu":
        if cpu_has_bf16():
            kind = (f"{BF16_ENV}=force" if bf16_forced() and not cpu_flags() & {"avx512_bf16", "amx_bf16"}
                    else "AMX-BF16" if cpu_has_amx() else "AVX512-BF16")
            return Precision(torch.bfloat16, precision, f"{cpu_name()} has {kind}")
        why = (f"{BF16_ENV}=0" if os.environ.get(BF16_ENV) == "0"
               else f"{cpu_name()} has no bf16 instructions (AVX512-BF16 or AMX)")
        return Precision(None, precision, why)
    if device.type == "cuda":
        if precision == "fp16":
            return Precision(torch.float16, precision, "asked for, on a GPU")
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, precision, f"{torch.cuda.get_device_name(device)} supports bf16")
        return Precision(None, precision, f"{torch.cuda.get_device_name(device)} has no bf16")
    return Precision(None, precision, f"no reduced precision on {device.type}")


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of :func:`choose_precision` (None for plain fp32)."""
    return choose_precision(precision, device).dtype


def matmul_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype for work that only needs a matrix product's direction, not its digits (Muon's
    orthogonalisation): bf16 where the hardware runs it natively, fp32 elsewhere."""
    return choose_precision("auto", device).dtype or torch.float32


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
