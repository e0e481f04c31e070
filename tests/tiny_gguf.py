"""Write tiny random GGUF models (llama / qwen2 / qwen3) for tests and demos.

`write_tiny_gguf` quantizes random weights into any of F32, F16, Q8_0, Q4_0,
Q4_1 (via `gguf.quants.quantize`) or Q4_K / Q6_K (random but valid blocks: the
`gguf` package cannot quantize K-quants) and returns the float weights a
reader should recover, in mlx-lm's names and layout (q/k un-permuted).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TINY_CHAT_TEMPLATE", "TinyGGUF", "tiny_vocab", "write_tiny_gguf"]

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_SPECIALS = [("<|endoftext|>", 3), ("<|im_start|>", 3), ("<|im_end|>", 3), ("<think>", 4), ("</think>", 4)]
_MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġa n", "Ġan d", "Ġ 1", "1 2"]
_K_BLOCK = {"Q4_K": (144, slice(0, 4)), "Q6_K": (210, slice(208, 210))}  # bytes per 256, where d lives


@dataclass
class TinyGGUF:
    """What was written: the mlx-lm config and the float weights (mlx-lm names and layout)."""

    path: Path
    config: dict[str, Any]
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): specials first, the 256 byte tokens, then merged tokens."""
    tokens = [t for t, _ in _SPECIALS] + _byte_chars() + [m.replace(" ", "") for m in _MERGES]
    types = [k for _, k in _SPECIALS] + [1] * (len(tokens) - len(_SPECIALS))
    return tokens, types, _MERGES


def _llama_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(w: np.ndarray, qtype: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(data to write, the floats a reader recovers) for one 2-D weight."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    if qtype == "F32":
        return w, w
    if qtype == "F16":
        data = w.astype(np.float16)
        return data, data.astype(np.float32)
    if qtype in _K_BLOCK:
        nbytes, d_slice = _K_BLOCK[qtype]
        rows, cols = w.shape
        blocks = rng.integers(0, 256, size=(rows, cols // 256, nbytes), dtype=np.uint8)
        scale = np.float16(2e-4 if qtype == "Q4_K" else 1e-4)
        d = np.full((rows, cols // 256, (d_slice.stop - d_slice.start) // 2), scale, np.float16)
        blocks[:, :, d_slice] = d.view(np.uint8)
        data = blocks.reshape(rows, -1)
        return data, dequantize(data, T[qtype]).reshape(w.shape)
    data = quantize(w, T[qtype])
    return data, dequantize(data, T[qtype]).reshape(w.shape)


def _header(writer: Any, config: dict, pre: str, vocab: tuple) -> None:
    """The GGUF metadata of a tiny model: its shape and its tokenizer."""
    tokens, types, merges = vocab
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    if config["model_type"] == "qwen3":
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(TINY_CHAT_TEMPLATE)


def write_tiny_gguf(path: str | Path, arch: str = "llama", qtype: str = "F32", *, seed: int = 0,
                    layers: int = 2, hidden: int = 256, heads: int = 4, kv_heads: int = 2,
                    intermediate: int = 256, tied: bool = True, pre: str | None = None) -> TinyGGUF:
    """Write a tiny random `arch` model with 2-D weights stored as `qtype`; return what a reader should get.

    K-quants need `hidden` and `intermediate` to be multiples of 256, the others of 32.
    """
    import gguf
    from gguf import GGMLQuantizationType as T

    rng = np.random.default_rng(seed)
    path = Path(path)
    tokens, types, merges = tiny_vocab()
    head_dim = hidden // heads
    config = {"model_type": arch, "hidden_size": hidden, "num_hidden_layers": layers,
              "intermediate_size": intermediate, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "head_dim": head_dim, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "max_position_embeddings": 512, "vocab_size": len(tokens),
              "tie_word_embeddings": tied}
    writer = gguf.GGUFWriter(path, arch)
    _header(writer, config, pre or {"llama": "smollm", "qwen2": "qwen2", "qwen3": "qwen2"}.get(arch, "default"),
            (tokens, types, merges))

    out = TinyGGUF(path, config)

    def matrix(gguf_name: str, mlx_name: str, shape: tuple[int, int], permute_heads: int = 0) -> None:
        w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        stored = _llama_permute(w, permute_heads) if permute_heads else w
        data, recovered = _encode(stored, qtype, rng)
        if permute_heads:  # un-permute what the reader will see, for mlx-lm's layout
            n = permute_heads
            recovered = recovered.reshape(n, recovered.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(shape)
        writer.add_tensor(gguf_name, data, raw_dtype=None if qtype in ("F32", "F16") else T[qtype])
        out.weights[mlx_name] = recovered

    def vector(gguf_name: str, mlx_name: str, size: int, base: float = 1.0) -> None:
        v = (base + rng.standard_normal(size) * 0.1).astype(np.float32)
        writer.add_tensor(gguf_name, v)
        out.weights[mlx_name] = v

    permute = arch == "llama"
    matrix("token_embd.weight", "model.embed_tokens.weight", (len(tokens), hidden))
    for i in range(layers):
        b, m = f"blk.{i}", f"model.layers.{i}"
        vector(f"{b}.attn_norm.weight", f"{m}.input_layernorm.weight", hidden)
        matrix(f"{b}.attn_q.weight", f"{m}.self_attn.q_proj.weight", (heads * head_dim, hidden),
               heads if permute else 0)
        matrix(f"{b}.attn_k.weight", f"{m}.self_attn.k_proj.weight", (kv_heads * head_dim, hidden),
               kv_heads if permute else 0)
        matrix(f"{b}.attn_v.weight", f"{m}.self_attn.v_proj.weight", (kv_heads * head_dim, hidden))
        matrix(f"{b}.attn_output.weight", f"{m}.self_attn.o_proj.weight", (hidden, heads * head_dim))
        if arch == "qwen2":
            vector(f"{b}.attn_q.bias", f"{m}.self_attn.q_proj.bias", heads * head_dim, 0.0)
            vector(f"{b}.attn_k.bias", f"{m}.self_attn.k_proj.bias", kv_heads * head_dim, 0.0)
            vector(f"{b}.attn_v.bias", f"{m}.self_attn.v_proj.bias", kv_heads * head_dim, 0.0)
        if arch == "qwen3":
            vector(f"{b}.attn_q_norm.weight", f"{m}.self_attn.q_norm.weight", head_dim)
            vector(f"{b}.attn_k_norm.weight", f"{m}.self_attn.k_norm.weight", head_dim)
        vector(f"{b}.ffn_norm.weight", f"{m}.post_attention_layernorm.weight", hidden)
        matrix(f"{b}.ffn_gate.weight", f"{m}.mlp.gate_proj.weight", (intermediate, hidden))
        matrix(f"{b}.ffn_up.weight", f"{m}.mlp.up_proj.weight", (intermediate, hidden))
        matrix(f"{b}.ffn_down.weight", f"{m}.mlp.down_proj.weight", (hidden, intermediate))
    vector("output_norm.weight", "model.norm.weight", hidden)
    if not tied:
        matrix("output.weight", "lm_head.weight", (len(tokens), hidden))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
