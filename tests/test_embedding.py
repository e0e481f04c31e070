"""The streaming API driven from worker threads: same results as the main thread, cancellation, the app example."""
import importlib.util
import queue
import sys
import threading
import time
from pathlib import Path

import eager_mlx
from eager_mlx import EagerConfig
from eager_mlx.results import RunFinished, TokenEvent
from eager_mlx.threads import start_mlx_thread

from fakes import ByteTokenizer, tiny_model

CONFIG = EagerConfig(threshold=2.5, max_sequences=4, max_tokens=40, think_end=None)


def _solve_on_thread(model, tok, config, cancel=None, cancel_after=None):
    events: queue.Queue = queue.Queue()

    def work():
        seen = 0
        for ev in eager_mlx.stream_solve(model, "hello there", config, tokenizer=tok, chat=False, cancel=cancel):
            events.put(ev)
            seen += isinstance(ev, TokenEvent)
            if cancel_after is not None and seen == cancel_after:
                cancel.set()  # a UI thread would do this; setting it here makes the cut point exact

    thread = start_mlx_thread(work)
    thread.join(60)
    assert not thread.is_alive()
    return [events.get_nowait() for _ in range(events.qsize())]


def test_worker_thread_gives_the_main_thread_result():
    model, tok = tiny_model(), ByteTokenizer()
    main = eager_mlx.solve(model, "hello there", CONFIG, tokenizer=tok, chat=False)
    events = _solve_on_thread(model, tok, CONFIG)
    assert isinstance(events[-1], RunFinished)
    threaded = events[-1].result
    assert threaded.num_sequences == main.num_sequences > 1
    assert [s.token_ids for s in threaded.sequences] == [s.token_ids for s in main.sequences]
    # progress: one TokenEvent per generated token that is not EOS
    assert sum(isinstance(e, TokenEvent) for e in events) == sum(
        len(s.token_ids) - (s.branch_step or 0) for s in threaded.sequences)


def test_cancel_frees_the_run_within_a_step():
    model, tok = tiny_model(), ByteTokenizer()
    cancel = threading.Event()
    config = EagerConfig(threshold=100.0, max_sequences=2, parallel=True, max_tokens=2000)
    events = _solve_on_thread(model, tok, config, cancel=cancel, cancel_after=10)
    result = events[-1].result
    assert isinstance(events[-1], RunFinished)
    assert {s.finish_reason for s in result.sequences} <= {"aborted", "eos"}
    assert "aborted" in {s.finish_reason for s in result.sequences}
    assert result.generated_tokens <= 14  # 10 token events, at most one more step of 2 rows (plus EOS)


def _example():
    path = Path(__file__).resolve().parents[1] / "examples" / "app_worker.py"
    spec = importlib.util.spec_from_file_location("app_worker", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_app_worker_example_reports_progress_and_cancels():
    app = _example()
    model, tok = tiny_model(), ByteTokenizer()
    updates = []
    worker = app.SolveWorker(model, "hello", CONFIG, on_update=updates.append, interval_s=0.0,
                             tokenizer=tok, chat=False).start()
    deadline = time.monotonic() + 60
    while worker.poll() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert updates[-1].done and updates[-1].result is not None and updates[-1].error is None
    assert [u.tokens for u in updates] == sorted(u.tokens for u in updates) and len(updates) > 3
    assert updates[-1].sequences == updates[-1].result.num_sequences

    long = EagerConfig(threshold=100.0, max_sequences=1, max_tokens=4000, think_end=None)
    updates.clear()
    worker = app.SolveWorker(model, "hello", long, on_update=updates.append, tokenizer=tok, chat=False).start()
    while not updates and time.monotonic() < deadline:
        worker.poll()
        time.sleep(0.01)
    worker.cancel()
    while worker.poll() and time.monotonic() < deadline:
        time.sleep(0.01)
    final = updates[-1].result
    assert final.sequences[0].finish_reason in ("aborted", "eos") and final.generated_tokens < 4000
    worker.thread.join(10)
    assert not worker.thread.is_alive()
