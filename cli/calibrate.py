"""`eager-mlx calibrate`: choose theta for a target mean number of sequences per prompt (docs/beyond.md)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import click

from .options import (ENGINE, GENERATION, FiniteFloatRange, IntRange, fail, not_empty, output_dir, output_file,
                      pop_settings, setting_options, writable_dir)
from .progress import RunBars, load_model

__all__ = ["calibrate"]


@click.command()
@click.option("--model", "-m", default=None, callback=not_empty,
              help="Preset name, mlx-lm folder, .gguf file or hub id.")
@click.option("--data", "-d", default="gsm8k-train", show_default=True, callback=not_empty,
              help="gsm8k-train (not an eval set), gsm8k, math500, svamp, hf:NAME[:CONFIG], or a .jsonl/.json/.csv "
                   "file.")
@click.option("--limit", type=IntRange(min=1), default=None,
              help="Prompts to use (the first ones) [default: 8; 50 with the frontier objective].")
@click.option("--samples", type=IntRange(min=1), default=4, show_default=True,
              help="Unbranched samples per prompt.")
@click.option("--target-sequences", type=FiniteFloatRange(min=1), default=None,
              help="Mean sequences per prompt (#S) to aim at, simulated with the branch rule [default: M/4].")
@setting_options(*GENERATION, only=("max_sequences", "temperature", "top_p", "max_tokens"))
@setting_options(*ENGINE, only=("max_rows", "seed"))
@click.option("--question-field", default=None, help="Question field of a data file.")
@click.option("--template", default=None, help="Prompt template containing {question}.")
@click.option("--no-chat", is_flag=True, help="Do not apply the chat template.")
@click.option("--write-preset", is_flag=True,
              help="Store theta and how it was obtained as the preset's user override "
                   "(~/.cache/eager-mlx/presets/NAME.toml).")
@click.option("--save-traces", default=None, callback=output_file,
              help="Write the measured entropy traces here (JSON).")
@click.option("--plot", default=None, callback=output_file,
              help="PNG: the histogram with theta drawn; with the frontier objective, Pass@k against tokens.")
@click.option("--objective", type=click.Choice(["sequences", "frontier"]), default="sequences", show_default=True,
              help="sequences: theta for a target mean #S; frontier: eval's configuration (policy, theta, branch "
                   "rule) that does best against parallel sampling at equal tokens on this (dev) data.")
@click.option("--out", "out", default=None, callback=output_dir,
              help="frontier: folder of the grid's eval runs (resumable) [default: runs/frontier-MODEL-DATA].")
@click.option("--thresholds", default=None,
              help="frontier: comma-separated thetas [default: the preset's theta x 0.9, 1, 1.1].")
@click.option("--branch-rules", default="top2,keep", show_default=True, help="frontier: comma-separated rules.")
@click.option("--policies", default="hit-m,rank,disagree,sequential", show_default=True,
              help="frontier: eager-adapt policies (eager-parallel and parallel-adapt are tried with "
                   "sequential, disagree and fewest).")
@click.option("--methods", default="eager-adapt,eager-parallel,parallel-adapt", show_default=True,
              help="frontier: the methods of the grid, comma-separated.")
@click.option("--first-samples", default=None,
              help="frontier: parallel-adapt's first-run sizes to try, comma-separated (each 1..M) [default: 2].")
@click.option("--store", "store", default=None,
              help="frontier: run store [default: runs/ in the cache dir].")
def calibrate(model: Optional[str], data: str, limit: int, samples: int, target_sequences: Optional[float],
              question_field, template, no_chat: bool, write_preset: bool, save_traces: Optional[Path],
              plot: Optional[Path], objective: str, out: Optional[Path], thresholds: Optional[str],
              branch_rules: str, policies: str, methods: str, first_samples: Optional[str], store: Optional[Path],
              **settings: Any) -> None:
    """Choose theta so that the simulated mean number of sequences per prompt hits a target, or (--objective
    frontier) eval's configuration by its equal-cost result against parallel sampling."""
    if data in ("gsm8k", "math500", "svamp"):
        click.echo(f"note: {data} is a test split; evaluate afterwards on data it was not tuned on", err=True)
    if objective == "frontier":
        return _frontier(model, data, limit or 50, question_field, template, no_chat, write_preset, plot, out,
                         dict(thresholds=thresholds, branch_rules=branch_rules, policies=policies, methods=methods,
                              first_samples=first_samples), store, settings)
    from eager_mlx import config_for
    from eager_mlx.adaptive import calibrate as cal_mod
    from eager_mlx.config import EngineConfig
    from eager_mlx.evaluation.data import load_dataset

    params = dict(click.get_current_context().params)
    engine = EngineConfig(max_rows=settings.pop("max_rows"), seed=settings.pop("seed"))
    if samples > engine.max_rows:
        raise click.UsageError(f"--samples {samples} needs --max-rows >= {samples} (got {engine.max_rows})")
    generation = pop_settings(settings, *GENERATION)
    try:
        target = cal_mod.resolve_target(target_sequences, config_for(None, **generation).max_sequences)
        dataset = load_dataset(data, question_field=question_field, template=template, limit=limit or 8)
        loaded = load_model(model)
        if write_preset and loaded.preset is None:
            raise click.UsageError("--write-preset needs a preset model (eager-mlx models lists them)")
        config = config_for(loaded.preset, **generation)
        prompts = [loaded.encode(dataset.prompt(i), chat=not no_chat) for i in range(len(dataset))]
        traces = cal_mod.measure_traces(loaded.engine(engine, token_events=False), prompts, config, samples,
                                        progress=_progress)
        result = cal_mod.calibrate(None, prompts, config, target_sequences=target, seed=engine.seed, traces=traces)
    except ValueError as e:  # ModelError, DataError, SettingError, PromptError
        raise fail(e) from None
    s = result.summary
    click.echo(f"measured: {result.tokens} tokens of {result.prompts} prompts x {result.samples} samples "
               f"({loaded.name}, unbranched)")
    click.echo("entropy (nats): " + "  ".join(f"{k} {s[k]:.3f}" for k in ("mean", "p50", "p90", "p95", "p99", "max")))
    click.echo("tokens above:   " + "  ".join(f"{k[5:]} {s[k]:.1%}" for k in s if k.startswith("rate>")))
    click.echo(f"theta = {result.threshold:g}: simulated mean #S {result.mean_sequences:.3f} for {result.target} "
               f"({result.rate:.2%} of tokens above theta)")
    try:
        if save_traces is not None:
            cal_mod.write_traces(save_traces, traces)
            click.echo(f"traces: {save_traces}")
        if write_preset:
            params.update(model=loaded.preset.name, target_sequences=target)
            path = cal_mod.write_preset_threshold(loaded.preset.name, result, data, _command(params))
            click.echo(f"preset: {path} (solve / eval use it; --threshold auto too)")
        if plot is not None:
            cal_mod.plot_histogram(result, plot, title=f"{loaded.name}: {result.tokens} tokens, {result.target}")
            click.echo(f"plot: {plot}")
    except (OSError, RuntimeError, ImportError) as e:  # a full disk; no matplotlib
        raise fail(e) from None


