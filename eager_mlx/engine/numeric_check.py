"""The numeric load check: a real model's forked log-probs against a plain forward pass, on the device in use.

The CPU test suite proves the engine exact per architecture on tiny models (tests/test_architectures.py).
Metal and CUDA kernels never run there, and on CUDA one model (attention sinks) once measured 1.3 nats
off. So on a GPU, at load, the real model runs one short prompt with two rows forked at its first step,
a few tokens, once per attention path (attention.FORCED_PATHS and the engine's own choice); every token's
log-prob is compared with one plain forward pass of the model over the same tokens. `check_numerics`
returns what it measured; the loader refuses the model past TOLERANCE (models/loader.py).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import mlx.core as mx
import numpy as np

from eager_mlx.config import EagerConfig, SamplingConfig
from eager_mlx.engine import attention
from eager_mlx.results import RunFinished

__all__ = ["TOLERANCE", "NumericCheck", "check_numerics", "not_run", "plain_logprobs"]

# nats. Paths sum in other orders than the plain pass: float16 rounding, ~1e-3 on real models (fp32 tiny
# models on an H200: < 8.7e-4); the CUDA fault this is for was 1.0-1.3.
TOLERANCE = 0.1
_PROMPT = "Question: what is 12 plus 30? Think step by step. Answer:"
_STEPS = 4


@dataclass(frozen=True)
class NumericCheck:
    """What the load check did: `errors` is the largest |log-prob - plain forward| (nats) per attention path,
    empty when it did not run (`note` says why)."""

    device: str
    errors: dict[str, float]
    tolerance: float = TOLERANCE
    tokens: int = 0  # tokens compared, over every path
    seconds: float = 0.0
    note: str = ""

    @property
    def ran(self) -> bool:
        return bool(self.errors)

    @property
    def max_error(self) -> Optional[float]:
        return float(np.max(list(self.errors.values()))) if self.errors else None  # NaN stays NaN

    @property
    def passed(self) -> bool:
        return not self.ran or self.max_error <= self.tolerance  # NaN fails

    def describe(self) -> str:
        """One line: which check ran on which device, and what it found."""
        if not self.ran:
            return f"numeric fork check not run on {self.device}: {self.note}"
        worst = max(self.errors, key=lambda p: (math.isnan(self.errors[p]), self.errors[p]))
        return (f"numeric fork check on {self.device}: forked log-probs differ from a plain forward pass by at most "
                f"{self.max_error:.1e} nats (the {worst} attention path; tolerance {self.tolerance:g}; "
                f"{self.tokens} tokens over {len(self.errors)} paths, {self.seconds:.1f} s)")


def not_run(reason: str) -> NumericCheck:
    """The record of a load where the check was not run, and why."""
    return NumericCheck(device=str(mx.default_device()), errors={}, note=reason)


def check_numerics(model: Any, tokenizer: Any, *, steps: int = _STEPS, tolerance: float = TOLERANCE) -> NumericCheck:
    """Run the check on MLX's default device. Raises ValueError where the engine refuses the model outright
    (probe.py); a model past `tolerance` comes back with `passed` False (the caller refuses it)."""
    from eager_mlx.engine import Engine

    start = time.perf_counter()
    prompt = list(tokenizer.encode(_PROMPT))
    engine = Engine(model, _NoEnd(tokenizer), max_rows=2, seed=0)
    # theta 0: the first step branches (any entropy above 0), then M = 2 stops further branches
    config = EagerConfig(threshold=0.0, max_sequences=2, max_tokens=steps, think_end=None,
                         sampling=SamplingConfig(temperature=1.0))
    errors, tokens = {}, 0
    for path in ("default", *attention.FORCED_PATHS):
        with attention.forced_path(path):
            engine.add(path, prompt, config)
            result = next(ev.result for ev in _events(engine) if isinstance(ev, RunFinished))
        seqs = [s for s in result.sequences if s.token_ids]
        if not seqs:  # every row ended at once: nothing to compare on this path
            continue
        refs = plain_logprobs(model, prompt, [s.token_ids for s in seqs])
        # a row that ended on an end-of-sequence token has its log-prob too, but not the token: left out
        diffs = [np.abs(np.array(s.logprobs[: len(r)], dtype=np.float64) - r) for s, r in zip(seqs, refs)]
        errors[path] = float(np.max(np.concatenate(diffs)))  # NaN stays NaN (and fails)
        tokens += sum(len(d) for d in diffs)
    return NumericCheck(device=str(mx.default_device()), errors=errors, tolerance=tolerance, tokens=tokens,
                        seconds=time.perf_counter() - start,
                        note="" if errors else "every row ended at its first token: nothing to compare")


class _NoEnd:
    """The tokenizer with no end-of-sequence tokens: every row runs all its steps (a child whose top-2 token
    is EOS would otherwise end at once, and its forked rows never be compared)."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self.eos_token_ids: set = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def _events(engine: Any):
    while engine.has_work:
        yield from engine.step()


def plain_logprobs(model: Any, prompt: list[int], sequences: list[list[int]]) -> list[np.ndarray]:
    """Each sequence's token log-probs from one plain forward pass (right-padded batch; causal, so the
    padding changes nothing before it)."""
    rows = [prompt + s for s in sequences]
    width = max(map(len, rows))
    logits = model(mx.array([r + [0] * (width - len(r)) for r in rows])).astype(mx.float32)
    logprobs = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True), dtype=np.float64)
    p = len(prompt)
    return [logprobs[i, p - 1 + np.arange(len(s)), s] for i, s in enumerate(sequences)]
