"""The mlx-lm config.json of a GGUF model, per architecture, from llama.cpp's metadata keys.

Values llama.cpp does not store but hard-codes for an architecture are hard-coded the same way here
(Gemma 3: a sliding-window layer pattern of 6 and a local rope base of 10000).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ModelError

__all__ = ["model_config", "llama3_rope_scaling"]


def _common(g: Any) -> dict[str, Any]:
    names = set(g.tensor_names())
    vocab = next(t for t in g.reader.tensors if t.name == "token_embd.weight").shape[1]
    heads = int(g.meta("attention.head_count"))
    hidden = int(g.meta("embedding_length"))
    return {
        "model_type": g.model_type,
        "hidden_size": hidden,
        "num_hidden_layers": int(g.meta("block_count")),
        "intermediate_size": int(g.meta("feed_forward_length", g.meta("expert_feed_forward_length", 0))),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g.meta("attention.head_count_kv", heads)),
        "head_dim": int(g.meta("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(g.meta("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(g.meta("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(g.meta("context_length", 4096)),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "output.weight" not in names,
    }


def _rope_scaling(g: Any) -> dict | None:
    kind = g.meta("rope.scaling.type")
    if kind == "linear":
        return {"type": "linear", "factor": float(g.meta("rope.scaling.factor"))}
    if kind not in (None, "none"):
        raise ModelError(f"{g.path}: rope scaling {kind!r} is not supported")
    return None


def llama3_rope_scaling(factors: np.ndarray, head_dim: int, base: float) -> dict | None:
    """The llama3 rope-scaling settings whose per-frequency factors (llama.cpp's rope_freqs tensor) are
    `factors`, searched among the values Llama 3.x ships; None when none reproduces them."""
    freqs = base ** (np.arange(0, head_dim, 2) / head_dim)
    wavelens = 2 * np.pi * freqs
    factor = float(factors.max())
    for low in (1.0, 2.0):
        for high in (4.0, 8.0):
            for old in (8192, 4096, 2048, 16384, 32768, 65536, 131072):
                smooth = (old / wavelens - low) / (high - low)
                want = np.where(wavelens < old / high, 1.0,
                                np.where(wavelens > old / low, factor, 1 / ((1 - smooth) / factor + smooth)))
                if want.shape == factors.shape and np.allclose(want, factors, rtol=1e-4, atol=1e-4):
                    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                            "high_freq_factor": high, "original_max_position_embeddings": old}
    return None


def _llama(g: Any, config: dict) -> None:
    # llama.cpp permuted the q/k rows for its interleaved rope; mlx-lm's traditional rope is the same form.
    config["rope_traditional"] = True
    config["attention_bias"] = "blk.0.attn_q.bias" in g.tensor_names()
    if "rope_freqs.weight" in g.tensor_names():
        scaling = llama3_rope_scaling(g.tensor("rope_freqs.weight"), config["head_dim"], config["rope_theta"])
        if scaling is None:
            raise ModelError(f"{g.path}: its rope_freqs factors are not llama3 rope scaling of a known form")
        config["rope_scaling"] = scaling
    if config["model_type"] == "mixtral":
        config.update(num_local_experts=int(g.meta("expert_count")), num_experts_per_tok=int(g.meta("expert_used_count")))


def _experts(g: Any, config: dict) -> None:
    config.update(num_experts=int(g.meta("expert_count")), num_experts_per_tok=int(g.meta("expert_used_count")),
                  moe_intermediate_size=int(g.meta("expert_feed_forward_length")))
    if config["model_type"] == "qwen2_moe":
        config["shared_expert_intermediate_size"] = int(g.meta("expert_shared_feed_forward_length"))
    else:  # qwen3_moe: every layer sparse, top-k weights renormalised (llama.cpp builds it so)
        config.update(decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)


def _gemma3(g: Any, config: dict) -> None:
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    # llama.cpp scales queries by 1/sqrt(head_dim), but by 1/sqrt(hidden / heads) for the 27B model (62 layers)
    scalar = config["hidden_size"] // heads if layers == 62 else config["head_dim"]
    config.update(query_pre_attn_scalar=scalar, rope_local_base_freq=10000.0, sliding_window_pattern=6,
                  sliding_window=int(g.meta("attention.sliding_window")))


def _phi3(g: Any, config: dict) -> None:
    if "rope_factors_long.weight" in g.tensor_names():
        raise ModelError(f"{g.path}: Phi-3 with LongRoPE (rope_factors_long) is not supported")
    if "blk.0.attn_qkv.weight" not in g.tensor_names():
        raise ModelError(f"{g.path}: a Phi-3 file without fused attn_qkv tensors is not supported")
    dims = g.meta("rope.dimension_count")
    if dims:
        config["partial_rotary_factor"] = int(dims) / config["head_dim"]
    window = g.meta("attention.sliding_window")
    if window:  # mlx-lm's phi3 attends globally: within the window it is the same attention, so stop there
        config["max_position_embeddings"] = min(config["max_position_embeddings"], int(window))


_BY_TYPE = {"llama": _llama, "mixtral": _llama, "qwen2_moe": _experts, "qwen3_moe": _experts,
            "gemma3_text": _gemma3, "phi3": _phi3}


def model_config(g: Any) -> dict[str, Any]:
    """The mlx-lm config of a GGUFModel."""
    config = _common(g)
    scaling = _rope_scaling(g)
    if scaling is not None:
        config["rope_scaling"] = scaling
    if config["model_type"] in _BY_TYPE:
        _BY_TYPE[config["model_type"]](g, config)
    return config
