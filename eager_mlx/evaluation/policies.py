"""Label-free budget policies that always have somewhere to spend: rank, disagree, sequential, fewest.

The paper's eager-adapt gives the pool B = M x |D| - (first-run sequences) only to
prompts whose first run hit M (``hit-m``, kept exact in scheduler.py). With a theta
that keeps easy prompts cheap almost none do, and the budget is left unspent. These
policies give every prompt a first run, then hand B out in *waves* of at most
``wave_runs`` runs, one run per prompt per wave, to the prompts ranked first:

* ``rank``: by the first run's uncertainty: branch points, then mean token entropy.
* ``disagree``: prompts whose first-run answers disagree, are missing, or were cut at
  max tokens first; within each group by the Adaptive-Consistency posterior that the
  leading answer is *not* the mode (1 - P(Beta(c1+1, c2+1) > 1/2)).
* ``sequential``: as ``disagree``, but over all of the prompt's runs so far: the
  ranking is redone for every wave as runs come back.
* ``fewest``: breadth first: the prompts with the fewest sequences so far first, then by
  the posterior above over all their answers. Every prompt is topped up towards M before
  any gets more; what is adaptive is the cheap first run and where the rest goes. (Added
  after the GSM8K-100 diagnosis in BENCHMARKS.md: on a small model a first run that never
  branches is often confidently wrong, and the other policies never look at it again.)

A prompt receives at most ``adapt_cap_factor`` x M extra sequences. The extra runs are
fresh eager-init runs (cap M, or what is left of the pool) for ``eager-adapt``, or
``round_size`` more parallel samples for ``parallel-adapt`` (parallel sampling in
rounds: its first run is ``first_samples`` samples (default ``round_size``), and each
later round continues the same stream of samples, so a prompt's samples are parallel's
samples, in order). ``first_samples`` is a floor: every prompt has that many independent
answers before the pool is ranked, so a prompt whose first two samples agree on a wrong
answer still gets a third (GSM8K-100 in BENCHMARKS.md: such prompts were never revisited).
``eager-parallel`` starts with an eager-init run and spends the pool on parallel
samples: the cheap, often-right first run, then independent samples where the answers
disagree (branches of one run share prefixes, so they vote less independently). Its
samples are parallel's samples 1, 2, ...: sample 0 draws with the same key as the
eager run's sequence 0, so up to its first branch it would repeat that sequence.

Determinism (every decision a function of outcomes, never of timing): wave w+1 is
decided when every wave before w is back, from the outcomes of those waves alone,
with wave w's runs counted at their reserved size and its prompts left out ("lagged":
the batch stays full while wave w runs). If that leaves nothing to start, wave w+1 is
decided again once wave w is back too ("synced"); when that is empty as well the
budget is over. Whether a decision is lagged or synced, and what it sees, never
depends on when runs finish.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from eager_mlx.adaptive.consensus import beta_mode_probability
from eager_mlx.answers import normalize_answer
from eager_mlx.evaluation.scheduler import (ROUND_METHODS, RunOutcome, RunRequest, Scheduler, SchedulerBase,
                                            SchedulerConfig, run_id)

__all__ = ["uncertainty", "priority", "AdaptiveScheduler", "make_scheduler", "eval_defaults"]


def uncertainty(answers: list[Optional[str]]) -> float:
    """1 - P(the leading answer is the mode) under Adaptive-Consistency's Beta posterior (None does not vote)."""
    counts = Counter(normalize_answer(a) for a in answers if a is not None).most_common(2)
    c1 = counts[0][1] if counts else 0
    c2 = counts[1][1] if len(counts) > 1 else 0
    return 1.0 - beta_mode_probability(c1, c2)


def priority(policy: str, runs: list[RunOutcome]) -> tuple:
    """How much a prompt deserves its next run (larger first), from its finished runs (first run first)."""
    if policy == "rank":
        return runs[0].branch_points, runs[0].mean_entropy
    if policy == "fewest":
        return -sum(o.num_sequences for o in runs), uncertainty([a for o in runs for a in o.answers])
    seen = runs[:1] if policy == "disagree" else runs
    answers = [a for o in seen for a in o.answers]
    distinct = {normalize_answer(a) for a in answers if a is not None}
    flagged = len(distinct) != 1 or None in answers or any(o.cut for o in seen)
    return flagged, uncertainty(answers)


