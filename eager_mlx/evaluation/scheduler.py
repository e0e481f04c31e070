"""Budget scheduler: which (prompt, theta, M) runs to start next. Never calls the model.

Shaped like vLLM's scheduler: ``schedule(free_rows)`` returns a plain
``SchedulerOutput`` listing the runs to start now, and
``update_from_output(outcomes)`` takes finished runs back. Every decision is a
function of the runs' outcomes alone, never of timing: which runs a prompt gets
(their ids, theta and M) is the same whatever the batch, ``max_rows``, the order
in which runs finish, a resume (``replay``) or sharding.

Methods (shared/reference/eager-method.md), M = ``max_sequences``, |D| = number of prompts:

* ``parallel``: one run per prompt with M independent rows.
* ``eager-init``: one branching run per prompt, capped at M sequences.
* ``eager-adapt`` (no labels): first an eager-init run of every prompt. Then
  B = M*|D| - sequences used is split evenly among the prompts whose first
  run hit the cap M (remainder to the first ones, in prompt order), at most
  ``adapt_cap_factor``*M (3M) extra per prompt. A prompt spends its share on
  fresh eager-init runs (same theta).
* ``eager`` (labels): first an eager-init run. B is split among the prompts
  with no correct answer yet, at most ``label_cap_factor``*M (M) extra each.
  Retries run until the prompt is solved or its share is spent; try 2 uses
  theta*``retry_decay`` (0.8) for prompts whose first run stayed below M (theta
  for those that hit M, unless ``decay_capped_on_retry``), and every later try
  multiplies the previous theta by ``later_decay`` (0.9).
* ``parallel-adapt`` and ``eager-parallel`` (no labels): wave policies, see policies.py.

How a share is spent (differs from the paper's one-run-after-another order, see
docs/evaluation.md): in *generations*. A generation splits what the prompt may
spend into runs of at most M (``chunks``) launched together; when all of them
are back, what they left unspent (M of a run minus the sequences it made) is
split again into the next generation. With a consensus rule, or a token
budget, a generation is one run, so the prompt can stop after each run.

The barrier and the early hand-out: B is known once every first run has
finished. Before that, with F first runs not finished and E prompts already
known to qualify, B >= M*|D| - used - M*F, and each qualifying prompt's final
share is at least min(cap, that // (E + F)). So the full-M runs that its final
first generation is sure to hold start before the barrier; the rest follows at
the barrier. The runs, and the total handed out, are exactly the barrier rule's.

Further choices (each an option of SchedulerConfig):

* "Stayed below M" is judged on the prompt's first run.
* ``recycle_unused`` (``eager`` only, default on): a prompt solved before its
  share is spent returns the rest to the pool; once no prompt has anything in
  flight, the pool is split again among the prompts still unsolved with cap
  left, in further rounds, until the pool or the eligible prompts run out.
* ``token_budget``: the pool is counted in generated tokens instead of
  sequences: B = token_budget - tokens of the first pass. It is split and
  capped the same way (the 3M / M caps still count sequences). A prompt starts
  another run while its token share is positive; a run is never cut, so the
  last run of a prompt may overshoot its share (by at most one run). No early
  hand-out (a run's tokens are unknown in advance). eager-adapt and eager only.
* ``consensus`` (None, or a ``ConsensusConfig``): a prompt whose finished
  answers agree (over its runs' answers in run order, then sequence order;
  pruned or aborted sequences do not vote) gets no more runs and its unspent
  share returns to the pool, split again in further rounds (as
  ``recycle_unused`` does). A run whose outcome says ``consensus=True`` (an
  online monitor aborted it on agreement) counts as agreement too.

Rows: a branching run is admitted when one row is free; the engine must then
preempt a younger run when a due branch finds the batch full
(``Engine(preempt=True)``, docs/evaluation.md), which keeps every decision
exact while filling the batch. With ``reserve_rows`` each branching run instead
reserves min(M, max_rows) rows (exact without preemption, most rows idle).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from eager_mlx.adaptive.consensus import ConsensusConfig, consensus_reached
from eager_mlx.settings import SettingError

__all__ = [
    "METHODS",
    "ROUND_METHODS",
    "BUDGET_METHODS",
    "WAVE_METHODS",
    "POLICIES",
    "SchedulerConfig",
    "RunRequest",
    "SchedulerOutput",
    "RunOutcome",
    "SchedulerBase",
    "Scheduler",
    "split_evenly",
    "chunks",
    "run_id",
    "prompt_of_run",
]

METHODS = ("parallel", "eager-init", "eager-adapt", "eager", "parallel-adapt", "eager-parallel")
# how eager-adapt, parallel-adapt and eager-parallel hand out the pool (policies.py)
POLICIES = ("hit-m", "rank", "disagree", "sequential", "fewest")
WAVE_METHODS = ("eager-adapt", "parallel-adapt", "eager-parallel")  # the methods that take a wave policy
ROUND_METHODS = ("parallel-adapt", "eager-parallel")  # their extra runs are rounds of parallel samples
BUDGET_METHODS = ("eager",) + WAVE_METHODS  # the methods whose pool --budget scales


@dataclass(frozen=True)
class SchedulerConfig:
    """Budget settings shared by every prompt of a dataset."""

    method: str = "eager-adapt"
    max_sequences: int = 8  # M
    threshold: float = 2.0  # theta of every first run
    max_rows: int = 16  # rows the engine decodes per step
    reserve_rows: bool = False  # reserve max_sequences rows per branching run (else the engine preempts)
    token_budget: Optional[int] = None  # pool in tokens instead of M*|D| sequences
    adapt_cap_factor: int = 3  # eager-adapt: at most 3M extra sequences per prompt
    label_cap_factor: int = 1  # eager: at most M extra sequences per prompt
    retry_decay: float = 0.8  # eager: theta factor for try 2 (prompts below M)
    later_decay: float = 0.9  # eager: further theta factor for each try after the second
    decay_capped_on_retry: bool = False  # eager: prompts that hit M also get retry_decay on try 2
    recycle_unused: bool = True  # eager: a solved prompt's unspent share goes back to the pool
    consensus: Optional[ConsensusConfig] = None  # stop a prompt once its answers agree (see above)
    policy: str = "hit-m"  # who gets the pool: the paper's rule, or a wave policy (policies.py)
    budget: float = 1.0  # eager-adapt / eager / parallel-adapt / eager-parallel: spend budget x M x |D| sequences
    wave_runs: int = 8  # wave policies: at most this many extra runs per wave (never derived from max_rows)
    round_size: int = 2  # parallel-adapt: samples per run (first and extra ones); eager-parallel: per extra run
    first_samples: Optional[int] = None  # parallel-adapt: samples of every prompt's first run (None: round_size)

    def validate(self) -> None:
        """Raise SettingError naming the first bad value."""
        if self.method not in METHODS:
            raise SettingError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.max_sequences < 1:
            raise SettingError(f"max_sequences must be >= 1, got {self.max_sequences}")
        if self.max_rows < 1:
            raise SettingError(f"max_rows must be >= 1, got {self.max_rows}")
        if self.threshold < 0:
            raise SettingError(f"threshold must be >= 0, got {self.threshold}")
        if self.token_budget is not None:
            if self.method not in ("eager-adapt", "eager"):
                raise SettingError("a token budget applies to eager-adapt and eager only")
            if self.token_budget < 0:
                raise SettingError(f"token_budget must be >= 0, got {self.token_budget}")
        if self.max_sequences > self.max_rows:
            raise SettingError(f"max_sequences {self.max_sequences} > max_rows {self.max_rows}: a prompt's M rows "
                               "must fit in one batch")
        if not (0 < self.retry_decay <= 1 and 0 < self.later_decay <= 1):
            raise SettingError("retry_decay and later_decay must be in (0, 1]")
        if self.consensus is not None:
            self.consensus.validate()
        self._validate_policy()

    def _validate_policy(self) -> None:
        if self.policy not in POLICIES:
            raise SettingError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if not 0 < self.budget <= 4:
            raise SettingError(f"budget must be in (0, 4], got {self.budget}")
        if self.budget != 1.0 and self.method not in BUDGET_METHODS:
            raise SettingError(f"a budget applies to {', '.join(BUDGET_METHODS)} only, not {self.method}")
        if self.wave_runs < 1 or self.round_size < 1:
            raise SettingError(f"wave_runs and round_size must be >= 1, got {self.wave_runs}, {self.round_size}")
        if self.first_samples is not None:
            if self.method != "parallel-adapt":
                raise SettingError(f"first_samples applies to parallel-adapt only, not {self.method}")
            if not 1 <= self.first_samples <= self.max_sequences:
                raise SettingError(f"first_samples must be in 1..M ({self.max_sequences}), got {self.first_samples}")
        if self.policy == "hit-m":
            if self.method in ROUND_METHODS:
                raise SettingError(f"{self.method} needs a policy that can rank its prompts: rank, disagree, "
                                   "sequential or fewest (hit-m hands the pool to eager-init runs only)")
            return
        if self.method not in WAVE_METHODS:
            raise SettingError(f"policy {self.policy} applies to eager-adapt, parallel-adapt and eager-parallel, "
                               f"not {self.method}")
        if self.token_budget is not None or self.consensus is not None:
            raise SettingError(f"policy {self.policy} counts the budget in sequences and stops no prompt early: "
                               "drop --token-budget / --consensus, or use policy hit-m")
        if self.method in ROUND_METHODS and self.round_size > self.max_sequences:
            raise SettingError(f"round_size {self.round_size} > max_sequences {self.max_sequences}")


@dataclass(frozen=True)
class RunRequest:
    """One run to start: ``engine.add(request_id, prompt, config with these values)``."""

    request_id: str
    prompt_index: int
    threshold: float
    max_sequences: int
    parallel: bool
    attempt: int  # 0: the prompt's first run; 1, 2, ...: extra runs, in a fixed order
    key_id: Optional[str] = None  # the id its random key derives from (None: request_id)
    first_sequence: int = 0  # parallel rounds: its samples continue key_id's stream from here


@dataclass
class SchedulerOutput:
    """What ``schedule`` decided: runs to start now."""

    runs: list[RunRequest] = field(default_factory=list)


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run reports back to the scheduler."""

    request_id: str
    prompt_index: int
    num_sequences: int
    generated_tokens: int
    any_correct: Optional[bool] = None  # needed by method "eager"
    answers: tuple[Optional[str], ...] = ()  # answers of its sequences that finished by themselves (consensus)
    consensus: bool = False  # an online monitor found agreement during the run
    branch_points: int = 0
    mean_entropy: float = 0.0  # over the tokens it generated (shared prefixes once)
    cut: int = 0  # sequences that stopped at max tokens


