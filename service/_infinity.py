"""infinity-emb for the peer benchmark: the model folder it serves and its process.

Private to ``service.peers``. infinity runs from its own environment (``.venv-peers``, made by
``loadtests/peers/setup.sh``) through ``loadtests/peers/launch_infinity.py``, which gives its
ONNX Runtime sessions twinserve's options; nothing here imports infinity.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "INFINITY_MODEL_NAME",
    "INFINITY_START_TIMEOUT_S",
    "INFINITY_VERSION",
    "infinity_server",
    "prepare_infinity_model",
    "sha256_file",
]

INFINITY_VERSION = "0.0.78"
ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "loadtests" / "peers" / "launch_infinity.py"
SETUP = ROOT / "loadtests" / "peers" / "setup.sh"
INFINITY_MODEL_NAME = "twinserve-pruned-graph"
INFINITY_START_TIMEOUT_S = 300


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def prepare_infinity_model(artifacts: Path, out: Path) -> Path:
    """A Hugging Face style folder for infinity's optimum engine from ``artifacts``' pruned graph:
    ``config.json`` (the pruned variant's), the tokenizer files, and ``model.onnx``: the same
    graph with one more output, ``last_hidden_state`` = ``Unsqueeze(sentence_embedding, 1)``
    (batch x 1 x dim). Rebuilt only when the source graph changed."""
    import onnx
    from onnx import helper

    src = artifacts / "pruned.onnx"
    if not src.is_file():
        raise FileNotFoundError(f"no pruned.onnx in {artifacts}; build the artifacts with `twinserve prune`")
    digest = sha256_file(src)
    stamp = out / "source.sha256"
    if stamp.is_file() and stamp.read_text().strip() == digest and (out / "model.onnx").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifacts / "pruned" / "config.json", out / "config.json")
    for name in TOKENIZER_FILES:
        if (artifacts / name).is_file():
            shutil.copyfile(artifacts / name, out / name)
    model = onnx.load(str(src))
    outputs = [o.name for o in model.graph.output]
    if "sentence_embedding" not in outputs:
        raise ValueError(f"{src} has outputs {outputs}, not sentence_embedding")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= 13:
        axes = helper.make_tensor("twinserve_peers_axes", onnx.TensorProto.INT64, [1], [1])
        model.graph.initializer.append(axes)
        node = helper.make_node("Unsqueeze", ["sentence_embedding", "twinserve_peers_axes"], ["last_hidden_state"],
                                name="twinserve_peers_last_hidden_state")
    else:
        node = helper.make_node("Unsqueeze", ["sentence_embedding"], ["last_hidden_state"], axes=[1],
                                name="twinserve_peers_last_hidden_state")
    model.graph.node.append(node)
    dim = model.graph.output[outputs.index("sentence_embedding")].type.tensor_type.shape.dim
    model.graph.output.append(helper.make_tensor_value_info(
        "last_hidden_state", onnx.TensorProto.FLOAT, [dim[0].dim_param or dim[0].dim_value or "batch", 1,
                                                      dim[1].dim_value or "dim"]))
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "model.onnx"))
    stamp.write_text(digest + "\n")
    return out


def infinity_server(python: Path, model_dir: Path, port: int, log_path: Path, threads: int,
                     disabled_optimizers: Sequence[str], batch_size: int, nice: int = 0):
    """infinity on 127.0.0.1:``port``, in its own session; stopped like ``twinserve serve`` (SIGINT, SIGTERM,
    then SIGKILL to the group: :data:`service._platform.SERVER_LADDER`)."""
    from service._platform import ChildProcess, poll_until

    class InfinityServer(ChildProcess):
        def __init__(self) -> None:
            env = {**os.environ, "TWINSERVE_PEER_ORT_THREADS": str(threads),
                   "TWINSERVE_PEER_ORT_DISABLED_OPTIMIZERS": ",".join(disabled_optimizers),
                   "HF_HOME": str(model_dir.parent / "hf-home")}
            env.pop("PYTHONPATH", None)
            self.url = f"http://127.0.0.1:{port}"
            niced = ["nice", "-n", str(nice)] if nice else []  # nice execs: the pid stays the server's
            super().__init__(
                [*niced, str(python), str(LAUNCHER), "v2", "--model-id", str(model_dir), "--served-model-name",
                 INFINITY_MODEL_NAME, "--engine", "optimum", "--device", "cpu", "--pooling-method", "cls",
                 "--onnx-disable-optimize", "--batch-size", str(batch_size), "--host", "127.0.0.1",
                 "--port", str(port)],
                log_path, env=env)

        def wait_ready(self, timeout_s: float) -> None:
            import httpx

            def ready() -> bool:
                try:
                    return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            try:
                poll_until(ready, timeout_s, poll_s=1.0, alive=self.alive, what="infinity")
            except RuntimeError:
                raise RuntimeError(f"infinity exited with {self.proc.returncode}; see {self.log_path}") from None
            except TimeoutError:
                raise TimeoutError(f"infinity not ready after {timeout_s:g} s; see {self.log_path}") from None

    return InfinityServer()
