"""`eager-mlx solve "question"`: branch where the model is unsure, print the voted answer."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from typing import Any, Optional

import click

from .options import ADAPTIVE, ENGINE, GENERATION, fail, not_empty, output_file, pop_settings, setting_options
from .progress import load_model

__all__ = ["solve"]


@click.command()
@click.argument("question")
@click.option("--model", "-m", default=None, callback=not_empty,
              help="Preset name, mlx-lm folder, .gguf file or hub id (default: the default preset).")
@setting_options(*GENERATION, auto_threshold=True)
@setting_options(*ENGINE, exclude=("max_rows", "no_prefix_cache"))  # one prompt: the engine has M rows
@click.option("--system", default=None, help="System message.")
@click.option("--no-chat", is_flag=True, help="Do not apply the chat template.")
@click.option("--view", type=click.Choice(["one", "all", "quiet"]), default="one", show_default=True,
              help="one: stream sequence 0 live; all: a live status line for all rows; quiet: summary only.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.option("--html", "html_path", default=None, callback=output_file,
              help="Write the branch tree (forks, entropy traces, answers, vote) to this HTML page.")
@setting_options(*ADAPTIVE)
def solve(question: str, model: Optional[str], system: Optional[str], no_chat: bool, view: str, as_json: bool,
          html_path, **settings: Any) -> None:
    """Solve QUESTION with entropy-aware branching (QUESTION '-' reads it from stdin)."""
    from eager_mlx.adaptive.options import AdaptiveOptions
    from eager_mlx.config import EngineConfig

    question = _read_question(question)
    generation = pop_settings(settings, *GENERATION)
    engine = EngineConfig(seed=settings.pop("seed"), max_kv_memory=settings.pop("max_kv_memory"))
    try:
        options = AdaptiveOptions.from_settings(pop_settings(settings, *ADAPTIVE), abort_implied=True)
        loaded = load_model(model)
        config = _config(loaded, question, generation, engine.seed, chat=not no_chat, system=system)
        result, timing = _run(loaded, question, config, engine, options, chat=not no_chat, system=system,
                              view="quiet" if as_json else view)
    except ValueError as e:  # ModelError, SettingError and PromptError are ValueErrors
        raise fail(e) from None
    if html_path:
        from eager_mlx.trees.html import render_tree_html

        try:
            html_path.write_text(render_tree_html(result, loaded.tokenizer, question=question), encoding="utf-8")
        except OSError as e:  # checked before the run; the disk can still fill up
            raise fail(e) from None
    weighted = None
    if options.confidence_vote:
        from eager_mlx.adaptive.confidence import confidence_vote

        weighted = confidence_vote(result, options.confidence)
    if as_json:
        out = dataclasses.asdict(result)
        out.update(model=loaded.name, elapsed_s=timing[1], prompt_s=timing[0],
                   decode_tokens_per_s=_decode_rate(result.generated_tokens, *timing),
                   config=dataclasses.asdict(config), confidence_answer=weighted, load_check=_load_check(loaded))
        click.echo(json.dumps(out))
    else:
        _print_summary(result, timing, options.confidence_vote, weighted, newline=view == "one")


def _load_check(loaded: Any) -> Optional[dict]:
    """Which numeric load check ran, and what it found (solve --json)."""
    check = loaded.load_check
    if check is None:
        return None
    return dict(dataclasses.asdict(check), ran=check.ran, max_error=check.max_error, passed=check.passed,
                summary=check.describe())


def _read_question(question: str) -> str:
    """The question (QUESTION '-': stdin, read as UTF-8 bytes); a UsageError when it is empty or not text."""
    if question == "-":
        raw = sys.stdin.buffer.read()
        try:
            question = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise click.UsageError(f"stdin is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") \
                from None
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as e:  # an argument whose bytes were not UTF-8 arrives with lone surrogates
        raise click.UsageError(f"the question is not UTF-8 text (character {e.start})") from None
    if not question.strip():
        raise click.UsageError("the question is empty")
    return question


def _config(loaded: Any, question: str, generation: dict, seed: int, *, chat: bool, system: Optional[str]):
    """The run's EagerConfig; `--threshold auto` is resolved here (stored calibration, else this question)."""
    from eager_mlx import config_for
    from eager_mlx.adaptive.calibrate import auto_threshold_for

    auto = generation.get("threshold") == "auto"
    if auto:
        generation["threshold"] = None
    config = config_for(loaded.preset, **generation)
    if auto:
        tokens = loaded.encode(question, chat=chat, system=system)
        theta, how = auto_threshold_for(loaded, [tokens], config, seed=seed)
        config = dataclasses.replace(config, threshold=theta)
        click.echo(f"theta auto: {theta:.4f} ({how})", err=True)
    return config


