"""What the CPU can do natively: bf16 autocast pays off only with bf16 instructions.

oneDNN reports bf16 as "supported" on any AVX512-BW CPU, where it emulates bf16 by conversions and runs
slower than fp32 (measured: LaConvNet-T training 15 vs ~70 samples/s without AVX512-BF16), so the CPU's
own flags decide whether ``auto`` precision picks bf16.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

#: /proc/cpuinfo flags of native bf16 arithmetic: x86 AVX512-BF16 / AMX-BF16, Arm's BF16 extension.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_bf16_runs() -> bool:
    """bf16 kernels run at all on this CPU (natively or emulated by oneDNN)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU feature flags (``flags`` on x86, ``Features`` on Arm) of ``/proc/cpuinfo``; None if unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


@functools.cache
def cpu_bf16_native() -> bool:
    """bf16 runs natively: the CPU flags name a bf16 extension. Without /proc/cpuinfo (macOS, Windows),
    Apple silicon counts as native and other CPUs defer to oneDNN."""
    if not cpu_bf16_runs():
        return False
    flags = cpu_flags()
    if flags is None:
        return platform.system() == "Darwin" and platform.machine() == "arm64"
    return bool(flags & NATIVE_BF16_FLAGS)
