"""OnlineMonitor: pruning and consensus abort, on a scripted event stream and on the real engine."""
from __future__ import annotations

import math

import pytest

from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.adaptive.confidence import ConfidenceConfig
from eager_mlx.adaptive.consensus import ConsensusConfig
from eager_mlx.adaptive.online import OnlineMonitor
from eager_mlx.results import BranchEvent, RunFinished, SequenceFinished, TokenEvent

from fakes import ByteTokenizer, ScriptedModel


class StubEngine:
    token_events = True

    def __init__(self):
        self.calls = []

    def abort(self, rid):
        self.calls.append(("abort", rid))
        return [RunFinished(rid, None)]

    def finish_sequence(self, rid, seq, reason="pruned"):
        self.calls.append(("finish", rid, seq, reason))
        return [SequenceFinished(rid, seq, reason)]


def tokens(rid, seq, text, entropy):
    return [TokenEvent(rid, seq, ord(c), c, entropy) for c in text]


def test_branch_child_copies_text_and_answers_come_in_finish_order():
    seen = []
    mon = OnlineMonitor(StubEngine(), consensus=ConsensusConfig("window", window=3),
                        extract=lambda t: seen.append(t) or t[-1])
    mon.feed(tokens("r", 0, "ab", 0.1) + [BranchEvent("r", 0, 1, 2, 2.5, 1, 2)] + tokens("r", 1, "X", 0.1)
             + tokens("r", 0, "c", 0.1))
    mon.feed([SequenceFinished("r", 1, "eos"), SequenceFinished("r", 0, "length")])
    assert seen == ["abX", "abc"]


def test_consensus_aborts_the_prompts_runs_in_flight():
    eng = StubEngine()
    mon = OnlineMonitor(eng, consensus=ConsensusConfig("window", window=2), prompt_of=lambda rid: rid.split("-")[0],
                        extract=lambda t: "\\boxed{7}" in t and "7" or None)
    mon.feed(tokens("p0-r0", 0, "\\boxed{7}", 0.1) + tokens("p0-r0", 1, "\\boxed{7}", 0.1)
             + tokens("p0-r0", 2, "...", 0.1) + tokens("p1-r0", 0, "..", 0.1))
    extra = mon.feed([SequenceFinished("p0-r0", 0, "eos")])
    assert extra == [] and eng.calls == []
    extra = mon.feed([SequenceFinished("p0-r0", 1, "eos")])
    assert eng.calls == [("abort", "p0-r0")]  # p1's run is another prompt: untouched
    assert [type(e) for e in extra] == [RunFinished]
    assert mon.agreed("p0-r0") and not mon.agreed("p1-r0")


def test_pruning_after_warmup_at_the_percentile():
    eng = StubEngine()
    mon = OnlineMonitor(eng, confidence=ConfidenceConfig(window=2, prune_percentile=50, warmup=2))
    # two finished sequences: confidences -0.5 and -1.5 -> threshold (50th percentile) -1.0
    mon.feed(tokens("r", 0, "aa", 0.5) + tokens("r", 1, "aa", 1.5) + tokens("r", 2, "a", 3.0) + tokens("r", 3, "a", 0.2))
    mon.feed([SequenceFinished("r", 0, "eos")])
    assert mon.threshold("r") is None  # still warming up
    mon.feed([SequenceFinished("r", 1, "eos")])
    assert mon.threshold("r") == pytest.approx(-1.0)
    extra = mon.feed(tokens("r", 2, "a", 3.0) + tokens("r", 3, "a", 0.2))  # row 2: window mean -3 < -1
    assert eng.calls == [("finish", "r", 2, "pruned")] and mon.pruned == 1
    assert extra == [SequenceFinished("r", 2, "pruned")]
    mon.feed(tokens("r", 3, "a", 1.9))  # row 3: window (-0.2, -1.9) mean -1.05 < -1.0
    assert eng.calls[-1] == ("finish", "r", 3, "pruned")


def test_monitor_needs_token_events():
    class Quiet(StubEngine):
        token_events = False

    with pytest.raises(ValueError, match="token_events=True"):
        OnlineMonitor(Quiet())


PROMPT = [ord("Q"), ord("?")]


def drain(engine, mon):
    results = {}
    while engine.has_work:
        events = engine.step()
        events += mon.feed(events)
        results.update({e.request_id: e.result for e in events if isinstance(e, RunFinished)})
    return results


def test_real_engine_prunes_a_row_that_turns_unsure():
    # steps 10..19 are near-uniform over 8 tokens (entropy ln 8); before that the model is certain
    engine = Engine(ScriptedModel(len(PROMPT), {k: "mid" for k in range(10, 20)}), ByteTokenizer(), seed=0)
    greedy = SamplingConfig(temperature=0)
    engine.add("A", PROMPT, EagerConfig(threshold=100, max_tokens=4, sampling=greedy))
    engine.add("B", PROMPT, EagerConfig(threshold=100, max_tokens=30, sampling=greedy))
    mon = OnlineMonitor(engine, confidence=ConfidenceConfig(window=2, prune_percentile=50, warmup=1),
                        prompt_of=lambda rid: "same prompt")
    results = drain(engine, mon)
    a, b = results["A"].sequences[0], results["B"].sequences[0]
    assert a.finish_reason == "length" and len(a.token_ids) == 4
    # B is pruned at step 10: its window (steps 9, 10) has mean -ln(8)/2, far below A's ~0
    assert b.finish_reason == "pruned" and len(b.token_ids) == 11
    assert b.entropies[-1] == pytest.approx(math.log(8), abs=1e-3)


def test_real_engine_consensus_aborts_the_other_run_of_the_prompt():
    engine = Engine(ScriptedModel(len(PROMPT), {}), ByteTokenizer(), seed=0)
    engine.add("A", PROMPT, EagerConfig(parallel=True, max_sequences=2, max_tokens=3))
    engine.add("B", PROMPT, EagerConfig(parallel=True, max_sequences=2, max_tokens=30))
    mon = OnlineMonitor(engine, consensus=ConsensusConfig("window", window=2), prompt_of=lambda rid: "p",
                        extract=lambda text: "x")
    results = drain(engine, mon)
    assert [s.finish_reason for s in results["A"].sequences] == ["length", "length"]
    assert [s.finish_reason for s in results["B"].sequences] == ["aborted", "aborted"]
    assert all(len(s.token_ids) == 3 for s in results["B"].sequences)
    assert mon.agreed("A") and mon.agreed("B")


def test_stream_solve_prunes_with_the_monitor():
    from eager_mlx import confidence_vote, stream_solve

    # step 1 branches (M = 2); the child takes 'b' and stops at once (stop "b"): confidence mean(-0, -ln 20).
    # The parent's next window (steps 1, 2: both ~ln 20) is lower: pruned at step 2.
    model = ScriptedModel(len(PROMPT), {1: "high", 2: "high", 3: "high"})
    cfg = EagerConfig(threshold=1.0, max_sequences=2, max_tokens=8, stop=("b",), sampling=SamplingConfig(temperature=0))
    events = list(stream_solve(model, PROMPT, cfg, tokenizer=ByteTokenizer(),
                               confidence=ConfidenceConfig(window=2, prune_percentile=50, warmup=1)))
    result = events[-1].result
    assert [(s.finish_reason, len(s.entropies)) for s in result.sequences] == [("pruned", 3), ("stop", 2)]
    assert confidence_vote(result) is None  # the stopped child has no answer; the pruned parent does not vote
