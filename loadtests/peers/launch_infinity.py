"""Start infinity-emb (run with the peer environment's Python) with ONNX Runtime sessions set up
the way twinserve's are.

``.venv-peers/bin/python loadtests/peers/launch_infinity.py v2 --model-id DIR --engine optimum ...``

infinity has no flag for ONNX Runtime's threads: its optimum engine builds the session with
default options (intra-op threads = ORT's guess from the core count). So this wrapper sets them
before infinity's command line starts, by wrapping ``onnxruntime.InferenceSession``:

* ``TWINSERVE_PEER_ORT_THREADS``: intra-op threads (and one inter-op thread, sequential
  execution, as twinserve's sessions); unset leaves ORT's default;
* ``TWINSERVE_PEER_ORT_DISABLED_OPTIMIZERS``: comma-separated ORT graph optimisers to switch
  off (twinserve turns off ``SkipLayerNormFusion``; the benchmark passes the same list so both
  servers run the graph the same way).

Every session it creates is announced on stderr with the options it got, so the benchmark's log
shows what actually ran. Nothing here imports twinserve: the peer environment does not have it.
"""

from __future__ import annotations

import os
import sys


def _configure_sessions() -> None:
    import onnxruntime as ort

    threads = int(os.environ.get("TWINSERVE_PEER_ORT_THREADS", "0") or 0)
    disabled = [o for o in os.environ.get("TWINSERVE_PEER_ORT_DISABLED_OPTIMIZERS", "").split(",") if o]
    original = ort.InferenceSession.__init__

    def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs):
        opts = sess_options if sess_options is not None else ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if disabled:
            kwargs.setdefault("disabled_optimizers", disabled)
        name = path_or_bytes if isinstance(path_or_bytes, str) else "<bytes>"
        print(f"twinserve-peers: ONNX Runtime {ort.__version__} session {name}: intra_op_num_threads="
              f"{opts.intra_op_num_threads or 'default'}, disabled_optimizers={disabled}", file=sys.stderr, flush=True)
        original(self, path_or_bytes, opts, providers, provider_options, **kwargs)

    ort.InferenceSession.__init__ = __init__


def main() -> None:
    os.environ.setdefault("INFINITY_ANONYMOUS_USAGE_STATS", "0")  # no telemetry from a benchmark
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local folder; nothing to fetch
    _configure_sessions()
    from infinity_emb.cli import cli

    sys.argv = ["infinity_emb", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()
