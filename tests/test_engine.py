"""The engine on tiny random mlx-lm models: fork correctness, randomness, reproducibility."""
import mlx.core as mx
import numpy as np
import pytest

from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.results import RunFinished, SequenceFinished
from eager_mlx.engine.sampling import entropy

from fakes import ByteTokenizer, tiny_model

TOK = ByteTokenizer()


def run_all(engine):
    results = {}
    while engine.has_work:
        for ev in engine.step():
            if isinstance(ev, RunFinished):
                results[ev.request_id] = ev.result
    return results


def reference_stats(model, prompt, tokens):
    """Log-probs and top-20 entropies of `tokens` decoded from scratch (no cache)."""
    logits = model(mx.array(prompt + tokens)[None])[0].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    p = len(prompt)
    lp = [logprobs[p - 1 + i, t].item() for i, t in enumerate(tokens)]
    h = entropy(logprobs[p - 1 : p - 1 + len(tokens)], 20).tolist()
    return np.array(lp), np.array(h)


@pytest.mark.parametrize("kind", ["llama", "qwen3", "qwen2"])
def test_forked_rows_match_decoding_from_scratch(kind):
    """Every token of every row (children included, two prompts in one batch) has the
    log-prob and entropy that a from-scratch forward pass over the same tokens gives."""
    model = tiny_model(kind)
    engine = Engine(model, TOK, max_rows=16, seed=3)
    prompts = {"a": TOK.encode("Hello world, a longer prompt"), "b": TOK.encode("Hi")}
    hot = SamplingConfig(temperature=1.0)
    engine.add("a", prompts["a"], EagerConfig(threshold=2.8, max_sequences=6, max_tokens=24, sampling=hot))
    engine.add("b", prompts["b"], EagerConfig(threshold=2.8, max_sequences=3, max_tokens=16, sampling=hot))
    results = run_all(engine)
    assert sum(r.num_sequences for r in results.values()) > 2, "the test needs branches"
    for rid, result in results.items():
        for seq in result.sequences:
            lp, h = reference_stats(model, prompts[rid], seq.token_ids)
            np.testing.assert_allclose(seq.logprobs[: len(lp)], lp, atol=2e-4)
            np.testing.assert_allclose(seq.entropies[: len(h)], h, atol=2e-4)


def test_token_events_carry_entropy_and_logprob():
    engine = Engine(tiny_model(), TOK, max_rows=4, seed=0)
    engine.add("a", TOK.encode("Hi"), EagerConfig(threshold=100, max_sequences=1, max_tokens=6))
    events, result = [], None
    while engine.has_work:
        for ev in engine.step():
            if isinstance(ev, RunFinished):
                result = ev.result
            elif not isinstance(ev, SequenceFinished):
                events.append(ev)
    seq = result.sequences[0]
    assert [e.token for e in events] == seq.token_ids[: len(events)]
    assert [e.logprob for e in events] == seq.logprobs[: len(events)]
    assert [e.entropy for e in events] == seq.entropies[: len(events)]


def test_children_inherit_the_parent_prefix():
    engine = Engine(tiny_model(), TOK, max_rows=16, seed=1)
    engine.add("a", TOK.encode("Hello"), EagerConfig(threshold=2.8, max_sequences=8, max_tokens=20,
                                                     sampling=SamplingConfig(temperature=1.0)))
    result = run_all(engine)["a"]
    seqs = {s.index: s for s in result.sequences}
    children = [s for s in seqs.values() if s.parent is not None]
    assert children
    for child in children:
        parent = seqs[child.parent]
        k = child.branch_step
        assert child.token_ids[:k] == parent.token_ids[:k]
        assert child.token_ids[k] != parent.token_ids[k]
    own = sum(len(s.token_ids) - (s.branch_step or 0) for s in seqs.values())
    assert result.generated_tokens == own  # no EOS in a random model's 20 tokens: every token counted once


def test_parallel_rows_diverge_and_count_m():
    engine = Engine(tiny_model(), TOK, max_rows=8, seed=0)
    engine.add("p", TOK.encode("Hi"), EagerConfig(parallel=True, max_sequences=4, max_tokens=12,
                                                  sampling=SamplingConfig(temperature=1.0)))
    result = run_all(engine)["p"]
    assert result.num_sequences == 4
    assert len({tuple(s.token_ids) for s in result.sequences}) == 4
    assert result.generated_tokens == 4 * 12


def _tokens(seed, temperature=1.0):
    engine = Engine(tiny_model(), TOK, max_rows=16, seed=seed)
    engine.add("a", TOK.encode("Hello"), EagerConfig(threshold=2.8, max_sequences=4, max_tokens=16,
                                                     sampling=SamplingConfig(temperature=temperature)))
    return [s.token_ids for s in run_all(engine)["a"].sequences]


