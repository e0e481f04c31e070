"""`eager-mlx chat`: a conversation in the terminal; each answer branches like `solve` (eager_mlx/chat.py)."""
from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections import Counter
from typing import Any, Optional

import click

from .options import ADAPTIVE, ENGINE, GENERATION, fail, not_empty, pop_settings, setting_options, writable_file
from .progress import load_model

__all__ = ["chat"]

HELP = "/reset: start over, /save FILE: the conversation as JSON, /quit (or Ctrl-D): leave; Ctrl-C stops an answer"


@click.command()
@click.option("--model", "-m", default=None, callback=not_empty,
              help="Preset name, mlx-lm folder, .gguf file or hub id (default: the default preset).")
@setting_options(*GENERATION, auto_threshold=True)
@setting_options(*ENGINE, exclude=("max_rows",))  # one conversation: the engine has M rows
@click.option("--system", default=None, help="System message.")
@setting_options(*ADAPTIVE)
def chat(model: Optional[str], system: Optional[str], **settings: Any) -> None:
    """Talk with the model. Each answer streams (sequence 0), then a line says how many sequences it
    branched into and the vote; the voted sequence's text joins the conversation. /reset, /save FILE, /quit;
    Ctrl-C stops the current answer, not the chat."""
    from eager_mlx import config_for
    from eager_mlx.adaptive.options import AdaptiveOptions
    from eager_mlx.chat import Chat

    generation = pop_settings(settings, *GENERATION)
    auto = generation.get("threshold") == "auto"
    try:
        options = AdaptiveOptions.from_settings(pop_settings(settings, *ADAPTIVE), abort_implied=True)
        loaded = load_model(model)
        config = config_for(loaded.preset, **dict(generation, threshold=None if auto else generation["threshold"]))
    except ValueError as e:  # ModelError, SettingError
        raise fail(e) from None
    session = Chat(loaded, config, system=system, seed=settings.pop("seed"),
                   max_kv_memory=settings.pop("max_kv_memory"), options=options)
    click.echo(f"eager-mlx chat, {loaded.name or 'model'}: {HELP}", err=True)
    while True:
        line = _read()
        if line is None or line.strip() in ("/quit", "/exit"):
            return
        if line.strip().startswith("/"):
            _command(session, line.strip())
        elif line.strip():
            if auto:
                _auto_threshold(session, line)
                auto = False
            _answer(session, line.strip())


def _read() -> Optional[str]:
    """The next line typed, None at the end of the input (Ctrl-D) or on Ctrl-C at the prompt."""
    try:
        import readline  # noqa: F401 - line editing and history for input(), where the platform has it
    except ImportError:
        pass
    try:
        return input(">>> ")
    except (EOFError, KeyboardInterrupt):
        click.echo()
        return None


def _command(session: Any, line: str) -> None:
    name, _, arg = line.partition(" ")
    if name == "/reset":
        session.reset()
        click.echo("(the conversation is cleared)")
    elif name == "/save":
        _save(session, arg.strip())
    elif name == "/help":
        click.echo(HELP)
    else:
        click.echo(f"error: unknown command {name}; {HELP}", err=True)


def _save(session: Any, name: str) -> None:
    if not name:
        click.echo("error: /save needs a file name", err=True)
        return
    try:
        path = writable_file(name, param_hint="/save")
        session.save(path)
    except click.BadParameter as e:
        click.echo(f"error: {e.format_message()}", err=True)
    except OSError as e:
        click.echo(f"error: cannot write {name} ({e.strerror})", err=True)
    else:
        click.echo(f"(saved {len(session.turns)} turns to {path})")


def _auto_threshold(session: Any, first: str) -> None:
    """`--threshold auto`: the stored calibration, else calibrated on the first message."""
    from eager_mlx.adaptive.calibrate import auto_threshold_for

    tokens = session.loaded.encode(first, system=session.system)
    theta, how = auto_threshold_for(session.loaded, [tokens], session.config, seed=session.seed)
    session.config = dataclasses.replace(session.config, threshold=theta)
    click.echo(f"theta auto: {theta:.4f} ({how})", err=True)


def _answer(session: Any, text: str) -> None:
    """Stream one answer; Ctrl-C (SIGINT) meanwhile stops it and the chat goes on."""
    from eager_mlx.prompts import PromptError
    from eager_mlx.results import BranchEvent, SequenceFinished, TokenEvent

    cancel = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: cancel.set()) if main else None
    start = time.perf_counter()
    running = set(range(session.config.max_sequences if session.config.parallel else 1))
    try:
        for event in session.ask(text, cancel):
            if isinstance(event, TokenEvent) and event.sequence == 0:
                click.echo(event.text, nl=False)
            elif isinstance(event, BranchEvent):
                running.add(event.child)
            elif isinstance(event, SequenceFinished):
                running.discard(event.sequence)
                if event.sequence == 0 and running and not cancel.is_set():
                    click.echo(f"\n(waiting for {_count(len(running), 'more sequence')} to vote)", nl=False, err=True)
    except PromptError as e:  # the conversation no longer fits the chat template
        click.echo(f"error: {e}", err=True)
        return
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    click.echo()
    _summary(session.turns[-1], time.perf_counter() - start)


def _summary(turn: Any, elapsed: float) -> None:
    if turn.stopped:
        click.echo("(stopped)")
    elif turn.sequence != 0:
        click.echo(f"--- the vote chose sequence {turn.sequence}:")
        click.echo(turn.reply)
    votes = Counter(a for a in turn.answers if a is not None)
    vote = "vote " + ", ".join(f"{a} x{n}" for a, n in votes.most_common(3)) if votes else "no \\boxed{} answer"
    rate = turn.generated_tokens / elapsed if elapsed > 0 else 0.0
    click.echo(f"[{_count(turn.sequences, 'sequence')}, {_count(turn.branch_points, 'branch point')}; {vote}; "
               f"{turn.generated_tokens} tokens, {rate:.1f} tok/s]")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
