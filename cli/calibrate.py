"""`eager-mlx calibrate`: choose theta for a target mean number of sequences per prompt (docs/beyond.md)."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

import click

from .options import (ENGINE, GENERATION, FiniteFloatRange, IntRange, fail, not_empty, output_file, pop_settings,
                      setting_options)
from .progress import load_model

__all__ = ["calibrate"]


@click.command()
@click.option("--model", "-m", default=None, callback=not_empty,
              help="Preset name, mlx-lm folder, .gguf file or hub id.")
@click.option("--data", "-d", required=True,
              help="gsm8k-train (not an eval set), gsm8k, math500, svamp, hf:NAME[:CONFIG], or a .jsonl/.json/.csv "
                   "file.")
@click.option("--limit", type=IntRange(min=1), default=8, show_default=True,
              help="Prompts to sample (the first ones).")
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
@click.option("--plot", default=None, callback=output_file, help="PNG histogram with theta drawn.")
def calibrate(model: Optional[str], data: str, limit: int, samples: int, target_sequences: Optional[float],
              question_field, template, no_chat: bool, write_preset: bool, save_traces: Optional[Path],
              plot: Optional[Path], **settings: Any) -> None:
    """Choose theta so that the simulated mean number of sequences per prompt hits a target."""
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
        dataset = load_dataset(data, question_field=question_field, template=template, limit=limit)
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
