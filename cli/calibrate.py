"""`eager-mlx calibrate`: measure the model's token entropies and recommend theta."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from .options import ENGINE, GENERATION, FiniteFloatRange, fail, output_file, pop_settings, setting_options
from .progress import load_model

__all__ = ["calibrate"]


@click.command()
@click.option("--model", "-m", default=None, help="Preset name, mlx-lm folder, .gguf file or hub id.")
@click.option("--data", "-d", required=True, help="gsm8k, math500, svamp, hf:NAME[:CONFIG], or a .jsonl/.json/.csv file.")
@click.option("--limit", type=click.IntRange(min=1), default=8, show_default=True,
              help="Prompts to sample (one unbranched sample each).")
@click.option("--target-rate", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Fraction of tokens that should be above theta (default 0.02).")
@click.option("--percentile", type=FiniteFloatRange(0, 100, min_open=True), default=None,
              help="Theta = this percentile of the entropies instead.")
@setting_options(*GENERATION, only=("temperature", "top_p", "max_tokens"))
@setting_options(*ENGINE, only=("max_rows", "seed"))
@click.option("--question-field", default=None, help="Question field of a data file.")
@click.option("--template", default=None, help="Prompt template containing {question}.")
@click.option("--no-chat", is_flag=True, help="Do not apply the chat template.")
@click.option("--write-preset", is_flag=True,
              help="Store theta as the preset's user override (~/.cache/eager-mlx/presets/NAME.toml).")
@click.option("--plot", default=None, callback=output_file, help="PNG histogram with theta drawn.")
def calibrate(model: Optional[str], data: str, limit: int, target_rate: Optional[float], percentile: Optional[float],
              question_field, template, no_chat: bool, write_preset: bool, plot: Optional[Path],
              **settings: Any) -> None:
    """Recommend theta from the model's token-entropy distribution on a few prompts."""
    from eager_mlx import config_for
    from eager_mlx.adaptive import calibrate as cal_mod
    from eager_mlx.config import EngineConfig
    from eager_mlx.evaluation.data import load_dataset

    if target_rate is not None and percentile is not None:
        raise click.UsageError("give --target-rate or --percentile, not both")
    engine = EngineConfig(max_rows=settings.pop("max_rows"), seed=settings.pop("seed"))
    try:
        dataset = load_dataset(data, question_field=question_field, template=template, limit=limit)
        loaded = load_model(model)
        if write_preset and loaded.preset is None:
            raise click.UsageError("--write-preset needs a preset model (eager-mlx models lists them)")
        config = config_for(loaded.preset, **pop_settings(settings, *GENERATION))
        prompts = [loaded.encode(dataset.prompt(i), chat=not no_chat) for i in range(len(dataset))]
        result = cal_mod.calibrate(loaded.engine(engine, token_events=False), prompts, config, rate=target_rate,
                                   percentile=percentile)
    except ValueError as e:  # ModelError, DataError, SettingError, PromptError
        raise fail(e) from None
    s = result.summary
    click.echo(f"measured: {result.tokens} tokens of {result.prompts} prompts ({loaded.name}, unbranched samples)")
    click.echo("entropy (nats): " + "  ".join(f"{k} {s[k]:.3f}" for k in ("mean", "p50", "p90", "p95", "p99", "max")))
    click.echo("tokens above:   " + "  ".join(f"{k[5:]} {s[k]:.1%}" for k in s if k.startswith("rate>")))
    click.echo(f"theta = {result.threshold:.4f} for {result.target} ({result.rate:.2%} of tokens above)")
    try:
        if write_preset:
            path = cal_mod.write_preset_threshold(loaded.preset.name, result, source=f"data {data}")
            click.echo(f"preset: {path} (solve / eval use it; --threshold auto too)")
        if plot is not None:
            cal_mod.plot_histogram(result, plot, title=f"{loaded.name}: {result.tokens} tokens, {result.target}")
            click.echo(f"plot: {plot}")
    except (OSError, RuntimeError, ImportError) as e:  # a full disk; no matplotlib
        raise fail(e) from None
