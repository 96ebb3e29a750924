"""Export to ONNX (pooling and normalisation inside the graph) and quantise to INT8."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from service.model.encoder import Encoder

__all__ = ["export_onnx", "quantize_int8"]

OPSET = 17


class _Graph(torch.nn.Module):
    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask)[0]


@torch.no_grad()
def export_onnx(model: Encoder, path: Path) -> Path:
    """fp32 ONNX graph: int64 ``input_ids``/``attention_mask`` [batch, seq] -> ``sentence_embedding`` [batch, dim].

    Uses the TorchScript exporter (``dynamo=False``): on torch 2.13 it exports this module in
    about a second with plain dynamic axes; the dynamo exporter produced the same numbers
    five times slower.
    """
    model = model.eval()
    ids = torch.randint(1000, 2000, (2, 16), dtype=torch.long)
    mask = torch.ones_like(ids)
    axes = {"batch": 0, "sequence": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Graph(model), (ids, mask), str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={"input_ids": {v: k for k, v in axes.items()},
                          "attention_mask": {v: k for k, v in axes.items()},
                          "sentence_embedding": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
    return path


def quantize_int8(fp32_path: Path, out_path: Path) -> Path:
    """Dynamic INT8 quantisation of MatMul weights, per output channel.

    Per-tensor INT8 alone costs about 0.04 of mean cosine on MiniLM; per-channel about 0.01.
    The graph is first run through ORT's pre-processing (shape inference and basic graph
    optimisation) so that every MatMul sees constant weights.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        quantize_dynamic(
            str(pre), str(out_path), per_channel=True, weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
        )
    return out_path
