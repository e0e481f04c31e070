"""The fork-correctness check, without pytest (also run on a GPU by benchmarks/gpu_check.py).

Two requests on one engine, forks planned early and late, request b joining after JOIN_AT steps:
every branched sequence's log-probs are compared with one plain forward pass over its tokens.
"""
import mlx.core as mx
import numpy as np

from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.engine.branching import BranchPolicy
from eager_mlx.engine.numeric_check import plain_logprobs as reference
from eager_mlx.results import RunFinished

from fakes import ByteTokenizer

TOK = ByteTokenizer()
TOK.eos_token_ids = set()  # no row ends early: every planned fork happens

PROMPTS = {"a": list(range(40, 51)), "b": list(range(60, 67))}  # longer than the sliding windows (4)
# (sequence, step) pairs that branch: early forks, and late ones once the suffix is past the window.
PLANS = {"a": {(0, 0), (0, 1), (1, 3), (0, 9)}, "b": {(0, 0), (1, 6)}}
MAX_TOKENS = {"a": 12, "b": 14}
JOIN_AT = 5  # request b is added after this many steps


class Scheduled(BranchPolicy):
    """Branches the planned (sequence, step) pairs, whatever the entropy."""

    def __init__(self, config, plan):
        super().__init__(config)
        self.plan, self.step = plan, 0

    def decide(self, rows):
        chosen = [r.sequence for r in rows if (r.sequence, self.step) in self.plan]
        self.num_sequences += len(chosen)
        self.step += 1
        return chosen


def run_planned(engine):
    """Run requests a and b with their planned forks; {request id: RunResult}."""
    results, steps = {}, 0

    def add(rid):
        config = EagerConfig(max_sequences=8, max_tokens=MAX_TOKENS[rid], sampling=SamplingConfig(temperature=1.0))
        engine.add(rid, PROMPTS[rid], config)
        engine._requests[rid].policy = Scheduled(config, PLANS[rid])

    add("a")
    while engine.has_work:
        if steps == JOIN_AT:
            add("b")
        for ev in engine.step():
            if isinstance(ev, RunFinished):
                results[ev.request_id] = ev.result
        steps += 1
    return results


def context_matters(model) -> float:
    """How much the last token's logits change with the tokens before it (0: the check is void)."""
    a = model(mx.array([PROMPTS["a"]]))[0, -1]
    b = model(mx.array([PROMPTS["b"][:-1] + PROMPTS["a"][-1:]]))[0, -1]
    return float(mx.abs(a - b).max())


def fork_errors(model) -> dict[str, float]:
    """Run the planned forks; the largest |log-prob - reference| per request.

    Raises AssertionError when the check would prove nothing (the model ignores its context) or
    when a planned fork or token is missing.
    """
    assert context_matters(model) > 1e-3, "the tiny model ignores its context: the comparison would prove nothing"
    results = run_planned(Engine(model, TOK, max_rows=8, seed=1))
    assert [len(results[r].sequences) for r in "ab"] == [5, 3], "every planned fork happens"
    errors = {}
    for rid, result in results.items():
        tokens = [s.token_ids for s in result.sequences]
        assert all(len(t) == MAX_TOKENS[rid] for t in tokens), f"request {rid}: a sequence ended early"
        refs = reference(model, PROMPTS[rid], tokens)
        errors[rid] = max(float(np.abs(np.array(s.logprobs) - r).max()) for s, r in zip(result.sequences, refs))
    return errors


# Shared prefixes: prompts cut into segments after SEP; a header of two segments (longer than the
# sliding windows) shared by q1 and q2, and q1 asked twice (the second time wholly from the cache).
SEP = 3
HEADER = list(range(40, 48)) + [SEP] + list(range(50, 56)) + [SEP]
SHARED = {"q1": HEADER + [60, 61, 62], "q2": HEADER + [70, 71, 72, 73], "again": HEADER + [60, 61, 62]}
SHARED_PLANS = {"q1": {(0, 0), (1, 2)}, "q2": {(0, 1)}, "again": {(0, 0), (1, 2)}}


def run_shared(engine):
    """q1 alone, then q2 and q1 again together (same seed as q1's first run); {request id: RunResult}."""
    results = {}

    def add(rid):
        config = EagerConfig(max_sequences=4, max_tokens=6, sampling=SamplingConfig(temperature=1.0))
        engine.add(rid, SHARED[rid], config, seed=7 if rid in ("q1", "again") else 8)
        engine._requests[rid].policy = Scheduled(config, SHARED_PLANS[rid])

    for batch in (["q1"], ["q2", "again"]):
        for rid in batch:
            add(rid)
        while engine.has_work:
            for ev in engine.step():
                if isinstance(ev, RunFinished):
                    results[ev.request_id] = ev.result
    return results


def shared_prefix_errors(model) -> dict[str, float]:
    """Run the shared-prefix requests with the prefix cache and without; the largest |log-prob - reference|
    per request. Raises AssertionError unless the cache was used as planned and changed nothing (bitwise)."""
    cached = Engine(model, TOK, max_rows=8, seed=1, segment_ends={SEP})
    results = run_shared(cached)
    plain = run_shared(Engine(model, TOK, max_rows=8, seed=1, segment_ends={SEP}, prefix_cache=False))
    stats = cached.prefix_stats()
    assert (stats.requests, stats.hits) == (3, 2), "q2 finds the header in the cache, q1 again all of q1"
    assert stats.tokens_saved == len(HEADER) + len(SHARED["q1"])
    for rid in SHARED:
        for s, p in zip(results[rid].sequences, plain[rid].sequences):
            assert (s.token_ids, s.logprobs, s.entropies) == (p.token_ids, p.logprobs, p.entropies), \
                f"request {rid}: the prefix cache changed a result"
    for s, p in zip(results["again"].sequences, results["q1"].sequences):  # batched with q2: tokens equal
        assert s.token_ids == p.token_ids, "a prompt from the cache: another result"
    errors = {}
    for rid, result in results.items():
        assert len(result.sequences) == 1 + len(SHARED_PLANS[rid]), f"request {rid}: a planned fork is missing"
        tokens = [s.token_ids for s in result.sequences]
        refs = reference(model, SHARED[rid], tokens)
        errors[rid] = max(float(np.abs(np.array(s.logprobs[: len(r)]) - r).max()) for s, r in zip(result.sequences, refs))
    return errors
