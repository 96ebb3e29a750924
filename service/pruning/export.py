"""Export to ONNX (pooling and normalisation inside the graph), fuse, and quantise to INT8."""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from service.model.encoder import Encoder

__all__ = ["export_onnx", "export_openvino", "fused_ops", "quantize_int8"]

OPSET = 17
FUSED_OP_TYPES = ("Attention", "BiasGelu")
FUSION_TOLERANCE = 1e-4  # largest |difference| of an embedding component the fused graph may show


class _Graph(torch.nn.Module):
    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask)[0]


@torch.no_grad()
def export_onnx(model: Encoder, path: Path, *, fuse: bool = True) -> Path:
    """fp32 ONNX graph: int64 ``input_ids``/``attention_mask`` [batch, seq] -> ``sentence_embedding`` [batch, dim].

    Uses the TorchScript exporter (``dynamo=False``): on torch 2.13 it exports this module in
    about a second with plain dynamic axes; the dynamo exporter produced the same numbers
    five times slower. With ``fuse`` the graph then goes through :func:`_fuse`.
    """
    model = model.eval()
    ids = torch.randint(1000, 2000, (2, 16), dtype=torch.long)
    mask = torch.ones_like(ids)
    axes = {"batch": 0, "sequence": 1}
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Graph(model), (ids, mask), str(plain if fuse else path),
                input_names=["input_ids", "attention_mask"],
                output_names=["sentence_embedding"],
                dynamic_axes={"input_ids": {v: k for k, v in axes.items()},
                              "attention_mask": {v: k for k, v in axes.items()},
                              "sentence_embedding": {0: "batch"}},
                opset_version=OPSET, dynamo=False,
            )
        if fuse:
            _fuse(plain, path, model.config.vocab_size)
    return path


def _fuse(plain: Path, out: Path, vocab_size: int) -> None:
    """ONNX Runtime's BERT optimiser: each layer's Q/K/V projections, scores, softmax and
    context become one ``Attention`` node (one QKV MatMul, quantised later as ``QAttention``),
    bias + GELU ``BiasGelu``. Residual + LayerNorm stay two nodes: ORT's
    ``SkipLayerNormalization`` CPU kernel is slower than the pair (see
    ``service.model.onnx_runtime.DISABLED_OPTIMIZERS``, which keeps sessions from fusing them).

    Pruned layers have different head counts; the optimiser reads each layer's from its
    Reshape constants (``num_heads=0``). At batch 1 the fused INT8 graph runs fewer, larger
    kernels: about 10% faster at 1 x 128 tokens than with the session's own ``ORT_ENABLE_ALL``
    fusions alone (which leave attention unfused; BENCHMARKS.md), the same at batch 32, and
    no faster for dense fp32. The fused graph is kept only if it
    gives the plain graph's embeddings (max |difference| <= ``FUSION_TOLERANCE``) on a
    padded probe batch; otherwise, or if the optimiser fails, the plain graph is written.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    from service.model.onnx_runtime import make_session, run_session

    # The optimiser warns for every pruned layer that its QKV width differs from the input
    # width; that is what pruning does, and the probe below checks the result, so quiet it.
    logging.disable(logging.WARNING)
    try:
        options = FusionOptions("bert")
        options.enable_skip_layer_norm = False
        fused = optimizer.optimize_model(str(plain), model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                                         optimization_options=options)
        fused.save_model_to_file(str(out))
    except Exception:  # noqa: BLE001 - any optimiser failure leaves the correct plain graph
        shutil.copyfile(plain, out)
        return
    finally:
        logging.disable(logging.NOTSET)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab_size, (3, 24), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 17:] = 0
    mask[2, 5:] = 0
    want = run_session(make_session(plain, 1), ids, mask)
    got = run_session(make_session(out, 1), ids, mask)
    if not np.abs(want - got).max() <= FUSION_TOLERANCE:
        shutil.copyfile(plain, out)


def fused_ops(path: Path) -> dict[str, int]:
    """How many nodes of each fused type the graph holds (what :func:`_fuse` achieved)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return {op: sum(1 for n in nodes if n.op_type in (op, f"Q{op}")) for op in FUSED_OP_TYPES}


def quantize_int8(fp32_path: Path, out_path: Path) -> Path:
    """Dynamic INT8 quantisation of MatMul and fused Attention weights, per output channel.

    Per-tensor INT8 alone costs about 0.04 of mean cosine on MiniLM; per-channel about 0.01.
    The graph is first run through ORT's pre-processing (shape inference and basic graph
    optimisation) so that every MatMul sees constant weights. Fused ``Attention`` nodes
    become ``QAttention``; the contrib ops carry no ONNX type information, hence the
    default tensor type.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        quantize_dynamic(
            str(pre), str(out_path), per_channel=True, weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Attention"],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return out_path


def export_openvino(plain_onnx: Path, out_xml: Path, calibration: list[tuple[np.ndarray, np.ndarray]] | None = None,
                    ) -> Path:
    """OpenVINO IR (``out_xml`` + ``.bin``) of a plain (unfused) ONNX graph; INT8 with ``calibration``.

    INT8 is NNCF post-training quantisation (``nncf.quantize``, transformer model type: MatMul
    inputs and weights quantised, weights per channel, activation ranges from the calibration
    batches, which are (``input_ids``, ``attention_mask``) pairs drawn from the job's training
    corpus). Weights are stored in fp32 (``compress_to_fp16=False``): the fp16 copy OpenVINO
    writes by default would be a second, unmeasured change of precision.
    """
    import openvino as ov

    model = ov.Core().read_model(str(plain_onnx))
    if calibration is not None:
        import nncf

        logging.getLogger("nncf").setLevel(logging.ERROR)
        dataset = nncf.Dataset(calibration, lambda b: {"input_ids": b[0], "attention_mask": b[1]})
        model = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return out_xml
