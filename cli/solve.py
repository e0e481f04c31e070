"""`eager-mlx solve "question"`: branch where the model is unsure, print the voted answer."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from typing import Optional

import click

from .beyond import beyond_from, beyond_options
from .calibrate import THRESHOLD

__all__ = ["solve"]


@click.command()
@click.argument("question")
@click.option("--model", "-m", default=None, help="Preset name, mlx-lm folder, .gguf file or hub id (default: the default preset).")
@click.option("--threshold", "-t", type=THRESHOLD, default=None,
              help="Entropy threshold theta in nats, or auto (the preset's calibrated value, else calibrated on this "
                   "question: one extra unbranched sample; default: the preset's).")
@click.option("--max-sequences", "-M", type=int, default=32, show_default=True, help="Cap on sequences (M).")
@click.option("--temperature", type=float, default=None, help="Sampling temperature (default: the preset's).")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling (default: the preset's).")
@click.option("--top-k", type=int, default=None, help="Top-k sampling (0: off).")
@click.option("--min-p", type=float, default=None, help="Min-p sampling (0: off).")
@click.option("--max-tokens", type=int, default=1024, show_default=True, help="Tokens per sequence.")
@click.option("--seed", type=int, default=55, show_default=True)
@click.option("--entropy-k", type=int, default=20, show_default=True, help="Entropy over the top-K tokens.")
@click.option("--full-entropy", is_flag=True, help="Entropy over the whole vocabulary instead of top-K.")
@click.option("--dynamic-threshold", is_flag=True, help="Reference-code rule: max(theta, p99 of the prompt's entropies).")
@click.option("--no-branch-window", type=int, default=1000, show_default=True, help="Stop branching after this many steps without a branch.")
@click.option("--parallel", is_flag=True, help="Baseline: M independent samples, no branching.")
@click.option("--max-kv-memory", default=None, help="Cap on KV cache memory, e.g. 2GB: forks past it are skipped.")
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--system", default=None, help="System message.")
@click.option("--no-chat", is_flag=True, help="Do not apply the chat template.")
@click.option("--view", type=click.Choice(["one", "all", "quiet"]), default="one", show_default=True,
              help="one: stream sequence 0 live; all: a live status line for all rows; quiet: summary only.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@beyond_options
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Write the branch tree (forks, entropy traces, answers, vote) to this HTML page.")
def solve(question: str, model: Optional[str], threshold, max_sequences, temperature, top_p, top_k, min_p,
          max_tokens, seed, entropy_k, full_entropy, dynamic_threshold, no_branch_window, parallel, max_kv_memory, stop,
          system, no_chat, view, as_json, html_path, **beyond) -> None:
    """Solve QUESTION with entropy-aware branching."""
    from eager_mlx import config_for, load, stream_solve
    from eager_mlx.models import ModelError
    from eager_mlx.results import BranchEvent, RunFinished, TokenEvent

    from .progress import ProgressBars, parse_size

    kv_limit = parse_size(max_kv_memory)
    opts = beyond_from(beyond, abort_implied=True)  # one run: a consensus rule can only stop it early

    try:
        bars = ProgressBars()
        try:
            loaded = load(model, progress=bars)
        finally:
            bars.close()
        config = config_for(
            loaded.preset, threshold=threshold, max_sequences=max_sequences, temperature=temperature,
            top_p=top_p, top_k=top_k, min_p=min_p, max_tokens=max_tokens, entropy_top_k=entropy_k,
            full_entropy=full_entropy, dynamic_threshold=dynamic_threshold,
            no_branch_window=no_branch_window, parallel=parallel, stop=tuple(stop),
        )
        if threshold == "auto":
            from .calibrate import solve_auto_threshold

            theta, how = solve_auto_threshold(loaded, question, config, seed=seed, chat=not no_chat, system=system)
            config = dataclasses.replace(config, threshold=theta)
            click.echo(f"theta auto: {theta:.4f} ({how})", err=True)
        config.validate()
        start = time.perf_counter()
        status = _Status(enabled=view == "all" and not as_json)
        result = None
        for event in stream_solve(loaded, question, config, seed=seed, chat=not no_chat, system=system,
                                  max_kv_memory=kv_limit, confidence=opts.confidence, consensus=opts.consensus):
            if isinstance(event, TokenEvent):
                status.token()
                if view == "one" and not as_json and event.sequence == 0:
                    click.echo(event.text, nl=False)
            elif isinstance(event, BranchEvent):
                status.branch()
            elif isinstance(event, RunFinished):
                result = event.result
        status.close()
    except (ModelError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    elapsed = time.perf_counter() - start
    if html_path:
        from pathlib import Path

        from eager_mlx.trees.html import render_tree_html

        Path(html_path).write_text(render_tree_html(result, loaded.tokenizer, question=question), encoding="utf-8")
    tps = result.generated_tokens / elapsed if elapsed > 0 else 0.0
    weighted = None
    if opts.confidence_vote:
        from eager_mlx.adaptive.confidence import confidence_vote

        weighted = confidence_vote(result, opts.confidence)
    if as_json:
        out = dataclasses.asdict(result)
        out.update(model=model or (loaded.preset.name if loaded.preset else None), elapsed_s=elapsed,
                   tokens_per_s=tps, config=dataclasses.asdict(config), confidence_answer=weighted)
        click.echo(json.dumps(out))
        return
    if view == "one":
        click.echo()
    votes = Counter(s.answer for s in result.sequences if s.answer is not None)
    click.echo("-" * 60)
    answer = result.answer if result.answer is not None else "(no \\boxed{} answer)"
    click.echo(f"answer:     {answer}")
    if opts.confidence_vote:
        click.echo(f"confidence: {weighted if weighted is not None else '(no answer)'} (confidence-weighted vote)")
    if votes:
        click.echo("votes:      " + ", ".join(f"{a} x{n}" for a, n in votes.most_common(5)))
    click.echo(f"sequences:  {result.num_sequences} (branch points {result.branch_points}, theta {result.threshold:g})")
    click.echo(f"tokens:     {result.generated_tokens} generated, {result.prompt_tokens} prompt")
    click.echo(f"speed:      {tps:.1f} tokens/s over {elapsed:.1f} s")


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
