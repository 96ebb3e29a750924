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
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

__all__ = [
    "Encoder",
    "EncoderConfig",
    "LayerShape",
    "ModelLoadError",
    "load_encoder",
    "mean_pool",
    "save_encoder",
]

TWINSERVE_CONFIG_KEY = "twinserve_layers"
WEIGHTS_FILE = "model.safetensors"


class ModelLoadError(ValueError):
    """A checkpoint directory that cannot be turned into an :class:`Encoder`."""


class LayerShape(BaseModel):
    """Width of one transformer layer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    heads: PositiveInt = Field(description="attention heads kept in this layer")
    ffn: PositiveInt = Field(description="FFN (intermediate) neurons kept in this layer")
    source_index: int = Field(ge=0, description="index of this layer in the original dense model")


class EncoderConfig(BaseModel):
    """Architecture of an encoder: BERT hyper-parameters plus per-layer widths."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: PositiveInt
    hidden_size: PositiveInt
    head_dim: PositiveInt
    max_position_embeddings: PositiveInt
    type_vocab_size: PositiveInt = 2
    layer_norm_eps: float = Field(default=1e-12, gt=0)
    pad_token_id: int = 0
    layers: tuple[LayerShape, ...] = Field(min_length=1)

    @classmethod
    def uniform(
        cls, *, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, ffn: int, **kw
    ) -> EncoderConfig:
        if hidden_size % num_heads:
            raise ModelLoadError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        layers = tuple(LayerShape(heads=num_heads, ffn=ffn, source_index=i) for i in range(num_layers))
        return cls(vocab_size=vocab_size, hidden_size=hidden_size, head_dim=hidden_size // num_heads,
                   layers=layers, **kw)

    @classmethod
    def from_hf_dict(cls, cfg: dict) -> EncoderConfig:
        """Build from a Hugging Face ``config.json`` of the BERT family."""
        model_type = cfg.get("model_type")
        if model_type != "bert":
            raise ModelLoadError(
                f"model_type is {model_type!r}; twinserve serves BERT-family encoders (model_type 'bert')"
            )
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ModelLoadError(f"hidden_act {cfg.get('hidden_act')!r} is not supported (only 'gelu')")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ModelLoadError("only absolute position embeddings are supported")
        try:
            base = dict(
                vocab_size=cfg["vocab_size"],
                max_position_embeddings=cfg["max_position_embeddings"],
                type_vocab_size=cfg.get("type_vocab_size", 2),
                layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
                pad_token_id=cfg.get("pad_token_id", 0) or 0,
            )
            if TWINSERVE_CONFIG_KEY in cfg:
                layers = tuple(LayerShape(**layer) for layer in cfg[TWINSERVE_CONFIG_KEY])
                return cls(hidden_size=cfg["hidden_size"], head_dim=cfg["hidden_size"] // cfg["num_attention_heads"],
                           layers=layers, **base)
            return cls.uniform(hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
                               num_heads=cfg["num_attention_heads"], ffn=cfg["intermediate_size"], **base)
        except KeyError as e:
            raise ModelLoadError(f"config.json lacks {e.args[0]!r}, which a BERT config must have") from None

    def to_hf_dict(self) -> dict:
        """A ``config.json`` that Hugging Face reads (exactly, when the widths are uniform)."""
        first = self.layers[0]
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": len(self.layers),
            "num_attention_heads": self.hidden_size // self.head_dim,
            "intermediate_size": first.ffn,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            TWINSERVE_CONFIG_KEY: [layer.model_dump() for layer in self.layers],
        }

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def num_parameters(self, *, include_embeddings: bool = True) -> int:
        h = self.hidden_size
        n = 0
        for layer in self.layers:
            a = layer.heads * self.head_dim
            n += 3 * (h * a + a) + (a * h + h) + 2 * h  # q,k,v; attention output; LayerNorm
            n += (h * layer.ffn + layer.ffn) + (layer.ffn * h + h) + 2 * h  # FFN in, out; LayerNorm
        if include_embeddings:
            n += (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Multiply-accumulates x2 per token of the encoder at ``seq_len`` (embeddings are lookups)."""
        h = self.hidden_size
        macs = 0
        for layer in self.layers:
            a = layer.heads * self.head_dim
            macs += 4 * h * a  # q, k, v, output projections
            macs += 2 * seq_len * a  # scores and context
            macs += 2 * h * layer.ffn  # FFN in and out
        return 2 * macs


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
        return torch.load(pt, map_location="cpu", weights_only=True)
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
    return [cfg_path, weights]
