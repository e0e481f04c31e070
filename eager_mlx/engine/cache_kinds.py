"""What state each layer of an mlx-lm model keeps, read from the model's own `make_cache`.

The engine handles three kinds of leaf cache (a `CacheList` groups several for one layer):

* `KVCache`: global attention; the prompt's keys and values are shared, rows keep their suffix;
* `RotatingKVCache(max_size=W, keep=0)`: sliding-window attention over the last W positions;
* `ArraysCache`: recurrent state (Mamba, Gated DeltaNet, short convolutions); each row owns a copy.

Anything else (chunked attention, KV shared across layers, quantized caches, a model's own cache
class) is refused with a one-line reason before any work is done.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache, CacheList, KVCache, RotatingKVCache

__all__ = ["LeafSpec", "Nesting", "leaf_specs", "nest", "flat", "segment_state", "prompt_state", "cache_arrays"]

# One entry per model layer: a leaf index, or a tuple of leaf indices (a CacheList).
Nesting = list[Union[int, tuple[int, ...]]]


@dataclass(frozen=True)
class LeafSpec:
    """One leaf cache: `window` is set for sliding layers, `state_size` for recurrent ones."""

    kind: str  # "attention" or "recurrent"
    window: Optional[int] = None
    state_size: int = 0


def _spec(layer: int, cache) -> LeafSpec:
    kind = type(cache)
    if kind is KVCache:
        return LeafSpec("attention")
    if kind is RotatingKVCache:
        if cache.keep:
            raise ValueError(f"unsupported model: layer {layer} keeps {cache.keep} sink tokens in a RotatingKVCache")
        return LeafSpec("attention", window=cache.max_size)
    if kind is ArraysCache:
        return LeafSpec("recurrent", state_size=len(cache.cache))
    reasons = {
        "ChunkedKVCache": "chunked local attention",
        "ConcatenateKVCache": "KV shared across layers",
        "QuantizedKVCache": "a quantized KV cache",
    }
    why = reasons.get(kind.__name__, "a cache kind the engine does not know")
    raise ValueError(f"unsupported model: layer {layer} uses {kind.__name__} ({why})")


def leaf_specs(template: list) -> tuple[list[LeafSpec], Nesting]:
    """Describe the model's caches (`make_prompt_cache(model)`), or raise ValueError naming the layer."""
    specs: list[LeafSpec] = []
    nesting: Nesting = []
    for layer, cache in enumerate(template):
        if type(cache) is CacheList:
            idx = []
            for sub in cache.caches:
                if type(sub) is CacheList:
                    raise ValueError(f"unsupported model: layer {layer} nests CacheLists")
                specs.append(_spec(layer, sub))
                idx.append(len(specs) - 1)
            nesting.append(tuple(idx))
        else:
            specs.append(_spec(layer, cache))
            nesting.append(len(specs) - 1)
    return specs, nesting


def nest(nesting: Nesting, leaves: list) -> list:
    """The per-layer cache list a model expects, built from per-leaf objects."""
    return [CacheList(*(leaves[i] for i in entry)) if isinstance(entry, tuple) else leaves[entry] for entry in nesting]


def flat(caches: list) -> list:
    """The leaf caches of a model's cache list, CacheLists opened, in leaf order."""
    out = []
    for c in caches:
        out.extend(c.caches if type(c) is CacheList else [c])
    return out


def segment_state(caches: list, start: int, end: int) -> list:
    """Per leaf, what a prefilled mlx-lm cache holds of prompt positions [start, end) that later work needs
    (end: the positions prefilled so far).

    Global attention: (keys, values) of [start, end), compact copies. Sliding window: (keys, values) of the
    last min(end, W - 1) positions (all a later token can see), in temporal order. Recurrent: the arrays.
    """
    out = []
    for c in flat(caches):
        if type(c) is ArraysCache:
            out.append(list(c.cache))
            continue
        keys, values = c.keys, c.values
        if type(c) is RotatingKVCache:
            keys, values = c._temporal_order(keys), c._temporal_order(values)
            held = min(end, c.max_size - 1, keys.shape[2])
            keys, values = keys[:, :, keys.shape[2] - held :, :], values[:, :, values.shape[2] - held :, :]
        else:
            keys, values = keys[:, :, start:end, :], values[:, :, start:end, :]
        # Compact copies: a slice would keep mlx-lm's 256-step buffer alive.
        out.append((mx.contiguous(keys), mx.contiguous(values)))
    return out


def prompt_state(caches: list, prompt_len: int) -> list:
    """Per leaf, what the rows need from a cache prefilled with a whole prompt: attention (keys, values, first
    position held), recurrent the arrays (see segment_state)."""
    return [x if isinstance(x, list) else (x[0], x[1], prompt_len - x[0].shape[2])
            for x in segment_state(caches, 0, prompt_len)]


def cache_arrays(caches: list) -> list[mx.array]:
    """Every array a prefill cache holds (to evaluate between prefill chunks)."""
    out = []
    for c in flat(caches):
        arrays = c.cache if type(c) is ArraysCache else [c.keys, c.values]
        out.extend(a for a in arrays if a is not None)
    return out
