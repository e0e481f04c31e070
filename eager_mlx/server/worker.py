"""The engine worker: the one thread that owns and steps the engine (MLX streams are per thread).

HTTP handler threads talk to it with typed messages on its inbox (`Submit`, `Abort`,
`Stop`); each request's events come back on the request's own queue, ending with
`RunFinished`, or with a `Failure` when the request cannot run.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from eager_mlx.answers import with_answers
from eager_mlx.config import EagerConfig
from eager_mlx.results import Event, RunFinished
from eager_mlx.threads import start_mlx_thread

__all__ = ["EngineWorker", "Submit", "Abort", "Stop", "Failure"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submit:
    """Add a request; its events go to `outbox`."""

    request_id: str
    tokens: list[int]
    config: EagerConfig
    outbox: queue.Queue
    seed: Optional[int] = None


@dataclass(frozen=True)
class Abort:
    """Free a request's rows (its client went away)."""

    request_id: str


@dataclass(frozen=True)
class Stop:
    """Fail what is in flight and end the worker."""


@dataclass(frozen=True)
class Failure:
    """The last item on a request's outbox when it could not run or finish."""

    status: int
    message: str


Message = Union[Submit, Abort, Stop]


class EngineWorker:
    """The one thread that owns and steps the engine; other threads talk to it through queues.

    `stats` is a snapshot (rows, requests in flight, counters, the prefix cache's counts when the engine
    has one) that other threads may read.
    """

    def __init__(self, make_engine: Callable[[], Any]):
        self._make_engine = make_engine
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        # owned by the worker thread:
        self._engine: Any = None
        self._outboxes: dict[str, queue.Queue] = {}
        self._counts = dict(peak_rows=0, completed=0, aborted=0, failed=0)
        self.stats: dict[str, Any] = {"rows": 0, "requests": 0, **self._counts}

    # ---- called from other threads ----------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        """Start the thread and build the engine on it; raises what building raised."""
        self._thread = start_mlx_thread(self._run, name="eager-engine")
        if not self._ready.wait(timeout):
            raise RuntimeError("the engine did not start in time")
        if self._error is not None:
            raise self._error

    def submit(self, request_id: str, tokens: list[int], config: EagerConfig,
               seed: Optional[int] = None) -> queue.Queue:
        """Queue a request; its events (then RunFinished, or a Failure) arrive on the returned queue."""
        out: queue.Queue = queue.Queue()
        self._inbox.put(Submit(request_id, tokens, config, out, seed))
        return out

    def abort(self, request_id: str) -> None:
        """Free the request's rows at the worker's next turn."""
        self._inbox.put(Abort(request_id))

    def stop(self, timeout: float = 10.0) -> None:
        """Fail what is in flight and end the thread."""
        self._inbox.put(Stop())
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the worker thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._engine = self._make_engine()
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        while True:
            for msg in self._take_messages():
                if isinstance(msg, Stop):
                    self._fail_all(Failure(503, "the server is shutting down"))
                    return
                self._handle(msg)
            if self._engine.has_work:
                self._step()
            self.stats = self._snapshot()

    def _snapshot(self) -> dict:
        stats = {"rows": self._engine.num_rows, "requests": len(self._outboxes), **self._counts}
        if hasattr(self._engine, "prefix_stats"):
            stats["prefix_cache"] = dataclasses.asdict(self._engine.prefix_stats())
        return stats

    def _take_messages(self) -> list[Message]:
        """Every message waiting; blocks for one when the engine is idle."""
        msgs = [] if self._engine.has_work else [self._inbox.get()]
        while True:
            try:
                msgs.append(self._inbox.get_nowait())
            except queue.Empty:
                return msgs

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, Submit):
            try:
                self._engine.add(msg.request_id, msg.tokens, msg.config, seed=msg.seed)
                self._outboxes[msg.request_id] = msg.outbox
            except ValueError as e:
                msg.outbox.put(Failure(400, str(e).splitlines()[0]))
        elif isinstance(msg, Abort) and msg.request_id in self._outboxes:
            self._route(self._engine.abort(msg.request_id), done="aborted")

    def _step(self) -> None:
        try:
            events = self._engine.step()
        except Exception:
            log.exception("engine step failed; failing %d request(s) and restarting the engine",
                          len(self._outboxes))
            self._counts["failed"] += len(self._outboxes)
            self._fail_all(Failure(500, "internal error while generating; see the server log"))
            self._engine = self._make_engine()
            return
        self._counts["peak_rows"] = max(self._counts["peak_rows"], self._engine.num_rows)
        self._route(events)

    def _route(self, events: list[Event], done: str = "completed") -> None:
        for ev in events:
            out = self._outboxes.get(ev.request_id)
            if out is not None:
                if isinstance(ev, RunFinished):  # answers and their vote are the server's, not the engine's
                    ev = RunFinished(ev.request_id, with_answers(ev.result))
                out.put(ev)
                if isinstance(ev, RunFinished):
                    del self._outboxes[ev.request_id]
                    self._counts[done] += 1

    def _fail_all(self, failure: Failure) -> None:
        for out in self._outboxes.values():
            out.put(failure)
        self._outboxes.clear()
