"""Embedding eager-mlx in an app: a worker thread solves, a queue feeds the UI, a button cancels.

    python examples/app_worker.py "What is 7*8? Put the final answer in \\boxed{}." --model smollm2-135m

The UI thread never touches MLX. It starts a `SolveWorker`, and from its own timer
(an NSTimer / `root.after` / QTimer; here a plain loop) calls `worker.poll()`, which
hands each pending `Progress` to the UI callback. `worker.cancel()` (a Stop button)
ends the run within one decode step; the last Progress then carries the result with
the unfinished sequences marked "aborted".

MLX streams are per thread, so the engine is made and driven on the worker thread
(`start_mlx_thread` also releases that thread's streams when it ends).
"""
from __future__ import annotations

import argparse
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import eager_mlx
from eager_mlx.results import BranchEvent, RunFinished, RunResult, TokenEvent
from eager_mlx.threads import start_mlx_thread

__all__ = ["Progress", "SolveWorker"]


@dataclass(frozen=True)
class Progress:
    """What a UI shows: counts so far, sequence 0's text, and the result once done."""

    tokens: int = 0
    sequences: int = 1
    elapsed_s: float = 0.0
    text: str = ""
    done: bool = False
    result: Optional[RunResult] = None
    error: Optional[str] = None


class SolveWorker:
    """Solve one question on a worker thread; `poll()` from the UI thread delivers Progress snapshots."""

    def __init__(self, loaded, question: str, config=None, *, on_update: Callable[[Progress], None],
                 interval_s: float = 0.1, **solve_kwargs):
        self.loaded, self.question, self.config = loaded, question, config
        self.on_update = on_update
        self.interval_s = interval_s
        self.solve_kwargs = solve_kwargs
        self._updates: queue.Queue[Progress] = queue.Queue()
        self._cancel = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def start(self) -> "SolveWorker":
        self.thread = start_mlx_thread(self._run, name="eager-solve")
        return self

    def cancel(self) -> None:
        """Ask the worker to stop (safe from any thread)."""
        self._cancel.set()

    def poll(self) -> bool:
        """Deliver pending updates to the UI callback (call on the UI thread); False once the run is done."""
        done = False
        while True:
            try:
                p = self._updates.get_nowait()
            except queue.Empty:
                return not done
            self.on_update(p)
            done = done or p.done

    def _run(self) -> None:
        start = time.perf_counter()
        p, last = Progress(), 0.0
        try:
            for ev in eager_mlx.stream_solve(self.loaded, self.question, self.config, cancel=self._cancel,
                                             **self.solve_kwargs):
                now = time.perf_counter()
                if isinstance(ev, TokenEvent):
                    p = replace(p, tokens=p.tokens + 1, text=p.text + ev.text if ev.sequence == 0 else p.text)
                elif isinstance(ev, BranchEvent):
                    p = replace(p, sequences=p.sequences + 1)
                elif isinstance(ev, RunFinished):
                    p = replace(p, tokens=ev.result.generated_tokens, sequences=ev.result.num_sequences,
                                done=True, result=ev.result)
                if p.done or now - last >= self.interval_s:
                    last = now
                    self._updates.put(replace(p, elapsed_s=now - start))
        except Exception as e:  # shown in the UI instead of dying silently on the worker thread
            self._updates.put(replace(p, done=True, error=str(e), elapsed_s=time.perf_counter() - start))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("question")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-sequences", "-M", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=512)
    args = ap.parse_args()
    loaded = eager_mlx.load(args.model)
    config = eager_mlx.config_for(loaded.preset, max_sequences=args.max_sequences, max_tokens=args.max_tokens)

    def show(p: Progress) -> None:  # the "UI": one status line
        if p.done:
            print(f"\r{p.error or ''}answer: {p.result.answer if p.result else None} "
                  f"({p.sequences} sequences, {p.tokens} tokens, {p.elapsed_s:.1f} s)")
        else:
            print(f"\r{p.sequences} sequences, {p.tokens} tokens, {p.elapsed_s:.1f} s", end="", flush=True)

    worker = SolveWorker(loaded, args.question, config, on_update=show).start()
    try:
        while worker.poll():
            time.sleep(0.05)  # the UI's timer
    except KeyboardInterrupt:  # the Stop button
        worker.cancel()
        while worker.poll():
            time.sleep(0.05)


if __name__ == "__main__":
    main()
