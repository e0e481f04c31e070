"""Consensus early stop in the scheduler: scripted outcomes with answers."""
from __future__ import annotations

from eager_mlx.adaptive.consensus import ConsensusConfig
from eager_mlx.evaluation.scheduler import RunOutcome, Scheduler, SchedulerConfig


def drive(sched: Scheduler, script):
    """script(req) -> (answers, tokens[, consensus]); one outcome per run, all in flight together."""
    started = []
    for _ in range(1000):
        if sched.done:
            break
        runs = sched.schedule().runs
        assert runs, "stalled"
        started += runs
        outs = []
        for r in runs:
            answers, tokens, *flag = script(r)
            assert len(answers) <= r.max_sequences
            outs.append(RunOutcome(r.request_id, r.prompt_index, len(answers), tokens, None, tuple(answers),
                                   bool(flag and flag[0])))
        sched.update_from_output(outs)
    assert sched.done
    return [r.request_id for r in started]


FIRST = {0: ["7"] * 4, 1: ["1", "2", "1", "3"], 2: ["4", "5", "6", "4"], 3: ["9"]}


def first_then_distinct(r):
    if r.attempt == 0:
        return FIRST[r.prompt_index], 100
    return [f"x{r.attempt}{k}" for k in range(r.max_sequences)], 50


def test_agreed_prompt_takes_no_share_and_the_others_get_it():
    # M=4, 4 prompts: B = 16 - (4 + 4 + 4 + 1) = 3
    plain = Scheduler(4, SchedulerConfig(method="eager-adapt", max_sequences=4))
    assert drive(plain, first_then_distinct) == ["p0-r0", "p1-r0", "p2-r0", "p3-r0", "p0-r1", "p1-r1", "p2-r1"]
    cons = Scheduler(4, SchedulerConfig(method="eager-adapt", max_sequences=4, consensus=ConsensusConfig("beta")))
    # prompt 0 (4 x "7": P = 31/32 > 0.95) is done after its first run; its share goes to 1 and 2
    assert drive(cons, first_then_distinct) == ["p0-r0", "p1-r0", "p2-r0", "p3-r0", "p1-r1", "p2-r1"]
    assert [r.num_sequences for r in cons.runs_of(1)] == [4, 2]
    assert [r.num_sequences for r in cons.runs_of(2)] == [4, 1]


def test_agreement_mid_share_returns_the_rest_to_the_pool():
    # M=4, 3 prompts: B = 12 - 9 = 3 -> prompt 0 gets 2, prompt 1 gets 1
    first = {0: ["1", "2", "3", "4"], 1: ["5", "6", "7", "8"], 2: ["9"]}

    def script(r):
        if r.attempt == 0:
            return first[r.prompt_index], 100
        if r.prompt_index == 0:
            return ["4"], 30  # one sequence, agreeing with the last: window of 2 agrees, 1 of its share unspent
        return [f"y{r.attempt}{k}" for k in range(r.max_sequences)], 30

    s = Scheduler(3, SchedulerConfig(method="eager-adapt", max_sequences=4, consensus=ConsensusConfig("window", window=2)))
    assert drive(s, script) == ["p0-r0", "p1-r0", "p2-r0", "p0-r1", "p1-r1", "p1-r2"]
    assert s.rounds == 2 and s.pool == 0
    assert s.is_prompt_done(0) and [r.num_sequences for r in s.runs_of(1)] == [4, 1, 1]


def test_online_consensus_flag_counts_as_agreement():
    s = Scheduler(3, SchedulerConfig(method="eager-adapt", max_sequences=2, consensus=ConsensusConfig("beta")))
    # B = 6 - 5 = 1; "1", "2" never satisfies beta, but prompt 0's run reports the online monitor's verdict

    def script(r):
        if r.attempt:
            return ["3"] * r.max_sequences, 5
        return (["1"] if r.prompt_index == 2 else ["1", "2"]), 10, r.prompt_index == 0

    assert drive(s, script) == ["p0-r0", "p1-r0", "p2-r0", "p1-r1"]


def test_consensus_with_token_budget():
    cfg = SchedulerConfig(method="eager-adapt", max_sequences=4, token_budget=700, consensus=ConsensusConfig("beta"))
    s = Scheduler(4, cfg)
    # first pass 400 tokens, pool 300, split over prompts 1 and 2 (prompt 0 agreed): 150 each, 50 a run
    reqs = drive(s, first_then_distinct)
    assert "p0-r1" not in reqs
    assert reqs.count("p1-r1") == 1 and "p1-r3" in reqs and "p2-r3" in reqs and "p1-r4" not in reqs