@dataclass
class _Prompt:
    outcomes: dict[int, tuple[int, RunOutcome]] = field(default_factory=dict)  # attempt -> (wave, outcome)
    in_flight: dict[str, tuple[RunRequest, int]] = field(default_factory=dict)  # id -> (run, rows reserved)
    attempts: int = 1  # next attempt number (0 is the first run)
    samples: int = 0  # parallel-adapt / eager-parallel: samples of its stream planned so far
    done: bool = False
    replay: dict[str, RunOutcome] = field(default_factory=dict)


class AdaptiveScheduler(SchedulerBase):
    """The Scheduler interface (schedule / update_from_output / replay / pop_finished) for the wave policies;
    the pool is the budget's sequences beyond the first runs."""

    def __init__(self, num_prompts: int, config: SchedulerConfig, prompt_ids: Optional[list[int]] = None) -> None:
        super().__init__(num_prompts, config, prompt_ids, _Prompt)
        self._parallel = config.method == "parallel-adapt"  # first runs are parallel samples
        self._extra_parallel = config.method in ROUND_METHODS  # extra runs are parallel samples
        self._waves: list[list[RunRequest]] = [[]]  # wave 0: the first runs (not listed)
        self._wave_by_id: dict[str, int] = {}
        self._open = [num_prompts]  # runs of each wave not yet back
        self._lag_tried: set[int] = set()
        self._queue: list[RunRequest] = []  # decided, not yet started
        self._over = False

    # ---- the Scheduler interface ----------------------------------------------------------------
    @property
    def waves(self) -> int:
        """Waves of extra runs decided so far."""
        return len(self._waves) - 1

    def runs_of(self, i: int) -> list[RunOutcome]:
        return [o for _, (_, o) in sorted(self._p[i].outcomes.items())]

    def update_from_output(self, outcomes: list[RunOutcome]) -> None:
        for o in outcomes:
            p = self._p[o.prompt_index]
            if o.request_id not in p.in_flight:
                raise ValueError(f"unexpected outcome {o.request_id} for prompt {o.prompt_index}")
            req, rows = p.in_flight.pop(o.request_id)
            self._reserved -= rows
            wave = self._wave_of(req)
            p.outcomes[req.attempt] = (wave, o)
            self._open[wave] -= 1
            if req.attempt == 0:
                self._first_pending -= 1
        self._advance()
        for i in range(self.num_prompts):
            self._maybe_finish(i)

    # ---- waves ------------------------------------------------------------------------------------
    def _advance(self) -> None:
        """Decide every wave the outcomes so far allow (see the module docstring)."""
        if self._first_pending or self._over:
            return
        if self._pool is None:
            first = sum(self._p[i].outcomes[0][1].num_sequences for i in range(self.num_prompts))
            self._pool = int(self.config.budget * self.config.max_sequences * self.num_prompts) - first
            self._lag_tried.add(0)  # wave 1 is decided on every first run
        while not self._over:
            last = len(self._waves) - 1
            if last not in self._lag_tried and self._complete(last - 1):
                self._lag_tried.add(last)
                if self._add_wave(self._decide(known=last - 1, pending=self._waves[last])):
                    continue
            if last in self._lag_tried and self._complete(last):
                if not self._add_wave(self._decide(known=last, pending=[])):
                    self._over = True
                continue
            return

    def _complete(self, wave: int) -> bool:
        """Every run of waves 0..wave is back."""
        return all(n == 0 for n in self._open[: wave + 1])

    def _add_wave(self, runs: list[RunRequest]) -> bool:
        if not runs:
            return False
        self._wave_by_id.update((r.request_id, len(self._waves)) for r in runs)
        self._waves.append(runs)
        self._open.append(len(runs))
        self._queue += runs
        return True

    def _decide(self, known: int, pending: list[RunRequest]) -> list[RunRequest]:
        """The next wave from the outcomes of waves 0..known and the runs of `pending` (counted as reserved)."""
        cfg = self.config
        cap = cfg.adapt_cap_factor * cfg.max_sequences
        extra = [sum(o.num_sequences for a, (w, o) in p.outcomes.items() if a and w <= known) for p in self._p]
        for r in pending:
            extra[r.prompt_index] += r.max_sequences
        left = self._pool - sum(extra)
        busy = {r.prompt_index for r in pending}
        seen: Callable[[int], list[RunOutcome]] = lambda i: [  # noqa: E731
            o for _, (w, o) in sorted(self._p[i].outcomes.items()) if w <= known]
        ranked = sorted((i for i in range(self.num_prompts) if i not in busy and extra[i] < cap),
                        key=lambda i: (priority(cfg.policy, seen(i)), -i), reverse=True)
        wave = []
        for i in ranked[: cfg.wave_runs]:
            size = min(cfg.round_size if self._extra_parallel else cfg.max_sequences, cap - extra[i], left)
            if size < 1:
                break
            left -= size
            wave.append(self._extra_run(i, size))
        return wave

    def _extra_run(self, i: int, size: int) -> RunRequest:
        p = self._p[i]
        first = p.samples if self._extra_parallel else 0
        p.samples += size if self._extra_parallel else 0
        req = RunRequest(run_id(self._ids[i], p.attempts), i, self.config.threshold, size, self._extra_parallel,
                         p.attempts, key_id=run_id(self._ids[i], 0) if self._extra_parallel else None,
                         first_sequence=first)
        p.attempts += 1
        return req

    def _wave_of(self, req: RunRequest) -> int:
        return self._wave_by_id.get(req.request_id, 0)

    # ---- helpers ---------------------------------------------------------------------------------
    def _peek(self) -> Optional[RunRequest]:
        if self._queue:
            return self._queue[0]
        if self._next_first >= self.num_prompts:
            return None
        i = self._next_first
        size = (self.config.first_samples or self.config.round_size) if self._parallel else self.config.max_sequences
        return RunRequest(run_id(self._ids[i], 0), i, self.config.threshold, size, self._parallel, 0)

    def _commit(self, req: RunRequest, rows: int) -> None:
        p = self._p[req.prompt_index]
        if req.attempt == 0:
            self._next_first += 1
            p.samples = req.max_sequences if self._parallel else 1  # eager-parallel: skip sample 0 (see above)
        else:
            self._queue.remove(req)
        p.in_flight[req.request_id] = (req, rows)
        self._reserved += rows

    def _maybe_finish(self, i: int) -> None:
        """Prompt i is done once nothing of it is in flight or queued and no wave can give it more."""
        p = self._p[i]
        if p.done or p.in_flight or any(r.prompt_index == i for r in self._queue) or 0 not in p.outcomes:
            return
        cap = self.config.adapt_cap_factor * self.config.max_sequences
        used = sum(o.num_sequences for a, (_, o) in p.outcomes.items() if a)
        if self._over or used >= cap:
            if p.replay:
                raise ValueError(f"resume: prompt {i} has more recorded runs than the settings now give it")
            p.done = True
            self._new_done.append(i)


def make_scheduler(num_prompts: int, config: SchedulerConfig,
                   prompt_ids: Optional[list[int]] = None) -> "Scheduler | AdaptiveScheduler":
    """The scheduler for `config`: the wave policies here, else the paper's methods (scheduler.Scheduler)."""
    if config.policy != "hit-m":
        return AdaptiveScheduler(num_prompts, config, prompt_ids)
    return Scheduler(num_prompts, config, prompt_ids)


def eval_defaults(preset: Any, method: Optional[str], policy: Optional[str]) -> tuple[str, str, Any]:
    """(method, policy, the preset's `eval` defaults when they apply, else None) for `eval`.

    With no method given, the preset's chosen configuration runs (models/preset.py `PresetEval`); given the
    same method, its policy, theta and branch rule are still the defaults; another method gets the paper's
    rule (hit-m) for eager-adapt, sequential for parallel-adapt.
    """
    chosen = getattr(preset, "eval", None)
    if chosen is not None and method in (None, chosen.method):
        return chosen.method, policy or chosen.policy, chosen
    method = method or "eager-adapt"
    return method, policy or ("sequential" if method == "parallel-adapt" else "hit-m"), None
