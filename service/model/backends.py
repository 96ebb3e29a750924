"""Model backends: plain Python, no Ray. ``load()``, ``embed(texts) -> array``, ``check_health()``.

The Serve deployments wrap these with batching, resources and metrics; tests use them directly.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from service.model.tokenizer import TextTokenizer

__all__ = ["Backend", "OnnxBackend", "TorchBackend", "cpu_variant_backend"]

log = logging.getLogger(__name__)


class Backend(ABC):
    """One variant of the model, loaded from a verified artifact directory."""

    variant: str
    device: str = "cpu"
    precision: str = "fp32"

    def __init__(self, artifact_dir: str | Path, *, threads: int | None = None, truncate: bool = True):
        self.artifact_dir = Path(artifact_dir)
        self.threads = threads
        self.truncate = truncate
        self.tokenizer: TextTokenizer | None = None
        self.manifest = None

    def load(self) -> None:
        from service.pruning.manifest import verify_artifacts

        self.manifest = verify_artifacts(self.artifact_dir, only=self._files())
        self.tokenizer = TextTokenizer(self.artifact_dir / self.manifest.tokenizer_file, self.manifest.max_tokens)
        self._load()
        log.info("%s variant loaded from %s on %s (%s)", self.variant, self.artifact_dir, self.device, self.precision)

    def embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalised embeddings [len(texts), dim], padded only to the batch's longest text."""
        batch = self.tokenizer(texts, truncate=self.truncate)
        return self.embed_ids(batch.input_ids, batch.attention_mask)

    def check_health(self) -> None:
        out = self.embed(["health check"])
        if not np.all(np.isfinite(out)):
            raise RuntimeError(f"{self.variant} backend returned non-finite embeddings")

    @abstractmethod
    def _files(self) -> list[str]: ...

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def embed_ids(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


class OnnxBackend(Backend):
    """An ONNX graph on ONNX Runtime's CPU provider (the pruned variant; the dense one on CPU too)."""

    def __init__(self, artifact_dir, *, variant: str = "pruned", **kw):
        super().__init__(artifact_dir, **kw)
        self.variant = variant
        self.session = None

    def _info(self):
        from service.pruning.manifest import load_manifest

        m = self.manifest or load_manifest(self.artifact_dir)
        return m.pruned if self.variant == "pruned" else m.dense

    def _files(self) -> list[str]:
        return [self._info().onnx_file, "tokenizer.json"]

    def _load(self) -> None:
        from service.model.onnx_runtime import make_session

        self.precision = self._info().precision
        self.session = make_session(self.artifact_dir / self._info().onnx_file, self.threads)

    def embed_ids(self, input_ids, attention_mask):
        from service.model.onnx_runtime import run_session

        return run_session(self.session, input_ids, attention_mask)


class TorchBackend(Backend):
    """The dense model in torch: CUDA in fp16 (bf16 where supported) when a GPU is visible, else CPU fp32."""

    variant = "dense"

    def __init__(self, artifact_dir, *, device: str | None = None, **kw):
        super().__init__(artifact_dir, **kw)
        self._device_wanted = device
        self.model = None

    def _files(self) -> list[str]:
        return ["dense/config.json", "dense/model.safetensors", "tokenizer.json"]

    def _load(self) -> None:
        import torch

        from service.model.encoder import load_encoder

        if self.threads:
            torch.set_num_threads(self.threads)
        self.device = self._device_wanted or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float32
        if self.device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.precision = str(dtype).removeprefix("torch.").replace("float32", "fp32")
        self.model = load_encoder(self.artifact_dir / "dense").to(self.device, dtype).eval()

    def embed_ids(self, input_ids, attention_mask):
        import torch

        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self.device)
            mask = torch.from_numpy(attention_mask).to(self.device)
            emb, _ = self.model(ids, mask)
            return emb.float().cpu().numpy()


def cpu_variant_backend(artifact_dir: str | Path, *, threads: int, truncate: bool = True) -> Backend:
    """The CPU variant's backend, as the artifacts' manifest names it (the pruned ONNX graph on ONNX Runtime)."""
    return OnnxBackend(artifact_dir, variant="pruned", threads=threads, truncate=truncate)
