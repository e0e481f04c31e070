"""`eager-mlx eval` (a method over a dataset, results in a run directory) and `eager-mlx report`."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import click

from eager_mlx.evaluation.report import METHODS, format_table, plot_runs, run_summary

from .beyond import beyond_from, beyond_options
from .calibrate import THRESHOLD

__all__ = ["eval_cmd", "report", "build_runner"]


def build_runner(model: Optional[str], max_rows: int, seed: int, chat: bool = True,
                 max_kv_memory: Optional[int] = None, token_events: bool = False):
    """Load the model; return (engine, encode, preset, model name). Tests replace this."""
    from eager_mlx.engine.engine import Engine
    from eager_mlx.api import encode_prompt, load

    from .progress import ProgressBars

    bars = ProgressBars()
    try:
        loaded = load(model, progress=bars)
    finally:
        bars.close()
    preset = loaded.preset
    kwargs = preset.chat_template_kwargs if preset is not None else None
    context = preset.context_length if preset is not None else None
    engine = Engine(loaded.model, loaded.tokenizer, max_rows=max_rows, seed=seed, context_length=context,
                    token_events=token_events, max_kv_memory=max_kv_memory)

    def encode(text: str) -> list[int]:
        return encode_prompt(loaded.tokenizer, text, chat=chat, chat_template_kwargs=kwargs)

    name = model or (preset.name if preset is not None else str(loaded.path))
    return engine, encode, preset, name


def _default_out(data: str, method: str, m: int) -> Path:
    stem = Path(data).stem if ("/" in data or "." in data) else data.replace(":", "_").replace("/", "_")
    return Path("runs") / f"{stem}-{method}-M{m}-{time.strftime('%Y%m%d-%H%M%S')}"


class _Bar:
    """tqdm bar fed by evaluate's progress reports."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, p) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=p.total, initial=p.done, unit="prompt", desc="eval", file=sys.stderr,
                            dynamic_ncols=True)
        self.bar.set_postfix_str(f"Pass@k {p.pass_at_k:.3f}, {p.tokens} tok, {p.sequences} seq", refresh=False)
        self.bar.update(p.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command("eval")
@click.option("--model", "-m", default=None, help="Preset name, mlx-lm folder, .gguf file or hub id.")
@click.option("--data", "-d", required=True, help="gsm8k, math500, svamp, hf:NAME[:CONFIG], or a .jsonl/.json/.csv file.")
@click.option("--limit", type=int, default=None, help="First N problems only.")
@click.option("--method", type=click.Choice(METHODS), default="eager-adapt", show_default=True)
@click.option("--max-sequences", "-M", type=int, default=8, show_default=True, help="M: sequences per prompt.")
@click.option("--threshold", "-t", type=THRESHOLD, default=None,
              help="Entropy threshold theta, or auto (the preset's calibrated value, else calibrated on the first "
                   "8 prompts; default: the preset's).")
@click.option("--temperature", type=float, default=None, help="Sampling temperature (default: the preset's).")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling (default: the preset's).")
@click.option("--max-tokens", type=int, default=1024, show_default=True, help="Tokens per sequence.")
@click.option("--max-rows", type=int, default=64, show_default=True, help="Rows decoded per forward pass.")
@click.option("--optimistic-rows", is_flag=True,
              help="Admit a branching run when one row is free instead of reserving M rows (branches may be skipped).")
@click.option("--token-budget", type=int, default=None,
              help="eager-adapt / eager: pool this many generated tokens instead of M x |D| sequences.")
@click.option("--seed", type=int, default=55, show_default=True)
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="Run directory (default: runs/...).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--question-field", default=None, help="Question field of a data file.")
@click.option("--answer-field", default=None, help="Answer field of a data file.")
@click.option("--template", default=None, help="Prompt template containing {question}.")
@click.option("--split", default="test", show_default=True, help="Split of an hf: dataset.")
@click.option("--fallback", "fallbacks", multiple=True, type=click.Choice(["answer_is", "last_number"]),
              help="Answer extraction fallbacks when there is no \\boxed{} (default: answer_is).")
@click.option("--k", "ks", multiple=True, type=int, help="Also report unbiased pass@k for this k (repeatable).")
@click.option("--no-save-text", is_flag=True, help="Do not store completions in the records.")
@click.option("--save-trace", is_flag=True,
              help="Keep each run's branch tree and entropies (trees.jsonl) for `eager-mlx report --html`.")
@click.option("--no-chat", is_flag=True, help="Do not apply the chat template.")
@click.option("--max-kv-memory", default=None, help="Cap on KV cache memory, e.g. 2GB: forks past it are skipped.")
@beyond_options
def eval_cmd(model, data, limit, method, max_sequences, threshold, temperature, top_p, max_tokens, max_rows,
             save_trace, optimistic_rows, token_budget, seed, out, resume, question_field, answer_field, template, split,
             fallbacks, ks, no_save_text, no_chat, max_kv_memory, **beyond) -> None:
    """Evaluate a method on a dataset; one JSONL record per problem in the run directory."""
    from eager_mlx.evaluation.data import DataError, load_dataset
    from eager_mlx.evaluation.evaluate import EvalError, EvalSettings, evaluate
    from eager_mlx.api import config_for
    from eager_mlx.evaluation.grading import DEFAULT_FALLBACKS
    from eager_mlx.evaluation.scheduler import SchedulerConfig
    from eager_mlx.evaluation.shards import barrier, current_shard, rank_dirs, shard_run
    from eager_mlx.trees.pages import TRACES, TraceRecorder

    from .progress import parse_size

    if resume and out is None:
        raise click.ClickException("--resume needs --out RUN_DIR")
    kv_limit = parse_size(max_kv_memory)
    opts = beyond_from(beyond)
    try:
        dataset = load_dataset(data, question_field=question_field, answer_field=answer_field,
                               template=template, limit=limit, split=split)
        SchedulerConfig(method=method, max_sequences=max_sequences, max_rows=max_rows,
                        token_budget=token_budget).validate()  # fail before loading the model
    except (DataError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    from eager_mlx.models import ModelError

    try:
        engine, encode, preset, name = build_runner(model, max_rows, seed, chat=not no_chat, max_kv_memory=kv_limit,
                                                    **({"token_events": True} if opts.online else {}))
        extra = {"chat": not no_chat}
        if threshold == "auto":
            from eager_mlx.adaptive.calibrate import auto_threshold

            base = config_for(preset, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                              max_sequences=max_sequences)
            prompts = [encode(dataset.prompt(i)) for i in range(min(8, len(dataset)))]
            threshold, extra["threshold_auto"] = auto_threshold(engine, prompts, base, preset, seed=seed)
            click.echo(f"theta auto: {threshold:.4f} ({extra['threshold_auto']})", err=True)
        eager = config_for(preset, threshold=threshold, temperature=temperature, top_p=top_p,
                           max_tokens=max_tokens, max_sequences=max_sequences)
        sched = SchedulerConfig(method=method, max_sequences=max_sequences, threshold=eager.threshold,
                                max_rows=max_rows, reserve_rows=not optimistic_rows, token_budget=token_budget,
                                consensus=opts.consensus)
        settings = EvalSettings(scheduler=sched, eager=eager, seed=seed, ks=tuple(sorted(set(ks))) or (1,),
                                answer_fallbacks=tuple(fallbacks) or DEFAULT_FALLBACKS,
                                save_text=not no_save_text, confidence=opts.confidence,
                                confidence_vote=opts.confidence_vote, consensus_abort=opts.consensus_abort)
        shard = current_shard()  # rank r of n under mlx.launch: prompts i % n == r, results in RUN_DIR/rank-r
        run_dir, dataset = shard_run(out or (_default_out(data, method, max_sequences) if shard.size == 1 else None),
                                     dataset, shard)
        if save_trace:
            engine = TraceRecorder(engine, run_dir / TRACES)
        bar = _Bar()
        try:
            result = evaluate(engine, encode, dataset, settings, run_dir, model=name, resume=resume,
                              progress=bar, extra_manifest=extra)
        finally:
            bar.close()
    except (ModelError, EvalError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    summary = run_summary(run_dir)
    click.echo(format_table([summary]))
    click.echo(f"results: {run_dir}")
    if shard.size > 1:
        barrier()
        if shard.rank == 0 and len(rank_dirs(run_dir.parent)) == shard.size:
            click.echo(f"all {shard.size} ranks:\n" + format_table([run_summary(run_dir.parent)]))


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--plot", "plot", type=click.Path(path_type=Path), default=Path("pass_at_k_vs_tokens.png"),
              show_default=True, help="Where to write the PNG.")
@click.option("--no-plot", is_flag=True, help="Only print the table.")
@click.option("--html", "html", is_flag=True, help="Write a branch-tree page per prompt: RUN_DIR/trees/pN.html.")
def report(run_dirs: tuple[Path, ...], plot: Path, no_plot: bool, html: bool) -> None:
    """Compare runs side by side: Pass@1, Pass@k, cons@k, PR, #T, #S, time; plot Pass@k against tokens."""
    from eager_mlx.evaluation.evaluate import EvalError

    try:
        rows = [run_summary(d) for d in run_dirs]
    except (EvalError, KeyError) as e:
        raise click.ClickException(f"cannot read run: {e}") from None
    click.echo(format_table(rows))
    if len({r["hash"] for r in rows}) > 1:
        click.echo("note: the runs used different data (dataset hashes differ)")
    if not no_plot:
        try:
            plot_runs(rows, plot)
        except RuntimeError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"plot: {plot}")
    if html:
        from eager_mlx.trees.pages import write_tree_pages

        for d in run_dirs:
            click.echo(f"trees: {write_tree_pages(d)}")
