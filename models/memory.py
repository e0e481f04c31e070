"""Whether a run's worst case fits the machine: rows x tokens of KV cache against the memory there is.

A row that runs to its max_tokens keeps about ``2 x layers x kv_heads x head_dim`` values per token (keys
and values; float32 on the CPU, 16-bit elsewhere). `check_kv_fits` refuses settings whose rows, all run to
their end, would need more KV cache than the machine has memory, before anything is generated: M = 10**20
or max_tokens = 2**63 are refused by the settings' bounds, and what is left is what this machine can hold.
The estimate counts every layer as global attention, an upper bound for sliding windows and latent attention.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from eager_mlx.settings import SettingError

__all__ = ["kv_bytes_per_token", "machine_memory", "check_kv_fits"]


def kv_bytes_per_token(model: Any, on_cpu: bool = True) -> Optional[int]:
    """KV-cache bytes one row keeps per generated token (None when the model's shape cannot be read)."""
    args = getattr(model, "args", None)
    layers = getattr(args, "num_hidden_layers", None)
    heads = getattr(args, "num_attention_heads", None)
    kv_heads = getattr(args, "num_key_value_heads", None) or heads
    head_dim = getattr(args, "head_dim", None) or (getattr(args, "hidden_size", 0) // heads if heads else None)
    if not (isinstance(layers, int) and isinstance(kv_heads, int) and isinstance(head_dim, int)):
        return None
    return 2 * layers * kv_heads * head_dim * (4 if on_cpu else 2)


def machine_memory() -> Optional[int]:
    """Bytes of physical memory (what MLX's CPU and Metal backends share), or None when unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_kv_fits(model: Any, rows: int, tokens: int, *, context_length: Optional[int] = None,
                  on_cpu: bool = True, memory: Optional[int] = None) -> None:
    """SettingError (one line) when `rows` rows of `tokens` tokens each (capped by the context) would need more
    KV cache than the machine's memory; nothing when they fit or the model's shape is unknown."""
    per_token = kv_bytes_per_token(model, on_cpu)
    memory = memory if memory is not None else machine_memory()
    if per_token is None or not memory:
        return
    tokens = min(tokens, context_length) if context_length else tokens
    need = rows * tokens * per_token
    if need > memory:
        raise SettingError(f"{rows} rows of up to {tokens} tokens need up to {need / 2**30:.1f} GiB of KV cache for "
                           f"this model, more than this machine's {memory / 2**30:.1f} GiB of memory: lower "
                           "max_sequences (-M), max_rows or max_tokens")
