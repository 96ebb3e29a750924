"""The model: architecture config, tokeniser, backends (load / embed / check_health), the torch encoder.

The torch encoder is imported on first use, so ONNX-only processes never load torch.
"""

from service.model.config import EncoderConfig, LayerShape, ModelLoadError
from service.model.tokenizer import Batch, TextTokenizer
from service.model.backends import (  # noqa: I001 - after tokenizer
    Backend, OnnxBackend, OpenVinoBackend, TorchBackend, cpu_variant_backend,
)

__all__ = [
    "Backend", "Batch", "Encoder", "EncoderConfig", "LayerShape", "ModelLoadError", "OnnxBackend",
    "OpenVinoBackend", "TextTokenizer", "TorchBackend", "cpu_variant_backend", "load_encoder",
    "save_encoder",
]
_TORCH = {"Encoder", "load_encoder", "save_encoder"}


def __getattr__(name: str):
    if name in _TORCH:
        from service.model import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
