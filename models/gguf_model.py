"""Read a GGUF file: metadata, an mlx-lm config, and dequantized weights.

Supports the llama, qwen2 and qwen3 architectures and every tensor type the
`gguf` package can dequantize (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
the K-quants, ...). Weights come back as numpy arrays named the way mlx-lm's
model classes name them.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError, one_line

__all__ = ["SUPPORTED_ARCHITECTURES", "GGUFModel", "open_gguf"]

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


@dataclass
class GGUFModel:
    """An opened GGUF file (tensors are memory-mapped, read on demand)."""

    path: Path
    reader: Any  # gguf.GGUFReader

    @property
    def architecture(self) -> str:
        return str(self.get("general.architecture"))

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value (strings, numbers, lists), or `default`."""
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def tensor_names(self) -> list[str]:
        return [t.name for t in self.reader.tensors]

    def config(self) -> dict[str, Any]:
        """The mlx-lm config.json contents for this model."""
        arch = self.architecture

        def meta(key: str, default: Any = None) -> Any:
            return self.get(f"{arch}.{key}", default)

        names = set(self.tensor_names())
        vocab = next(t for t in self.reader.tensors if t.name == "token_embd.weight").shape[1]
        heads = int(meta("attention.head_count"))
        hidden = int(meta("embedding_length"))
        config: dict[str, Any] = {
            "model_type": arch,
            "hidden_size": hidden,
            "num_hidden_layers": int(meta("block_count")),
            "intermediate_size": int(meta("feed_forward_length")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(meta("attention.head_count_kv", heads)),
            "head_dim": int(meta("attention.key_length", hidden // heads)),
            "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(meta("rope.freq_base", 10000.0)),
            "max_position_embeddings": int(meta("context_length", 4096)),
            "vocab_size": int(vocab),
            "tie_word_embeddings": "output.weight" not in names,
        }
        if arch == "llama":
            # llama.cpp permuted the q/k rows for its interleaved rope; mlx-lm's
            # traditional rope is the same interleaved form.
            config["rope_traditional"] = True
            config["attention_bias"] = "blk.0.attn_q.bias" in names
        scaling = meta("rope.scaling.type")
        if scaling == "linear":
            config["rope_scaling"] = {"type": "linear", "factor": float(meta("rope.scaling.factor"))}
        elif scaling not in (None, "none"):
            raise ModelError(f"{self.path}: rope scaling {scaling!r} is not supported")
        return config

    def tensor_types(self) -> dict[str, str]:
        """mlx-lm weight name -> GGUF tensor type name (e.g. 'Q4_K')."""
        return {_mlx_name(self.path, t.name): t.tensor_type.name for t in self.reader.tensors}

    def weights(self) -> Iterator[tuple[str, np.ndarray, str]]:
        """Yield (mlx-lm name, float32 array in mlx-lm layout, GGUF type name) per tensor."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        for t in self.reader.tensors:
            name = _mlx_name(self.path, t.name)
            qtype = t.tensor_type
            if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                array = np.asarray(t.data, dtype=np.float32)
            else:
                try:
                    array = dequantize(t.data, qtype)
                except NotImplementedError:
                    raise ModelError(
                        f"{self.path}: tensor {t.name} has type {qtype.name}, which cannot be "
                        "dequantized") from None
            shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists the fastest axis first
            yield name, array.reshape(shape), qtype.name


def _mlx_name(path: Path, gguf_name: str) -> str:
    base, _, kind = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES and kind == "weight":
        return f"{_GLOBAL_NAMES[base]}.weight"
    m = _LAYER_RE.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    raise ModelError(f"{path}: unexpected tensor {gguf_name!r} (not a plain llama/qwen2/qwen3 model)")


def open_gguf(path: str | Path) -> GGUFModel:
    """Open and check a GGUF file; raise ModelError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(f"{path}: not a GGUF file (it does not start with b'GGUF')")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader raises many kinds on damaged files
        raise ModelError(f"{path}: damaged or truncated GGUF file ({one_line(e)})") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise ModelError(f"{path}: truncated GGUF file (tensor {t.name} runs past the end)")
    model = GGUFModel(path, reader)
    arch = model.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(f"{path}: architecture {arch!r} is not supported "
                         f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    if "token_embd.weight" not in model.tensor_names():
        raise ModelError(f"{path}: no token_embd.weight tensor")
    model.tensor_types()  # raises on unexpected tensor names
    return model
