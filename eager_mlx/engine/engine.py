"""The batched EAGer engine: one forward pass per step for every row of every request.

A step, pipelined like mlx-lm's `generate_step`:

1. dispatch pass k+1 for all rows, fed with the tokens sampled in pass k
   (`mx.async_eval`: the device works while Python goes on);
2. read pass k's statistics (token, top-1, top-2, entropy, log-probs; one
   transfer, computed inside the graph) and make every decision in Python:
   finish rows, and branch rows whose entropy is above the threshold;
3. a branch keeps top-1 in the parent and gives top-2 to a new child row that
   inherits the parent's suffix KV (the prompt KV is shared, see kv.py). Pass
   k+1 was dispatched before the decision, so a small *repair pass* over just
   the affected rows (the new children, and parents whose sampled token was not
   top-1) rewrites their column before pass k+2. Branches are rare, so repairs
   cost little and no step ever waits on an extra host sync.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Optional, Union

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

from eager_mlx.engine.branching import BranchCandidate, BranchPolicy
from eager_mlx.config import EagerConfig, EngineConfig
from eager_mlx.engine.cache_kinds import leaf_specs
from eager_mlx.engine.kv import PassLayout, PromptGroup, SharedPrefixKV
from eager_mlx.engine.prefix import DEFAULT_MEMORY, PrefixStats, PrefixTree
from eager_mlx.engine.probe import check_model
from eager_mlx.engine.routing import install_attention
from eager_mlx.results import (
    BranchEvent,
    Event,
    FinishReason,
    RunFinished,
    RunPreempted,
    RunResult,
    SequenceFinished,
    SequenceResult,
    TokenEvent,
)
from eager_mlx.engine.sampling import (
    RowSampling,
    WIDE_CANDIDATES,
    Stat,
    child_key,
    entropy,
    request_key,
    row_seeds,
    sequence_key,
    token_stats,
)

__all__ = ["Engine", "branch_tokens"]

_TOKEN, _TOP1, _TOP2, _ENT, _LP, _LP1, _LP2, _ALT, _LP_ALT, _CUT = Stat  # the columns of token_stats


@dataclass(eq=False)
class _Request:
    id: str
    config: EagerConfig
    prompt: list[int]
    policy: BranchPolicy
    started: float
    key: int  # 64-bit: every sequence's randomness derives from it (sampling.request_key)
    first_sequence: int = 0  # rows without a parent take the keys of sequences first_sequence, +1, ...
    rows: list["_Row"] = field(default_factory=list)  # every row ever created, by sequence index
    generated: int = 0  # token productions: shared prefixes counted once
    branch_points: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {"full": 0, "memory": 0})  # branches not made, by why
    preempted: int = 0  # times its rows were taken for an older request's branch
    admitted: int = 0  # admission number: the most recently admitted request is preempted first
    aborted: bool = False
    done: bool = False

    def reset(self) -> None:
        """Back to the state before its first step (preempted: it runs again from its prompt)."""
        initial = self.config.max_sequences if self.config.parallel else 1
        self.policy = BranchPolicy(self.config, num_sequences=initial)
        self.rows, self.generated, self.branch_points = [], 0, 0
        self.skipped = {"full": 0, "memory": 0}


@dataclass(eq=False)
class _Row:
    request: _Request
    sequence: int
    start: int  # absolute KV column of its first generated token
    detok: object
    key: int  # 64-bit: its sampling noise at step t is a hash of (key, t) (sampling.row_seeds)
    parent: Optional[int] = None
    branch_step: Optional[int] = None
    tokens: list[int] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    think_done: bool = False
    finish: Optional[FinishReason] = None


@dataclass(frozen=True)
class _Pass:
    """A dispatched pass, not yet read: each row's statistics (`Stat` columns), and the logits and noise seeds they
    came from (left unevaluated unless a row's top-p nucleus reached past its candidates: it is sampled again)."""

    stats: mx.array
    logits: mx.array
    seeds: mx.array

    def take(self, index: mx.array) -> "_Pass":
        return _Pass(self.stats[index], self.logits[index], self.seeds[index])

    def join(self, other: "_Pass") -> "_Pass":
        return _Pass(mx.concatenate([self.stats, other.stats]), mx.concatenate([self.logits, other.logits]),
                     mx.concatenate([self.seeds, other.seeds]))


@dataclass(frozen=True)
class Fork:
    """A branch decided at a step: the parent keeps `parent` (token, log-prob), a new child row in
    `child_slot` takes `child`. Pass k+1 was dispatched before the decision, so the child's column is
    computed again (and the parent's, like any row's, when its token is not the one it was fed)."""

    parent_slot: int
    child_slot: int
    parent: tuple[int, float]
    child: tuple[int, float]
    entropy: float


class Engine:
    """Batched generation with entropy-aware branching over an mlx-lm model.

    Works with mlx-lm models whose layers keep plain, sliding-window or latent KV caches or
    recurrent state (see cache_kinds.py); any other model is refused at construction with a
    one-line reason (probe.py). See docs/architecture.md for the contract: `add`, `step`, `abort`, `has_work`.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_rows: int = EngineConfig.max_rows,
        seed: int = EngineConfig.seed,
        context_length: Optional[int] = None,
        token_events: bool = True,
        max_kv_memory: Optional[int] = None,
        preempt: bool = False,
        prefix_cache: bool = True,
        segment_ends: Optional[set[int]] = None,
        reserve: bool = False,
    ):
        """`max_kv_memory` (bytes): a fork is skipped (generation goes on) when the rows, run to
        their max_tokens, would then need more KV than this. `preempt`: when a due branch finds
        every row taken, the most recently admitted requests give their rows up and run again
        later (RunPreempted), so every branch decision is made; otherwise the branch is skipped.
        `prefix_cache`: keep prompt segments for later requests (prefix.py), in what `max_kv_memory`
        leaves free (else in prefix.DEFAULT_MEMORY); results are the same without it.
        `segment_ends`: tokens after which a prompt segment ends (default: the tokenizer's eos ids).
        `reserve`: a request starts only once its max_sequences rows are free and keeps them until it
        ends, so its branches never find the engine full and its result never depends on the load
        (the server; requests wait in order)."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        specs, nesting = leaf_specs(make_prompt_cache(model))
        install_attention(model)
        self.layer_kinds = check_model(model, specs, nesting)  # latent attention, sinks, shared KV (by leaf)
        self.model = model
        self.tokenizer = tokenizer
        self.max_rows = max_rows
        self.token_events = token_events
        self.max_kv_memory = max_kv_memory
        self.preempt = preempt
        self.reserve = reserve
        self._admissions = 0
        self.context_length = context_length or _context_length(model)
        self.eos = set(tokenizer.eos_token_ids or ())
        self._kv = SharedPrefixKV(specs, nesting, max_slots=max_rows, mla=self.layer_kinds.mla)
        ends = self.eos if segment_ends is None else segment_ends
        self._prefix = PrefixTree(model, specs, ends, enabled=prefix_cache)
        self.seed = seed
        self._requests: dict[str, _Request] = {}
        self._waiting: list[_Request] = []
        self._rows: list[_Row] = []  # active rows, in slot order
        self._pending: Optional[_Pass] = None  # the last pass, not yet read
        self._column = 0  # absolute column the next pass writes
        self._sampling_cache: Optional[tuple[tuple, RowSampling]] = None

    # ---- public -----------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self._rows or self._waiting)

    @property
    def free_rows(self) -> int:
        """Rows neither used nor held for waiting requests (with `reserve`: nor held for running ones)."""
        waiting = sum(self._rows_needed(r) for r in self._waiting)
        return self.max_rows - self._rows_held() - waiting

    def _rows_needed(self, req: _Request) -> int:
        """Rows a request takes when it starts: its first rows, or with `reserve` all it may ever use."""
        return req.config.max_sequences if self.reserve else req.policy.num_sequences

    def _rows_held(self) -> int:
        """Rows in use, or with `reserve` held by the running requests (max_sequences each)."""
        if not self.reserve:
            return len(self._rows)
        return sum(r.config.max_sequences for r in {row.request: None for row in self._rows})

    @property
    def num_rows(self) -> int:
        return len(self._rows)

    def kv_bytes(self) -> int:
        """Bytes of KV held now by the requests (prompts once, plus the row buffers); prefix_stats().bytes
        more are held by the prefix cache."""
        return self._kv.nbytes()

    def prefix_stats(self) -> PrefixStats:
        """The prefix cache's counts so far (hits, misses, prompt tokens saved and prefilled, memory): a copy."""
        return dataclasses.replace(self._prefix.stats)

    def add(self, request_id: str, prompt_tokens: list[int], config: EagerConfig,
            seed: Optional[int] = None, *, key_id: Optional[str] = None, first_sequence: int = 0) -> None:
        """Queue a request; it is prefilled on the next `step()`.

        Its random draws are a pure function of `seed` (None: of the engine's seed and
        `key_id`, default `request_id`), never of the other requests in the batch. Its rows
        without a parent draw as sequences `first_sequence`, +1, ... of that key: parallel
        samples taken in rounds (same `key_id`, consecutive offsets) are one stream of samples.
        """
        config.validate()
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if not prompt_tokens:
            raise ValueError("the prompt is empty: it needs at least one token")
        if self.context_length and len(prompt_tokens) >= self.context_length:
            raise ValueError(
                f"the prompt has {len(prompt_tokens)} tokens, the model's context is {self.context_length}"
            )
        initial = config.max_sequences if config.parallel else 1
        if initial > self.max_rows:
            raise ValueError(f"parallel sampling needs {initial} rows but the engine has max_rows={self.max_rows}")
        if self.reserve and config.max_sequences > self.max_rows:
            raise ValueError(f"max_sequences {config.max_sequences} is more than the engine's {self.max_rows} rows")
        policy = BranchPolicy(config, num_sequences=initial)
        if first_sequence < 0:
            raise ValueError(f"first_sequence must be >= 0, got {first_sequence}")
        key = request_key(self.seed, key_id or request_id) if seed is None else request_key(seed)
        req = _Request(request_id, config, list(prompt_tokens), policy, time.perf_counter(), key, first_sequence)
        self._requests[request_id] = req
        self._waiting.append(req)

    def abort(self, request_id: str) -> list[Event]:
        """Stop a request now; its rows are freed and its RunFinished is returned."""
        req = self._requests.get(request_id)
        if req is None or req.done:
            return []
        req.aborted = True
        if req in self._waiting:
            self._waiting.remove(req)
        return self._stop_rows([row for row in req.rows if row.finish is None], FinishReason.ABORTED)

    def finish_sequence(self, request_id: str, sequence: int, reason: str = FinishReason.PRUNED) -> list[Event]:
        """Stop one running sequence now (e.g. pruned for low confidence); its row is freed."""
        req = self._requests.get(request_id)
        if req is None or req.done:
            return []
        return self._stop_rows([r for r in req.rows if r.sequence == sequence and r.finish is None], reason)

    def _stop_rows(self, rows: list[_Row], reason: str) -> list[Event]:
        events: list[Event] = []
        for row in rows:
            row.finish = FinishReason(reason)
            events.append(SequenceFinished(row.request.id, row.sequence, reason))
        self._remove_finished()
        events.extend(self._finish_requests())
        return events

    def step(self) -> list[Event]:
        """Advance every row by one token; returns what happened."""
        self._admit()  # requests added since the last step join this one's pass
        if self._pending is None:
            return []
        read = self._pending
        # 1. Dispatch the next pass with the sampled tokens, before reading anything.
        nxt = self._forward(read.stats[:, _TOKEN].astype(mx.int32), None, self._column)
        mx.async_eval(nxt.stats)
        # 2. Read this pass's statistics (the one host sync of the step); rows whose nucleus was cut draw again.
        stats = np.asarray(read.stats)
        fed = stats[:, _TOKEN].astype(np.int64)
        cut = np.flatnonzero(stats[:, _CUT])
        if len(cut):
            stats = stats.copy()
            stats[cut] = self._exact_nucleus(read, cut)
        # 3. Decide: tokens, branches, finishes; then fork, and repair the new children and every live row not
        # fed the token it took (a fork's parent, a redrawn row).
        events, forks = self._decide(stats)  # children are in self._rows already
        repairs = {f.child_slot: f.child[0] for f in forks}
        for s, token in enumerate(fed):
            row = self._rows[s]
            if s not in repairs and row.finish is None and row.tokens[-1] != token:
                repairs[s] = row.tokens[-1]
        if forks:
            self._kv.reserve(len(self._rows), self._column, min(r.start for r in self._rows))
            for f in forks:
                self._kv.copy_row(f.parent_slot, f.child_slot, self._rows[f.child_slot].start, self._column)
        if repairs:
            nxt = self._repair(nxt, sorted(repairs.items()))
        self._column += 1
        self._pending = nxt
        self._remove_finished()
        events.extend(self._finish_requests())
        self._admit()
        if self._pending is not None:
            mx.async_eval(self._pending.stats)
        return events

    # ---- passes -------------------------------------------------------------
    def _forward(self, tokens: mx.array, slots: Optional[list[int]], column: int) -> _Pass:
        """One decode pass writing `column` for the given row slots (None: all active rows)."""
        rows = self._rows if slots is None else [self._rows[s] for s in slots]
        n = len(rows)
        lo = min(r.start for r in self._rows)
        self._kv.reserve(len(self._rows), column, lo)
        positions = [len(r.request.prompt) + column - r.start for r in rows]
        offsets = mx.array(positions, dtype=mx.int32)
        starts = mx.array([r.start for r in rows], dtype=mx.int32)
        # Columns before a row's start are hidden; when every row starts at `lo` none are.
        mask = None if all(r.start == lo for r in rows) else mx.arange(lo, column + 1)[None] >= starts[:, None]
        groups, order = _groups(rows, positions)
        inverse = None if order is None else mx.array(np.argsort(order), dtype=mx.int32)
        layout = PassLayout(
            slots=None if slots is None else mx.array(slots, dtype=mx.int32),
            n=n,
            column=column,
            offsets=offsets,
            lo=lo,
            mask=mask,
            groups=groups,
            inverse=inverse,
            starts=starts,
            solo=(rows[0].request.id, rows[0].sequence, rows[0].start) if slots is None and n == 1 else None,
        )
        caches = self._kv.begin_pass(layout)
        try:
            logits = self.model(tokens[:, None], cache=caches)[:, -1, :]
        finally:
            self._kv.end_pass()
        return self._pass(logits, rows, [column + 1 - r.start for r in rows])  # the step each row samples

    def _pass(self, logits: mx.array, rows: list[_Row], steps: list[int]) -> _Pass:
        """The statistics of `rows` sampling their step `steps` from `logits`, with what they came from."""
        configs = tuple(r.request.config.sampling for r in rows)
        if self._sampling_cache is None or self._sampling_cache[0] != configs:
            self._sampling_cache = (configs, RowSampling.from_configs(configs))
        seeds = row_seeds([r.key for r in rows], steps)
        return _Pass(self._stats(logits, rows, self._sampling_cache[1], seeds), logits, seeds)

    def _exact_nucleus(self, read: _Pass, slots: np.ndarray) -> np.ndarray:
        """The statistics of the rows in `slots` (their top-p nucleus reached past their candidates) drawn again
        with WIDE_CANDIDATES, then the whole vocabulary, as candidates: the same noise, so the draw is from the
        exact nucleus."""
        vocab = read.logits.shape[-1]
        out: dict[int, np.ndarray] = {}
        todo = [int(s) for s in slots]
        for width in (min(WIDE_CANDIDATES, vocab), vocab):
            index = mx.array(todo, dtype=mx.int32)
            rows = [self._rows[s] for s in todo]
            sampling = RowSampling.from_configs([r.request.config.sampling for r in rows], candidates=width)
            stats = np.asarray(self._stats(read.logits[index], rows, sampling, read.seeds[index]))
            out.update((s, stats[j]) for j, s in enumerate(todo) if not stats[j, _CUT])
            todo = [s for j, s in enumerate(todo) if stats[j, _CUT]]
            if not todo:
                break
        return np.stack([out[int(s)] for s in slots])

    def _stats(self, logits: mx.array, rows: list[_Row], sampling: RowSampling, seeds: mx.array) -> mx.array:
        # Requests may differ in K or full entropy: compute each kind once, pick per row.
        kinds = [None if r.request.config.full_entropy else r.request.config.entropy_top_k for r in rows]
        vocab = logits.shape[-1]
        kinds = [None if k is None or k >= vocab else k for k in kinds]
        unique = list(dict.fromkeys(kinds))
        alt = any(r.request.config.branch_rule != "top2" for r in rows)
        out = token_stats(logits, sampling, seeds, unique[0], alt)
        if len(unique) > 1:  # entropy() gives bitwise what token_stats gives for the same kind
            logits = logits.astype(mx.float32)
            per_kind = mx.stack([entropy(logits, k) for k in unique])  # (kinds, rows)
            which = mx.array([unique.index(k) for k in kinds], dtype=mx.int32)
            h = per_kind[which, mx.arange(len(rows))]
            out = mx.concatenate([out[:, :_ENT], h[:, None], out[:, _ENT + 1 :]], axis=1)
        return out

    def _prefill(self, req: _Request) -> mx.array:
        """Prefill the request's prompt (what the prefix cache holds of it is reused); its last logits."""
        state, logits = self._prefix.prefill(req.prompt)
        self._kv.prompts[req.id] = state
        budget = DEFAULT_MEMORY if self.max_kv_memory is None else self.max_kv_memory - self._kv.nbytes()
        self._prefix.trim(max(0, budget))
        return logits

    def _admit(self) -> None:
        """Prefill waiting requests that fit and append their first rows."""
        while self._waiting:
            req = self._waiting[0]
            initial = req.policy.num_sequences
            if self._rows_held() + self._rows_needed(req) > self.max_rows:
                break
            self._waiting.pop(0)
            self._admissions += 1
            req.admitted = self._admissions
            logits = self._prefill(req)
            rows = [self._new_row(req, parent=None) for _ in range(initial)]
            first = self._pass(mx.repeat(logits, initial, axis=0), rows, [0] * initial)
            self._rows.extend(rows)
            self._kv.add_rows(req.id, initial)
            self._pending = first if self._pending is None else self._pending.join(first)

    def _new_row(self, req: _Request, parent: Optional[_Row]) -> _Row:
        detok = self.tokenizer.detokenizer
        detok.reset()
        if parent is None:
            key = sequence_key(req.key, req.first_sequence + len(req.rows))
        else:
            key = child_key(parent.key, len(parent.tokens))
        row = _Row(req, len(req.rows), self._column, detok, key)
        if parent is not None:
            row.start = parent.start
            row.parent = parent.sequence
            row.branch_step = len(parent.tokens)
            row.tokens = list(parent.tokens)
            row.entropies = list(parent.entropies)
            row.logprobs = list(parent.logprobs)
            for t in parent.tokens:
                detok.add_token(t)
            row.text = parent.text
            row.think_done = parent.think_done
        req.rows.append(row)
        return row

    def _repair(self, nxt: _Pass, repairs: list[tuple[int, int]]) -> _Pass:
        """Re-run the just-dispatched column for rows whose token changed and for new children.

        Returns the pass for all rows: `nxt` for untouched rows, the repair's otherwise.
        """
        slots = [s for s, _ in repairs]
        tokens = mx.array([t for _, t in repairs], dtype=mx.int32)
        fixed = self._forward(tokens, slots, self._column)
        select = np.arange(len(self._rows))  # children's slots are past len(nxt): always repaired
        for j, s in enumerate(slots):
            select[s] = len(nxt.stats) + j
        return nxt.join(fixed).take(mx.array(select, dtype=mx.int32))

    # ---- decisions ------------------------------------------------------------
    def _decide(self, stats: np.ndarray) -> tuple[list[Event], list["Fork"]]:
        """Apply the read statistics to every row; returns the events and the forks made.

        Requests are visited in the order they were added and a request's rows in sequence
        (creation) order, so children are numbered, and the M cap taken, independently of
        batch slots. When the branches due need more rows than the engine has, `preempt` frees
        the rows of the most recently admitted requests first (else the branches that do not
        fit are skipped). A child takes a preempted row's slot, else a slot after the current rows.
        """
        due = self._due(stats)
        victims = self._victims(due) if self.preempt else []
        events = self._preempt(victims)
        spare = sorted(s for v in victims for s in due[v][0])  # their slots, for the children
        forks: list[Fork] = []
        for req, (slots, branching) in due.items():
            if req in victims:
                continue
            made_before = req.branch_points
            for s in slots:
                row, st = self._rows[s], stats[s]
                token, lp = int(st[_TOKEN]), float(st[_LP])
                if row.sequence in branching:
                    decision = self._fork_decision(s, st, req.config.branch_rule, spare[0] if spare else None)
                    if isinstance(decision, Fork):
                        if spare and decision.child_slot == spare[0]:
                            spare.pop(0)
                        self._make_child(decision, events)
                        forks.append(decision)
                        token, lp = decision.parent
                    else:
                        req.skipped[decision] += 1
                        req.policy.veto()
                self._append(row, token, float(st[_ENT]), lp, events)
            req.policy.end_step(req.branch_points > made_before)
        return events, forks

    def _due(self, stats: np.ndarray) -> dict[_Request, tuple[list[int], set[int]]]:
        """Per request with rows: its slots in sequence order and the sequences its policy branches now."""
        slots_of: dict[_Request, list[int]] = {}
        for slot, row in enumerate(self._rows):
            slots_of.setdefault(row.request, []).append(slot)
        due: dict[_Request, tuple[list[int], set[int]]] = {}
        for req in self._requests.values():
            slots = sorted(slots_of.get(req, ()), key=lambda s: self._rows[s].sequence)
            if slots:
                cands = [BranchCandidate(self._rows[s].sequence, float(stats[s, _ENT]), self._rows[s].think_done)
                         for s in slots]
                due[req] = (slots, set(req.policy.decide(cands)))
        return due

    def _victims(self, due: dict[_Request, tuple[list[int], set[int]]]) -> list[_Request]:
        """The most recently admitted requests to preempt so that every branch due has a row.

        The oldest request always keeps its rows (it needs at most M <= max_rows), so every request
        finishes eventually.
        """
        need = len(self._rows) + sum(len(b) for _, b in due.values())
        victims: list[_Request] = []
        for req in sorted(due, key=lambda r: r.admitted, reverse=True):
            if need <= self.max_rows:
                break
            slots, branching = due[req]
            need -= len(slots) + len(branching)
            victims.append(req)
        return victims

    def _preempt(self, victims: list[_Request]) -> list[Event]:
        """Give up the victims' rows; they wait at the head of the queue and run again from their prompt."""
        events: list[Event] = []
        for req in victims:
            for row in req.rows:
                if row.finish is None:
                    row.finish = FinishReason.PREEMPTED
            events.append(RunPreempted(req.id, req.generated))
            self._kv.drop_prompt(req.id)
            req.preempted += 1
            req.reset()
        self._waiting[:0] = sorted(victims, key=lambda r: r.admitted)  # the oldest of them first
        return events

    def _fork_decision(self, slot: int, st: np.ndarray, rule: str, spare: Optional[int]) -> Union["Fork", str]:
        """The fork of the row in `slot` (its child takes a preempted row's `spare` slot, else a new one), or
        why it cannot be made: "full" (no row left) or "memory" (past max_kv_memory)."""
        if spare is None and len(self._rows) >= self.max_rows:
            return "full"
        if self._over_memory(len(self._rows) + (0 if spare is not None else 1)):
            return "memory"
        parent, child = branch_tokens(st, rule)
        child_slot = spare if spare is not None else len(self._rows)
        return Fork(slot, child_slot, parent, child, float(st[_ENT]))

    def _make_child(self, fork: "Fork", events: list[Event]) -> None:
        """Create the child row of `fork` in its slot (it inherits the parent's tokens so far)."""
        row = self._rows[fork.parent_slot]
        req = row.request
        child = self._new_row(req, parent=row)
        if fork.child_slot == len(self._rows):
            self._rows.append(child)
        else:
            self._rows[fork.child_slot] = child
        req.branch_points += 1
        events.append(BranchEvent(req.id, row.sequence, child.sequence, len(row.tokens), fork.entropy,
                                  fork.parent[0], fork.child[0]))
        self._append(child, fork.child[0], fork.entropy, fork.child[1], events)

    def _over_memory(self, slots: int) -> bool:
        """Would `slots` rows, each run to its max_tokens, need more KV than max_kv_memory?"""
        if self.max_kv_memory is None:
            return False
        lo = min(r.start for r in self._rows)
        horizon = max(r.start + r.request.config.max_tokens for r in self._rows)
        return self._kv.bytes_after(slots, max(horizon, self._column), lo) > self.max_kv_memory

    def _append(self, row: _Row, token: int, entropy: float, lp: float, events: list[Event]) -> None:
        req, cfg = row.request, row.request.config
        if not math.isfinite(lp):  # any NaN or inf in the row's logits makes its log-sum-exp, so lp, non-finite
            row.finish = FinishReason.NONFINITE
            events.append(SequenceFinished(req.id, row.sequence, row.finish))
            return
        req.generated += 1
        row.entropies.append(entropy)
        row.logprobs.append(lp)
        if token in self.eos:
            row.finish = FinishReason.EOS
        else:
            row.tokens.append(token)
            before = len(row.text)
            row.detok.add_token(token)
            row.text = row.detok.text
            if self.token_events:
                events.append(TokenEvent(req.id, row.sequence, token, row.text[before:], entropy, lp))
            tail = row.text[max(0, before - 64) :]
            if cfg.think_end and not row.think_done and cfg.think_end in tail:
                row.think_done = True
            for stop in cfg.stop:
                if stop in tail:
                    row.finish = FinishReason.STOP
                    break
            if row.finish is None and (
                len(row.tokens) >= cfg.max_tokens
                or (self.context_length and len(req.prompt) + len(row.tokens) >= self.context_length)
            ):
                row.finish = FinishReason.LENGTH
        if row.finish is not None:
            events.append(SequenceFinished(req.id, row.sequence, row.finish))

    def _remove_finished(self) -> None:
        """Drop finished rows: the last live rows move into the freed slots (one suffix copy each)."""
        keep = [i for i, r in enumerate(self._rows) if r.finish is None]
        if len(keep) == len(self._rows):
            return
        self._kv.drop_solo()  # a row alone that finished (any other rows left the solo path at their fork)
        n = len(keep)
        holes = [i for i in range(n) if self._rows[i].finish is not None]
        movers = [i for i in keep if i >= n]
        select = list(range(n))
        for hole, src in zip(holes, movers):
            self._kv.copy_row(src, hole, self._rows[src].start, self._column)
            select[hole] = src
        self._rows = [self._rows[i] for i in select]
        self._kv.truncate(n)
        if self._pending is not None:
            self._pending = self._pending.take(mx.array(select, dtype=mx.int32)) if n else None

    def _finish_requests(self) -> list[Event]:
        events: list[Event] = []
        live = {r.request.id for r in self._rows}
        for req in list(self._requests.values()):
            if req.done or req.id in live or req in self._waiting or not (req.rows or req.aborted):
                continue
            req.done = True
            self._kv.drop_prompt(req.id)
            events.append(RunFinished(req.id, self._result(req)))
            del self._requests[req.id]
        if not self._rows:
            self._pending = None
            self._kv.release()  # a long-lived engine (server, app) holds no KV while idle
        return events

    def _result(self, req: _Request) -> RunResult:
        seqs = []
        for row in req.rows:
            text = self.tokenizer.decode(row.tokens)
            if row.finish == FinishReason.STOP:
                cut = min((text.find(s) for s in row.request.config.stop if s in text), default=-1)
                text = text[:cut] if cut >= 0 else text
            seqs.append(
                SequenceResult(
                    index=row.sequence,
                    token_ids=row.tokens,
                    text=text,
                    finish_reason=row.finish or FinishReason.ABORTED,
                    parent=row.parent,
                    branch_step=row.branch_step,
                    entropies=row.entropies,
                    logprobs=row.logprobs,
                )
            )
        return RunResult(
            request_id=req.id,
            sequences=seqs,
            prompt_tokens=len(req.prompt),
            generated_tokens=req.generated,
            answer=None,  # answers are extracted and voted by the caller (eager_mlx.answers.with_answers)
            threshold=req.config.threshold,
            elapsed_s=time.perf_counter() - req.started,
            branch_points=req.branch_points,
            info={
                "branches_skipped_full": req.skipped["full"],
                "branches_skipped_memory": req.skipped["memory"],
                "parallel": req.config.parallel,
            },
        )


def branch_tokens(st: np.ndarray, rule: str) -> tuple[tuple[int, float], tuple[int, float]]:
    """(token, log-prob) of the parent and of the child at a branch, from a row's statistics (`Stat`).

    top2 (the paper): top-1 / top-2. sample: top-1 / a draw from the rest (the sampled token unless it is
    top-1, else the runner-up under the same noise). keep: the sampled token / the runner-up.
    """
    top1 = int(st[_TOP1]), float(st[_LP1])
    sampled = int(st[_TOKEN]), float(st[_LP])
    runner_up = int(st[_ALT]), float(st[_LP_ALT])
    if rule == "top2":
        return top1, (int(st[_TOP2]), float(st[_LP2]))
    if rule == "sample":
        return top1, (runner_up if sampled[0] == top1[0] else sampled)
    if rule == "keep":
        return sampled, runner_up
    raise ValueError(f"unknown branch rule {rule!r}")


def _groups(rows: list[_Row], offsets: list[int]) -> tuple[list[PromptGroup], Optional[list[int]]]:
    """Group pass positions by request; `order` is the concatenation order (None if already grouped).

    A request's rows are in lockstep, so they share one rope offset (`offsets` is per row).
    """
    positions: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        positions.setdefault(r.request.id, []).append(i)
    if len(positions) == 1:
        return [PromptGroup(rows[0].request.id, None, offsets[0])], None
    order = [i for pos in positions.values() for i in pos]
    groups = [PromptGroup(rid, mx.array(pos, dtype=mx.int32), offsets[pos[0]]) for rid, pos in positions.items()]
    return groups, (None if order == list(range(len(rows))) else order)


def _context_length(model) -> Optional[int]:
    args = getattr(model, "args", None)
    return getattr(args, "max_position_embeddings", None) if args is not None else None