def _run(loaded: Any, question: str, config: Any, engine: Any, options: Any, *, chat: bool,
         system: Optional[str], view: str) -> tuple[Any, float]:
    """Stream the run to the terminal as `view` asks; return (RunResult, (seconds to the first token, seconds))."""
    from eager_mlx import stream_solve
    from eager_mlx.results import BranchEvent, RunFinished, TokenEvent

    start = time.perf_counter()
    status = _Status(enabled=view == "all")
    result, first = None, None
    for event in stream_solve(loaded, question, config, seed=engine.seed, chat=chat, system=system,
                              max_kv_memory=engine.max_kv_memory, confidence=options.confidence,
                              consensus=options.consensus):
        if isinstance(event, TokenEvent):
            first = time.perf_counter() - start if first is None else first
            status.token()
            if view == "one" and event.sequence == 0:
                click.echo(event.text, nl=False)
        elif isinstance(event, BranchEvent):
            status.branch()
        elif isinstance(event, RunFinished):
            result = event.result
    status.close()
    elapsed = time.perf_counter() - start
    return result, (elapsed if first is None else first, elapsed)


def _decode_rate(generated: int, first_s: float, elapsed_s: float) -> Optional[float]:
    """Tokens per second after the first (all rows together), or None when there is no such time to divide by."""
    return (generated - 1) / (elapsed_s - first_s) if generated > 1 and elapsed_s > first_s else None


def _speed(prompt_tokens: int, generated: int, first_s: float, elapsed_s: float) -> str:
    """The speed line: the prompt's time (prefill, first-step compilation, first token) and the decode rate apart,
    as mlx_lm.generate reports them; a rate over the whole time would count the prompt's work as decoding."""
    rate = _decode_rate(generated, first_s, elapsed_s)
    decode = "-" if rate is None else f"{rate:.1f} tokens/s ({generated - 1} tokens in {elapsed_s - first_s:.2f} s)"
    return (f"prompt {prompt_tokens} tokens in {first_s:.2f} s ({prompt_tokens / max(first_s, 1e-9):.1f} tokens/s, "
            f"first token included); decode {decode}")


def _unboxed(sequences: Any) -> str:
    """What to show when no sequence has a \\boxed{} answer: the vote over each text's stated answer ("the answer
    is X") or else its last number, marked as read from the text (the result's answer stays None)."""
    from eager_mlx.answers import majority_vote
    from eager_mlx.evaluation.grading import ALL_FALLBACKS, extract_answer

    read = [extract_answer(s.text, ALL_FALLBACKS) for s in sequences]
    vote = majority_vote(a for a, _ in read)
    if vote is None:
        return "(no \\boxed{} answer)"
    how = next(h for a, h in read if a == vote).replace("_", " ")
    return f"{vote}  (no \\boxed{{}} answer; read from the text: {how})"


def _print_summary(result: Any, timing: tuple[float, float], vote: bool, weighted: Optional[str],
                   newline: bool) -> None:
    if newline:
        click.echo()
    votes = Counter(s.answer for s in result.sequences if s.answer is not None)
    click.echo("-" * 60)
    answer = result.answer if result.answer is not None else _unboxed(result.sequences)
    click.echo(f"answer:     {answer}")
    if vote:
        click.echo(f"confidence: {weighted if weighted is not None else '(no answer)'} (confidence-weighted vote)")
    if votes:
        click.echo("votes:      " + ", ".join(f"{a} x{n}" for a, n in votes.most_common(5)))
    click.echo(f"sequences:  {result.num_sequences} (branch points {result.branch_points}, theta {result.threshold:g})")
    click.echo(f"tokens:     {result.generated_tokens} generated, {result.prompt_tokens} prompt")
    click.echo(f"speed:      {_speed(result.prompt_tokens, result.generated_tokens, *timing)}")


class _Status:
    """A one-line live view of all rows (stderr)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tokens = 0
        self.sequences = 1
        self.last = 0.0

    def token(self) -> None:
        self.tokens += 1
        self._draw()

    def branch(self) -> None:
        self.sequences += 1
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.enabled and (force or now - self.last > 0.2):
            self.last = now
            sys.stderr.write(f"\r{self.sequences} sequences, {self.tokens} tokens")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