def _csv(text: str, what: str, cast: Any = str, allowed: Optional[tuple] = None) -> list:
    items = [x.strip() for x in text.split(",") if x.strip()]
    try:
        values = [cast(x) for x in items]
    except ValueError:
        raise click.BadParameter(f"not a comma-separated list of numbers: {text!r}", param_hint=what) from None
    bad = [v for v in values if allowed is not None and v not in allowed]
    if not values or bad:
        raise click.BadParameter(f"{bad[0]!r} is not one of {', '.join(allowed)}" if bad else "empty list",
                                 param_hint=what)
    return values


def _frontier(model, data, limit, question_field, template, no_chat, write_preset, plot, out, grid_options,
              store, settings) -> None:
    """`calibrate --objective frontier`: the grid of eval runs, the frontier table and plot, the preset's choice.
    `grid_options`: the --thresholds, --branch-rules, --policies, --methods and --first-samples texts."""
    import math

    from eager_mlx import config_for
    from eager_mlx.adaptive.options import AdaptiveOptions
    from eager_mlx.config import BRANCH_RULES
    from eager_mlx.evaluation import frontier as fr
    from eager_mlx.evaluation.data import load_dataset
    from eager_mlx.evaluation.evaluate import EvalSettings
    from eager_mlx.evaluation.report import equal_cost_rows, format_equal_cost, plot_runs
    from eager_mlx.evaluation.scheduler import POLICIES
    from eager_mlx.evaluation.store import default_store_dir

    rules = _csv(grid_options["branch_rules"], "'--branch-rules'", allowed=BRANCH_RULES)
    chosen_policies = _csv(grid_options["policies"], "'--policies'", allowed=POLICIES)
    methods = _csv(grid_options["methods"], "'--methods'", allowed=fr.GRID_METHODS)
    thresholds, sizes = grid_options["thresholds"], grid_options["first_samples"]
    thetas = _csv(thresholds, "'--thresholds'", float) if thresholds else None
    if thetas and not all(math.isfinite(t) and t >= 0 for t in thetas):
        raise click.BadParameter("thetas must be finite and >= 0", param_hint="'--thresholds'")
    first = _csv(sizes, "'--first-samples'", int) if sizes else [None]
    engine = {"max_rows": settings.pop("max_rows"), "seed": settings.pop("seed")}
    generation = pop_settings(settings, *GENERATION)
    m = generation["max_sequences"]  # M has no preset value: known before the model loads
    if not all(f is None or 1 <= f <= m for f in first):
        raise click.BadParameter(f"each size must be in 1..M ({m})", param_hint="'--first-samples'")
    out = writable_dir(out or Path("runs") / f"frontier-{model or 'default'}-{Path(data).stem}", "'--out'")
    store_dir = writable_dir(store if store is not None else default_store_dir(), "'--store'")
    bars = RunBars("frontier")
    try:
        dataset = load_dataset(data, question_field=question_field, template=template, limit=limit)
        loaded = load_model(model)
        if write_preset and loaded.preset is None:
            raise click.UsageError("--write-preset needs a preset model (eager-mlx models lists them)")
        eager = config_for(loaded.preset, **generation)
        thetas = thetas or [round(eager.threshold * f, 3) for f in (0.9, 1.0, 1.1)]
        base = EvalSettings.build(eager, AdaptiveOptions(), method="parallel", **engine)
        candidates = fr.grid(thetas, rules, chosen_policies, first_samples=first, methods=methods)
        results = fr.run_frontier(loaded, dataset, base, candidates, out, store_dir, chat=not no_chat,
                                  progress=bars.next)
        rows = equal_cost_rows([out / c.name for c in candidates], out / "parallel")
    except ValueError as e:
        raise fail(e) from None
    finally:
        bars.close()
    table = format_equal_cost(rows, out / "parallel")
    (out / "frontier.txt").write_text(table + "\n", encoding="utf-8")
    click.echo(table)
    best = fr.choose(results)
    _frontier_outcome(best, loaded, data, write_preset)
    if plot is not None:
        plot_runs([r for r, _ in rows], plot, out / "parallel")
        click.echo(f"plot: {plot}")


