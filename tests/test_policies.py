"""Wave budget policies (rank / disagree / sequential; eager-adapt, parallel-adapt, eager-parallel): the budget is
spent, the caps hold, the ranking is what the policy says, and no decision depends on timing, max_rows or a resume."""
from __future__ import annotations

import dataclasses
import hashlib
import random

import pytest

from eager_mlx.evaluation.policies import AdaptiveScheduler, eval_defaults, make_scheduler, priority, uncertainty
from eager_mlx.evaluation.scheduler import RunOutcome, RunRequest, Scheduler, SchedulerConfig
from eager_mlx.settings import SettingError


def outcome(req: RunRequest) -> RunOutcome:
    """A run's outcome as a pure function of its id: sequences, answers (prompt i < 4 always agree), cut rows."""
    h = int(hashlib.sha256(req.request_id.encode()).hexdigest(), 16)
    n = req.max_sequences if req.parallel else 1 + h % req.max_sequences
    hard = req.prompt_index >= 4
    answers = tuple(None if hard and (h >> (3 * k)) % 7 == 0 else str((h >> (3 * k)) % 3 if hard else 1)
                    for k in range(n))
    return RunOutcome(req.request_id, req.prompt_index, n, 30 * n, None, answers, branch_points=n - 1,
                      mean_entropy=(h % 100) / 50, cut=int(hard and h % 5 == 0))


def simulate(cfg: SchedulerConfig, n: int, seed: int, max_rows: int, replay: dict | None = None):
    """Random run durations in an engine of `max_rows` rows. Returns ({run id: request}, scheduler)."""
    rng = random.Random(seed)
    sched = make_scheduler(n, dataclasses.replace(cfg, max_rows=max_rows))
    for i, outs in (replay or {}).items():
        sched.replay(i, outs)
    running: list[tuple[int, RunRequest]] = []
    runs, now = {}, 0
    for _ in range(100_000):
        if sched.done:
            break
        used = sum(r.max_sequences if r.parallel else 1 for _, r in running)
        for req in sched.schedule(max_rows - used).runs:
            running.append((now + rng.randint(1, 30), req))
            runs[req.request_id] = req
        assert running, "stalled"
        now = min(t for t, _ in running)
        back = [r for t, r in running if t == now]
        running = [x for x in running if x[0] != now]
        rng.shuffle(back)
        sched.update_from_output([outcome(r) for r in back])
    assert sched.done
    return runs, sched


POLICY_CONFIGS = [SchedulerConfig(method=m, policy=p, max_sequences=4, wave_runs=3)
                  for m in ("eager-adapt", "parallel-adapt", "eager-parallel")
                  for p in ("rank", "disagree", "sequential")]
POLICY_CONFIGS += [SchedulerConfig(method=m, policy="fewest", max_sequences=4, wave_runs=3)
                   for m in ("eager-adapt", "parallel-adapt", "eager-parallel")]


@pytest.mark.parametrize("cfg", POLICY_CONFIGS, ids=lambda c: f"{c.method}-{c.policy}")
def test_runs_do_not_depend_on_timing_or_max_rows(cfg):
    want, _ = simulate(cfg, 12, seed=0, max_rows=4)
    for seed, rows in ((1, 4), (2, 8), (3, 16), (4, 5)):
        got, _ = simulate(cfg, 12, seed=seed, max_rows=rows)
        assert got == want


@pytest.mark.parametrize("cfg", POLICY_CONFIGS, ids=lambda c: f"{c.method}-{c.policy}")
def test_the_budget_is_spent_within_the_caps(cfg):
    n = 12
    runs, sched = simulate(cfg, n, seed=5, max_rows=8)
    used = {i: 0 for i in range(n)}
    for req in runs.values():
        out = outcome(req)
        used[req.prompt_index] += out.num_sequences
    budget = cfg.max_sequences * n
    assert sum(used.values()) <= budget
    assert sum(used.values()) >= budget - cfg.max_sequences  # all of it, but for less than one run
    first = {i: outcome(runs[f"p{i}-r0"]).num_sequences for i in range(n)}
    assert all(used[i] - first[i] <= 3 * cfg.max_sequences for i in range(n))  # the 3M cap
    assert sched.waves >= 2


