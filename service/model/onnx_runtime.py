"""ONNX Runtime sessions for twinserve graphs (``input_ids``, ``attention_mask`` -> ``sentence_embedding``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["DISABLED_OPTIMIZERS", "make_session", "run_session"]

# ORT's CPU SkipLayerNormalization kernel is about 4x slower than the Add + LayerNormalization
# it replaces (1 x 128 x 384, 2 threads, ORT 1.31: 115 vs 29 us; BENCHMARKS.md), and a BERT
# layer has two of them: at batch 1 x 128 they were a third of the pruned INT8 graph's time.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def _session_options(threads: int | None = None):
    """The options of every twinserve session: all graph optimisations, ``threads`` intra-op
    threads (ORT's default when None), one graph at a time."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def make_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=_session_options(threads), providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


def run_session(session, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    wanted = {i.name for i in session.get_inputs()}
    if "token_type_ids" in wanted:
        feeds["token_type_ids"] = np.zeros_like(input_ids)
    return session.run(["sentence_embedding"], {k: v for k, v in feeds.items() if k in wanted})[0]
