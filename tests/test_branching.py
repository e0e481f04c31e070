"""Branch points on a scripted model are exactly where the method says."""
import numpy as np
import pytest

from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.engine.branching import BranchCandidate, BranchPolicy
from eager_mlx.results import BranchEvent, RunFinished

from fakes import ByteTokenizer, ScriptedModel

PROMPT = [ord(c) for c in "Q?"]


def run(schedule, **cfg):
    tok = ByteTokenizer()
    engine = Engine(ScriptedModel(len(PROMPT), schedule), tok, max_rows=64, seed=0)
    cfg.setdefault("max_tokens", 12)
    cfg.setdefault("threshold", 1.0)
    engine.add("r", PROMPT, EagerConfig(sampling=SamplingConfig(temperature=0), **cfg))
    branches, result = [], None
    while engine.has_work:
        for ev in engine.step():
            if isinstance(ev, BranchEvent):
                branches.append((ev.parent, ev.child, ev.step))
            elif isinstance(ev, RunFinished):
                result = ev.result
    return branches, result


def test_every_row_branches_at_high_entropy_steps():
    branches, result = run({2: "high", 5: "high"})
    assert branches == [(0, 1, 2), (0, 2, 5), (1, 3, 5)]
    assert result.num_sequences == 4
    seqs = {s.index: s for s in result.sequences}
    # The parent keeps top-1 ('a'), the child takes top-2 ('b') and inherits the prefix.
    assert bytes(seqs[0].token_ids).decode() == "xxaxxaxxxxxx"
    assert bytes(seqs[1].token_ids).decode() == "xxbxxaxxxxxx"
    assert bytes(seqs[3].token_ids).decode() == "xxbxxbxxxxxx"
    assert (seqs[3].parent, seqs[3].branch_step) == (1, 5)
    # Shared prefixes counted once: 12 + 10 + 7 + 7 tokens.
    assert result.generated_tokens == 12 + 10 + 7 + 7


def test_cap_goes_to_oldest_rows():
    branches, result = run({2: "high", 5: "high"}, max_sequences=3)
    assert branches == [(0, 1, 2), (0, 2, 5)]
    assert result.num_sequences == 3


def test_no_branch_below_threshold():
    branches, result = run({2: "high"}, threshold=3.5)
    assert branches == [] and result.num_sequences == 1


def test_think_marker_closes_branching():
    branches, _ = run({2: "high", 3: "think", 5: "high"})
    assert branches == [(0, 1, 2)]
    branches, _ = run({2: "high", 3: "think", 5: "high"}, think_end=None)
    assert branches == [(0, 1, 2), (0, 2, 5), (1, 3, 5)]


def test_no_branch_window():
    # After the branch at step 1, steps 2..4 pass without one: with N=3 branching is over.
    branches, _ = run({1: "high", 6: "high"}, no_branch_window=3)
    assert branches == [(0, 1, 1)]
    branches, _ = run({1: "high", 6: "high"}, no_branch_window=5)
    assert branches == [(0, 1, 1), (0, 2, 6), (1, 3, 6)]


def test_dynamic_threshold():
    # Step 5 (H~3.0) branches either way; at step 8 (H~2.08) the p99 of the entropies
    # seen so far (one 3.0 among them) is above 2.08, so only the fixed rule branches.
    schedule = {5: "high", 8: "mid"}
    fixed, _ = run(schedule)
    dynamic, _ = run(schedule, dynamic_threshold=True)
    assert fixed == [(0, 1, 5), (0, 2, 8), (1, 3, 8)]
    assert dynamic == [(0, 1, 5)]


def test_parallel_gives_exactly_m_sequences_and_never_branches():
    branches, result = run({2: "high"}, parallel=True, max_sequences=5)
    assert branches == [] and result.num_sequences == 5


def test_eos_and_stop_strings():
    _, result = run({3: "eos"})
    assert result.sequences[0].finish_reason == "eos"
    assert bytes(result.sequences[0].token_ids).decode() == "xxx"
    _, result = run({}, stop=("xxxx",))
    seq = result.sequences[0]
    assert seq.finish_reason == "stop" and seq.text == ""
    _, result = run({}, max_tokens=4)
    assert result.sequences[0].finish_reason == "length" and len(result.sequences[0].token_ids) == 4


def test_non_finite_logits_end_the_sequence_by_name():
    # NaN logits at step 3 (a model's numerics failing): each row ends there as "nonfinite", nothing non-finite
    # recorded, never a token drawn from them; the branch made at step 1 is kept
    branches, result = run({1: "high", 3: "nan"}, max_sequences=2)
    assert [b[2] for b in branches] == [1]
    for seq in result.sequences:
        assert seq.finish_reason == "nonfinite" and len(seq.token_ids) == 3
        assert np.isfinite(seq.entropies).all() and np.isfinite(seq.logprobs).all() and len(seq.logprobs) == 3
    assert result.generated_tokens == 5  # 3 + the child's own 2


