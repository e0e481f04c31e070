"""Decode measurements: eager-mlx's Engine vs mlx-lm's BatchGenerator, and the token-statistics overhead.

Both sides decode the same model in the same process, branching off, `warm`
steps first (prefill and the first passes are outside the timed window), then
`tokens` steps timed. Prefill is never measured: mlx-lm's side is prefilled once
per prompt into one `KVCache`, and BatchGenerator gets B references to it with
the last prompt token (`insert(..., caches=...)`), so its batch cache is B
copies of that prompt, as if it had prefilled the same prompt B times. The
engine prefills its prompt once (its own design) and shares it across its rows.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any, Callable

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import make_sampler

import eager_mlx.engine.engine as engine_mod
from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.engine.sampling import STAT_FIELDS, gumbel_noise

__all__ = ["Run", "TEMPERATURE", "ours", "prefill_one", "theirs", "pair", "entropy_blocks", "step_profile", "free"]

TEMPERATURE = 0.6
SAMPLING = SamplingConfig(temperature=TEMPERATURE)
_CHUNK = 512


@dataclass
class Run:
    """One timed decode window."""

    tps: float  # generated tokens per second, all rows together
    peak: int  # peak memory over the window above what was in use before this side started: its KV + temporaries
    kv: int  # KV-cache bytes held at the end of the window


def free() -> None:
    """Give memory back between measurements, so one side's buffers never count against the other."""
    gc.collect()
    mx.clear_cache()


def _window(step: Callable[[], int], tokens: int, base: int) -> tuple[float, int]:
    """Time `tokens` calls of `step` (each returns the tokens it produced); (tokens/s, peak bytes above `base`)."""
    mx.synchronize()
    mx.reset_peak_memory()
    produced, start = 0, time.perf_counter()
    for _ in range(tokens):
        produced += step()
    return produced / (time.perf_counter() - start), mx.get_peak_memory() - base


def ours(model: Any, tok: Any, prompt: list[int], rows: int, tokens: int, warm: int = 3, top_p: float = 1.0) -> Run:
    """eager-mlx: one request, `rows` parallel rows sharing the prompt's KV (top_p 1.0: temperature only)."""
    free()
    base = mx.get_active_memory()  # weights (and the other side's prefilled prompt, held by the caller)
    engine = Engine(model, tok, max_rows=rows, seed=0, token_events=False)
    engine.eos = set()  # same token count on both sides
    sampling = SamplingConfig(temperature=TEMPERATURE, top_p=top_p)
    cfg = EagerConfig(parallel=True, max_sequences=rows, max_tokens=warm + tokens + 4, sampling=sampling)
    engine.add("x", prompt, cfg)
    for _ in range(warm):
        engine.step()

    def step() -> int:
        engine.step()
        return engine.num_rows

    tps, peak = _window(step, tokens, base)
    run = Run(tps, peak, engine.kv_bytes())
    engine.abort("x")
    del engine
    free()
    return run


def prefill_one(model: Any, prompt: list[int]) -> list:
    """One row's mlx-lm cache holding prompt[:-1] (chunked, so a long prompt never builds huge logits)."""
    cache = make_prompt_cache(model)
    ids = mx.array(prompt[:-1], dtype=mx.int32)[None]
    for i in range(0, ids.shape[1], _CHUNK):
        model(ids[:, i : i + _CHUNK], cache=cache)
        mx.eval([c.state for c in cache])
    return cache


def theirs(model: Any, prompt: list[int], cache: list, rows: int, tokens: int, warm: int = 3,
           top_p: float = 1.0) -> Run:
    """mlx-lm BatchGenerator: `rows` copies of the prefilled prompt, then decode (its sampler, same settings)."""
    total = warm + tokens + 4
    free()
    base = mx.get_active_memory()
    sampler = make_sampler(temp=TEMPERATURE, top_p=top_p)
    gen = BatchGenerator(model, max_tokens=total, stop_tokens=None, sampler=sampler,
                         completion_batch_size=rows, prefill_batch_size=rows)
    gen.insert([prompt[-1:]] * rows, [total] * rows, caches=[cache] * rows)
    for _ in range(warm):
        gen.next_generated()
    tps, peak = _window(lambda: len(gen.next_generated()), tokens, base)
    run = Run(tps, peak, gen.prompt_cache_nbytes)
    gen.close()
    del gen
    free()
    return run


