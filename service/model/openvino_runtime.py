"""OpenVINO compiled models for twinserve graphs (``input_ids``, ``attention_mask`` -> ``sentence_embedding``).

OpenVINO reads the plain ONNX export (or its own IR, ``.xml`` + ``.bin``), not the graph that
ONNX Runtime's BERT optimiser fused: ``Attention`` and ``BiasGelu`` are ORT contrib ops.

Threads come from the caller (the replica's ``num_cpus``); inference precision is f32 unless
the CPU has AMX, where bf16 is OpenVINO's own choice and ours (``precision_hint``). On a CPU
without AMX (AVX-512 BF16 alone, as the AMD EPYC this was developed on) OpenVINO's default is
f32 as well: bf16 there is emulated per op and was not measured faster.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from service._platform import cpu_flags

__all__ = ["OpenVinoModel", "available", "has_amx", "precision_hint"]

def has_amx(flags: list[str] | None = None) -> bool:
    """Whether ``flags`` (default: this machine's, :func:`service._platform.cpu_flags`) include AMX-BF16."""
    return "amx_bf16" in ((cpu_flags() or []) if flags is None else flags)


def precision_hint(flags: list[str] | None = None) -> str:
    """``bf16`` where the CPU has AMX, else ``f32`` (OpenVINO's ``INFERENCE_PRECISION_HINT``)."""
    return "bf16" if has_amx(flags) else "f32"


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoModel:
    """One compiled model on OpenVINO's CPU plugin; :meth:`__call__` is safe from several threads
    (one infer request, used under a lock: a replica runs one batch at a time anyway)."""

    def __init__(self, path: str | Path, threads: int | None = None, hint: str | None = None):
        import openvino as ov

        self.path = Path(path)
        self.hint = hint or precision_hint()
        # No CPU pinning (the LATENCY hint's default on Linux): a replica shares its cores with Ray's
        # processes, and pinned threads then wait on busy cores. Measured side by side on the shared
        # 2-core machine: 1x128 9.7 vs 12.0 ms, 32x32 44 vs 75 ms unpinned vs pinned (BENCHMARKS.md).
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": self.hint,
                  "ENABLE_CPU_PINNING": "NO"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        self.input_names = {p.get_any_name() for p in self.compiled.inputs}
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def property(self, name: str):
        return self.compiled.get_property(name)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        with self._lock:
            self._request.infer(feeds)
            return np.array(self._request.get_output_tensor(0).data, copy=True)
