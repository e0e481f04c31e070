"""Budget scheduler: which (prompt, theta, M) runs to start next. Never calls the model.

Shaped like vLLM's scheduler: ``schedule(free_rows)`` returns a plain
``SchedulerOutput`` listing the runs to start now, and
``update_from_output(outcomes)`` takes finished runs back. Decisions depend only
on the outcomes, never on timing, so a run can be replayed exactly on resume
(``replay``).

Methods (docs/../shared/reference/eager-method.md), M = ``max_sequences``,
|D| = number of prompts:

* ``parallel``: one run per prompt with M independent rows.
* ``eager-init``: one branching run per prompt, capped at M sequences.
* ``eager-adapt`` (no labels): first an eager-init pass over every prompt.
  Then B = M*|D| - sequences used is split evenly among the prompts whose first
  run hit the cap M (remainder to the first ones, in prompt order), at most
  ``adapt_cap_factor``*M (3M) extra per prompt. A prompt spends its share on
  fresh eager-init runs (same theta), each capped at min(M, share left), until
  the share is spent.
* ``eager`` (labels): first an eager-init pass. B is split among the prompts
  with no correct answer yet, at most ``label_cap_factor``*M (M) extra each.
  Retries run until the prompt is solved or its share is spent; try 2 uses
  theta*``retry_decay`` (0.8) for prompts whose first run stayed below M (theta
  for those that hit M, unless ``decay_capped_on_retry``), and every later try
  multiplies the previous theta by ``later_decay`` (0.9).

Choices where the reference is ambiguous (each an option of SchedulerConfig):

* B is computed once every first run has finished (a barrier): the paper
  defines it over the whole dataset. Prompts that can never get extra budget
  (eager-adapt: below the cap; eager: solved) are done at once.
* "Stayed below M" is judged on the prompt's first run.
* ``recycle_unused`` (default on, ``eager`` only): a prompt solved before its
  share is spent returns the rest to the pool, and the pool is split again
  among the prompts still unsolved with cap left, in further rounds, until the
  pool or the eligible prompts run out.
* ``token_budget``: the pool is counted in generated tokens instead of
  sequences: B = token_budget - tokens of the first pass (use a parallel run's
  #T to compare at equal tokens). It is split and capped the same way (the
  3M / M caps still count sequences). A prompt starts another run while its
  token share is positive; a run is never cut, so the last run of a prompt may
  overshoot its share (by at most one run). Only for eager-adapt and eager:
  parallel and eager-init have no second phase.

* ``consensus`` (None, or a ``ConsensusConfig``: eager_mlx/adaptive/consensus.py): a
  prompt whose finished answers agree (Beta-posterior or window rule, over
  its runs' answers in run order then sequence order; sequences pruned or
  aborted do not vote) gets no more runs: after its first run it takes no
  share of B; after an extra run it stops and its unspent share goes back to
  the pool. With consensus on, the pool is split again (further rounds, as
  ``recycle_unused`` does for ``eager``) among the prompts that may still get
  more (eager-adapt: hit M, no consensus, cap left). A run whose outcome says
  ``consensus=True`` (an online monitor found agreement and aborted it) counts
  as agreement too. parallel and eager-init have one run per prompt, so
  consensus changes nothing here: there it works only through that online abort.

Rows: by default each run reserves ``max_sequences`` rows (M > max_rows is
refused), so the engine never has to skip a branch (the paper's decisions
exactly). With
``reserve_rows=False`` a branching run is admitted when one row is free (more
prompts in flight; branches may then be skipped by a full engine).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from eager_mlx.adaptive.consensus import ConsensusConfig, consensus_reached
__all__ = [
    "METHODS",
    "SchedulerConfig",
    "RunRequest",
    "SchedulerOutput",
    "RunOutcome",
    "Scheduler",
    "split_evenly",
]

METHODS = ("parallel", "eager-init", "eager-adapt", "eager")


@dataclass(frozen=True)
class SchedulerConfig:
    """Budget settings shared by every prompt of a dataset."""

    method: str = "eager-adapt"
    max_sequences: int = 32  # M
    threshold: float = 2.0  # theta of every first run
    max_rows: int = 64  # rows the engine decodes per step
    reserve_rows: bool = True  # reserve max_sequences rows per run (exact decisions)
    token_budget: Optional[int] = None  # pool in tokens instead of M*|D| sequences
    adapt_cap_factor: int = 3  # eager-adapt: at most 3M extra sequences per prompt
    label_cap_factor: int = 1  # eager: at most M extra sequences per prompt
    retry_decay: float = 0.8  # eager: theta factor for try 2 (prompts below M)
    later_decay: float = 0.9  # eager: further theta factor for each try after the second
    decay_capped_on_retry: bool = False  # eager: prompts that hit M also get retry_decay on try 2
    recycle_unused: bool = True  # eager: a solved prompt's unspent share goes back to the pool
    consensus: Optional[ConsensusConfig] = None  # stop a prompt once its answers agree (see above)

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.max_sequences < 1:
            raise ValueError(f"max_sequences (M) must be >= 1, got {self.max_sequences}")
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.token_budget is not None:
            if self.method not in ("eager-adapt", "eager"):
                raise ValueError("a token budget applies to eager-adapt and eager only")
            if self.token_budget < 0:
                raise ValueError(f"token_budget must be >= 0, got {self.token_budget}")
        if self.method == "parallel" and self.max_sequences > self.max_rows:
            raise ValueError(
                f"parallel needs M rows at once: max_sequences {self.max_sequences} > max_rows {self.max_rows}"
            )
        if self.max_sequences > self.max_rows:  # a full engine would skip branches: not the paper's decisions
            raise ValueError(f"{self.method} needs up to M rows per prompt: max_sequences {self.max_sequences} > "
                             f"max_rows {self.max_rows} (raise max_rows or lower M)")
        if not (0 < self.retry_decay <= 1 and 0 < self.later_decay <= 1):
            raise ValueError("retry_decay and later_decay must be in (0, 1]")
        if self.consensus is not None:
            self.consensus.validate()


@dataclass(frozen=True)
class RunRequest:
    """One run to start: ``engine.add(request_id, prompt, config with these values)``."""

    request_id: str
    prompt_index: int
    threshold: float
    max_sequences: int
    parallel: bool
    attempt: int  # 0: the prompt's first run; 1, 2, ...: extra runs


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


@dataclass
class _Prompt:
    runs: list[RunOutcome] = field(default_factory=list)
    in_flight: Optional[RunRequest] = None
    rows: int = 0  # rows reserved by the run in flight
    first_hit_cap: bool = False
    solved: bool = False
    extra_sequences: int = 0  # sequences of runs after the first
    share: int = 0  # allocated budget (sequences or tokens) not yet spent
    theta: float = 0.0  # theta of the last run
    done: bool = False
    answers: list[Optional[str]] = field(default_factory=list)
    agreed: bool = False  # consensus reached
    replay: list[RunOutcome] = field(default_factory=list)


class Scheduler:
    """Decides the runs for ``num_prompts`` prompts under one SchedulerConfig."""

    def __init__(self, num_prompts: int, config: SchedulerConfig, prompt_ids: Optional[list[int]] = None) -> None:
        """`prompt_ids`: the number each prompt's request ids carry (``p{id}-r{attempt}``), e.g. its index in
        the whole dataset when this is one shard of it (default 0 .. num_prompts - 1)."""
        config.validate()
        if num_prompts < 0:
            raise ValueError("num_prompts must be >= 0")
        self._ids = list(range(num_prompts)) if prompt_ids is None else list(prompt_ids)
        if len(self._ids) != num_prompts:
            raise ValueError(f"{len(self._ids)} prompt ids for {num_prompts} prompts")
        self.config = config
        self._p = [_Prompt() for _ in range(num_prompts)]
        self._next_first = 0  # next prompt whose first run has not started
        self._first_pending = num_prompts  # first runs not yet finished
        self._pool: Optional[int] = None  # None until the barrier
        self._reserved = 0
        self._new_done: list[int] = []
        self.rounds = 0  # budget rounds handed out so far

    # ----------------------------------------------------------------- queries
    @property
    def num_prompts(self) -> int:
        return len(self._p)

    @property
    def done(self) -> bool:
        """True when every prompt is done."""
        return all(p.done for p in self._p)

    @property
    def pool(self) -> Optional[int]:
        """Budget not yet handed out (sequences or tokens); None before the barrier."""
        return self._pool

    @property
    def rows_reserved(self) -> int:
        """Rows reserved by runs in flight."""
        return self._reserved

    def is_prompt_done(self, i: int) -> bool:
        """True once prompt i will never get another run."""
        return self._p[i].done

    def finished_prompts(self) -> list[int]:
        """Every prompt done so far, in index order."""
        return [i for i, p in enumerate(self._p) if p.done]

    def pop_finished(self) -> list[int]:
        """Prompts that became done since the last call, in the order they finished."""
        out, self._new_done = self._new_done, []
        return out

    def runs_of(self, i: int) -> list[RunOutcome]:
        """The finished runs of prompt i, in order."""
        return list(self._p[i].runs)

    def sequences_used(self) -> int:
        return sum(r.num_sequences for p in self._p for r in p.runs)

    def tokens_used(self) -> int:
        return sum(r.generated_tokens for p in self._p for r in p.runs)

    # ---------------------------------------------------------------- schedule
    def replay(self, i: int, outcomes: list[RunOutcome]) -> None:
        """Feed back recorded runs of prompt i (resume); they are consumed instead of being run again."""
        if self._p[i].runs or self._p[i].in_flight:
            raise ValueError(f"prompt {i} already has runs")
        self._p[i].replay = list(outcomes)

    def schedule(self, free_rows: Optional[int] = None) -> SchedulerOutput:
        """Runs to start now, given the engine's free rows (None: limited by max_rows only)."""
        out = SchedulerOutput()
        cap = self.config.max_rows - self._reserved
        if free_rows is not None:
            cap = min(cap, free_rows)
        while True:
            req = self._peek()
            if req is None:
                break
            p = self._p[req.prompt_index]
            if p.replay:  # recorded on an earlier run: consume it instead of running it
                rec = p.replay.pop(0)
                if rec.request_id != req.request_id:
                    raise ValueError(
                        f"resume: prompt {req.prompt_index} recorded run {rec.request_id}, "
                        f"the settings now ask for {req.request_id}"
                    )
                self._commit(req, rows=0)
                self.update_from_output([rec])
                continue
            rows = self._rows_needed(req)
            if rows > cap:
                break
            cap -= rows
            self._commit(req, rows)
            out.runs.append(req)
        return out

    def update_from_output(self, outcomes: list[RunOutcome]) -> None:
        """Take finished runs back and update the budget."""
        for o in outcomes:
            p = self._p[o.prompt_index]
            req = p.in_flight
            if req is None or req.request_id != o.request_id:
                raise ValueError(f"unexpected outcome {o.request_id} for prompt {o.prompt_index}")
            if self.config.method == "eager" and o.any_correct is None:
                raise ValueError("method 'eager' needs labels: outcome any_correct is None")
            p.in_flight = None
            self._reserved -= p.rows
            p.rows = 0
            p.runs.append(o)
            p.solved = p.solved or bool(o.any_correct)
            p.answers += o.answers
            consensus = self.config.consensus
            p.agreed = p.agreed or o.consensus or (consensus is not None and consensus_reached(p.answers, consensus))
            if req.attempt == 0:
                self._first_pending -= 1
                p.first_hit_cap = o.num_sequences >= self.config.max_sequences
                if self.config.method in ("parallel", "eager-init"):
                    self._finish(o.prompt_index)
                elif self._pool is None and not self._may_get_more(p):
                    self._finish(o.prompt_index)
            else:
                p.extra_sequences += o.num_sequences
                p.share -= max(1, o.generated_tokens) if self._tokens else o.num_sequences
                if self._share_over(p):
                    self._close(o.prompt_index)
        self._advance()

    # ----------------------------------------------------------------- helpers
    @property
    def _tokens(self) -> bool:
        return self.config.token_budget is not None

    @property
    def _extra_cap(self) -> int:
        f = self.config.adapt_cap_factor if self.config.method == "eager-adapt" else self.config.label_cap_factor
        return f * self.config.max_sequences

    def _rows_needed(self, req: RunRequest) -> int:
        if req.parallel:
            return req.max_sequences
        return min(req.max_sequences, self.config.max_rows) if self.config.reserve_rows else 1

    @property
    def _recycling(self) -> bool:
        """Unspent shares go back to the pool and are split again in later rounds."""
        return (self.config.method == "eager" and self.config.recycle_unused) or self.config.consensus is not None

    def _may_get_more(self, p: _Prompt) -> bool:
        """Could this prompt (first run finished) be given extra budget?"""
        if p.done or p.agreed or p.extra_sequences >= self._extra_cap:
            return False
        if self.config.method == "eager-adapt":
            return p.first_hit_cap
        if self.config.method == "eager":
            return not p.solved
        return False

    def _share_over(self, p: _Prompt) -> bool:
        return (p.share <= 0 or p.extra_sequences >= self._extra_cap or p.agreed
                or (self.config.method == "eager" and p.solved))

    def _finish(self, i: int) -> None:
        if self._p[i].replay:
            raise ValueError(f"resume: prompt {i} has more recorded runs than the settings now give it")
        if not self._p[i].done:
            self._p[i].done = True
            self._new_done.append(i)

    def _close(self, i: int) -> None:
        """Prompt i's share is over: return what is left, finish it unless a later round may serve it."""
        p = self._p[i]
        if p.share > 0 and self._recycling:
            self._pool += p.share
        p.share = 0
        if not self._recycling or not self._may_get_more(p):
            self._finish(i)

    def _advance(self) -> None:
        """Hand out budget at the barrier and in later rounds; finish prompts nothing more can serve."""
        if self.config.method in ("parallel", "eager-init") or self._first_pending > 0:
            return
        if self._pool is None:
            if self._tokens:
                self._pool = max(0, self.config.token_budget - self.tokens_used())
            else:
                self._pool = max(0, self.config.max_sequences * self.num_prompts - self.sequences_used())
        busy = any(p.share > 0 or p.in_flight for p in self._p if not p.done)
        if busy:
            return
        eligible = [i for i, p in enumerate(self._p) if self._may_get_more(p)]
        another_round = self.rounds == 0 or self._recycling
        if not (eligible and self._pool > 0 and another_round):
            for i in eligible:
                self._finish(i)
            return
        if self._tokens:
            caps = [self._pool] * len(eligible)  # the sequence cap is enforced per run
        else:
            caps = [self._extra_cap - self._p[i].extra_sequences for i in eligible]
        self.rounds += 1
        for i, share in zip(eligible, split_evenly(self._pool, caps)):
            self._pool -= share
            self._p[i].share = share
            if share <= 0:
                self._finish(i)

    def _peek(self) -> Optional[RunRequest]:
        """The next run the policy wants (extra runs first, then first runs in prompt order); no state change."""
        for i, p in enumerate(self._p):
            if not p.done and p.in_flight is None and p.share > 0:
                return self._extra_request(i, p)
        if self._next_first >= self.num_prompts:
            return None
        i = self._next_first
        parallel = self.config.method == "parallel"
        return RunRequest(f"p{self._ids[i]}-r0", i, self.config.threshold, self.config.max_sequences, parallel, 0)

    def _commit(self, req: RunRequest, rows: int) -> None:
        p = self._p[req.prompt_index]
        if req.attempt == 0:
            self._next_first += 1
        p.theta = req.threshold
        p.in_flight = req
        p.rows = rows
        self._reserved += rows

    def _extra_request(self, i: int, p: _Prompt) -> RunRequest:
        """Extra run for prompt i: eager-adapt keeps theta; eager decays it (see the module docstring)."""
        theta = p.theta
        attempt = len(p.runs)
        if self.config.method == "eager":
            if attempt == 1:
                if not p.first_hit_cap or self.config.decay_capped_on_retry:
                    theta = self.config.threshold * self.config.retry_decay
            else:
                theta = p.theta * self.config.later_decay
        cap_left = self._extra_cap - p.extra_sequences
        max_seq = min(self.config.max_sequences, cap_left)
        if not self._tokens:
            max_seq = min(max_seq, p.share)
        return RunRequest(f"p{self._ids[i]}-r{attempt}", i, theta, max_seq, False, attempt)