def test_parallel_adapt_rounds_continue_each_prompts_stream():
    runs, _ = simulate(POLICY_CONFIGS[5], 10, seed=1, max_rows=8)
    for i in range(10):
        mine = sorted((r for r in runs.values() if r.prompt_index == i), key=lambda r: r.attempt)
        assert all(r.parallel and r.max_sequences <= 2 for r in mine)
        assert [r.first_sequence for r in mine] == [sum(x.max_sequences for x in mine[:k]) for k in range(len(mine))]
        assert all(r.key_id == (None if r.attempt == 0 else f"p{i}-r0") for r in mine)


@pytest.mark.parametrize("first", [1, 3, 4])
def test_parallel_adapt_first_samples_is_a_floor_then_rounds_continue_the_stream(first):
    cfg = dataclasses.replace(POLICY_CONFIGS[5], first_samples=first)
    want, _ = simulate(cfg, 10, seed=1, max_rows=8)
    assert simulate(cfg, 10, seed=4, max_rows=5)[0] == want  # still a function of outcomes only
    used = {i: 0 for i in range(10)}
    for i in range(10):
        mine = sorted((r for r in want.values() if r.prompt_index == i), key=lambda r: r.attempt)
        assert mine[0].max_sequences == first and all(r.max_sequences <= 2 for r in mine[1:])
        assert [r.first_sequence for r in mine] == [sum(x.max_sequences for x in mine[:k]) for k in range(len(mine))]
        used[i] = sum(r.max_sequences for r in mine)
    assert sum(used.values()) >= 4 * 10 - 2  # the budget is still spent, but for less than one round
    if first == 4:  # the floor is M: the first runs spend it all, and this is parallel sampling
        assert all(r.attempt == 0 for r in want.values())
    elif first > 1:  # the pool goes to the prompts whose answers disagree (0-3 always agree: they get none)
        assert {r.prompt_index for r in want.values() if r.attempt} <= set(range(4, 10))


def test_eager_parallel_starts_with_an_eager_run_then_takes_parallels_samples_from_1():
    runs, _ = simulate(POLICY_CONFIGS[8], 10, seed=1, max_rows=8)
    assert any(r.attempt > 0 for r in runs.values())
    for i in range(10):
        first, *extra = sorted((r for r in runs.values() if r.prompt_index == i), key=lambda r: r.attempt)
        assert not first.parallel and first.max_sequences == 4 and first.key_id is None
        assert all(r.parallel and r.max_sequences <= 2 and r.key_id == f"p{i}-r0" for r in extra)
        # sample 0 shares the eager run's key of sequence 0: the samples start at 1, one stream
        assert [r.first_sequence for r in extra] == [1 + sum(x.max_sequences for x in extra[:k])
                                                     for k in range(len(extra))]


def test_fewest_tops_every_prompt_up_before_any_gets_more():
    # eager-parallel, budget 1: the pool fills every prompt towards M (4) before one goes past it
    runs, _ = simulate(POLICY_CONFIGS[11], 12, seed=3, max_rows=8)
    used = {i: 0 for i in range(12)}
    for req in runs.values():
        used[req.prompt_index] += outcome(req).num_sequences
    assert sum(used.values()) >= 4 * 12 - 4 and min(used.values()) >= 3  # rounds of 2 can stop one short


def test_disagreeing_prompts_get_the_budget_first():
    # Prompts 0-3 agree on every answer; with a budget that cannot serve all, the others get it.
    cfg = dataclasses.replace(POLICY_CONFIGS[1], budget=0.9)
    runs, _ = simulate(cfg, 12, seed=2, max_rows=8)
    extra = [r.prompt_index for r in runs.values() if r.attempt > 0]
    assert extra and all(i >= 4 for i in extra)


def test_priorities():
    run = lambda answers, cut=0, b=0, h=0.0: RunOutcome("p0-r0", 0, len(answers), 9, None, answers,  # noqa: E731
                                                       branch_points=b, mean_entropy=h, cut=cut)
    assert priority("rank", [run(("1",), b=3, h=0.1)]) > priority("rank", [run(("1",), b=2, h=2.9)])
    assert priority("rank", [run(("1",), b=2, h=1.0)]) > priority("rank", [run(("1",), b=2, h=0.5)])
    agree, split, missing = run(("4", "4")), run(("4", "5")), run(("4", None))
    assert priority("disagree", [split]) > priority("disagree", [missing]) > priority("disagree", [agree])
    assert priority("disagree", [run(("4", "4"), cut=1)])[0]  # cut at max tokens: flagged
    # sequential reads every run; disagree only the first
    assert priority("sequential", [agree, split]) > priority("disagree", [agree, split])
    # fewest: fewer sequences first, whatever their answers; then the posterior over every run
    assert priority("fewest", [run(("4",))]) > priority("fewest", [split]) > priority("fewest", [agree])
    assert priority("fewest", [agree, run(("5",))]) > priority("fewest", [agree, agree])
    assert uncertainty(["1"]) == 0.25 and uncertainty(["1", "1"]) == 0.125 and uncertainty([]) == 0.5