def run_id(prompt_index: int, attempt: int) -> str:
    """The request id of a prompt's run: ``p{prompt_index}-r{attempt}`` (attempt 0: its first run)."""
    return f"p{prompt_index}-r{attempt}"


def prompt_of_run(request_id: str) -> int:
    """The prompt index of a run id made by `run_id`."""
    return int(request_id[1:].rsplit("-r", 1)[0])


def split_evenly(budget: int, caps: list[int]) -> list[int]:
    """Split budget evenly over len(caps) takers, each at most its cap; remainder to the first ones."""
    shares = [0] * len(caps)
    while budget > 0:
        open_ = [i for i, c in enumerate(caps) if shares[i] < c]
        if not open_:
            break
        each, rest = divmod(budget, len(open_))
        for rank, i in enumerate(open_):
            give = min(caps[i] - shares[i], each + (1 if rank < rest else 0))
            shares[i] += give
            budget -= give
    return shares


def chunks(amount: int, m: int) -> list[int]:
    """`amount` sequences as runs of at most `m`: full runs first, then the remainder."""
    full, rest = divmod(max(0, amount), m)
    return [m] * full + ([rest] if rest else [])


@dataclass
class _Prompt:
    runs: list[RunOutcome] = field(default_factory=list)  # finished, in the order they came back
    in_flight: dict[str, tuple[RunRequest, int]] = field(default_factory=dict)  # id -> (run, rows reserved)
    first_done: bool = False
    first_hit_cap: bool = False
    first_qualified: bool = False  # the first run's outcome alone makes it a taker of B (round 0)
    solved: bool = False
    agreed: bool = False  # consensus reached
    done: bool = False
    granted: int = 0  # share granted over all rounds (sequences or tokens)
    spent: int = 0  # what its finished extra runs used of it
    extra_sequences: int = 0  # sequences of runs after the first
    attempts: int = 1  # runs planned so far, the first included (the next attempt number)
    plan: list[RunRequest] = field(default_factory=list)  # runs of the current generation not yet started
    generation: list[str] = field(default_factory=list)  # run ids of the current generation
    early: int = 0  # full-M runs of the first generation started before the barrier
    theta: float = 0.0  # theta of the last generation
    replay: dict[str, RunOutcome] = field(default_factory=dict)


