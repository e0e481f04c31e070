"""Scheduler decisions on scripted outcomes."""
from __future__ import annotations

import pytest

from eager_mlx.evaluation.scheduler import RunOutcome, RunRequest, Scheduler, SchedulerConfig, split_evenly


def drive(sched: Scheduler, script, free_rows=None, one_at_a_time=False):
    """Run the scheduler to the end; script(req) -> (num_sequences, tokens, any_correct). Returns all requests."""
    started: list[RunRequest] = []
    in_flight: list[RunRequest] = []
    for _ in range(10_000):
        if sched.done:
            break
        out = sched.schedule(free_rows)
        started += out.runs
        in_flight += out.runs
        assert in_flight, "scheduler stalled with nothing in flight"
        batch = [in_flight.pop(0)] if one_at_a_time else list(in_flight)
        if not one_at_a_time:
            in_flight.clear()
        outs = []
        for r in batch:
            n, t, ok = script(r)
            assert n <= r.max_sequences
            outs.append(RunOutcome(r.request_id, r.prompt_index, n, t, ok))
        sched.update_from_output(outs)
    assert sched.done
    return started


def by_prompt(reqs):
    d: dict[int, list[RunRequest]] = {}
    for r in reqs:
        d.setdefault(r.prompt_index, []).append(r)
    return d


def test_split_evenly_remainder_to_first_and_caps():
    assert split_evenly(10, [100, 100, 100]) == [4, 3, 3]
    assert split_evenly(2, [5, 5, 5]) == [1, 1, 0]
    assert split_evenly(10, [1, 100, 100]) == [1, 5, 4]  # capped share flows to the others
    assert split_evenly(50, [3, 3]) == [3, 3]
    assert split_evenly(0, [3, 3]) == [0, 0]
    assert split_evenly(5, []) == []


def test_parallel_one_run_per_prompt():
    s = Scheduler(3, SchedulerConfig(method="parallel", max_sequences=4, max_rows=64))
    reqs = drive(s, lambda r: (4, 40, None))
    assert [(r.request_id, r.parallel, r.max_sequences) for r in reqs] == [
        ("p0-r0", True, 4), ("p1-r0", True, 4), ("p2-r0", True, 4)]
    assert s.finished_prompts() == [0, 1, 2]


def test_eager_init_single_run_even_at_cap():
    s = Scheduler(2, SchedulerConfig(method="eager-init", max_sequences=4, threshold=2.5))
    reqs = drive(s, lambda r: (4, 10, None))
    assert [(r.request_id, r.parallel, r.threshold) for r in reqs] == [("p0-r0", False, 2.5), ("p1-r0", False, 2.5)]


def test_eager_adapt_budget_goes_to_capped_prompts_evenly_remainder_first():
    # M=4, |D|=5 -> 20 sequences. First pass: prompts 1, 3, 4 hit the cap; 0 and 2 use 1 each.
    # Used 1+4+1+4+4 = 14 -> B = 6, split over [1, 3, 4] -> 2 each.
    first = {0: 1, 1: 4, 2: 1, 3: 4, 4: 4}
    cfg = SchedulerConfig(method="eager-adapt", max_sequences=4, threshold=2.0)
    s = Scheduler(5, cfg)

    def script(r):
        return (first[r.prompt_index] if r.attempt == 0 else r.max_sequences), 10, None

    reqs = drive(s, script)
    extra = {i: [r for r in rs if r.attempt > 0] for i, rs in by_prompt(reqs).items()}
    assert extra[0] == [] and extra[2] == []
    assert [sum(r.max_sequences for r in extra[i]) for i in (1, 3, 4)] == [2, 2, 2]
    assert all(r.threshold == 2.0 and not r.parallel for rs in extra.values() for r in rs)
    assert s.sequences_used() == 20  # B spent exactly: budget conserved
    assert s.pool == 0


def test_eager_adapt_remainder_and_3m_cap():
    # M=2, |D|=10 -> 20. Prompt 0 and 1 hit cap (2 each), 8 others use 1 -> used 12, B = 8.
    # 3M = 6 per prompt cap; split 8 over 2 -> 4, 4 (fresh runs of at most M=2 each).
    cfg = SchedulerConfig(method="eager-adapt", max_sequences=2)
    s = Scheduler(10, cfg)
    reqs = drive(s, lambda r: ((2 if r.prompt_index < 2 else 1) if r.attempt == 0 else r.max_sequences, 5, None))
    per = by_prompt(reqs)
    assert [r.max_sequences for r in per[0][1:]] == [2, 2]
    assert [r.max_sequences for r in per[1][1:]] == [2, 2]
    # B = 7 with three capped prompts: 3, 2, 2 (remainder to the first one)
    s = Scheduler(10, cfg)
    reqs = drive(s, lambda r: ((2 if r.prompt_index in (0, 4, 7) else 1) if r.attempt == 0 else r.max_sequences,
                               5, None))
    extra = {i: sum(r.max_sequences for r in rs[1:]) for i, rs in by_prompt(reqs).items()}
    assert (extra[0], extra[4], extra[7]) == (3, 2, 2)
    assert s.sequences_used() == 20


