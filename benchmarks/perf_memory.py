"""Fork cost, KV memory, the memory guard and the bandwidth bound."""
from __future__ import annotations

import copy
import time
from typing import Any, Optional

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from eager_mlx import EagerConfig, Engine
from perf_decode import SAMPLING, free, prefill_one, theirs
from perf_models import kv_bytes_per_token, random_prompt

__all__ = ["fork_cost", "kv_memory", "guard_peak", "bandwidth_gbs"]


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _engine_with_suffix(model: Any, tok: Any, prompt: list[int], suffix: int) -> Engine:
    engine = Engine(model, tok, max_rows=4, seed=0, token_events=False)
    engine.eos = set()
    engine.add("x", prompt, EagerConfig(threshold=100, max_sequences=2, max_tokens=suffix + 8, sampling=SAMPLING))
    for _ in range(suffix):
        engine.step()
    return engine


def fork_cost(model: Any, tok: Any, plen: int, suffix: int, forks: int, copies: int) -> list[float]:
    """[prompt, eager-mlx fork ms, mlx-lm cache copy ms, MB each copies] for one row with `suffix` tokens.

    eager-mlx: the engine's row copy (engine internals: `_kv.copy_row`, the call a branch makes).
    mlx-lm: `copy.deepcopy` of the sequence's caches, paid at the first write (copy-on-write).
    """
    prompt = random_prompt(plen, model.args.vocab_size, seed=plen)
    engine = _engine_with_suffix(model, tok, prompt, suffix)
    kv, start, column = engine._kv, engine._rows[0].start, engine._column

    def ours() -> float:
        mx.eval(kv.arrays())
        t = time.perf_counter()
        kv.copy_row(0, 1, start, column)
        mx.eval(kv.arrays())
        return time.perf_counter() - t

    caches = [KVCache() for _ in model.layers]
    ids = mx.array(prompt + [1] * suffix, dtype=mx.int32)[None]
    for i in range(0, ids.shape[1], 512):
        model(ids[:, i : i + 512], cache=caches)
        mx.eval([c.state for c in caches])
    one = mx.zeros((1, caches[0].keys.shape[1], 1, caches[0].keys.shape[3]), caches[0].keys.dtype)

    def mlx_lm_copy() -> float:
        t = time.perf_counter()
        forked = copy.deepcopy(caches)
        for c in forked:
            c.update_and_fetch(one, one)
        mx.eval([c.state for c in forked])
        return time.perf_counter() - t

    a = _median([ours() for _ in range(forks)])
    b = _median([mlx_lm_copy() for _ in range(copies)])
    per_token = kv_bytes_per_token(model)
    engine.abort("x")
    del engine, caches
    free()
    return [plen, a * 1e3, b * 1e3, suffix * per_token / 2**20, (plen + suffix) * per_token / 2**20]


def kv_memory(model: Any, tok: Any, plen: int, rows: int, suffix: int) -> tuple[int, int, int]:
    """KV bytes for `rows` samples of one prompt after `suffix` tokens: eager-mlx, the ideal, mlx-lm.

    The ideal is the prompt once plus every row's own suffix; mlx-lm's is read off its
    BatchGenerator (B copies of the prompt plus the suffixes, in 256-token steps).
    """
    prompt = random_prompt(plen, model.args.vocab_size, seed=1)
    engine = Engine(model, tok, max_rows=rows, seed=0, token_events=False)
    engine.eos = set()
    engine.add("x", prompt, EagerConfig(parallel=True, max_sequences=rows, max_tokens=suffix + 4, sampling=SAMPLING))
    for _ in range(suffix + 1):
        engine.step()
    ours = engine.kv_bytes()
    engine.abort("x")
    del engine
    free()
    ideal = (plen + rows * suffix) * kv_bytes_per_token(model)
    theirs_run = theirs(model, prompt, prefill_one(model, prompt), rows, tokens=1, warm=suffix)
    return ours, ideal, theirs_run.kv


def guard_peak(model: Any, tok: Any, prompt: list[int], limit: Optional[int]) -> tuple[int, int, int]:
    """(peak bytes above the start, sequences, forks skipped) of one branching run under `limit`."""
    engine = Engine(model, tok, max_rows=32, seed=0, token_events=False, max_kv_memory=limit)
    engine.add("x", prompt, EagerConfig(threshold=0.5, max_sequences=32, max_tokens=96, sampling=SAMPLING))
    free()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    result = None
    while engine.has_work:
        for ev in engine.step():
            if hasattr(ev, "result"):
                result = ev.result
    return mx.get_peak_memory() - base, result.num_sequences, result.info["branches_skipped_memory"]


def bandwidth_gbs() -> float:
    """Memory bandwidth as MLX sees it: 256 MB summed, median of 5."""
    x = mx.random.uniform(shape=(64 * 2**20,))
    mx.eval(x)

    def once() -> float:
        t = time.perf_counter()
        mx.eval(x.sum())
        return time.perf_counter() - t

    once()
    return x.nbytes / _median([once() for _ in range(5)]) / 1e9
