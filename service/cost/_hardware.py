"""The CPU features of this machine, read from /proc/cpuinfo, in the vocabulary of ``prices.CPU_FEATURES``.

x86 kernels print them on a ``flags`` line, arm64 kernels on a ``Features`` line; both use the names the
price catalog uses. Outside Linux nothing is read and the result is ``None`` (unknown), never ``[]``
(which would claim the CPU has none of them).
"""

from __future__ import annotations

from pathlib import Path

from service.cost.prices import CPU_FEATURES

__all__ = ["cpu_flags", "feature_names", "parse_cpu_flags"]


def parse_cpu_flags(cpuinfo: str) -> list[str] | None:
    """The known GEMM features on the first ``flags``/``Features`` line, in ``CPU_FEATURES`` order."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            have = set(value.split())
            return [f for f in CPU_FEATURES if f in have]
    return None


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> list[str] | None:
    try:
        return parse_cpu_flags(Path(path).read_text(errors="replace"))
    except OSError:
        return None


def feature_names(flags: list[str] | set[str]) -> str:
    """``['amx_int8', 'avx512_vnni']`` -> ``'AVX-512 VNNI, AMX-INT8'`` (catalog order)."""
    return ", ".join(CPU_FEATURES[f] for f in CPU_FEATURES if f in flags)
