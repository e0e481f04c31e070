"""The evaluation loop: scheduler -> engine -> grading -> one JSONL record per prompt.

A run directory (eager_mlx/evaluation/rundir.py) holds ``manifest.json``
(model, dataset and its hash, every setting, package versions, seed, and at the
end the summary) and ``results.jsonl``: one record per prompt, appended,
flushed and fsynced as soon as the scheduler says the prompt is complete.
``runs.jsonl`` journals every finished run the same way (prompts of
eager-adapt / eager wait for the budget barrier before they are complete). A
run killed at any moment loses at most the runs in flight; ``resume=True``
needs the manifest and the same settings, reads the journals back (a torn last
line, from a kill mid-write, is cut off), replays the recorded runs into the
scheduler so the budget decisions come out as before, and runs only what is
missing. A run's random draws are keyed on the engine's seed and its request id
``p{index}-r{attempt}``, where index is the prompt's place in the whole dataset
(also in a shard), and never on the batch: a resumed, sharded or
differently batched (``max_rows``) evaluation writes the same records as an
uninterrupted one (docs/architecture.md, "What is reproducible").

Every prompt is encoded before anything runs. A prompt the engine cannot take
(as long as the model's context or longer, or no tokens) is not run: its record
says ``skipped`` (the reason), has no runs and ``metrics`` None, and the
scheduler never sees it (the budget is M x the prompts that run). Metrics are
over the prompts that ran; the manifest's ``skipped`` counts the others.

A record: index, id, question, gold, the runs (request id, theta, M, sequences,
tokens, ...), every sequence (answer, how it was extracted, correct, tokens,
finish reason, parent, text unless ``save_text`` is off), the prompt's metrics,
its wall time and ``t_done`` (seconds since the run began, summed over
sessions; the run's wall time is the largest).

Beyond the paper (docs/beyond.md): every sequence records its ``confidence``
(eager_mlx/adaptive/confidence.py; None for pruned / aborted ones), and with
``confidence_vote`` the record holds ``weighted_vote`` (answer, correct).
``SchedulerConfig.consensus`` stops prompts whose answers agree;
``consensus_abort`` and ``confidence.prune_percentile`` act on running rows
through an OnlineMonitor (the engine must emit TokenEvents).
"""
from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from eager_mlx.answers import with_answers
from eager_mlx.adaptive.confidence import NATURAL_FINISHES, ConfidenceConfig, sequence_confidence, weighted_vote_record
from eager_mlx.config import EagerConfig, EngineConfig
from eager_mlx.engine.protocol import EngineLike
from eager_mlx.evaluation.data import Dataset
from eager_mlx.evaluation.grading import DEFAULT_FALLBACKS, extract_answer, grade
from eager_mlx.evaluation.metrics import PromptMetrics, RunMetrics, prompt_metrics, run_metrics
from eager_mlx.adaptive.online import OnlineMonitor
from eager_mlx.adaptive.options import AdaptiveOptions
from eager_mlx.results import RunFinished, RunPreempted, RunResult
from eager_mlx.evaluation.rundir import (JOURNAL, MANIFEST, RESULTS, EvalError, Journal, load_run, prepare_run_dir,
                                         read_manifest, read_records, run_lock, write_json_atomic)
from eager_mlx.evaluation.policies import make_scheduler
from eager_mlx.evaluation.scheduler import RunOutcome, RunRequest, SchedulerConfig, prompt_of_run
from eager_mlx.evaluation.store import STORE_FORMAT, RunStore

__all__ = [
    "EvalError",
    "EvalSettings",
    "EvalProgress",
    "Occupancy",
    "EvalResult",
    "Evaluation",
    "MANIFEST",
    "RESULTS",
    "JOURNAL",
    "evaluate",
    "evaluate_model",
    "read_records",
    "load_run",
    "record_metrics",
    "evaluated",
    "package_versions",
]

