"""The engine's load check: does this model decode through the engine's caches?

The engine plugs its shared-prefix caches into unmodified mlx-lm models. That is right only when
every attention layer writes its keys through its cache and attends through mlx-lm's
`scaled_dot_product_attention` (which the engine routes to itself), with no mask of its own and
no change to the keys the cache returned. A model that writes attention by hand (gemma2's
soft-capped scores, phi3small's block-sparse layers), reuses another layer's KV, or asks for a
sliding window its cache does not have would run and be silently wrong.

So at construction the engine prefills a three-token prompt and decodes one token for two rows
through its own caches, twice: a first pass lets every call through and notes what each layer
passes (this is how latent-attention layers are recognised: their keys are their values and the
rope scores come as a mask); the second pass runs the engine's real path and counts, layer by
layer, one cache write and one routed attention call. Anything else is refused with a one-line
reason naming the layer. Numerical agreement with a plain forward pass is proven per
architecture by tests/test_architectures.py.
"""
from __future__ import annotations

import contextlib

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from eager_mlx.engine.cache_kinds import LeafSpec, Nesting
from eager_mlx.engine.kv import LayerCache, PassLayout, PromptGroup, SharedPrefixKV

__all__ = ["check_model"]

_PROMPT = [0, 1, 2]
_ROWS = 2


def _run(model, specs: list[LeafSpec], nesting: Nesting, mla: frozenset, discover: bool) -> SharedPrefixKV:
    store = SharedPrefixKV(specs, nesting, max_slots=_ROWS, mla=mla)
    store.discover, store.checking = discover, not discover
    prefill = make_prompt_cache(model)
    model(mx.array([_PROMPT]), cache=prefill)
    store.add_prompt("probe", prefill, len(_PROMPT))
    store.add_rows("probe", _ROWS)
    store.reserve(_ROWS, 0, 0)
    layout = PassLayout(
        slots=None,
        n=_ROWS,
        column=0,
        offsets=mx.array([len(_PROMPT)] * _ROWS, dtype=mx.int32),
        lo=0,
        mask=mx.ones((_ROWS, 1), dtype=mx.bool_),
        groups=[PromptGroup("probe", None, len(_PROMPT))],
        inverse=None,
        starts=mx.zeros((_ROWS,), dtype=mx.int32),
    )
    try:
        logits = model(mx.array([[3], [4]]), cache=store.begin_pass(layout))
    finally:
        store.end_pass()
    mx.eval(logits, store.arrays())
    return store


def _layer_of(nesting: Nesting) -> dict[int, int]:
    out = {}
    for layer, entry in enumerate(nesting):
        for leaf in entry if isinstance(entry, tuple) else (entry,):
            out[leaf] = layer
    return out


def _problem(leaf: LayerCache) -> str:
    if leaf.writes != 1:
        return f"writes its keys {leaf.writes} times per token through its cache"
    if leaf.attends != 1:
        return "computes attention without mlx-lm's scaled_dot_product_attention (hand-written attention)"
    if leaf.changed:
        return "changes the keys or values its cache returned before attention"
    if leaf.asked_window is not None and leaf.asked_window != leaf.window:
        have = f"a window of {leaf.window}" if leaf.window else "no window"
        return f"asks for a sliding window of {leaf.asked_window} but its cache from make_cache has {have}"
    return ""


@contextlib.contextmanager
def _refusing():
    """Any failure of the model on the engine's path becomes a refusal naming the error."""
    try:
        yield
    except Exception as e:  # noqa: BLE001
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"unsupported model: its decoding fails on the engine's caches ({detail})") from e


def check_model(model, specs: list[LeafSpec], nesting: Nesting) -> frozenset:
    """Raise ValueError('unsupported model: ...') unless `model` decodes through the engine's caches.

    Returns the leaves that use latent attention (MLA).
    """
    layer_of = _layer_of(nesting)
    with _refusing():
        seen = _run(model, specs, nesting, frozenset(), discover=True)
    if seen.unrouted:
        raise ValueError("unsupported model: a layer attends to keys that did not come from its cache")
    # Latent attention: the keys are the values and the rope scores come as an array "mask".
    mla = frozenset(i for i, leaf in enumerate(seen.leaves)
                    if isinstance(leaf, LayerCache) and any(k_is_v and masked for k_is_v, masked, _ in leaf.seen))
    with _refusing():
        store = _run(model, specs, nesting, mla, discover=False)
    for i, leaf in enumerate(store.leaves):
        problem = _problem(leaf) if isinstance(leaf, LayerCache) else ""
        if problem:
            raise ValueError(f"unsupported model: layer {layer_of[i]} {problem}")
    if _on_cuda() and any(isinstance(leaf, LayerCache) and leaf.sinks for leaf in store.leaves):
        # Seen on an H200 (mlx 0.32.4): after other passes in the same process, forked log-probs of a
        # sinks model were off by up to 1.3 nats; not reproduced in fresh processes (BENCHMARKS.md).
        raise ValueError("unsupported model: attention sinks on the CUDA backend (forked log-probs measured "
                         "wrong there; use Metal or the CPU)")
    return mla


def _on_cuda() -> bool:
    """Whether passes run on MLX's CUDA backend (the default device is a GPU and CUDA is there)."""
    cuda = getattr(mx, "cuda", None)
    return mx.default_device().type == mx.DeviceType.gpu and cuda is not None and cuda.is_available()