def pair(model: Any, tok: Any, prompt: list[int], rows: int, tokens: int, repeats: int,
         cache: list | None = None, top_p: float = 1.0) -> tuple[list[Run], list[Run]]:
    """Interleaved repeats of both sides (the first side alternates), the same sampling settings on both
    (top_p 1.0: temperature only); returns (ours, theirs) runs."""
    cache = cache if cache is not None else prefill_one(model, prompt)
    a, b = [], []
    for i in range(repeats):
        if i % 2 == 0:
            a.append(ours(model, tok, prompt, rows, tokens, top_p=top_p))
            b.append(theirs(model, prompt, cache, rows, tokens, top_p=top_p))
        else:
            b.append(theirs(model, prompt, cache, rows, tokens, top_p=top_p))
            a.append(ours(model, tok, prompt, rows, tokens, top_p=top_p))
    return a, b


# ---------------------------------------------------------------- token-statistics overhead
def _plain_stats(logits, sampling, seeds, entropy_top_k=20, alt=False):
    """Sampling only (Gumbel-max over the vocabulary, the same noise): no entropy, top-2 or log-probs."""
    tempered = logits.astype(mx.float32) / sampling.temperature
    token = mx.argmax(tempered + gumbel_noise(seeds, mx.arange(tempered.shape[-1])[None]), axis=-1)
    rest = mx.zeros((logits.shape[0], len(STAT_FIELDS) - 1), mx.float32)
    return mx.concatenate([token[:, None].astype(mx.float32), rest], axis=1)


def entropy_blocks(model: Any, tok: Any, prompt: list[int], rows: int, pairs: int,
                   block: int = 8) -> tuple[list[float], list[float]]:
    """Tokens/s of blocks of `block` steps with the engine's token statistics vs plain sampling.

    One engine run; the statistics function is swapped between blocks in ABBA order (so
    a slow drift cancels), and the first step after a swap, which still reads a pass
    built with the other function, is not timed. Returns (with stats, plain) per pair.
    """
    real = engine_mod.token_stats
    engine = Engine(model, tok, max_rows=rows, seed=0, token_events=False)
    engine.eos = set()
    cfg = EagerConfig(parallel=True, max_sequences=rows, max_tokens=3 + 2 * pairs * (block + 1) + 4, sampling=SAMPLING)
    engine.add("x", prompt, cfg)
    full, plain = [], []

    def timed(fn) -> float:
        engine_mod.token_stats = fn
        engine.step()  # the transition step
        start = time.perf_counter()
        for _ in range(block):
            engine.step()
        return rows * block / (time.perf_counter() - start)

    try:
        for _ in range(3):
            engine.step()
        for i in range(pairs):
            first, second = (real, _plain_stats) if i % 2 == 0 else (_plain_stats, real)
            x, y = timed(first), timed(second)
            full.append(x if first is real else y)
            plain.append(y if first is real else x)
    finally:
        engine_mod.token_stats = real
    engine.abort("x")
    del engine
    free()
    return full, plain


def step_profile(model: Any, tok: Any, prompt: list[int], steps: int = 24) -> tuple[float, float]:
    """Median ms per B=1 step spent building the pass's graph in Python, and per whole step."""
    engine = Engine(model, tok, max_rows=1, seed=0, token_events=False)
    engine.eos = set()
    engine.add("x", prompt, EagerConfig(parallel=True, max_sequences=1, max_tokens=steps + 8, sampling=SAMPLING))
    for _ in range(3):
        engine.step()
    build, total = [], []
    forward = engine._forward  # engine internals: a pass is built by _forward and dispatched after it returns

    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = forward(*args, **kwargs)
        build.append(time.perf_counter() - t)
        return out

    engine._forward = timed
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        total.append(time.perf_counter() - t)
    engine.abort("x")
    build.sort(), total.sort()
    return build[len(build) // 2] * 1e3, total[len(total) // 2] * 1e3