def test_eager_adapt_cap_3m_leaves_budget_unspent():
    # M=2, |D|=10, only prompt 0 hits the cap: B = 20 - (2 + 9) = 9, but at most 3M = 6 extra.
    s = Scheduler(10, SchedulerConfig(method="eager-adapt", max_sequences=2))
    reqs = drive(s, lambda r: ((2 if r.prompt_index == 0 else 1) if r.attempt == 0 else r.max_sequences, 5, None))
    assert sum(r.max_sequences for r in by_prompt(reqs)[0][1:]) == 6
    assert s.sequences_used() == 11 + 6 <= 20


def test_eager_adapt_runs_until_share_spent_when_runs_use_fewer():
    # Extra runs may branch less than allowed: the prompt keeps starting fresh runs.
    s = Scheduler(2, SchedulerConfig(method="eager-adapt", max_sequences=4))
    # prompt 0 hits cap (4), prompt 1 uses 1 -> B = 3, all to prompt 0; each extra run yields 1 sequence.
    reqs = drive(s, lambda r: ((4 if r.prompt_index == 0 else 1) if r.attempt == 0 else 1, 5, None))
    extra = by_prompt(reqs)[0][1:]
    assert [r.max_sequences for r in extra] == [3, 2, 1]
    assert [r.request_id for r in extra] == ["p0-r1", "p0-r2", "p0-r3"]
    assert s.sequences_used() == 8


def test_eager_labels_extra_budget_to_unsolved_with_theta_decay():
    # M=4, |D|=4 -> 16. First pass: p0 solved (2 seqs), p1 unsolved below M (1), p2 unsolved at cap (4),
    # p3 solved (1). Used 8 -> B = 8 over [1, 2] -> 4 each (cap M = 4 each).
    cfg = SchedulerConfig(method="eager", max_sequences=4, threshold=2.0, recycle_unused=False)
    first = {0: (2, True), 1: (1, False), 2: (4, False), 3: (1, True)}
    s = Scheduler(4, cfg)

    def script(r):
        if r.attempt == 0:
            n, ok = first[r.prompt_index]
            return n, 10, ok
        return 1, 10, False  # retries yield one unsolved sequence each

    reqs = drive(s, script)
    per = by_prompt(reqs)
    assert len(per[0]) == 1 and len(per[3]) == 1
    th1 = [round(r.threshold, 6) for r in per[1]]
    th2 = [round(r.threshold, 6) for r in per[2]]
    assert th1 == [2.0, 1.6, 1.44, 1.296, 1.1664]  # below M: x0.8, then x0.9 each try
    assert th2 == [2.0, 2.0, 1.8, 1.62, 1.458]  # hit M: theta, then x0.9 after the second try
    assert [r.max_sequences for r in per[1][1:]] == [4, 3, 2, 1]
    assert s.sequences_used() == 16


def test_eager_labels_stops_when_solved_and_recycles():
    # M=2, |D|=3 -> 6. First pass: all unsolved, 1 seq each -> B = 3 over [0,1,2] -> 1 each.
    # p0 solves on its retry; p1, p2 do not. Pool empty -> done.
    cfg = SchedulerConfig(method="eager", max_sequences=2)
    s = Scheduler(3, cfg)
    reqs = drive(s, lambda r: (1, 10, r.prompt_index == 0 and r.attempt == 1))
    assert s.sequences_used() == 6
    # M=4, |D|=2 -> 8; first pass 1 seq each unsolved -> B = 6 -> 3 each (cap 4).
    # p0 solved by its first retry (1 seq of 3): 2 return to the pool; round 2 gives p1 one more (cap 4).
    s = Scheduler(2, SchedulerConfig(method="eager", max_sequences=4))
    reqs = drive(s, lambda r: (1, 10, r.prompt_index == 0 and r.attempt == 1), one_at_a_time=True)
    per = by_prompt(reqs)
    assert len(per[0]) == 2
    # round 1: share 3 spent one sequence at a time; round 2: 1 more (cap M = 4 extra), 1 left unspent
    assert [r.max_sequences for r in per[1][1:]] == [3, 2, 1, 1]
    assert s.sequences_used() == 1 + 1 + 1 + 4 <= 8
    assert s.pool == 1
    assert s.rounds == 2


def test_eager_labels_needs_labels():
    s = Scheduler(1, SchedulerConfig(method="eager", max_sequences=2))
    r = s.schedule().runs[0]
    with pytest.raises(ValueError, match="labels"):
        s.update_from_output([RunOutcome(r.request_id, 0, 1, 5, None)])


def test_prompts_done_early_when_they_cannot_get_more():
    s = Scheduler(2, SchedulerConfig(method="eager-adapt", max_sequences=4))
    r0, r1 = s.schedule().runs
    s.update_from_output([RunOutcome(r0.request_id, 0, 1, 5)])
    assert s.is_prompt_done(0) and s.pop_finished() == [0]  # below the cap: never gets more
    s.update_from_output([RunOutcome(r1.request_id, 1, 4, 5)])
    assert not s.is_prompt_done(1)  # hit the cap: B = 3 goes to it
    assert s.pool == 0
    (r,) = s.schedule().runs
    assert (r.request_id, r.max_sequences) == ("p1-r1", 3)
    s.update_from_output([RunOutcome(r.request_id, 1, 3, 5)])
    assert s.done and s.pop_finished() == [1]


