"""Facts about the machine: device, physical cores, bf16 support; and the autocast choice."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
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


def cpu_has_amx() -> bool:
    """True when the CPU has AMX tiles for bf16 matrix products (Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


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


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for plain fp32.

    "auto" means bf16 on a GPU that supports it and on a CPU with AMX-BF16 (where it measured
    1.3x faster than fp32 for MobileNet training, see benchmarks/RESULTS.md), fp32 elsewhere.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_bf16():
            return None  # same API, fp32 where the CPU lacks bf16 instructions
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
