"""`eager-mlx eval` (a method over a dataset, results in a run directory) and `eager-mlx report`."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import click

from eager_mlx.evaluation.scheduler import METHODS, POLICIES

from .interrupt import stop_on_signals
from .options import (ADAPTIVE, ENGINE, GENERATION, FiniteFloatRange, IntRange, fail, not_empty, output_dir,
                      pop_settings, setting_options, writable_dir, writable_file)
from .progress import EvalBar, load_model

__all__ = ["eval_cmd", "report"]

DATA_HELP = "gsm8k, math500, svamp, hf:NAME[:CONFIG], or a .jsonl/.json/.csv file."


def _default_out(data: str, method: str, m: int) -> Path:
    stem = Path(data).stem if ("/" in data or "." in data) else data.replace(":", "_").replace("/", "_")
    return Path("runs") / f"{stem}-{method}-M{m}-{time.strftime('%Y%m%d-%H%M%S')}"


def _resume_hint(out: Optional[Path], run_dir: Optional[Path]) -> str:
    """What to do after an interrupt: resume when the evaluation had begun (its manifest is written)."""
    if out is None or run_dir is None or not (run_dir / "manifest.json").exists():  # rundir.MANIFEST
        return "stopped before the evaluation began, nothing was written"
    return f"what is written in {out} is kept; to continue, run the same command with --resume --out {out}"


def _template(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    if value is not None and "{question}" not in value:
        raise click.BadParameter("the prompt template must contain {question}")
    return value


@click.command("eval")
@click.option("--model", "-m", default=None, callback=not_empty,
              help="Preset name, mlx-lm folder, .gguf file or hub id.")
@click.option("--data", "-d", required=True, callback=not_empty, help=DATA_HELP)
@click.option("--limit", type=IntRange(min=1), default=None, help="First N problems only.")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="[default: the preset's eval configuration, else eager-adapt]")
@click.option("--policy", type=click.Choice(POLICIES), default=None,
              help="eager-adapt / parallel-adapt / eager-parallel: who gets the pool. hit-m: the paper's (prompts "
                   "whose first run hit M); rank, disagree, sequential, fewest: every prompt ranked "
                   "(docs/evaluation.md). [default: the preset's eval configuration, else hit-m; sequential for "
                   "parallel-adapt and eager-parallel]")
@click.option("--budget", type=FiniteFloatRange(0, 4, min_open=True), default=1.0, show_default=True,
              help="eager-adapt / eager / parallel-adapt / eager-parallel: spend this fraction of M x |D| "
                   "sequences.")
@click.option("--first-samples", type=IntRange(min=1), default=None,
              help="parallel-adapt: independent samples every prompt gets before the pool is ranked (1..M) "
                   "[default: the preset's eval configuration, else 2].")
@setting_options(*GENERATION, exclude=("parallel",), auto_threshold=True)
@setting_options(*ENGINE)
@click.option("--reserve-rows", is_flag=True,
              help="Reserve M rows per branching run instead of preempting younger runs when a branch finds the "
                   "batch full (both exact; reserving leaves most rows idle).")
@click.option("--token-budget", type=IntRange(min=0), default=None,
              help="eager-adapt / eager: pool this many generated tokens instead of M x |D| sequences.")
@click.option("--out", "out", default=None, callback=output_dir,
              help="Run directory (default: runs/...).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out.")
@click.option("--store", "store", default=None,
              help="Run store: finished runs are kept here and read back instead of generated again "
                   "[default: runs/ in the cache dir].")
@click.option("--no-store", is_flag=True, help="Neither read nor keep runs in the run store.")
@click.option("--question-field", default=None, help="Question field of a data file.")
@click.option("--answer-field", default=None, help="Answer field of a data file.")
@click.option("--template", default=None, callback=_template, help="Prompt template containing {question}.")
@click.option("--split", default="test", show_default=True, help="Split of an hf: dataset.")
@click.option("--fewshot", type=IntRange(min=0), default=0, show_default=True,
              help="Exemplars before every question, as chat turns: the first N of the train split (gsm8k).")
@click.option("--system", default=None, help="A system prompt before every question.")
@click.option("--fallback", "fallbacks", multiple=True, type=click.Choice(["answer_is", "last_number"]),
              help="Answer extraction fallbacks when there is no \\boxed{} (default: answer_is).")
@click.option("--k", "ks", multiple=True, type=IntRange(min=1),
              help="Also report unbiased pass@k for this k (repeatable).")
@click.option("--no-save-text", is_flag=True, help="Do not store completions in the records.")
@click.option("--save-trace", is_flag=True,
              help="Keep each run's branch tree and entropies (trees.jsonl) for `eager-mlx report --html`.")
@click.option("--no-chat", is_flag=True, help="Do not apply the chat template.")
@setting_options(*ADAPTIVE)
def eval_cmd(model, data, limit, method, policy, budget, first_samples, reserve_rows, token_budget, out, resume, store,
             no_store, question_field, answer_field, template, split, fewshot, system, fallbacks, ks, no_save_text,
             save_trace, no_chat, **settings: Any) -> None:
    """Evaluate a method on a dataset; one JSONL record per problem in the run directory.

    SIGINT / SIGTERM stop it and say how to continue it (--resume); exit code 130 / 143."""
    if resume and out is None:
        raise click.UsageError("--resume needs --out RUN_DIR")
    if no_chat and (fewshot or system is not None):
        raise click.UsageError("--fewshot and --system make chat turns: they need the chat template (drop --no-chat)")
    generation, engine = pop_settings(settings, *GENERATION), pop_settings(settings, *ENGINE)
    where: dict[str, Any] = {"out": out, "run_dir": None}  # for the interrupt message
    with stop_on_signals(lambda: _resume_hint(where["out"], where["run_dir"])):
        from eager_mlx.adaptive.options import AdaptiveOptions  # inside: a Ctrl-C while they load is handled too
        from eager_mlx.evaluation.evaluate import EvalError
        from eager_mlx.evaluation.rundir import check_run_dir, run_lock
        from eager_mlx.evaluation.shards import barrier

        try:
            options = AdaptiveOptions.from_settings(pop_settings(settings, *ADAPTIVE))
            scheduler = _configuration(model, method, policy, generation,
                                       dict(budget=budget, reserve_rows=reserve_rows, token_budget=token_budget,
                                            first_samples=first_samples))
            dataset, shard, where["out"], where["run_dir"] = _prepare(
                data, out, scheduler, generation, engine,
                dict(question_field=question_field, answer_field=answer_field, template=template, limit=limit,
                     split=split, fewshot=fewshot, system=system))
            store_dir = None if no_store else _store_dir(store)
            with run_lock(where["run_dir"]):  # a second eval of this directory is refused from here on
                check_run_dir(where["run_dir"], resume)
                loaded = load_model(model)
                eval_settings, extra = _settings(loaded, dataset, generation, engine, options, ks=ks,
                                                 fallbacks=fallbacks, save_text=not no_save_text, chat=not no_chat,
                                                 **scheduler)
                _evaluate(loaded, dataset, eval_settings, where["run_dir"], max_kv_memory=engine["max_kv_memory"],
                          prefix_cache=not engine["no_prefix_cache"], chat=not no_chat, save_trace=save_trace,
                          extra_manifest=extra, resume=resume, store_dir=store_dir)
        except (EvalError, ValueError, OSError) as e:  # ModelError, DataError, SettingError; a full disk
            raise fail(e) from None
    _print_results(where["run_dir"], shard, barrier)


def _configuration(model: Optional[str], method: Optional[str], policy: Optional[str], generation: dict,
                   scheduler: dict) -> dict:
    """The scheduler options (method, policy, ...) with the preset's eval configuration filled in where it applies;
    its theta and branch rule go into `generation` unless given."""
    from eager_mlx.evaluation.policies import eval_defaults
    from eager_mlx.models import DEFAULT_MODEL, get_preset
    from eager_mlx.models.errors import ModelError

    try:
        preset = get_preset(model or DEFAULT_MODEL)
    except ModelError:  # a folder, a .gguf file or a hub id: no preset
        preset = None
    method, policy, chosen = eval_defaults(preset, method, policy)
    if chosen is not None:
        if generation.get("threshold") is None:
            generation["threshold"] = chosen.threshold
        if generation.get("branch_rule") is None:
            generation["branch_rule"] = chosen.branch_rule
        if scheduler.get("first_samples") is None:
            scheduler["first_samples"] = chosen.first_samples
        scheduler["eval_defaults"] = f"preset {preset.name} ({chosen.data}, {chosen.date})"
    return dict(scheduler, method=method, policy=policy)


def _store_dir(store: Optional[Path]) -> Path:
    from eager_mlx.evaluation.store import default_store_dir

    return writable_dir(store if store is not None else default_store_dir(), "'--store'")


def _prepare(data: str, out: Optional[Path], scheduler: dict, generation: dict, engine: dict,
             data_options: dict) -> tuple[Any, Any, Path, Path]:
    """What is checked before the run directory is locked and the model loads: the scheduler settings, the data.
    Returns (this rank's dataset, the shard, the --out folder, this rank's run directory)."""
    from eager_mlx.evaluation.data import load_dataset
    from eager_mlx.evaluation.scheduler import SchedulerConfig
    from eager_mlx.evaluation.shards import current_shard, shard_run

    SchedulerConfig(method=scheduler["method"], policy=scheduler["policy"], budget=scheduler["budget"],
                    max_sequences=generation["max_sequences"], max_rows=engine["max_rows"],
                    token_budget=scheduler["token_budget"], first_samples=scheduler["first_samples"]).validate()
    dataset = load_dataset(data, **data_options)
    shard = current_shard()  # rank r of n under mlx.launch: prompts i % n == r, results in RUN_DIR/rank-r
    if out is None and shard.size == 1:
        out = _default_out(data, scheduler["method"], generation["max_sequences"])
    run_dir, dataset = shard_run(out, dataset, shard)
    return dataset, shard, out, run_dir


def _evaluate(loaded: Any, dataset: Any, settings: Any, run_dir: Path, **kwargs: Any) -> None:
    from eager_mlx.evaluation.evaluate import evaluate_model

    bar = EvalBar()
    try:
        evaluate_model(loaded, dataset, settings, run_dir, progress=bar, **kwargs)
    finally:
        bar.close()


def _settings(loaded: Any, dataset: Any, generation: dict, engine: dict, options: Any, *, chat: bool,
              fallbacks: tuple, ks: tuple, save_text: bool, eval_defaults: Optional[str] = None, **scheduler: Any):
    """EvalSettings from the options; `--threshold auto` is resolved on the first 8 prompts."""
    import dataclasses

    from eager_mlx import config_for
    from eager_mlx.adaptive.calibrate import auto_threshold_for
    from eager_mlx.evaluation.evaluate import EvalSettings
    from eager_mlx.evaluation.grading import DEFAULT_FALLBACKS

    seed, max_rows = engine["seed"], engine["max_rows"]
    auto = generation.get("threshold") == "auto"
    eager = config_for(loaded.preset, **dict(generation, threshold=None if auto else generation.get("threshold")))
    extra = {"eval_defaults": eval_defaults}
    if auto:
        prompts = [loaded.encode(dataset.prompt(i), chat=chat) for i in range(min(8, len(dataset)))]
        theta, extra["threshold_auto"] = auto_threshold_for(loaded, prompts, eager, seed=seed)
        eager = dataclasses.replace(eager, threshold=theta)
        click.echo(f"theta auto: {theta:.4f} ({extra['threshold_auto']})", err=True)
    settings = EvalSettings.build(eager, options, max_rows=max_rows, seed=seed, ks=tuple(sorted(set(ks))) or (1,),
                                  answer_fallbacks=tuple(fallbacks) or DEFAULT_FALLBACKS, save_text=save_text,
                                  **scheduler)
    settings.scheduler.validate()
    return settings, extra


def _print_results(run_dir: Path, shard: Any, barrier: Any) -> None:
    """This rank's table; in a sharded run, rank 0 then waits for every rank and prints the whole run."""
    from eager_mlx.evaluation.report import format_table, run_summary
    from eager_mlx.evaluation.shards import rank_dirs

    row = run_summary(run_dir)
    click.echo(format_table([row]))
    if row["skipped"]:
        click.echo(f"note: {row['skipped']} prompts were skipped, too long for the model's context "
                   f"(their records in results.jsonl say why); the metrics are over the others")
    replayed = row["store"].get("replayed", 0)
    if replayed:
        click.echo(f"note: {replayed} runs were read from the run store, not generated (their tokens count as cost; "
                   "time and tok/s cover only what was generated now); --no-store to time every run")
    click.echo(f"results: {run_dir}")
    if shard.size > 1:
        barrier()
    if shard.size > 1 and shard.rank == 0 and len(rank_dirs(run_dir.parent)) == shard.size:
        click.echo(f"all {shard.size} ranks:\n" + format_table([run_summary(run_dir.parent)]))


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--plot", "plot", default="pass_at_k_vs_tokens.png", show_default=True, help="Where to write the PNG.")
@click.option("--no-plot", is_flag=True, help="Only print the table.")
@click.option("--html", "html", is_flag=True, help="Write a branch-tree page per prompt: RUN_DIR/trees/pN.html.")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="A parallel run of the same problems to compare every run with at equal generated tokens "
                   "[default: the first parallel run given].")