def test_rows_reserved_limit_prompts_in_flight():
    s = Scheduler(10, SchedulerConfig(method="eager-init", max_sequences=8, max_rows=20, reserve_rows=True))
    out = s.schedule()
    assert [r.prompt_index for r in out.runs] == [0, 1]  # 2 x 8 rows reserved, 4 left
    assert s.rows_reserved == 16
    assert s.schedule().runs == []
    s.update_from_output([RunOutcome("p0-r0", 0, 3, 5)])
    assert [r.prompt_index for r in s.schedule().runs] == [2]
    # optimistic: one row per eager run, bounded by the engine's free rows
    s = Scheduler(10, SchedulerConfig(method="eager-init", max_sequences=8, max_rows=20, reserve_rows=False))
    assert len(s.schedule(free_rows=6).runs) == 6


def test_m_above_max_rows_is_refused():
    # a run that could need more rows than the batch has cannot be decided exactly: refused up front
    with pytest.raises(ValueError, match="max_sequences 32 > max_rows 8"):
        Scheduler(2, SchedulerConfig(method="eager-init", max_sequences=32, max_rows=8))


def test_run_ids_carry_the_prompt_ids():
    # A shard's prompts keep their place in the whole dataset in their run ids (the engine keys randomness on them).
    s = Scheduler(3, SchedulerConfig(method="eager-adapt", max_sequences=2, max_rows=4), prompt_ids=[1, 4, 7])
    reqs = drive(s, lambda r: (2 if r.prompt_index == 0 else 1, 10, None))  # p0 hits M: it gets B = 2 more
    ids = {r.prompt_index: 3 * r.prompt_index + 1 for r in reqs}
    assert all(r.request_id == f"p{ids[r.prompt_index]}-r{r.attempt}" for r in reqs)
    assert any(r.attempt > 0 for r in reqs)
    with pytest.raises(ValueError, match="2 prompt ids for 3 prompts"):
        Scheduler(3, SchedulerConfig(), prompt_ids=[0, 1])


def test_token_budget_pools_tokens():
    # M=2, |D|=3. First pass tokens 100 each; p0, p1 hit cap. token_budget 700 -> B = 400 -> 200 each.
    cfg = SchedulerConfig(method="eager-adapt", max_sequences=2, token_budget=700)
    s = Scheduler(3, cfg)

    def script(r):
        if r.attempt == 0:
            return (2 if r.prompt_index < 2 else 1), 100, None
        return 1, 150, None  # each extra run costs 150 tokens

    reqs = drive(s, script, one_at_a_time=True)
    per = by_prompt(reqs)
    assert len(per[0]) == 3 and len(per[1]) == 3  # 200 share: 150 (50 left) then 150 (overshoot by 100)
    assert len(per[2]) == 1
    assert s.tokens_used() == 300 + 4 * 150
    # the 3M sequence cap still holds in token mode
    s = Scheduler(2, SchedulerConfig(method="eager-adapt", max_sequences=2, token_budget=10**6))
    reqs = drive(s, lambda r: (2, 10, None))
    assert sum(r.max_sequences for r in by_prompt(reqs)[0][1:]) == 6


def test_bad_configs():
    with pytest.raises(ValueError, match="unknown method"):
        Scheduler(1, SchedulerConfig(method="beam"))
    with pytest.raises(ValueError, match="token budget"):
        Scheduler(1, SchedulerConfig(method="parallel", token_budget=10))
    with pytest.raises(ValueError, match="max_rows"):
        Scheduler(1, SchedulerConfig(method="parallel", max_sequences=16, max_rows=8))


def test_replay_reproduces_decisions_without_running():
    cfg = SchedulerConfig(method="eager", max_sequences=3)
    first = {0: (3, False), 1: (1, True), 2: (1, False)}

    def script(r):
        if r.attempt == 0:
            n, ok = first[r.prompt_index]
            return n, 10, ok
        return 1, 10, r.attempt == 2

    full = Scheduler(3, cfg)
    all_reqs = drive(full, script)
    # resume: prompts 0 and 1 were written; replay their runs, prompt 2 must run exactly as before
    resumed = Scheduler(3, cfg)
    for i in (0, 1):
        resumed.replay(i, full.runs_of(i))
    reqs = drive(resumed, script)
    assert {r.prompt_index for r in reqs} == {2}
    assert reqs == [r for r in all_reqs if r.prompt_index == 2]
    assert resumed.sequences_used() == full.sequences_used()


def test_replay_mismatch_is_an_error():
    s = Scheduler(1, SchedulerConfig(method="eager-init", max_sequences=3))
    s.replay(0, [RunOutcome("p0-r5", 0, 1, 5)])
    with pytest.raises(ValueError, match="resume"):
        s.schedule()