@pytest.mark.parametrize(
    "cfg, message",
    [
        (dict(threshold=-0.5), "threshold must be >= 0, got -0.5"),
        (dict(max_sequences=0), "max_sequences must be >= 1, <= 1024, got 0"),
        (dict(entropy_top_k=1), "entropy_top_k must be >= 2, <= 1048576, got 1"),
    ],
)
def test_bad_config_errors_name_the_value(cfg, message):
    engine = Engine(ScriptedModel(2, {}), ByteTokenizer())
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine.add("r", PROMPT, EagerConfig(**cfg))


def test_prompt_longer_than_context():
    engine = Engine(ScriptedModel(2, {}), ByteTokenizer(), context_length=8)
    with pytest.raises(ValueError, match="the prompt has 9 tokens, the model's context is 8"):
        engine.add("r", list(range(9)), EagerConfig())


def test_recorded_entropy_matches_numpy():
    _, result = run({2: "high", 4: "mid"})
    ent = result.sequences[0].entropies
    for step, kind in ((2, "high"), (4, "mid"), (0, "low")):
        logits = np.array(ScriptedModel.logits_for(kind), dtype=np.float64)
        top = np.sort(logits)[::-1][:20]
        p = np.exp(top - top.max())
        p /= p.sum()
        assert ent[step] == pytest.approx(-(p * np.log(p)).sum(), abs=1e-4)


def test_branches_vetoed_for_lack_of_rows_do_not_reset_the_window():
    # Only one row fits: the branch wanted at step 1 cannot be made, so steps 0..4 all
    # count as steps without a branch and the window (N=5) is closed at step 5.
    tok = ByteTokenizer()
    engine = Engine(ScriptedModel(len(PROMPT), {1: "high", 5: "high"}), tok, max_rows=1, seed=0)
    engine.add("r", PROMPT, EagerConfig(threshold=1.0, no_branch_window=5, max_tokens=8,
                                        sampling=SamplingConfig(temperature=0)))
    result = None
    while engine.has_work:
        for ev in engine.step():
            if isinstance(ev, RunFinished):
                result = ev.result
    assert result.num_sequences == 1
    assert result.info["branches_skipped_full"] == 1  # step 1 only: at step 5 branching was closed


# ---- the dynamic threshold: over the request's earlier steps only (hand-built histories) -------
def dynamic_policy(**cfg):
    return BranchPolicy(EagerConfig(threshold=2.0, dynamic_threshold=True, **cfg))


def step(policy, *entropies):
    chosen = policy.decide([BranchCandidate(i, h, False) for i, h in enumerate(entropies)])
    policy.end_step(bool(chosen))
    return chosen


def test_dynamic_threshold_can_branch_at_step_0():
    # No earlier step: theta alone. (Counting the step's own 3.0 would give p99 = 3.0: no branch.)
    p = dynamic_policy()
    assert p.effective_threshold() == 2.0
    assert step(p, 3.0, 2.9) == [0, 1]  # both rows: the step's own entropies are not in the threshold


def test_dynamic_threshold_lets_a_row_below_the_maximum_branch():
    p = dynamic_policy()
    for _ in range(50):
        assert step(p, 1.0) == []
    assert step(p, 2.6) == [0]
    # History: fifty 1.0 and one 2.6: p99 = 1.0 + 0.5 * 1.6 = 1.8 < theta, so 2.5 > theta branches
    # although an earlier step had more. (With 2.5 itself counted, p99 = 2.549 and it would not.)
    assert p.effective_threshold() == pytest.approx(2.0)
    assert step(p, 2.5) == [0]


def test_dynamic_threshold_rises_with_the_history():
    p = dynamic_policy()
    assert step(p, 2.8) == [0]
    assert p.effective_threshold() == pytest.approx(2.8)
    assert step(p, 2.7, 2.9) == [1]  # only the row above the earlier 2.8
    assert p.effective_threshold() == pytest.approx(np.percentile([2.8, 2.7, 2.9], 99))


def test_fixed_threshold_keeps_no_history():
    p = BranchPolicy(EagerConfig(threshold=2.0))
    assert step(p, 3.0) == [0] and step(p, 2.1) == [0]
    assert p.effective_threshold() == 2.0


def test_engine_branches_at_step_0_with_the_dynamic_threshold():
    branches, _ = run({0: "high", 4: "high"}, dynamic_threshold=True)
    # Step 0: no history, theta = 1.0. Step 4: history {3.0, ~0 x 6}: p99 ~ 2.82 < 3.0, both rows branch.
    assert branches == [(0, 1, 0), (0, 2, 4), (1, 3, 4)]
