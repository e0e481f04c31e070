"""The scheduler keeps the engine full without changing a decision: concurrent extra runs (generations),
the early hand-out before the barrier, and runs that do not depend on timing or max_rows."""
from __future__ import annotations

import dataclasses
import hashlib
import random

import pytest

from eager_mlx.adaptive.consensus import ConsensusConfig
from eager_mlx.evaluation.scheduler import RunOutcome, RunRequest, Scheduler, SchedulerConfig, chunks, split_evenly


def outcome(req: RunRequest, m: int) -> RunOutcome:
    """A run's outcome as a pure function of its id (like a seeded engine): #S, tokens, correct, answers."""
    h = int(hashlib.sha256(req.request_id.encode()).hexdigest(), 16)
    n = m if h % 3 == 0 else 1 + h % req.max_sequences  # a third of runs hit their cap
    n = min(n, req.max_sequences)
    answers = tuple(str((h >> (4 * k)) % 3) for k in range(n))
    return RunOutcome(req.request_id, req.prompt_index, n, 40 * n, (h >> 8) % 5 == 0, answers)


def simulate(cfg: SchedulerConfig, n: int, seed: int, max_rows: int) -> tuple[dict, int]:
    """Runs with random durations in an engine of `max_rows` rows (one row per branching run when
    reserve_rows is off). Returns {run id: (theta, M)} and the most runs in flight at once."""
    rng = random.Random(seed)
    cfg = dataclasses.replace(cfg, max_rows=max_rows)
    sched = Scheduler(n, cfg)
    running: list[tuple[int, RunRequest, int]] = []
    runs, peak, now, used = {}, 0, 0, 0
    for _ in range(100_000):
        if sched.done:
            break
        for req in sched.schedule(max_rows - used).runs:
            rows = req.max_sequences if (req.parallel or cfg.reserve_rows) else 1
            running.append((now + rng.randint(1, 30), req, rows))
            used += rows
            runs[req.request_id] = (round(req.threshold, 9), req.max_sequences)
        if not cfg.reserve_rows and used < max_rows:
            assert not sched.has_ready_run, "rows idle while a run could start"
        assert running, "stalled"
        peak = max(peak, len(running))
        now = min(t for t, _, _ in running)
        back = [(r, rows) for t, r, rows in running if t == now]
        running = [x for x in running if x[0] != now]
        used -= sum(rows for _, rows in back)
        sched.update_from_output([outcome(r, cfg.max_sequences) for r, _ in back])
    assert sched.done
    return runs, peak


CONFIGS = [
    SchedulerConfig(method="eager-adapt", max_sequences=4, max_rows=8, reserve_rows=False),
    SchedulerConfig(method="eager-adapt", max_sequences=4, max_rows=8, reserve_rows=True),
    SchedulerConfig(method="eager", max_sequences=4, max_rows=8, reserve_rows=False),
    SchedulerConfig(method="eager-adapt", max_sequences=4, max_rows=8, reserve_rows=False,
                    consensus=ConsensusConfig("window", window=2)),
    SchedulerConfig(method="eager-adapt", max_sequences=4, max_rows=8, token_budget=3000),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["adapt", "adapt-reserve", "eager", "adapt-consensus", "tokens"])
def test_runs_do_not_depend_on_timing_or_max_rows(cfg):
    reference, _ = simulate(cfg, 12, seed=0, max_rows=8)
    for seed, rows in ((1, 8), (2, 5), (3, 64), (4, 4)):
        runs, _ = simulate(cfg, 12, seed=seed, max_rows=rows)
        assert runs == reference, (seed, rows)


def test_extra_runs_of_a_prompt_run_together():
    # M=2, |D|=10, only prompt 0 hits the cap: B = 9, its share 3M = 6 -> three runs of 2, started together
    s = Scheduler(10, SchedulerConfig(method="eager-adapt", max_sequences=2, max_rows=20))
    first = s.schedule().runs
    s.update_from_output([RunOutcome(r.request_id, r.prompt_index, 2 if r.prompt_index == 0 else 1, 5)
                          for r in first])
    extra = s.schedule().runs
    assert [(r.request_id, r.max_sequences) for r in extra] == [("p0-r1", 2), ("p0-r2", 2), ("p0-r3", 2)]
    # what they leave unspent is split again when all are back: 2 + 1 + 1 used -> 2 left -> one run of 2
    s.update_from_output([RunOutcome(r.request_id, 0, n, 5) for r, n in zip(extra, (2, 1, 1))])
    assert [(r.request_id, r.max_sequences) for r in s.schedule().runs] == [("p0-r4", 2)]


