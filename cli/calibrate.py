"""`eager-mlx calibrate`: measure the model's token entropies and recommend theta; `--threshold auto` support."""
from __future__ import annotations

import shlex
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
@click.option("--data", "-d", required=True,
              help="gsm8k-train (not an eval set), gsm8k, math500, svamp, hf:NAME[:CONFIG], or a .jsonl/.json/.csv file.")
@click.option("--limit", type=int, default=8, show_default=True, help="Prompts to sample (the first ones).")
@click.option("--samples", type=int, default=4, show_default=True, help="Unbranched samples per prompt.")
@click.option("--max-sequences", "-M", type=int, default=8, show_default=True, help="M of the runs to calibrate for.")
@click.option("--target-sequences", type=float, default=None,
              help="Mean sequences per prompt (#S) to aim at, simulated with the branch rule (default M/4).")
@click.option("--max-tokens", type=int, default=1024, show_default=True, help="Tokens per sample (and per simulated row).")
@click.option("--temperature", type=float, default=None, help="Sampling temperature (default: the preset's).")
@click.option("--max-rows", type=int, default=16, show_default=True, help="Rows decoded together.")
@click.option("--seed", type=int, default=55, show_default=True, help="Sampling and simulation seed.")
@click.option("--question-field", default=None, help="Question field of a data file.")
@click.option("--template", default=None, help="Prompt template containing {question}.")
@click.option("--no-chat", is_flag=True, help="Do not apply the chat template.")
@click.option("--write-preset", is_flag=True,
              help="Store theta and how it was obtained as the preset's user override (~/.cache/eager-mlx/presets/NAME.toml).")
@click.option("--save-traces", type=click.Path(path_type=Path), default=None,
              help="Write the measured entropy traces here (JSON).")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="PNG histogram with theta drawn.")
def calibrate(model: Optional[str], data: str, limit: int, samples: int, max_sequences: int,
              target_sequences: Optional[float], max_tokens: int, temperature: Optional[float], max_rows: int,
              seed: int, question_field, template, no_chat: bool, write_preset: bool, save_traces: Optional[Path],
              plot: Optional[Path]) -> None:
    """Choose theta so that the simulated mean number of sequences per prompt hits a target."""
    from eager_mlx.adaptive import calibrate as cal_mod
    from eager_mlx.api import config_for
    from eager_mlx.evaluation.data import DataError, load_dataset
    from eager_mlx.models import ModelError

    from .eval import build_runner

    if not 1 <= samples <= max_rows:
        raise click.ClickException(f"--samples must be in [1, --max-rows={max_rows}], got {samples}")
    try:
        target_sequences = cal_mod.resolve_target(target_sequences, max_sequences)
        config_for(None, max_sequences=max_sequences, max_tokens=max_tokens).validate()
        dataset = load_dataset(data, question_field=question_field, template=template, limit=limit)
    except (DataError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    try:
        engine, encode, preset, name = build_runner(model, max_rows, seed, chat=not no_chat)
        if write_preset and preset is None:
            raise click.ClickException("--write-preset needs a preset model (eager-mlx models lists them)")
        config = config_for(preset, temperature=temperature, max_tokens=max_tokens, max_sequences=max_sequences)
        prompts = [encode(dataset.prompt(i)) for i in range(len(dataset))]
        traces = cal_mod.measure_traces(engine, prompts, config, samples, progress=_progress)
        if save_traces is not None:
            cal_mod.write_traces(save_traces, traces)
        result = cal_mod.calibrate(engine, prompts, config, target_sequences=target_sequences, seed=seed, traces=traces)
    except (DataError, ModelError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    s = result.summary
    click.echo(f"measured: {result.tokens} tokens of {result.prompts} prompts x {result.samples} samples "
               f"({name}, unbranched)")
    click.echo("entropy (nats): " + "  ".join(f"{k} {s[k]:.3f}" for k in ("mean", "p50", "p90", "p95", "p99", "max")))
    click.echo("tokens above:   " + "  ".join(f"{k[5:]} {s[k]:.1%}" for k in s if k.startswith("rate>")))
    click.echo(f"theta = {result.threshold:g}: simulated mean #S {result.mean_sequences:.3f} for {result.target} "
               f"({result.rate:.2%} of tokens above theta)")
    if write_preset:
        params = dict(click.get_current_context().params, model=preset.name, target_sequences=target_sequences)
        path = cal_mod.write_preset_threshold(preset.name, result, data, _command(params))
        click.echo(f"preset: {path} (solve / eval use it; --threshold auto too)")
    if plot is not None:
        cal_mod.plot_histogram(result, plot, title=f"{name}: {result.tokens} tokens, {result.target}")
        click.echo(f"plot: {plot}")


def _progress(done: int, total: int) -> None:
    click.echo(f"\rsampled {done}/{total} prompts", nl=done == total, err=True)


def _command(params: dict[str, Any]) -> str:
    """The calibrate command line that reproduces these settings (output options left out)."""
    parts = ["eager-mlx", "calibrate"]
    for key, value in params.items():
        if value is not None and value is not False and key not in ("write_preset", "save_traces", "plot"):
            parts += [f"--{key.replace('_', '-')}"] + ([] if value is True else [f"{value:g}" if isinstance(value, float) else str(value)])
    return shlex.join(parts)


def solve_auto_threshold(loaded: Any, question: str, config: Any, *, seed: int, chat: bool,
                         system: Optional[str]) -> tuple[float, str]:
    """`solve --threshold auto`: the preset's calibrated theta, else calibrated on unbranched samples of the question."""
    from eager_mlx.adaptive.calibrate import DEFAULT_SAMPLES, auto_threshold, stored_threshold
    from eager_mlx.engine.engine import Engine
    from eager_mlx.api import encode_prompt

    preset = loaded.preset
    tokens = encode_prompt(loaded.tokenizer, question, chat=chat, system=system,
                           chat_template_kwargs=preset.chat_template_kwargs if preset is not None else None)
    engine = None
    if stored_threshold(preset) is None:
        engine = Engine(loaded.model, loaded.tokenizer, max_rows=DEFAULT_SAMPLES, seed=seed, token_events=False,
                        context_length=preset.context_length if preset is not None else None)
    return auto_threshold(engine, [tokens], config, preset, seed=seed)