def test_same_seed_same_output_and_greedy_is_deterministic():
    assert _tokens(7) == _tokens(7)
    assert _tokens(7) != _tokens(8)
    assert _tokens(1, temperature=0) == _tokens(2, temperature=0)


def test_filters_restrict_the_sampled_tokens():
    model = tiny_model()
    prompt = TOK.encode("Hi")
    logits = model(mx.array(prompt)[None])[0, -1]
    allowed = set(np.argsort(-np.array(logits))[:3].tolist())
    engine = Engine(model, TOK, max_rows=32, seed=0)
    engine.add("k", prompt, EagerConfig(parallel=True, max_sequences=32, max_tokens=1,
                                        sampling=SamplingConfig(temperature=2.0, top_k=3)))
    firsts = {s.token_ids[0] if s.token_ids else 256 for s in run_all(engine)["k"].sequences}
    assert firsts <= allowed and len(firsts) > 1


def test_abort_frees_rows_and_reports():
    engine = Engine(tiny_model(), TOK, max_rows=4, seed=0)
    engine.add("a", TOK.encode("Hi"), EagerConfig(parallel=True, max_sequences=4, max_tokens=100))
    engine.step()
    events = engine.abort("a")
    finished = [e for e in events if isinstance(e, RunFinished)]
    assert len(finished) == 1 and engine.free_rows == 4 and not engine.has_work
    assert {s.finish_reason for s in finished[0].result.sequences} == {"aborted"}
    assert sum(isinstance(e, SequenceFinished) for e in events) == 4


def test_requests_queue_when_rows_are_full():
    engine = Engine(tiny_model(), TOK, max_rows=4, seed=0)
    cfg = EagerConfig(parallel=True, max_sequences=4, max_tokens=5)
    engine.add("a", TOK.encode("Hi"), cfg)
    engine.add("b", TOK.encode("Yo"), cfg)
    results = run_all(engine)
    assert set(results) == {"a", "b"}
    assert all(r.num_sequences == 4 for r in results.values())


def test_unsupported_cache_is_a_clear_error():
    class Odd:
        def make_cache(self):
            from mlx_lm.models.cache import ChunkedKVCache

            return [ChunkedKVCache(chunk_size=8)]

    with pytest.raises(ValueError, match="unsupported model: layer 0 uses ChunkedKVCache"):
        Engine(Odd(), TOK)


def _branchy(engine, rid="a", m=16):
    engine.add(rid, TOK.encode("Hello"), EagerConfig(threshold=2.7, max_sequences=m, max_tokens=40,
                                                     sampling=SamplingConfig(temperature=1.0)))


def test_memory_guard_stops_forks_and_generation_goes_on():
    # seed 0: no row ends by EOS here (one would free its slot for another fork)
    free = Engine(tiny_model(), TOK, max_rows=32, seed=0)
    _branchy(free)
    unguarded = run_all(free)["a"]
    assert unguarded.num_sequences > 8
    # Room for the prompt and 8 row slots of 48 columns (40 tokens + headroom, in steps of 16) only.
    per_cell = 2 * 2 * 2 * 16 * 4  # layers * (k+v) * kv_heads * head_dim * fp32 bytes
    prompt = 2 * len(TOK.encode("Hello")) * per_cell
    limit = prompt + 8 * 48 * per_cell
    guarded = Engine(tiny_model(), TOK, max_rows=32, seed=0, max_kv_memory=limit)
    _branchy(guarded)
    peak = 0
    result = None
    while guarded.has_work:
        for ev in guarded.step():
            if isinstance(ev, RunFinished):
                result = ev.result
        peak = max(peak, guarded.kv_bytes())
    assert result.num_sequences == 8
    assert result.info["branches_skipped_memory"] > 0
    assert peak <= limit
    assert all(s.finish_reason == "length" for s in result.sequences)


def test_finish_sequence_frees_one_row():
    engine = Engine(tiny_model(), TOK, max_rows=4, seed=0)
    engine.add("a", TOK.encode("Hi"), EagerConfig(parallel=True, max_sequences=3, max_tokens=6))
    engine.step()
    events = engine.finish_sequence("a", 1, "pruned")
    assert [(e.sequence, e.finish_reason) for e in events] == [(1, "pruned")]
    assert engine.num_rows == 2
    result = run_all(engine)["a"]
    reasons = {s.index: s.finish_reason for s in result.sequences}
    assert reasons == {0: "length", 1: "pruned", 2: "length"}


