"""Branch-token rules (top2 / sample / keep) and parallel samples taken in rounds, on Markov-chain models."""
import dataclasses

import numpy as np
import pytest

from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.results import RunFinished

from fakes import ByteTokenizer, MarkovModel

TOK = ByteTokenizer()
PROMPT = TOK.encode("Go: q")
HOT = SamplingConfig(temperature=1.0)


def run(model, requests, max_rows=32):
    """requests: (id, config, add() keywords); returns id -> RunResult."""
    engine = Engine(model, TOK, max_rows=max_rows, seed=5)
    for rid, cfg, kw in requests:
        engine.add(rid, PROMPT, cfg, **kw)
    out = {}
    while engine.has_work:
        out.update({ev.request_id: ev.result for ev in engine.step() if isinstance(ev, RunFinished)})
    return out


def token_at(seq, step):
    return seq.token_ids[step] if step < len(seq.token_ids) else TOK.EOS


def forks(model, rule, seeds=range(8)):
    """(result, child, parent token, child token, top-1, top-2) for every branch over a few models."""
    out = []
    for seed in seeds:
        m = MarkovModel.random(seed, eos=-1.0)
        cfg = EagerConfig(threshold=1.2, max_sequences=4, max_tokens=14, think_end=None, sampling=HOT,
                          branch_rule=rule)
        result = run(m, [("r", cfg, {})])["r"]
        table = np.array(m.table)
        for c in result.sequences[1:]:
            p, s = result.sequences[c.parent], c.branch_step
            prev = PROMPT[-1] if s == 0 else c.token_ids[s - 1]
            top = np.argsort(-table[prev], kind="stable")
            out.append((result, c, token_at(p, s), token_at(c, s), int(top[0]), int(top[1])))
    assert len(out) >= 8, "the test needs branches"
    return out


def test_top2_rule_is_the_papers():
    for _, _, parent, child, top1, top2 in forks(None, "top2"):
        assert (parent, child) == (top1, top2)


def test_sample_rule_keeps_top1_in_the_parent_and_samples_the_child_elsewhere():
    cases = forks(None, "sample")
    assert all(parent == top1 and child != top1 for _, _, parent, child, top1, _ in cases)
    assert any(child != top2 for *_, child, _, top2 in cases)  # not the paper's rule in disguise


def test_keep_rule_leaves_the_parent_as_it_would_have_been():
    # The parent keeps its own sample and key: sequence 0 is the unbranched run's sequence, token for token.
    for seed in range(6):
        m = MarkovModel.random(seed, eos=-1.0)
        cfg = EagerConfig(threshold=1.2, max_sequences=4, max_tokens=14, think_end=None, sampling=HOT,
                          branch_rule="keep")
        branched = run(m, [("r", cfg, {})])["r"]
        alone = run(m, [("r", dataclasses.replace(cfg, max_sequences=1), {})])["r"]
        assert branched.sequences[0].token_ids == alone.sequences[0].token_ids
    for _, _, parent, child, _, _ in forks(None, "keep"):
        assert parent != child


def test_parallel_rounds_continue_one_stream_of_samples():
    m = MarkovModel.random(3, eos=-1.0)
    cfg = EagerConfig(parallel=True, max_sequences=4, max_tokens=12, sampling=HOT, think_end=None)
    whole = run(m, [("p0-r0", cfg, {})])["p0-r0"]
    half = dataclasses.replace(cfg, max_sequences=2)
    rounds = run(m, [("x", EagerConfig(threshold=0.5, max_sequences=3, max_tokens=9, sampling=HOT), {}),
                     ("p0-r2", half, {"key_id": "p0-r0", "first_sequence": 2}),
                     ("p0-r1", half, {"key_id": "p0-r0", "first_sequence": 0})], max_rows=6)
    got = [s.token_ids for s in rounds["p0-r1"].sequences + rounds["p0-r2"].sequences]
    assert got == [s.token_ids for s in whole.sequences]
    assert len({tuple(t) for t in got}) == 4  # four different samples
    with pytest.raises(ValueError, match="first_sequence"):
        Engine(m, TOK, max_rows=4).add("y", PROMPT, cfg, first_sequence=-1)