@pytest.mark.parametrize("cfg", POLICY_CONFIGS[2::3], ids=lambda c: c.method)
def test_a_resume_replays_the_same_decisions(cfg):
    want, sched = simulate(cfg, 10, seed=0, max_rows=8)
    recorded = {i: sched.runs_of(i) for i in range(10)}
    keep = {i: recorded[i] for i in range(0, 10, 2)}  # half the prompts were complete before the interrupt
    got, _ = simulate(cfg, 10, seed=7, max_rows=4, replay=keep)
    assert set(got) | {o.request_id for outs in keep.values() for o in outs} == set(want)
    assert all(got[r] == want[r] for r in got)  # the same runs: size, samples of the stream and all


def test_settings_are_checked():
    for bad, msg in ((dict(method="parallel-adapt"), "parallel-adapt needs a policy"),
                     (dict(method="eager-parallel"), "eager-parallel needs a policy"),
                     (dict(method="eager-parallel", policy="rank", round_size=9), "round_size 9"),
                     (dict(method="eager", policy="rank"), "applies to eager-adapt, parallel-adapt and eager-parallel"),
                     (dict(method="eager-adapt", policy="sequential", token_budget=99), "drop --token-budget"),
                     (dict(method="eager-init", budget=0.5), "a budget applies"),
                     (dict(method="eager-adapt", policy="nope"), "unknown policy"),
                     (dict(method="parallel-adapt", policy="rank", round_size=9), "round_size 9"),
                     (dict(method="parallel-adapt", policy="sequential", first_samples=9), "first_samples must be"),
                     (dict(method="parallel-adapt", policy="sequential", first_samples=0), "first_samples must be"),
                     (dict(method="eager-adapt", first_samples=2), "first_samples applies to parallel-adapt"),
                     (dict(method="eager-parallel", policy="rank", first_samples=2), "applies to parallel-adapt")):
        with pytest.raises(SettingError, match=msg):
            SchedulerConfig(max_sequences=8, **bad).validate()
    assert isinstance(make_scheduler(3, SchedulerConfig()), Scheduler)
    assert isinstance(make_scheduler(3, SchedulerConfig(policy="rank")), AdaptiveScheduler)


def test_eval_defaults_come_from_the_preset_when_they_apply():
    from eager_mlx.models.preset import PresetEval

    preset = type("P", (), {"eval": PresetEval("parallel-adapt", "disagree", 2.5)})()
    assert eval_defaults(preset, None, None) == ("parallel-adapt", "disagree", preset.eval)
    assert eval_defaults(preset, "parallel-adapt", "rank") == ("parallel-adapt", "rank", preset.eval)
    assert eval_defaults(preset, "eager-adapt", None) == ("eager-adapt", "hit-m", None)
    assert eval_defaults(None, None, None) == ("eager-adapt", "hit-m", None)
    assert eval_defaults(None, "parallel-adapt", None) == ("parallel-adapt", "sequential", None)


def test_replayed_runs_hold_no_rows():
    cfg = POLICY_CONFIGS[0]
    _, sched = simulate(cfg, 6, seed=0, max_rows=8)
    again = make_scheduler(6, cfg)
    for i in range(6):
        again.replay(i, sched.runs_of(i))
    assert again.schedule(8).runs == [] and again.done
    assert again.rows_reserved == 0


def test_reserve_rows_holds_m_rows_per_branching_run_under_a_wave_policy():
    # With reserve_rows the engine never preempts, so a branching run must hold its M rows from the start (else
    # its branches are skipped when the batch is full, and its result depends on the load); it held 1 row here.
    config = SchedulerConfig(method="eager-adapt", policy="rank", max_sequences=4, max_rows=8, reserve_rows=True)
    s = make_scheduler(5, config)
    assert [r.prompt_index for r in s.schedule().runs] == [0, 1] and s.rows_reserved == 8
    plain = make_scheduler(5, dataclasses.replace(config, reserve_rows=False))
    assert len(plain.schedule().runs) == 5 and plain.rows_reserved == 5