class SchedulerBase(ABC):
    """What every scheduler shares: its prompts' bookkeeping, recorded runs fed back, and `schedule()`.

    A subclass's prompts (`_p`) have `done`, `in_flight` and `replay`; it says which run comes next
    (`_peek`), takes a started one (`_commit`), lists a prompt's finished runs (`runs_of`) and takes
    outcomes back (`update_from_output`).
    """

    def __init__(self, num_prompts: int, config: SchedulerConfig, prompt_ids: Optional[list[int]],
                 new_prompt: Callable[[], Any]) -> None:
        """`prompt_ids`: the number each prompt's run ids carry (`run_id`), e.g. its index in the whole
        dataset when this is one shard of it (default 0 .. num_prompts - 1); `new_prompt`: a prompt's state."""
        config.validate()
        if num_prompts < 0:
            raise ValueError("num_prompts must be >= 0")
        self._ids = list(range(num_prompts)) if prompt_ids is None else list(prompt_ids)
        if len(self._ids) != num_prompts:
            raise ValueError(f"{len(self._ids)} prompt ids for {num_prompts} prompts")
        self.config = config
        self._p = [new_prompt() for _ in range(num_prompts)]
        self._next_first = 0  # next prompt whose first run has not started
        self._first_pending = num_prompts  # first runs not yet finished
        self._pool: Optional[int] = None  # None until the barrier
        self._reserved = 0
        self._new_done: list[int] = []

    @property
    def num_prompts(self) -> int:
        return len(self._p)

    @property
    def done(self) -> bool:
        """True when every prompt is done."""
        return all(p.done for p in self._p)

    @property
    def pool(self) -> Optional[int]:
        """Budget not yet handed out; None before the barrier."""
        return self._pool

    @property
    def rows_reserved(self) -> int:
        """Rows reserved by runs in flight."""
        return self._reserved

    def pop_finished(self) -> list[int]:
        """Prompts that became done since the last call, in the order they finished."""
        out, self._new_done = self._new_done, []
        return out

    @abstractmethod
    def runs_of(self, i: int) -> list[RunOutcome]:
        """The finished runs of prompt i."""

    @abstractmethod
    def update_from_output(self, outcomes: list[RunOutcome]) -> None:
        """Take finished runs back."""

    def replay(self, i: int, outcomes: list[RunOutcome]) -> None:
        """Feed back recorded runs of prompt i (resume); they are consumed instead of being run again."""
        p = self._p[i]
        if self.runs_of(i) or p.in_flight:
            raise ValueError(f"prompt {i} already has runs")
        p.replay = {o.request_id: o for o in outcomes}

    def schedule(self, free_rows: Optional[int] = None) -> SchedulerOutput:
        """Runs to start now, given the engine's free rows (None: limited by max_rows only), in the order
        `_peek` gives them (extra runs first: they finish prompts; then first runs in prompt order)."""
        out = SchedulerOutput()
        cap = self.config.max_rows - self._reserved
        if free_rows is not None:
            cap = min(cap, free_rows)
        while (req := self._peek()) is not None:
            p = self._p[req.prompt_index]
            if req.request_id in p.replay:  # recorded by an earlier session: consume it instead of running it
                self._commit(req, rows=0)
                self.update_from_output([p.replay.pop(req.request_id)])
                continue
            if p.replay and req.attempt == 0:
                raise ValueError(f"resume: prompt {req.prompt_index} recorded runs "
                                 f"{', '.join(sorted(p.replay))}, the settings now ask for {req.request_id}")
            rows = self._rows_needed(req)
            if rows > cap:
                break
            cap -= rows
            self._commit(req, rows)
            out.runs.append(req)
        return out

    def _rows_needed(self, req: RunRequest) -> int:
        """Rows a run holds: its samples; a branching run 1 (the engine preempts to make room for its
        branches) or, with reserve_rows (the engine then never preempts), its M."""
        if req.parallel:
            return req.max_sequences
        return min(req.max_sequences, self.config.max_rows) if self.config.reserve_rows else 1

    @abstractmethod
    def _peek(self) -> Optional[RunRequest]:
        """The next run to start, or None; no state change."""

    @abstractmethod
    def _commit(self, req: RunRequest, rows: int) -> None:
        """Take the started run `req`, holding `rows` rows."""


