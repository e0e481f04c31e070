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
reason naming the layer. The engine's caches report what the model did to a `Probe` while it is
set (`SharedPrefixKV.probe`); outside the check nothing is recorded. Numerical agreement with a
plain forward pass is proven per architecture by tests/test_architectures.py on the CPU, and checked
on the real model at each load on a GPU (numeric_check.py).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from eager_mlx.engine.cache_kinds import LeafSpec, Nesting
from eager_mlx.engine.kv import LayerCache, PassLayout, PromptGroup, SharedPrefixKV

__all__ = ["LayerKinds", "Probe", "check_model"]

_PROMPT = [0, 1, 2]
_ROWS = 2


@dataclass
class LayerRecord:
    """What one attention leaf did in the probe's pass."""

    writes: int = 0  # update_and_fetch calls
    attends: int = 0  # routed attention calls of its own
    shared: int = 0  # routed calls from layers that reuse its KV
    asked_window: Optional[int] = None  # the window its make_mask was asked for
    changed: bool = False  # attention got other keys or values than the cache returned
    sinks: bool = False  # it passes attention sinks
    returned: Optional[tuple] = None  # (keys, values) update_and_fetch returned
    seen: list[tuple] = field(default_factory=list)  # discover: (keys is values, array mask, other arguments)


class Probe:
    """Notes what the model does with the engine's caches during the load check's passes.

    `discover`: every call goes through to mlx-lm unchanged and is only noted (routing.py);
    otherwise the engine's real path runs and attention inputs are compared with what the cache returned.
    """

    def __init__(self, leaves: int, discover: bool, mla: frozenset = frozenset()):
        self.discover = discover
        self.mla = mla  # leaves known to use latent attention (their values are replaced by an identity)
        self.layers = [LayerRecord() for _ in range(leaves)]
        self.unrouted = 0  # attention calls on keys no cache of the pass returned

    def asked(self, index: int, window: Optional[int]) -> None:
        self.layers[index].asked_window = window

    def wrote(self, index: int, keys: mx.array, values: mx.array) -> None:
        self.layers[index].writes += 1
        self.layers[index].returned = (keys, values)

    def attended(self, index: int, keys: mx.array, values: mx.array, sinks, shared: bool) -> None:
        rec = self.layers[index]
        rec.attends += not shared
        rec.shared += shared
        rec.sinks = sinks is not None
        rk, rv = rec.returned or (None, None)
        rec.changed = not _same(keys, rk) or (index not in self.mla and not _same(values, rv))

    def saw(self, index: int, keys_are_values: bool, mask, other_arguments: bool) -> None:
        masked = mask is not None and not isinstance(mask, str)
        self.layers[index].seen.append((keys_are_values, masked, other_arguments))

    def found_mla(self) -> frozenset:
        """Leaves seen using latent attention: their keys are their values and the rope scores come as an
        array "mask"."""
        return frozenset(i for i, rec in enumerate(self.layers) if any(kv and m for kv, m, _ in rec.seen))


@dataclass(frozen=True)
class LayerKinds:
    """What the load check found, by leaf index: latent attention, attention sinks, KV reused by later layers."""

    mla: frozenset = frozenset()
    sinks: frozenset = frozenset()
    shared: frozenset = frozenset()


def _same(a, b) -> bool:
    """The same array, or equal values (a cast to another float type is harmless)."""
    return a is b or (b is not None and a.shape == b.shape and mx.array_equal(a, b).item())


def _run(model, specs: list[LeafSpec], nesting: Nesting, mla: frozenset, probe: Probe) -> SharedPrefixKV:
    store = SharedPrefixKV(specs, nesting, max_slots=_ROWS, mla=mla)
    store.probe = probe
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


def _problem(rec: LayerRecord, window: Optional[int]) -> str:
    if rec.writes != 1:
        return f"writes its keys {rec.writes} times per token through its cache"
    if rec.attends != 1:
        return "computes attention without mlx-lm's scaled_dot_product_attention (hand-written attention)"
    if rec.changed:
        return "changes the keys or values its cache returned before attention"
    if rec.asked_window is not None and rec.asked_window != window:
        have = f"a window of {window}" if window else "no window"
        return f"asks for a sliding window of {rec.asked_window} but its cache from make_cache has {have}"
    return ""


@contextlib.contextmanager
def _refusing():
    """Any failure of the model on the engine's path becomes a refusal naming the error."""
    try:
        yield
    except Exception as e:  # noqa: BLE001
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"unsupported model: its decoding fails on the engine's caches ({detail})") from e


def check_model(model, specs: list[LeafSpec], nesting: Nesting) -> LayerKinds:
    """Raise ValueError('unsupported model: ...') unless `model` decodes through the engine's caches.

    Returns which leaves use latent attention (MLA), attention sinks, or have their KV reused.
    """
    layer_of = _layer_of(nesting)
    seen = Probe(len(specs), discover=True)
    with _refusing():
        _run(model, specs, nesting, frozenset(), seen)
    if seen.unrouted:
        raise ValueError("unsupported model: a layer attends to keys that did not come from its cache")
    attention = [i for i, s in enumerate(specs) if s.kind != "recurrent"]
    mla = seen.found_mla()
    probe = Probe(len(specs), discover=False, mla=mla)
    with _refusing():
        _run(model, specs, nesting, mla, probe)
    for i in attention:
        problem = _problem(probe.layers[i], specs[i].window)
        if problem:
            raise ValueError(f"unsupported model: layer {layer_of[i]} {problem}")
    kinds = LayerKinds(mla, frozenset(i for i in attention if probe.layers[i].sinks),
                       frozenset(i for i in attention if probe.layers[i].shared))
    if _on_cuda() and kinds.sinks:
        # Seen on an H200 (mlx 0.32.4): after other passes in the same process, forked log-probs of a
        # sinks model were off by up to 1.3 nats; not reproduced in fresh processes (BENCHMARKS.md).
        raise ValueError("unsupported model: attention sinks on the CUDA backend (forked log-probs measured "
                         "wrong there; use Metal or the CPU)")
    return kinds


def _on_cuda() -> bool:
    """Whether passes run on MLX's CUDA backend (the default device is a GPU and CUDA is there)."""
    cuda = getattr(mx, "cuda", None)
    return mx.default_device().type == mx.DeviceType.gpu and cuda is not None and cuda.is_available()
