"""Model backends: plain Python, no Ray. ``load()``, ``embed(texts) -> array``, ``check_health()``.

The Serve deployments wrap these with batching, resources and metrics; tests use them directly.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from service.model.tokenizer import TextTokenizer

__all__ = ["Backend", "OnnxBackend", "OpenVinoBackend", "TorchBackend", "cpu_variant_backend"]

log = logging.getLogger(__name__)


class Backend(ABC):
    """One variant of the model, loaded from a verified artifact directory."""

    variant: str
    device: str = "cpu"
    precision: str = "fp32"
    runtime: str  # onnxruntime | openvino | torch

    def __init__(self, artifact_dir: str | Path, *, threads: int | None = None):
        # Texts over the manifest's max_tokens are always cut (the ingress applies its own limit,
        # reject or truncate, before a backend sees them).
        self.artifact_dir = Path(artifact_dir)
        self.threads = threads
        self.tokenizer: TextTokenizer | None = None
        self.manifest = None

    def load(self) -> None:
        from service.artifacts import hold, verify_artifacts

        hold(self.artifact_dir)  # a lease on the version this process loads: gc keeps it while we run
        self.manifest = verify_artifacts(self.artifact_dir, only=self._files())
        self.tokenizer = TextTokenizer(self.artifact_dir / self.manifest.tokenizer_file, self.manifest.max_tokens)
        self._load()
        log.info("%s variant loaded from %s on %s (%s)", self.variant, self.artifact_dir, self.device, self.precision)

    def embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalised embeddings [len(texts), dim], padded only to the batch's longest text."""
        batch = self.tokenizer(texts)
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
    """An ONNX graph on ONNX Runtime's CPU provider (the pruned variant; the dense one on CPU too).

    ``onnx_file`` overrides the manifest's file (the CPU variant names its own)."""

    runtime = "onnxruntime"

    def __init__(self, artifact_dir, *, variant: str = "pruned", onnx_file: str | None = None,
                 precision: str | None = None, **kw):
        super().__init__(artifact_dir, **kw)
        self.variant = variant
        self.session = None
        self._onnx_file = onnx_file
        self._precision = precision

    def _info(self):
        from service.artifacts.manifest import load_manifest

        m = self.manifest or load_manifest(self.artifact_dir)
        return m.pruned if self.variant == "pruned" else m.dense

    def _files(self) -> list[str]:
        return [self._onnx_file or self._info().onnx_file, "tokenizer.json"]

    def _load(self) -> None:
        from service.model.onnx_runtime import make_session

        self.precision = self._precision or self._info().precision
        self.session = make_session(self.artifact_dir / (self._onnx_file or self._info().onnx_file), self.threads)

    def embed_ids(self, input_ids, attention_mask):
        from service.model.onnx_runtime import run_session

        return run_session(self.session, input_ids, attention_mask)


class OpenVinoBackend(Backend):
    """An OpenVINO IR (``.xml`` + ``.bin``) on OpenVINO's CPU plugin: ``threads`` inference threads
    (the replica's ``num_cpus``), bf16 inference where the CPU has AMX, else f32 (INT8 layers of
    an NNCF-quantised IR run in INT8 either way)."""

    runtime = "openvino"

    def __init__(self, artifact_dir, *, files: list[str], precision: str, variant: str = "pruned", **kw):
        super().__init__(artifact_dir, **kw)
        if not files or not files[0].endswith(".xml"):
            raise ValueError(f"an OpenVINO variant needs its IR .xml file first, got {files}")
        self.variant = variant
        self.files = list(files)
        self._precision = precision
        self.model = None

    def _files(self) -> list[str]:
        return [*self.files, "tokenizer.json"]

    def _load(self) -> None:
        from service.model.openvino_runtime import OpenVinoModel, available

        if not available():
            raise RuntimeError("the manifest's CPU variant runs on OpenVINO, which is not installed: "
                               "pip install openvino (see pyproject.toml), or rebuild with --runtimes onnxruntime")
        self.model = OpenVinoModel(self.artifact_dir / self.files[0], self.threads)
        self.precision = self._precision
        self.inference_precision = self.model.hint

    def embed_ids(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)


def cpu_variant_backend(artifact_dir: str | Path, *, threads: int | None) -> Backend:
    """The backend for the CPU variant the manifest names (``cpu_variant``: runtime, file, precision).

    A manifest written before ``cpu_variant`` existed (job version < 5) serves ``pruned.onnx`` on
    ONNX Runtime, as it always did. Call :meth:`Backend.load` on the result. When the manifest says
    no pruned candidate met the fidelity floor, this logs a warning with the job's own words.
    """
    from service.artifacts.manifest import load_manifest

    manifest = load_manifest(artifact_dir)
    cv = manifest.cpu_variant
    if cv is None:
        return OnnxBackend(artifact_dir, variant="pruned", threads=threads)
    if not cv.meets_floor:
        log.warning("the CPU variant in %s does not meet the fidelity floor: %s", artifact_dir, cv.summary)
    from service._platform import cpu_flags

    here = cpu_flags()
    if here and set(here) != set(cv.cpu_flags):
        log.warning("the CPU variant (%s on %s) was chosen on a CPU with flags %s; this one has %s: another "
                    "runtime or precision may be faster here (rebuild with `twinserve prune` on this kind of node)",
                    cv.candidate, cv.runtime, " ".join(cv.cpu_flags) or "unknown", " ".join(here))
    if cv.runtime == "openvino":
        return OpenVinoBackend(artifact_dir, files=cv.files, precision=cv.precision, variant=cv.model,
                               threads=threads)
    return OnnxBackend(artifact_dir, variant=cv.model, onnx_file=cv.file, precision=cv.precision, threads=threads)


class TorchBackend(Backend):
    """The dense model in torch: CUDA in fp16 (bf16 where supported) when a GPU is visible, else CPU fp32."""

    variant = "dense"
    runtime = "torch"

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
