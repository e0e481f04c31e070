"""`eager-mlx calibrate`: measure the model's token entropies and recommend theta; `--threshold auto` support."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

__all__ = ["calibrate", "THRESHOLD", "ThresholdType", "solve_auto_threshold"]


class ThresholdType(click.ParamType):
    """A theta in nats, or "auto" (see eager_mlx.adaptive.calibrate.auto_threshold)."""

    name = "THETA|auto"

    def convert(self, value: Any, param, ctx) -> Any:
        if value is None or isinstance(value, float) or value == "auto":
            return value
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)


THRESHOLD = ThresholdType()


@click.command()
@click.option("--model", "-m", default=None, help="Preset name, mlx-lm folder, .gguf file or hub id.")
@click.option("--data", "-d", required=True, help="gsm8k, math500, svamp, hf:NAME[:CONFIG], or a .jsonl/.json/.csv file.")
@click.option("--limit", type=int, default=8, show_default=True, help="Prompts to sample (one unbranched sample each).")
@click.option("--target-rate", type=float, default=None,
              help="Fraction of tokens that should be above theta (default 0.02).")
@click.option("--percentile", type=float, default=None, help="Theta = this percentile of the entropies instead.")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Tokens per sample.")
@click.option("--temperature", type=float, default=None, help="Sampling temperature (default: the preset's).")
@click.option("--max-rows", type=int, default=16, show_default=True, help="Prompts decoded together.")
@click.option("--seed", type=int, default=55, show_default=True)
@click.option("--question-field", default=None, help="Question field of a data file.")
@click.option("--template", default=None, help="Prompt template containing {question}.")
@click.option("--no-chat", is_flag=True, help="Do not apply the chat template.")
@click.option("--write-preset", is_flag=True,
              help="Store theta as the preset's user override (~/.cache/eager-mlx/presets/NAME.toml).")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="PNG histogram with theta drawn.")
def calibrate(model: Optional[str], data: str, limit: int, target_rate: Optional[float], percentile: Optional[float],
              max_tokens: int, temperature: Optional[float], max_rows: int, seed: int, question_field, template,
              no_chat: bool, write_preset: bool, plot: Optional[Path]) -> None:
    """Recommend theta from the model's token-entropy distribution on a few prompts."""
    from eager_mlx.adaptive import calibrate as cal_mod
    from eager_mlx.evaluation.data import DataError, load_dataset
    from eager_mlx.api import config_for
    from eager_mlx.models import ModelError

    from .eval import build_runner

    if target_rate is not None and percentile is not None:
        raise click.ClickException("give --target-rate or --percentile, not both")
    try:
        dataset = load_dataset(data, question_field=question_field, template=template, limit=limit)
        if len(dataset) == 0:
            raise click.ClickException("the dataset is empty")
        engine, encode, preset, name = build_runner(model, max_rows, seed, chat=not no_chat)
        if write_preset and preset is None:
            raise click.ClickException("--write-preset needs a preset model (eager-mlx models lists them)")
        config = config_for(preset, temperature=temperature, max_tokens=max_tokens)
        prompts = [encode(dataset.prompt(i)) for i in range(len(dataset))]
        result = cal_mod.calibrate(engine, prompts, config, rate=target_rate, percentile=percentile)
    except (DataError, ModelError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    s = result.summary
    click.echo(f"measured: {result.tokens} tokens of {result.prompts} prompts ({name}, unbranched samples)")
    click.echo("entropy (nats): " + "  ".join(f"{k} {s[k]:.3f}" for k in ("mean", "p50", "p90", "p95", "p99", "max")))
    click.echo("tokens above:   " + "  ".join(f"{k[5:]} {s[k]:.1%}" for k in s if k.startswith("rate>")))
    click.echo(f"theta = {result.threshold:.4f} for {result.target} ({result.rate:.2%} of tokens above)")
    if write_preset:
        path = cal_mod.write_preset_threshold(preset.name, result, source=f"data {data}")
        click.echo(f"preset: {path} (solve / eval use it; --threshold auto too)")
    if plot is not None:
        cal_mod.plot_histogram(result, plot, title=f"{name}: {result.tokens} tokens, {result.target}")
        click.echo(f"plot: {plot}")


def solve_auto_threshold(loaded: Any, question: str, config: Any, *, seed: int, chat: bool,
                         system: Optional[str]) -> tuple[float, str]:
    """`solve --threshold auto`: the preset's stored theta, else one unbranched sample of the question itself."""
    from eager_mlx.adaptive.calibrate import auto_threshold, stored_threshold
    from eager_mlx.engine.engine import Engine
    from eager_mlx.api import encode_prompt

    preset = loaded.preset
    tokens = encode_prompt(loaded.tokenizer, question, chat=chat, system=system,
                           chat_template_kwargs=preset.chat_template_kwargs if preset is not None else None)
    engine = None
    if stored_threshold(preset) is None:
        engine = Engine(loaded.model, loaded.tokenizer, max_rows=1, seed=seed, token_events=False,
                        context_length=preset.context_length if preset is not None else None)
    return auto_threshold(engine, [tokens], config, preset)
