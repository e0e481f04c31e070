"""The benchmark's models: real architectures' configs with random weights (or the real cached models).

Decode speed does not depend on the weights' values, so a model built from the
config of SmolLM2-135M or Qwen2.5-Coder-0.5B with random weights measures the
same work as the real one, needs no download and fits any machine the repo is
copied to. The dtype is the one the real model gets when it loads today
(eager_mlx/models/loader.py): float32 on the CPU, float16 on a GPU (Metal, CUDA;
the real GGUF-converted models are also re-quantized there, these are not).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Optional

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from perf_env import on_gpu

__all__ = ["CONFIGS", "Bench", "build_random", "load_real", "kv_bytes_per_token", "weights_bytes", "random_prompt",
           "approx_weights_bytes"]

# Read off the converted models' config.json (eager-mlx's presets); nothing else is needed.
CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(
        model_type="llama", hidden_size=576, num_hidden_layers=30, intermediate_size=1536,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
        max_position_embeddings=8192, vocab_size=49152, tie_word_embeddings=True, rope_traditional=True,
        attention_bias=False,
    ),
    "qwen2.5-coder-0.5b": dict(
        model_type="qwen2", hidden_size=896, num_hidden_layers=24, intermediate_size=4864,
        num_attention_heads=14, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768, vocab_size=151936, tie_word_embeddings=False,
    ),
}


@dataclass
class Bench:
    """A model ready to measure: the mlx-lm module, a tokenizer the engine accepts and a short prompt."""

    name: str  # as shown in the tables
    model: Any
    tokenizer: Any
    prompt: list[int]


def _dtype() -> mx.Dtype:
    return mx.float16 if on_gpu() else mx.float32


def build_random(name: str, layers: Optional[int] = None, context: Optional[int] = None, seed: int = 0) -> Any:
    """An mlx-lm model of `name`'s architecture (CONFIGS) with random weights; optionally fewer layers
    or a longer context (max_position_embeddings: only the engine's length check reads it)."""
    config = dict(CONFIGS[name])
    if layers is not None:
        config["num_hidden_layers"] = layers
    if context is not None:
        config["max_position_embeddings"] = context
    arch = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    mx.random.seed(seed)
    model = arch.Model(arch.ModelArgs.from_dict(config))
    model.set_dtype(_dtype())
    mx.eval(model.parameters())
    return model


def load_real(name: str) -> Bench:
    """The real model from eager-mlx's cache (`eager-mlx models pull NAME`), with a chat prompt."""
    import eager_mlx

    loaded = eager_mlx.load(name)
    prompt = eager_mlx.encode_prompt(loaded.tokenizer, "Tell me a story about a dragon who learns to count.")
    return Bench(f"{name} (real weights)", loaded.model, loaded.tokenizer, prompt)


def random_prompt(length: int, vocab: int, seed: int = 0) -> list[int]:
    """`length` token ids drawn uniformly from [1, vocab) (content does not change decode speed)."""
    return np.random.default_rng(seed).integers(1, vocab, size=length).tolist()


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of keys + values one token takes in every layer's cache (the model's dtype)."""
    args = model.args
    head_dim = getattr(args, "head_dim", None) or args.hidden_size // args.num_attention_heads
    kv_heads = args.num_key_value_heads or args.num_attention_heads
    dtype = model.model.embed_tokens.weight.dtype
    return len(model.layers) * kv_heads * head_dim * 2 * dtype.size


def weights_bytes(model: Any) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def approx_weights_bytes(name: str) -> int:
    """Weight bytes of `name`'s architecture in this backend's dtype, from its config (before building it)."""
    c = CONFIGS[name]
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    per_layer = h * (c["num_attention_heads"] * c["head_dim"]) * 2 + h * kv * 2 + 3 * h * inter
    heads = 1 if c["tie_word_embeddings"] else 2
    return (c["num_hidden_layers"] * per_layer + heads * vocab * h) * _dtype().size