def report(run_dirs: tuple[Path, ...], plot: Path, no_plot: bool, html: bool, baseline: Optional[Path]) -> None:
    """Compare runs side by side: Pass@1, Pass@k, cons@k, PR, #T, #S, time; each run against parallel sampling at
    equal generated tokens (with a parallel run); plot Pass@k against tokens with parallel's frontier."""
    from eager_mlx.evaluation.evaluate import EvalError
    from eager_mlx.evaluation.report import (equal_cost_rows, find_baseline, format_equal_cost, format_table,
                                             plot_runs, run_summary)

    # output paths first: nothing is computed for a plot or pages that cannot be written
    plot = None if no_plot else writable_file(plot, "'--plot'")
    pages = [writable_dir(Path(d) / "trees", "'--html'") for d in run_dirs] if html else []
    try:
        rows = [run_summary(d) for d in run_dirs]
        base = find_baseline(run_dirs, baseline)
    except (EvalError, KeyError) as e:
        raise click.ClickException(f"cannot read run: {e}") from None
    except ValueError as e:
        raise fail(e) from None
    click.echo(format_table(rows))
    try:
        compared = equal_cost_rows(run_dirs, base) if base is not None else []
    except ValueError as e:  # asked for: an error; found among the runs: a note
        if baseline is not None:
            raise fail(e) from None
        compared, base = [], None
        click.echo(f"note: no equal-cost comparison: {e}")
    if compared:
        click.echo("\n" + format_equal_cost(compared, base))
    if len({r["hash"] for r in rows}) > 1:
        click.echo("note: the runs used different data (dataset hashes differ)")
    try:
        if plot is not None:
            plot_runs(rows, plot, base)
            click.echo(f"plot: {plot}")
        if pages:
            from eager_mlx.evaluation.pages import write_tree_pages

            for d in run_dirs:
                click.echo(f"trees: {write_tree_pages(d)}")
    except (EvalError, RuntimeError, OSError) as e:
        raise fail(e) from None