FORMAT = 1


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides an evaluation besides the model and the data."""

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    eager: EagerConfig = field(default_factory=EagerConfig)  # threshold, M, parallel set per run
    seed: int = EngineConfig.seed
    ks: tuple[int, ...] = (1,)  # unbiased pass@k to report
    answer_fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS
    grade_timeout: float = 5.0
    save_text: bool = True
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)  # per-sequence confidence, pruning
    confidence_vote: bool = False  # records carry the confidence-weighted vote
    consensus_abort: bool = False  # abort a prompt's run in flight once its answers agree (scheduler.consensus)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def build(cls, eager: EagerConfig, options: AdaptiveOptions, *, method: str, max_rows: int, seed: int,
              reserve_rows: bool = False, token_budget: Optional[int] = None, policy: str = "hit-m",
              budget: float = 1.0, first_samples: Optional[int] = None, **fields: Any) -> "EvalSettings":
        """Settings from a request config (its threshold and M start every prompt) and the adaptive options;
        `fields`: ks, answer_fallbacks, grade_timeout, save_text."""
        scheduler = SchedulerConfig(method=method, max_sequences=eager.max_sequences, threshold=eager.threshold,
                                    max_rows=max_rows, reserve_rows=reserve_rows, token_budget=token_budget,
                                    consensus=options.consensus, policy=policy, budget=budget,
                                    first_samples=first_samples)
        return cls(scheduler=scheduler, eager=eager, seed=seed, confidence=options.confidence,
                   confidence_vote=options.confidence_vote, consensus_abort=options.consensus_abort, **fields)


@dataclass
class Occupancy:
    """Rows in flight per engine step while work remains: how full the batch was kept."""

    steps: int = 0
    rows: int = 0  # summed over steps
    preempted_tokens: int = 0  # tokens of runs the engine preempted and ran again (work done twice)

    def add(self, rows: int) -> None:
        self.steps += 1
        self.rows += rows

    def counts(self) -> dict:
        """The counters, journaled with every finished run so a resume starts from them (a killed session's
        steps up to its last finished run are kept)."""
        return {"steps": self.steps, "rows": self.rows, "preempted_tokens": self.preempted_tokens}

    @classmethod
    def resumed(cls, saved: list) -> "Occupancy":
        """The counters of earlier sessions: the furthest of `saved` (journal entries' and the manifest's)."""
        counts = max((c for c in saved if isinstance(c, dict)), key=lambda c: c.get("steps", 0), default={})
        return cls(**{k: counts.get(k, 0) for k in ("steps", "rows", "preempted_tokens")})

    def summary(self, max_rows: int) -> dict:
        mean = self.rows / self.steps if self.steps else 0.0
        return {"steps": self.steps, "rows": self.rows, "max_rows": max_rows, "mean_rows": mean,
                "mean_occupancy": mean / max_rows, "preempted_tokens": self.preempted_tokens}


@dataclass
class EvalProgress:
    """Reported after each prompt is written and each run comes back (under a wave policy a prompt is written
    only once the pool is spent, so for most of such an evaluation the runs are the progress)."""

    done: int
    total: int
    pass_at_k: float  # running mean over the prompts done
    tokens: int  # of the prompts done
    sequences: int  # of the prompts done
    index: Optional[int]  # the prompt just written (None: a run came back, or the initial report)
    runs: int = 0  # runs back so far, earlier sessions' included
    run_tokens: int = 0  # tokens those runs generated


@dataclass
class EvalResult:
    run_dir: Path
    metrics: RunMetrics
    records: list[dict]
    resumed: int  # prompts taken from an earlier session
    skipped: int = 0  # prompts not run (their records say why); not in the metrics


def package_versions() -> dict[str, Optional[str]]:
    """Versions of the packages that decide results, plus Python and the platform."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Optional[str]] = {}
    for name in ("eager-mlx", "mlx", "mlx-lm", "math-verify", "numpy", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["python"] = sys.version.split()[0]
    out["platform"] = platform.platform()
    return out


def record_metrics(record: dict) -> PromptMetrics:
    """The PromptMetrics stored in a record."""
    return PromptMetrics(**record["metrics"])


def evaluated(records: Sequence[dict]) -> list[dict]:
    """The records of the prompts that ran (a skipped prompt's record has no metrics)."""
    return [r for r in records if "skipped" not in r]


def skip_reason(prompt_tokens: Sequence[int], context_length: Optional[int]) -> Optional[str]:
    """Why the engine cannot take this prompt (its own check, made before anything runs), or None."""
    if not prompt_tokens:
        return "the prompt encodes to no tokens"
    if context_length and len(prompt_tokens) >= context_length:
        return f"the prompt has {len(prompt_tokens)} tokens, the model's context is {context_length}"
    return None


def _voters(sequences: list[dict], run: str) -> tuple[Optional[str], ...]:
    """Answers of a run's sequences that finished by themselves (the ones consensus counts)."""
    return tuple(s["answer"] for s in sequences if s["run"] == run and s["finish_reason"] in NATURAL_FINISHES)


def _outcome(run: dict, sequences: list[dict], slot: int) -> RunOutcome:
    """A recorded run (a record's or the journal's) as the scheduler's outcome; `slot`: the scheduler's number of
    the prompt."""
    rid = run["request_id"]
    cut = sum(1 for s in sequences if s["run"] == rid and s["finish_reason"] == "length")
    return RunOutcome(rid, slot, run["num_sequences"], run["generated_tokens"], run["any_correct"],
                      _voters(sequences, rid), run.get("consensus_abort", False), run.get("branch_points", 0),
                      run.get("mean_entropy", 0.0), cut)


def _outcomes(record: dict, slot: int) -> list[RunOutcome]:
    """The recorded runs of a prompt for the scheduler, which numbers the prompts that run (`slot`)."""
    return [_outcome(r, record["sequences"], slot) for r in record["runs"]]


def _mean_entropy(result: RunResult) -> float:
    """Mean token entropy over the positions the run generated (a child's inherited prefix counted once)."""
    own = [h for s in result.sequences for h in s.entropies[s.branch_step or 0:]]
    return sum(own) / len(own) if own else 0.0


@dataclass
class _PromptState:
    started: float  # on the run's clock (seconds since the run began, over all sessions)
    runs: list[dict] = field(default_factory=list)
    sequences: list[dict] = field(default_factory=list)


def _monitor(engine: Any, settings: EvalSettings) -> Optional[OnlineMonitor]:
    """The OnlineMonitor the settings need (pruning and/or consensus abort), or None."""
    if settings.consensus_abort and settings.scheduler.consensus is None:
        raise ValueError("consensus_abort needs a consensus rule (scheduler.consensus)")
    if settings.confidence.prune_percentile is None and not settings.consensus_abort:
        return None
    return OnlineMonitor(
        engine, confidence=settings.confidence,
        consensus=settings.scheduler.consensus if settings.consensus_abort else None,
        prompt_of=prompt_of_run,
        extract=lambda text: extract_answer(text, settings.answer_fallbacks)[0],
    )


def _prompt_parts(dataset: Dataset) -> dict:
    """Few-shot exemplars and a system prompt, when the prompts have them (older manifests have neither key)."""
    return {k: v for k, v in (("fewshot", len(dataset.fewshot)), ("system", dataset.system)) if v}


def _manifest(dataset: Dataset, settings: EvalSettings, model: str, extra: Optional[dict]) -> dict:
    return {
        "format": FORMAT,
        "engine_format": STORE_FORMAT,  # what the engine's samples are a function of (a resume must not mix two)
        "model": model,
        "method": settings.scheduler.method,
        "dataset": {"name": dataset.name, "source": dataset.source, "hash": dataset.hash, "size": len(dataset),
                    "template": dataset.template, **_prompt_parts(dataset)},
        "settings": settings.to_dict(),
        "seed": settings.seed,
        "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished": False,
        **(extra or {}),
    }


class Evaluation:
    """One evaluation of a dataset: scheduler -> engine -> grading -> one record per prompt (see the module
    docstring). `run()` reads like `Engine.step()`: start runs, step, take finished runs, write records.

    The scheduler numbers only the prompts that run: its prompt `slot` is prompt `runnable[slot]` of `dataset`;
    request ids carry the prompt's index in the whole dataset either way (`prompt_ids`)."""

    def __init__(self, engine: EngineLike, encode: Callable[[str], list[int]], dataset: Dataset,
                 settings: EvalSettings, run_dir: Path, *, model: str = "", resume: bool = False,
                 progress: Optional[Callable[[EvalProgress], None]] = None, extra_manifest: Optional[dict] = None,
                 on_run: Optional[Callable[[RunResult], None]] = None, store: Optional[RunStore] = None):
        if len(dataset) == 0:
            raise EvalError("the dataset is empty")
        ids = [e.index for e in dataset.examples]  # in the whole dataset: run ids (random keys) survive sharding
        if len(set(ids)) != len(ids):
            raise EvalError("the dataset's examples have duplicate indices: run ids (and random keys) would collide")
        try:
            settings.scheduler.validate()
            settings.eager.validate()
            settings.confidence.validate()
            self.monitor = _monitor(engine, settings)
        except ValueError as e:
            raise EvalError(str(e)) from None
        self.engine, self.encode, self.dataset, self.settings = engine, encode, dataset, settings
        self.run_dir, self.resume, self.progress, self.on_run = Path(run_dir), resume, progress, on_run
        self.manifest = _manifest(dataset, settings, model, extra_manifest)
        records, journal = prepare_run_dir(self.run_dir, self.manifest, resume)
        self.prompts, self.skipped = self._encode_prompts()
        self.runnable = [i for i in range(len(dataset)) if i not in self.skipped]
        self.slot = {i: j for j, i in enumerate(self.runnable)}
        self.sched = make_scheduler(len(self.runnable), settings.scheduler, prompt_ids=[ids[i] for i in self.runnable])
        self.store = None if self.monitor is not None else store  # an online monitor's stops depend on timing
        self.ready: list[RunResult] = []  # runs read from the store, not yet taken back
        self.from_store: set[str] = set()
        self.resumed = len(records)
        self.by_index = {r["index"]: r for r in records}  # complete (or skipped) prompts
        self.states: dict[int, _PromptState] = {}  # prompts with runs, not yet complete
        self.requests: dict[str, RunRequest] = {}  # runs in flight
        self.grades: dict[tuple[int, str], bool] = {}
        self._replay(records, journal)
        ran = evaluated(records)
        self.totals = {"ran": len(ran), "tokens": sum(r["metrics"]["generated_tokens"] for r in ran),
                       "sequences": sum(r["metrics"]["num_sequences"] for r in ran),
                       "passed": sum(r["metrics"]["pass_at_k"] for r in ran)}
        runs = [run for r in ran for run in r["runs"]] + [run for st in self.states.values() for run in st.runs]
        self.run_totals = {"runs": len(runs), "tokens": sum(run["generated_tokens"] for run in runs)}
        self._offset = max([r["t_done"] for r in records] + [e["t"] for e in journal], default=0.0)
        old = read_manifest(self.run_dir / MANIFEST).get("occupancy") if resume else None
        self.occupancy = Occupancy.resumed([old] + [e.get("occupancy") for e in journal])
        self._t0 = time.perf_counter()

    def run(self) -> EvalResult:
        """Run what is missing and return the whole evaluation's result."""
        self._report(None)
        self._results, self._journal = Journal(self.run_dir / RESULTS), Journal(self.run_dir / JOURNAL)
        self._write_skipped()
        try:
            while not self.sched.done:
                self._start_runs()
                self._write_complete()  # replays can complete prompts without running anything
                if self.ready:  # read from the store: taken back like runs the engine finished
                    self.sched.update_from_output([self._take_finished(r) for r in self._pop_ready()])
                    self._write_complete()
                    continue
                if self.sched.done:
                    break
                if not self.engine.has_work:
                    raise EvalError("internal error: the scheduler is waiting but the engine has nothing to run")
                events = self.engine.step()
                self.occupancy.add(self.engine.num_rows)
                self.occupancy.preempted_tokens += sum(e.tokens for e in events if isinstance(e, RunPreempted))
                if self.monitor is not None:
                    events += self.monitor.feed(events)
                outcomes = [self._take_finished(ev.result) for ev in events if isinstance(ev, RunFinished)]
                if outcomes:
                    self.sched.update_from_output(outcomes)
                    self._write_complete()
        except ValueError as e:  # scheduler / engine rejected settings or a resume mismatch
            raise EvalError(str(e).splitlines()[0]) from None
        return self._finish()

    # ---- steps of the loop -------------------------------------------------------------------
    def _clock(self) -> float:
        """Seconds since the evaluation began, summed over sessions."""
        return self._offset + time.perf_counter() - self._t0

    def _encode_prompts(self) -> tuple[dict[int, list[int]], dict[int, str]]:
        """Every prompt's tokens, and why the engine cannot take some of them (prompt index -> reason)."""
        context = self.engine.context_length
        prompts: dict[int, list[int]] = {}
        skipped: dict[int, str] = {}
        for i in range(len(self.dataset)):
            try:
                prompts[i] = self.encode(self.dataset.prompt(i))
            except ValueError as e:  # PromptError
                raise EvalError(f"prompt {i} ({self.dataset.examples[i].id}): {e}") from None
            reason = skip_reason(prompts[i], context)
            if reason is not None:
                skipped[i] = reason
        return prompts, skipped

    def _slot_of(self, i: int) -> int:
        """The scheduler's number of prompt i, which must be one that runs."""
        if i not in self.slot:
            raise EvalError(f"cannot resume: prompt {i} has recorded runs but is now skipped ({self.skipped[i]})")
        return self.slot[i]

    def _replay(self, records: list[dict], journal: list[dict]) -> None:
        """Feed the runs recorded by earlier sessions back into the scheduler."""
        for r in records:
            if "skipped" in r and r["index"] not in self.skipped:
                raise EvalError(f"cannot resume: prompt {r['index']} was skipped ({r['skipped']}), now it would run")
            if "skipped" not in r:
                self.sched.replay(self._slot_of(r["index"]), _outcomes(r, self._slot_of(r["index"])))
        for e in journal:
            if e["index"] not in self.by_index:
                st = self.states.setdefault(e["index"], _PromptState(e["t_start"]))
                st.runs.append(e["run"])
                st.sequences += e["sequences"]
        for i, st in self.states.items():
            self.sched.replay(self._slot_of(i), _outcomes({"runs": st.runs, "sequences": st.sequences},
                                                          self._slot_of(i)))

    def _start_runs(self) -> None:
        for req in self.sched.schedule(self.engine.free_rows).runs:
            i = self.runnable[req.prompt_index]
            if i in self.by_index:
                raise EvalError(f"resume: prompt {i} is recorded but the settings now give it more runs")
            cfg = self._config(req)
            self.states.setdefault(i, _PromptState(self._clock()))
            self.requests[req.request_id] = req
            stored = self._stored(req, i, cfg)
            if stored is not None:
                self.ready.append(stored)
                self.from_store.add(req.request_id)
            elif req.key_id is None and not req.first_sequence:  # the plain call: engines without rounds take it
                self.engine.add(req.request_id, self.prompts[i], cfg)
            else:
                self.engine.add(req.request_id, self.prompts[i], cfg, key_id=req.key_id,
                                first_sequence=req.first_sequence)

    def _config(self, req: RunRequest) -> EagerConfig:
        """The request config of a run: the evaluation's, with the run's theta, M and kind."""
        return dataclasses.replace(self.settings.eager, threshold=req.threshold, max_sequences=req.max_sequences,
                                   parallel=req.parallel)

    # ---- the run store ---------------------------------------------------------------------------
    def _store_keys(self, req: RunRequest, i: int, cfg: EagerConfig) -> list[dict]:
        """The run's key, or for a parallel run its samples' keys (see store.py)."""
        key = partial(self.store.key, prompt=self.prompts[i], seed=self.settings.seed,
                      key_id=req.key_id or req.request_id, config=cfg, context=self.engine.context_length)
        if req.parallel:
            return [key(sequence=req.first_sequence + k) for k in range(req.max_sequences)]
        return [key()]

    def _stored(self, req: RunRequest, i: int, cfg: EagerConfig) -> Optional[RunResult]:
        if self.store is None:
            return None
        keys = self._store_keys(req, i, cfg)
        if req.parallel:
            return self.store.get_parallel(keys, req.request_id, cfg.threshold)
        return self.store.get(keys[0])

    def _keep(self, result: RunResult) -> None:
        """Store a finished run when it is a pure function of its key (no branch skipped for rows or memory)."""
        req = self.requests[result.request_id]
        info = result.info
        if self.store is None or info.get("branches_skipped_full") or info.get("branches_skipped_memory"):
            return
        keys = self._store_keys(req, self.runnable[req.prompt_index], self._config(req))
        if req.parallel:
            self.store.put_parallel(keys, result)
        else:
            self.store.put(keys[0], result)

    def _pop_ready(self) -> list[RunResult]:
        out, self.ready = self.ready, []
        return out

    def _grade(self, i: int, answer: Optional[str]) -> bool:
        key = (i, answer or "")
        if key not in self.grades:
            self.grades[key] = grade(answer, self.dataset.examples[i].answer, timeout=self.settings.grade_timeout)
        return self.grades[key]

    def _sequence(self, rid: str, i: int, s: Any) -> dict:
        answer, how = extract_answer(s.text, self.settings.answer_fallbacks)
        natural = s.finish_reason in NATURAL_FINISHES
        seq = {"run": rid, "index": s.index, "answer": answer, "extracted_by": how,
               "correct": self._grade(i, answer), "tokens": len(s.token_ids),
               "finish_reason": s.finish_reason, "parent": s.parent, "branch_step": s.branch_step,
               "confidence": sequence_confidence(s.entropies, s.logprobs, self.settings.confidence) if natural
               else None}
        if self.settings.save_text:
            seq["text"] = s.text
        return seq

    def _take_finished(self, result: RunResult) -> RunOutcome:
        """Grade a finished run, journal it and return its outcome for the scheduler."""
        if self.on_run is not None:
            self.on_run(with_answers(result, lambda text: extract_answer(text, self.settings.answer_fallbacks)[0]))
        if result.request_id in self.from_store:
            self.from_store.discard(result.request_id)
        else:
            self._keep(result)
        rid = result.request_id
        req = self.requests.pop(rid)
        i = self.runnable[req.prompt_index]  # in `dataset`
        st = self.states[i]
        seqs = [self._sequence(rid, i, s) for s in result.sequences]
        any_correct = any(s["correct"] for s in seqs)
        run = {
            "request_id": rid, "attempt": req.attempt, "threshold": req.threshold,
            "max_sequences": req.max_sequences, "parallel": req.parallel,
            "num_sequences": len(seqs), "generated_tokens": result.generated_tokens,
            "prompt_tokens": result.prompt_tokens, "elapsed_s": result.elapsed_s,
            "branch_points": result.branch_points, "mean_entropy": _mean_entropy(result),
            "any_correct": any_correct, "info": result.info,
            "consensus_abort": self.monitor is not None and self.monitor.agreed(rid),
        }
        if req.key_id is not None:  # a round of parallel-adapt: which samples of the prompt's stream it took
            run.update(key_id=req.key_id, first_sequence=req.first_sequence)
        st.sequences += seqs
        st.runs.append(run)
        self._journal.append({"index": i, "t_start": st.started, "t": self._clock(), "run": run, "sequences": seqs,
                              "occupancy": self.occupancy.counts()})
        self.run_totals["runs"] += 1
        self.run_totals["tokens"] += result.generated_tokens
        self._report(None)
        return _outcome(run, seqs, req.prompt_index)

    def _write_complete(self) -> None:
        """Write the record of every prompt the scheduler says is complete."""
        for i in (self.runnable[j] for j in self.sched.pop_finished()):
            if i not in self.by_index:  # else replayed from an earlier session
                self._write(self._record(i, self.states.pop(i)))

    def _write_skipped(self) -> None:
        """Record the prompts the engine cannot take (once: a resume finds them recorded)."""
        for i, reason in sorted(self.skipped.items()):
            if i not in self.by_index:
                ex = self.dataset.examples[i]
                self._write({"index": i, "id": ex.id, "question": ex.question, "gold": ex.answer, "skipped": reason,
                             "runs": [], "sequences": [], "metrics": None, "wall_s": 0.0, "t_done": self._clock()})

    def _write(self, rec: dict) -> None:
        """Append a prompt's record to results.jsonl, count it and report progress."""
        self._results.append(rec)
        self.by_index[rec["index"]] = rec
        if "skipped" not in rec:
            self.totals["ran"] += 1
            self.totals["tokens"] += rec["metrics"]["generated_tokens"]
            self.totals["sequences"] += rec["metrics"]["num_sequences"]
            self.totals["passed"] += rec["metrics"]["pass_at_k"]
        self._report(rec["index"])

    def _record(self, i: int, st: _PromptState) -> dict:
        ex, now = self.dataset.examples[i], self._clock()
        answers, correct = [s["answer"] for s in st.sequences], [s["correct"] for s in st.sequences]
        pm = prompt_metrics(answers, correct, generated_tokens=sum(r["generated_tokens"] for r in st.runs),
                            prompt_tokens=sum(r["prompt_tokens"] for r in st.runs), wall_s=now - st.started,
                            ks=self.settings.ks)
        rec = {"index": i, "id": ex.id, "question": ex.question, "gold": ex.answer, "runs": st.runs,
               "sequences": st.sequences, "metrics": asdict(pm), "wall_s": now - st.started, "t_done": now}
        if self.settings.confidence_vote:
            rec["weighted_vote"] = weighted_vote_record(answers, correct, [s["confidence"] for s in st.sequences])
        return rec

    def _report(self, index: Optional[int]) -> None:
        if self.progress is not None:
            t = self.totals
            self.progress(EvalProgress(len(self.by_index), len(self.dataset), t["passed"] / t["ran"] if t["ran"]
                                       else 0.0, t["tokens"], t["sequences"], index, self.run_totals["runs"],
                                       self.run_totals["tokens"]))

    def _finish(self) -> EvalResult:
        """Write the manifest's summary; return the result over every prompt."""
        ordered = [self.by_index[i] for i in sorted(self.by_index)]
        ran = evaluated(ordered)
        wall = max((r["t_done"] for r in ordered), default=0.0)
        metrics = run_metrics([record_metrics(r) for r in ran], wall_s=wall)
        manifest = dict(self.manifest, finished=True, summary=asdict(metrics), skipped=len(ordered) - len(ran),
                        wall_s=wall, finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        mpath = self.run_dir / MANIFEST
        old: dict = {}
        if self.resume:
            old = read_manifest(mpath)
            manifest["created"] = old.get("created", manifest["created"])
        manifest["occupancy"] = self.occupancy.summary(self.settings.scheduler.max_rows)
        manifest["store"] = self._store_summary(old)
        if hasattr(self.engine, "prefix_stats"):  # prompt tokens taken from the prefix cache, this session
            manifest["prefix_cache"] = asdict(self.engine.prefix_stats())
        write_json_atomic(mpath, manifest)
        return EvalResult(self.run_dir, metrics, ordered, resumed=self.resumed, skipped=manifest["skipped"])

    def _store_summary(self, old: dict) -> Optional[dict]:
        """Runs read from / written to the store, summed over the sessions that reached the end."""
        if self.store is None:
            return None
        before = old.get("store") or {}
        return {"dir": str(self.store.root), "replayed": before.get("replayed", 0) + self.store.replayed,
                "stored": before.get("stored", 0) + self.store.stored,
                "migrated": before.get("migrated", 0) + self.store.migrated}


def evaluate(engine: EngineLike, encode: Callable[[str], list[int]], dataset: Dataset, settings: EvalSettings,
             run_dir: Path, **kwargs: Any) -> EvalResult:
    """Evaluate ``dataset`` with ``engine`` under ``settings`` (keyword arguments: see `Evaluation`), holding the run
    directory's lock (rundir.run_lock: a second evaluation of it is refused)."""
    with run_lock(run_dir):
        return Evaluation(engine, encode, dataset, settings, run_dir, **kwargs).run()


def evaluate_model(loaded: Any, dataset: Dataset, settings: EvalSettings, run_dir: Path, *,
                   max_kv_memory: Optional[int] = None, prefix_cache: bool = True, chat: bool = True,
                   save_trace: bool = False, extra_manifest: Optional[dict] = None, store_dir: Optional[Path] = None,
                   **kwargs: Any) -> EvalResult:
    """Evaluate with a LoadedModel: an engine of `settings.scheduler.max_rows` rows and `settings.seed`, the
    model's prompt encoding, with `save_trace` each run's branch tree in RUN_DIR/trees.jsonl (for
    `eager-mlx report --html`), and with `store_dir` a run store (store.py) keyed on the model folder's digest.
    Other keyword arguments go to `Evaluation`."""
    from eager_mlx.evaluation.store import model_digest
    from eager_mlx.evaluation.traces import TRACES, TraceRecorder

    loaded.check_memory(settings.scheduler.max_rows, settings.eager.max_tokens)  # (models/memory.py)
    if store_dir is not None:
        kwargs["store"] = RunStore(Path(store_dir), model_digest(loaded.path, cache=Path(store_dir) / "models.json"))
    online = settings.consensus_abort or settings.confidence.prune_percentile is not None
    engine = EngineConfig(max_rows=settings.scheduler.max_rows, seed=settings.seed, max_kv_memory=max_kv_memory,
                          no_prefix_cache=not prefix_cache)
    runner = loaded.engine(engine, token_events=online, preempt=not settings.scheduler.reserve_rows)
    recorder = TraceRecorder(Path(run_dir) / TRACES, loaded.tokenizer) if save_trace else None
    return evaluate(runner, lambda text: loaded.encode(text, chat=chat), dataset, settings, run_dir,
                    model=loaded.name, extra_manifest={"chat": chat, **(extra_manifest or {})}, on_run=recorder,
                    **kwargs)