def test_abort_a_waiting_request():
    engine = Engine(tiny_model(), TOK, max_rows=2, seed=0)
    engine.add("a", TOK.encode("Hi"), EagerConfig(parallel=True, max_sequences=2, max_tokens=4))
    engine.add("b", TOK.encode("Yo"), EagerConfig(parallel=True, max_sequences=2, max_tokens=4))
    engine.step()
    finished = [e for e in engine.abort("b") if isinstance(e, RunFinished)]
    assert len(finished) == 1 and finished[0].result.sequences == []
    assert set(run_all(engine)) == {"a"}


def test_idle_engine_holds_no_row_kv():
    engine = Engine(tiny_model(), TOK, max_rows=8, seed=0)
    engine.add("a", TOK.encode("Hi"), EagerConfig(parallel=True, max_sequences=4, max_tokens=5))
    engine.step()
    assert engine.kv_bytes() > 0
    run_all(engine)
    assert engine.kv_bytes() == 0
    engine.add("b", TOK.encode("Yo"), EagerConfig(parallel=True, max_sequences=2, max_tokens=5))
    assert run_all(engine)["b"].num_sequences == 2


def test_requests_with_different_entropy_settings_share_a_batch():
    model = tiny_model()
    engine = Engine(model, TOK, max_rows=4, seed=0)
    prompts = {"k5": TOK.encode("Hello"), "full": TOK.encode("Hi there")}
    engine.add("k5", prompts["k5"], EagerConfig(threshold=100, max_sequences=1, max_tokens=6, entropy_top_k=5))
    engine.add("full", prompts["full"], EagerConfig(threshold=100, max_sequences=1, max_tokens=6, full_entropy=True))
    results = run_all(engine)
    for rid, k in (("k5", 5), ("full", None)):
        seq = results[rid].sequences[0]
        logits = model(mx.array(prompts[rid] + seq.token_ids)[None])[0].astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        p = len(prompts[rid])
        want = entropy(logprobs[p - 1 : p - 1 + len(seq.token_ids)], k).tolist()
        np.testing.assert_allclose(seq.entropies[: len(want)], want, atol=2e-4)


@pytest.mark.parametrize("rule", [None, "solo", "wide", "top2", "keep"])
def test_a_nucleus_past_the_candidates_is_drawn_whole_and_the_next_pass_fed_with_it(rule):
    """Flat logits at top-p 0.99 put most of the 300-token vocabulary in the nucleus: every token is the exact
    draw (the whole vocabulary as candidates, the row's own noise), and the pass after it read that token,
    also where the row forks at that step (rule: the branch rule; None: parallel rows, "solo": one row alone in
    its [prompt | suffix] buffer, "wide": a 6000-token vocabulary, past the 4096 wide candidates too; tokens checked
    too)."""
    from eager_mlx.engine.sampling import RowSampling, request_key, row_seeds, sequence_key, token_stats

    vocab = 6000 if rule == "wide" else 300
    model = tiny_model("llama", vocab_size=vocab)
    prompt = TOK.encode("Flat")
    config = SamplingConfig(temperature=3.0, top_p=0.99)
    engine = Engine(model, TOK, max_rows=8, seed=5)
    engine.eos = set()
    parallel = rule in (None, "solo", "wide")
    shape = dict(parallel=True) if parallel else dict(threshold=2.5, branch_rule=rule)
    rows = 1 if rule == "solo" else 3
    engine.add("r", prompt, EagerConfig(max_sequences=rows, max_tokens=16, sampling=config, **shape))
    result = run_all(engine)["r"]
    assert parallel or result.num_sequences > 1, "the test needs branches"
    whole = RowSampling.from_configs([config], candidates=vocab)
    ranks = []
    for seq in result.sequences:
        lp, _ = reference_stats(model, prompt, seq.token_ids)
        np.testing.assert_allclose(seq.logprobs[: len(lp)], lp, atol=2e-4)  # each pass was fed the right token
        if not parallel:
            continue
        logits = model(mx.array(prompt + seq.token_ids)[None])[0].astype(mx.float32)
        key = sequence_key(request_key(5, "r"), seq.index)
        for t, token in enumerate(seq.token_ids):
            row = logits[len(prompt) - 1 + t][None]
            want = np.array(token_stats(row, whole, row_seeds([key], [t]), 20))[0, 0]
            assert token == int(want)
            ranks.append(int((np.array(row)[0] > np.array(row)[0, token]).sum()))
    assert not parallel or max(ranks) >= (4096 if rule == "wide" else 256), "the test needs draws past the candidates"
