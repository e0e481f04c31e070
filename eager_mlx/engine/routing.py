"""Routing the model's attention to the engine's caches, so unmodified mlx-lm models decode through them.

`install_attention` wraps the `scaled_dot_product_attention` of every module the model's layers
come from: a call made with a `kv.LayerCache` as its cache goes to `LayerCache.attend`, a call on
keys a LayerCache returned in this pass (a layer reusing another's KV, gemma4) goes to that
layer's cache, and every other call goes to mlx-lm unchanged. While the load check (probe.py)
discovers what the model does, every call goes through to mlx-lm and is noted. A model whose
attention does not go through that function (hand-written attention) is caught by the load
check and refused.
"""
from __future__ import annotations

import sys

from eager_mlx.engine.kv import LayerCache, active_store

__all__ = ["install_attention"]


def _routed(original):
    def scaled_dot_product_attention(queries, keys, values, cache=None, scale=1.0, mask=None, **kw):
        store = active_store()
        if isinstance(cache, LayerCache):
            sinks = kw.pop("sinks", None)
            probe = cache.store.probe
            if probe is not None and probe.discover:
                probe.saw(cache.index, keys is values, mask, bool(kw))
                if sinks is not None:
                    kw["sinks"] = sinks
                return original(queries, keys, values, cache=None, scale=scale, mask=mask, **kw)
            if kw:
                raise ValueError(f"unsupported attention arguments {sorted(kw)}")
            return cache.attend(queries, keys, values, scale, mask, sinks)
        if store is None:
            return original(queries, keys, values, cache=cache, scale=scale, mask=mask, **kw)
        owner = store.owner(keys)
        discover = store.probe is not None and store.probe.discover
        if owner is None:  # attention on keys the engine does not hold
            if store.probe is not None:
                store.probe.unrouted += 1
            if not discover:
                raise ValueError("a layer attends to keys that did not come from its cache")
        elif not discover:
            sinks = kw.pop("sinks", None)
            return owner.attend(queries, keys, values, scale, mask, sinks, shared=True)
        return original(queries, keys, values, cache=None, scale=scale, mask=mask, **kw)

    scaled_dot_product_attention._eager_original = original
    return scaled_dot_product_attention


def install_attention(model) -> None:
    """Route the attention of `model`'s modules through LayerCache when one is passed.

    Idempotent; calls without a LayerCache behave exactly as before.
    """
    for _, module in model.named_modules():
        mod = sys.modules.get(type(module).__module__)
        fn = getattr(mod, "scaled_dot_product_attention", None)
        if fn is not None and not hasattr(fn, "_eager_original"):
            setattr(mod, "scaled_dot_product_attention", _routed(fn))