def _frontier_outcome(best: Any, loaded: Any, data: str, write_preset: bool) -> None:
    """Say which configuration won and, with --write-preset, store it as the preset's eval defaults."""
    from datetime import date

    from eager_mlx.evaluation import frontier as fr
    from eager_mlx.models.preset import PresetEval

    if best is None:
        click.echo("no configuration spent at most parallel's tokens: nothing to choose")
        return
    c, e = best
    evidence = (f"Pass@k {e.pass_diff:+.3f} [{e.pass_ci[0]:+.3f}, {e.pass_ci[1]:+.3f}], cons@k {e.cons_diff:+.3f} "
                f"[{e.cons_ci[0]:+.3f}, {e.cons_ci[1]:+.3f}] vs parallel at {e.tokens_ratio:.0%} of its tokens, "
                f"{e.problems} problems")
    click.echo(f"chosen: {c.name}: {evidence}")
    if write_preset:
        record = PresetEval(method=c.method, policy=c.policy, threshold=c.threshold or loaded.preset.threshold,
                            branch_rule=c.branch_rule, data=data, command=shlex.join(["eager-mlx", *sys.argv[1:]]),
                            date=date.today().isoformat(), evidence=evidence, first_samples=c.first_samples)
        click.echo(f"preset: {fr.write_preset_eval(loaded.preset.name, record)} (eval runs it by default)")


def _progress(done: int, total: int) -> None:
    click.echo(f"\rsampled {done}/{total} prompts", nl=done == total, err=True)


def _command(params: dict[str, Any]) -> str:
    """The calibrate command line with these settings (output options left out)."""
    parts = ["eager-mlx", "calibrate"]
    for key, value in params.items():
        if value is None or value is False or key in ("write_preset", "save_traces", "plot"):
            continue
        parts.append(f"--{key.replace('_', '-')}")
        if value is not True:
            parts.append(f"{value:g}" if isinstance(value, float) else str(value))
    return shlex.join(parts)
