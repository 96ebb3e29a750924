"""Architecture of a twinserve encoder: BERT hyper-parameters plus per-layer widths.

Pure pydantic, no torch: the manifest, the router and the ONNX-only pruned replica read it
without importing torch (about a second and 200 MB per process).
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, PositiveInt

from service._schema import Strict
from service.artifacts.manifest import LayerShape  # the contract records layer widths; the model builds them

__all__ = ["EncoderConfig", "LayerShape", "ModelLoadError", "TWINSERVE_CONFIG_KEY"]

TWINSERVE_CONFIG_KEY = "twinserve_layers"


class ModelLoadError(ValueError):
    """A checkpoint directory that cannot be turned into an :class:`Encoder`."""


class EncoderConfig(Strict):
    """Architecture of an encoder: BERT hyper-parameters plus per-layer widths."""

    model_config = ConfigDict(frozen=True)

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
