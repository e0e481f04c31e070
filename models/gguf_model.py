"""Read a GGUF file: metadata, an mlx-lm config, and dequantized weights.

Supports the architectures that both llama.cpp writes and the engine runs (`SUPPORTED_ARCHITECTURES`):
llama (Llama 1-3, Mistral, and Mixtral-style MoE as ``mixtral``), qwen2, qwen3, qwen2moe, qwen3moe, gemma3
(sliding-window layers) and phi3, with every tensor type the `gguf` package can dequantize (F32, F16, BF16,
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants, ...). Weights come back as numpy arrays named and laid out the
way mlx-lm's model classes take them, undoing what llama.cpp's converter did: the +1 it adds to every Gemma
norm weight (llama's q/k row permutation is kept, read by mlx-lm's traditional rope: models/gguf_configs.py).
What cannot be mapped exactly (an unknown tensor, rope scaling other than linear or llama3's, Phi-3's
LongRoPE) is refused with a one-line ModelError.
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

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "gemma3", "phi3")

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
_EXPERTS = {"ffn_gate_inp": "gate", "ffn_gate_exps": "switch_mlp.gate_proj", "ffn_up_exps": "switch_mlp.up_proj",
            "ffn_down_exps": "switch_mlp.down_proj"}
# Per mlx-lm model type: the layer names that differ from _LAYER_NAMES (llama.cpp's names: gguf.TensorNameMap).
_ARCH_NAMES: dict[str, dict[str, str]] = {
    "gemma3_text": {"ffn_norm": "pre_feedforward_layernorm", "post_attention_norm": "post_attention_layernorm",
                    "post_ffw_norm": "post_feedforward_layernorm"},
    "phi3": {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
    "mixtral": {k: f"block_sparse_moe.{v}" for k, v in _EXPERTS.items()},
    "qwen3_moe": {k: f"mlp.{v}" for k, v in _EXPERTS.items()},
    "qwen2_moe": {**{k: f"mlp.{v}" for k, v in _EXPERTS.items()}, "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
                  "ffn_up_shexp": "mlp.shared_expert.up_proj", "ffn_down_shexp": "mlp.shared_expert.down_proj",
                  "ffn_gate_inp_shexp": "mlp.shared_expert_gate"},
}
_MODEL_TYPES = {"gemma3": "gemma3_text", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}
_NOT_WEIGHTS = {"rope_freqs.weight"}  # read into the config (llama3 rope scaling), not a model weight
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


@dataclass
class GGUFModel:
    """An opened GGUF file (tensors are memory-mapped, read on demand)."""

    path: Path
    reader: Any  # gguf.GGUFReader

    @property
    def architecture(self) -> str:
        return str(self.get("general.architecture"))

    @property
    def model_type(self) -> str:
        """The mlx-lm model type this file becomes (llama with experts is mixtral)."""
        if self.architecture == "llama" and "blk.0.ffn_gate_exps.weight" in self.tensor_names():
            return "mixtral"
        return _MODEL_TYPES.get(self.architecture, self.architecture)

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value (strings, numbers, lists), or `default`."""
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def meta(self, key: str, default: Any = None) -> Any:
        """An architecture metadata value: ``{arch}.{key}``."""
        return self.get(f"{self.architecture}.{key}", default)

    def tensor_names(self) -> list[str]:
        return [t.name for t in self.reader.tensors]

    def tensor(self, name: str) -> np.ndarray:
        """One small float tensor (F32/F16), as stored."""
        t = next(t for t in self.reader.tensors if t.name == name)
        return np.asarray(t.data, dtype=np.float32)

    def config(self) -> dict[str, Any]:
        """The mlx-lm config.json contents for this model."""
        from .gguf_configs import model_config

        return model_config(self)

    def tensor_types(self) -> dict[str, str]:
        """mlx-lm weight name -> GGUF tensor type name (e.g. 'Q4_K')."""
        return {self.mlx_name(t.name): t.tensor_type.name for t in self.reader.tensors if t.name not in _NOT_WEIGHTS}

    def mlx_name(self, gguf_name: str) -> str:
        """The mlx-lm weight name of a GGUF tensor; ModelError for a tensor this architecture does not have."""
        base, _, kind = gguf_name.rpartition(".")
        if base in _GLOBAL_NAMES and kind == "weight":
            return f"{_GLOBAL_NAMES[base]}.weight"
        m = _LAYER_RE.match(gguf_name)
        names = {**_LAYER_NAMES, **_ARCH_NAMES.get(self.model_type, {})}
        if m and m.group(2) in names:
            return f"model.layers.{m.group(1)}.{names[m.group(2)]}.{m.group(3)}"
        raise ModelError(f"{self.path}: unexpected tensor {gguf_name!r} for a {self.architecture} model")

    def weights(self) -> Iterator[tuple[str, np.ndarray, str]]:
        """Yield (mlx-lm name, float32 array in mlx-lm layout, GGUF type name) per tensor."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        norm_shift = 1.0 if self.model_type == "gemma3_text" else 0.0  # llama.cpp stored Gemma's norms as 1 + w
        for t in self.reader.tensors:
            if t.name in _NOT_WEIGHTS:
                continue
            name = self.mlx_name(t.name)
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
            array = array.reshape(shape)
            if norm_shift and t.name.endswith("norm.weight"):
                array = array - norm_shift
            if name.endswith("shared_expert_gate.weight"):
                array = array.reshape(1, -1)  # a vector in GGUF, a (1, hidden) linear layer in mlx-lm
            yield name, array, qtype.name


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
