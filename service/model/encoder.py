"""A plain-torch BERT encoder whose layers may have different widths.

Hugging Face's ``BertModel`` assumes every layer has the same number of heads and the same
FFN width, and transformers 5 removed ``prune_heads``. Structured pruning needs both to vary
per layer, so twinserve carries its own encoder: the same maths as ``BertModel`` (post-LN,
exact GELU, absolute positions), the same state-dict names (a dense checkpoint loads without
renaming and a saved one loads back into ``BertModel`` when its widths are uniform), and
per-layer ``heads`` / ``ffn`` widths recorded in :class:`EncoderConfig`.

Gates (``head_gates``, ``neuron_gates``, ``layer_gates``) multiply a head's context, an FFN
neuron's activation or a layer's residual update. They are ``None`` in serving; the pruning
criteria set them to ones with ``requires_grad`` to read first-order saliencies, and the
tests set entries to zero to prove that physical removal equals masking.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from service.model.config import EncoderConfig, LayerShape, ModelLoadError

__all__ = [
    "Encoder",
    "EncoderConfig",
    "LayerShape",
    "ModelLoadError",
    "load_encoder",
    "mean_pool",
    "save_encoder",
]

WEIGHTS_FILE = "model.safetensors"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens the mask keeps, then L2 normalisation (sentence-transformers' recipe)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(summed / counts, p=2.0, dim=-1, eps=1e-12)


class _Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        positions = torch.arange(seq_len, device=input_ids.device).unsqueeze(0)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.query = nn.Linear(hidden, heads * head_dim)
        self.key = nn.Linear(hidden, heads * head_dim)
        self.value = nn.Linear(hidden, heads * head_dim)


class _DenseLayerNorm(nn.Module):
    def __init__(self, d_in: int, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class _Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig, shape: LayerShape):
        super().__init__()
        # "self" mirrors Hugging Face's state-dict names (attention.self.query.weight, ...).
        self.self = _SelfAttention(cfg.hidden_size, shape.heads, cfg.head_dim)
        self.output = _DenseLayerNorm(shape.heads * cfg.head_dim, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor, head_gate: torch.Tensor | None) -> torch.Tensor:
        sa = self.self
        b, t, _ = x.shape

        def split(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, sa.heads, sa.head_dim).transpose(1, 2)

        q, k, v = split(sa.query), split(sa.key), split(sa.value)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(sa.head_dim) + mask_bias
        context = torch.matmul(scores.softmax(dim=-1), v)  # [b, heads, t, head_dim]
        if head_gate is not None:
            context = context * head_gate.view(1, -1, 1, 1)
        context = context.transpose(1, 2).reshape(b, t, sa.heads * sa.head_dim)
        return self.output.dense(context)


class _Layer(nn.Module):
    def __init__(self, cfg: EncoderConfig, shape: LayerShape):
        super().__init__()
        self.attention = _Attention(cfg, shape)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(cfg.hidden_size, shape.ffn)
        self.output = _DenseLayerNorm(shape.ffn, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        mask_bias: torch.Tensor,
        head_gate: torch.Tensor | None = None,
        neuron_gate: torch.Tensor | None = None,
        layer_gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attn = self.attention
        h = attn.output.LayerNorm(x + attn(x, mask_bias, head_gate))
        act = F.gelu(self.intermediate.dense(h))
        if neuron_gate is not None:
            act = act * neuron_gate
        out = self.output.LayerNorm(h + self.output.dense(act))
        if layer_gate is not None:
            out = x + layer_gate * (out - x)
        return out


class _LayerStack(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg, shape) for shape in cfg.layers)


class Encoder(nn.Module):
    """BERT encoder with mean pooling and L2 normalisation: texts' token ids in, embeddings out."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.encoder = _LayerStack(cfg)
        self.head_gates: list[torch.Tensor] | None = None
        self.neuron_gates: list[torch.Tensor] | None = None
        self.layer_gates: torch.Tensor | None = None

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layer

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``(sentence_embedding, hidden_states)``.

        ``hidden_states`` holds the embedding output and then each layer's output when
        ``output_hidden_states`` is set, else it is empty.
        """
        x = self.embeddings(input_ids, token_type_ids)
        dtype = x.dtype
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        hidden = [x] if output_hidden_states else []
        for i, layer in enumerate(self.layers):
            x = layer(
                x,
                mask_bias,
                None if self.head_gates is None else self.head_gates[i],
                None if self.neuron_gates is None else self.neuron_gates[i],
                None if self.layer_gates is None else self.layer_gates[i],
            )
            if output_hidden_states:
                hidden.append(x)
        return mean_pool(x, attention_mask), hidden


def _read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    st = model_dir / WEIGHTS_FILE
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    pt = model_dir / "pytorch_model.bin"
    if pt.is_file():
        # weights_only: a pickle from an untrusted directory must not run code.
        try:
            return torch.load(pt, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ModelLoadError(f"{pt} holds more than tensors (refused: only weights load from a pickle; "
                                 f"convert the checkpoint to {WEIGHTS_FILE}): {str(e).splitlines()[0]}") from None
    raise ModelLoadError(f"{model_dir} has no {WEIGHTS_FILE} or pytorch_model.bin")


def load_encoder(model_dir: str | Path) -> Encoder:
    """Load a BERT-family checkpoint directory (Hugging Face layout) into an :class:`Encoder`."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist or is not a directory")
    cfg_path = model_dir / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{model_dir} has no config.json; is it a Hugging Face checkpoint?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {cfg_path}: {e}") from None
    cfg = EncoderConfig.from_hf_dict(raw)
    state = _read_state_dict(model_dir)
    # Checkpoints saved from BertForX carry a "bert." prefix; the pooler is unused (mean pooling).
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    state = {k: v for k, v in state.items()
             if k.startswith(("embeddings.", "encoder.")) and not k.endswith("position_ids")}
    model = Encoder(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"{model_dir}: weights do not match its config.json "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    model.eval()
    return model


def save_encoder(model: Encoder, out_dir: str | Path) -> list[Path]:
    """Write ``config.json`` and ``model.safetensors``; return the paths written."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = out_dir / "config.json"
    cfg_path.write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
    weights = out_dir / WEIGHTS_FILE
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)  # safetensors writes 0600; the serving container runs as another user (UID 10001)
    return [cfg_path, weights]