class Scheduler(SchedulerBase):
    """Decides the runs for ``num_prompts`` prompts under one SchedulerConfig: the paper's methods."""

    def __init__(self, num_prompts: int, config: SchedulerConfig, prompt_ids: Optional[list[int]] = None) -> None:
        """`prompt_ids`: as SchedulerBase's."""
        super().__init__(num_prompts, config, prompt_ids, lambda: _Prompt(theta=config.threshold))
        self.rounds = 0  # budget rounds handed out so far

    # ----------------------------------------------------------------- queries
    @property
    def has_ready_run(self) -> bool:
        """True when a run could start now if rows were free."""
        return self._peek() is not None

    def is_prompt_done(self, i: int) -> bool:
        """True once prompt i will never get another run."""
        return self._p[i].done

    def finished_prompts(self) -> list[int]:
        """Every prompt done so far, in index order."""
        return [i for i, p in enumerate(self._p) if p.done]

    def runs_of(self, i: int) -> list[RunOutcome]:
        """The finished runs of prompt i, in the order they finished."""
        return list(self._p[i].runs)

    def sequences_used(self) -> int:
        return sum(r.num_sequences for p in self._p for r in p.runs)

    def tokens_used(self) -> int:
        return sum(r.generated_tokens for p in self._p for r in p.runs)

    # ---------------------------------------------------------------- schedule
    def update_from_output(self, outcomes: list[RunOutcome]) -> None:
        """Take finished runs back and update the budget."""
        for o in outcomes:
            p = self._p[o.prompt_index]
            if o.request_id not in p.in_flight:
                raise ValueError(f"unexpected outcome {o.request_id} for prompt {o.prompt_index}")
            if self.config.method == "eager" and o.any_correct is None:
                raise ValueError("method 'eager' needs labels: outcome any_correct is None")
            req, rows = p.in_flight.pop(o.request_id)
            self._reserved -= rows
            p.runs.append(o)
            p.solved = p.solved or bool(o.any_correct)
            p.agreed = p.agreed or o.consensus
            if req.attempt == 0:
                self._first_finished(o.prompt_index, o)
            else:
                p.extra_sequences += o.num_sequences
                p.spent += max(1, o.generated_tokens) if self._tokens else o.num_sequences
                if not p.in_flight and not p.plan and self._pool is not None:
                    self._generation_over(o.prompt_index)
        self._advance()

    # ----------------------------------------------------------------- helpers
    @property
    def _tokens(self) -> bool:
        return self.config.token_budget is not None

    @property
    def _extra_cap(self) -> int:
        f = self.config.adapt_cap_factor if self.config.method == "eager-adapt" else self.config.label_cap_factor
        return f * self.config.max_sequences

    @property
    def _one_run_per_generation(self) -> bool:
        """Token shares and consensus need the outcome of each run before the next."""
        return self._tokens or self.config.consensus is not None

    @property
    def _recycling(self) -> bool:
        """Unspent shares go back to the pool and are split again in later rounds."""
        return (self.config.method == "eager" and self.config.recycle_unused) or self.config.consensus is not None

    def _answers(self, p: _Prompt) -> list[Optional[str]]:
        """The prompt's answers in run order (attempt), then sequence order: what consensus reads."""
        order = sorted(p.runs, key=lambda o: int(o.request_id.rsplit("-r", 1)[1]))
        return [a for o in order for a in o.answers]

    def _check_consensus(self, p: _Prompt) -> None:
        if self.config.consensus is not None and not p.agreed:
            p.agreed = consensus_reached(self._answers(p), self.config.consensus)

    def _qualifies(self, p: _Prompt) -> bool:
        """After its first run: could this prompt be given extra budget at all?"""
        if p.agreed or p.extra_sequences >= self._extra_cap:
            return False
        if self.config.method == "eager-adapt":
            return p.first_hit_cap
        if self.config.method == "eager":
            return not p.solved
        return False

    def _first_finished(self, i: int, o: RunOutcome) -> None:
        p = self._p[i]
        self._first_pending -= 1
        p.first_done = True
        p.first_hit_cap = o.num_sequences >= self.config.max_sequences
        self._check_consensus(p)
        p.first_qualified = self.config.method in ("eager-adapt", "eager") and self._qualifies(p)
        if not p.first_qualified:
            self._finish(i)

    def _finish(self, i: int) -> None:
        p = self._p[i]
        if p.replay:
            raise ValueError(f"resume: prompt {i} has more recorded runs than the settings now give it")
        if not p.done:
            p.done = True
            self._new_done.append(i)

    def _generation_over(self, i: int) -> None:
        """Every run of the prompt's generation is back: plan the next one, or close its share."""
        p = self._p[i]
        self._check_consensus(p)
        left = p.granted - p.spent
        stop = p.agreed or (self.config.method == "eager" and p.solved)
        if not stop and left > 0 and p.extra_sequences < self._extra_cap:
            self._plan(i, left)
            return
        if left > 0 and self._recycling:
            self._pool += left
            p.granted -= left
        if not self._recycling or not self._qualifies(p) or stop:
            self._finish(i)

    def _plan(self, i: int, amount: int) -> None:
        """Plan the prompt's next generation: `amount` (sequences or tokens) as runs of at most M."""
        p = self._p[i]
        cap_left = self._extra_cap - p.extra_sequences
        m = min(self.config.max_sequences, cap_left)
        if self._tokens:
            sizes = [m]
        else:
            sizes = chunks(min(amount, cap_left), m)
            if self._one_run_per_generation:
                sizes = sizes[:1]
        theta = self._next_theta(p)
        p.theta = theta
        p.plan = [RunRequest(self._run_id(i, p.attempts + k), i, theta, size, False, p.attempts + k)
                  for k, size in enumerate(sizes)]
        p.attempts += len(sizes)
        p.generation = [r.request_id for r in p.plan]

    def _next_theta(self, p: _Prompt) -> float:
        """eager-adapt keeps theta; eager decays it per generation (see the module docstring)."""
        cfg = self.config
        if cfg.method != "eager":
            return cfg.threshold
        if p.attempts == 1:  # the first retry
            decay = not p.first_hit_cap or cfg.decay_capped_on_retry
            return cfg.threshold * cfg.retry_decay if decay else cfg.threshold
        return p.theta * cfg.later_decay

    def _grant(self, i: int, share: int) -> None:
        """Give prompt i `share` more; its first generation may already have started early (full-M runs)."""
        p = self._p[i]
        p.granted += share
        if share <= 0 and not p.in_flight and not p.plan:
            self._finish(i)
            return
        if p.early and not self._tokens:  # the barrier part of a generation that started early
            sizes = chunks(min(p.granted, self._extra_cap), self.config.max_sequences)[p.early:]
            p.plan += [RunRequest(self._run_id(i, p.attempts + k), i, p.theta, size, False, p.attempts + k)
                       for k, size in enumerate(sizes)]
            p.attempts += len(sizes)
            p.generation += [r.request_id for r in p.plan]
            p.early = 0
            if not p.in_flight and not p.plan:
                self._generation_over(i)
        elif not p.in_flight and not p.plan:
            self._plan(i, p.granted - p.spent)

    def _hand_out_early(self) -> None:
        """Before the barrier: start the full-M runs that the final shares are sure to hold."""
        cfg = self.config
        if self._tokens or self._one_run_per_generation or cfg.method not in ("eager-adapt", "eager"):
            return
        known = [i for i, p in enumerate(self._p) if p.first_qualified]
        takers = len(known) + self._first_pending
        if not known or not takers:
            return
        used = sum(p.runs[0].num_sequences for p in self._p if p.first_done)
        lower = cfg.max_sequences * (self.num_prompts - self._first_pending) - used
        sure = min(self._extra_cap, max(0, lower) // takers) // cfg.max_sequences  # full runs sure to come
        for i in known:
            p = self._p[i]
            if sure > p.early:
                if not p.early:
                    p.theta = self._next_theta(p)
                    p.generation = []
                new = [RunRequest(self._run_id(i, p.attempts + k), i, p.theta, cfg.max_sequences, False, p.attempts + k)
                       for k in range(sure - p.early)]
                p.plan += new
                p.generation += [r.request_id for r in new]
                p.attempts += len(new)
                p.early = sure

    def _advance(self) -> None:
        """Hand out budget early, at the barrier and in later rounds; finish prompts nothing more can serve."""
        if self.config.method in ("parallel", "eager-init"):
            return
        if self._first_pending > 0:
            self._hand_out_early()
            return
        if self._pool is None:
            self._pool = self._barrier_pool()
            self._hand_out()
            return
        busy = any(p.in_flight or p.plan for p in self._p if not p.done)
        if not busy and self._recycling:
            self._hand_out()

    def _barrier_pool(self) -> int:
        if self._tokens:
            return max(0, self.config.token_budget - self.tokens_used())
        first = sum(p.runs[0].num_sequences for p in self._p if p.runs)
        return max(0, int(self.config.budget * self.config.max_sequences * self.num_prompts) - first)

    def _hand_out(self) -> None:
        """One round: split the pool among the prompts that may still get more."""
        if self.rounds == 0:  # judged on first runs alone, even where early runs came back since
            eligible = [i for i, p in enumerate(self._p) if p.first_qualified]
        else:
            eligible = [i for i, p in enumerate(self._p) if not p.done and self._qualifies(p)]
        if not (eligible and self._pool > 0 and (self.rounds == 0 or self._recycling)):
            for i in eligible:
                if not self._p[i].in_flight and not self._p[i].plan:
                    self._finish(i)
            return
        if self._tokens:
            caps = [self._pool] * len(eligible)  # the sequence cap is enforced per run
        else:  # round 0: as at the barrier rule's barrier, before any extra run (early ones included)
            caps = [self._extra_cap - (self._p[i].extra_sequences if self.rounds else 0) for i in eligible]
        self.rounds += 1
        for i, share in zip(eligible, split_evenly(self._pool, caps)):
            self._pool -= share
            self._grant(i, share)

    def _peek(self) -> Optional[RunRequest]:
        """The next run the policy wants (extra runs first, then first runs in prompt order); no state change."""
        for p in self._p:
            if not p.done and p.plan:
                return p.plan[0]
        if self._next_first >= self.num_prompts:
            return None
        i = self._next_first
        parallel = self.config.method == "parallel"
        return RunRequest(self._run_id(i, 0), i, self.config.threshold, self.config.max_sequences, parallel, 0)

    def _run_id(self, i: int, attempt: int) -> str:
        return run_id(self._ids[i], attempt)

    def _commit(self, req: RunRequest, rows: int) -> None:
        p = self._p[req.prompt_index]
        if req.attempt == 0:
            self._next_first += 1
        else:
            p.plan.remove(req)
        p.in_flight[req.request_id] = (req, rows)
        self._reserved += rows