def test_early_hand_out_starts_sure_runs_before_the_barrier():
    # M=2, |D|=6, rows for 4 first runs. Prompts 0-3 finish first: 0 hits the cap, 1-3 use 1.
    # Lower bound: 2*4 - 5 = 3 sure, 2 first runs unknown -> 3 // (1 + 2) = 1 < M: nothing yet.
    cfg = SchedulerConfig(method="eager-adapt", max_sequences=2, max_rows=4, reserve_rows=False)
    s = Scheduler(6, cfg)
    first = s.schedule().runs
    assert [r.prompt_index for r in first] == [0, 1, 2, 3]
    s.update_from_output([RunOutcome(r.request_id, r.prompt_index, 2 if r.prompt_index == 0 else 1, 5)
                          for r in first])
    runs = s.schedule().runs
    assert [r.request_id for r in runs] == ["p4-r0", "p5-r0"]
    # prompt 4 finishes with 1: lower bound 2*5 - 6 = 4, 1 unknown -> 4 // 2 = 2 = one full run, before the barrier
    s.update_from_output([RunOutcome("p4-r0", 4, 1, 5)])
    assert s.pool is None
    (early,) = s.schedule().runs
    assert (early.request_id, early.max_sequences) == ("p0-r1", 2)
    # the barrier: B = 12 - 7 = 5, all prompt 0's: runs of 2, 2, 1, the first of which already started
    s.update_from_output([RunOutcome("p5-r0", 5, 1, 5)])
    assert s.pool == 0
    assert [(r.request_id, r.max_sequences) for r in s.schedule().runs] == [("p0-r2", 2), ("p0-r3", 1)]


@pytest.mark.parametrize("seed", range(6))
def test_early_hand_out_never_exceeds_the_barrier_share(seed):
    rng = random.Random(seed)
    m, n = rng.choice([2, 4, 8]), rng.randint(2, 30)
    cfg = SchedulerConfig(method="eager-adapt", max_sequences=m, max_rows=64, reserve_rows=False)
    sched = Scheduler(n, cfg)
    cap_hit = {i: rng.random() < 0.3 for i in range(n)}
    firsts = {i: (m if cap_hit[i] else rng.randint(1, m)) for i in range(n)}
    started: list[RunRequest] = []
    pending: list[RunRequest] = []
    while not sched.done:
        new = sched.schedule(rng.randint(0, 3)).runs  # few free rows, runs back in random order
        started += new
        pending += new
        if pending:
            r = pending.pop(rng.randrange(len(pending)))
            k = firsts[r.prompt_index] if r.attempt == 0 else r.max_sequences
            sched.update_from_output([RunOutcome(r.request_id, r.prompt_index, k, 5)])
    qualified = [i for i in range(n) if firsts[i] >= m]
    shares = split_evenly(m * n - sum(firsts.values()), [3 * m] * len(qualified))
    extra = {i: sum(r.max_sequences for r in started if r.attempt and r.prompt_index == i) for i in range(n)}
    assert extra == {i: dict(zip(qualified, shares)).get(i, 0) for i in range(n)}


def test_one_row_per_run_admits_more_runs_than_reserving_m():
    # simulate() also asserts at every step that no row idles while a run could start (reserve_rows off)
    _, peak = simulate(SchedulerConfig(method="eager-adapt", max_sequences=4, reserve_rows=False), 40, 7, 8)
    _, peak_reserved = simulate(SchedulerConfig(method="eager-adapt", max_sequences=4, reserve_rows=True), 40, 7, 8)
    assert peak == 8 > peak_reserved  # reserving: runs of M=4 take 4 rows each (extra runs of 1-2 fewer)


def test_chunks():
    assert chunks(7, 3) == [3, 3, 1] and chunks(6, 3) == [3, 3] and chunks(0, 3) == []
