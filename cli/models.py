"""`eager-mlx models`: list the presets; `eager-mlx models pull NAME` fetches and converts one."""
from __future__ import annotations

import time

import click

from .progress import ProgressBars

__all__ = ["models"]


@click.group(invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """List the model presets and which are on disk."""
    if ctx.invoked_subcommand is not None:
        return
    from eager_mlx.models import DEFAULT_MODEL, list_presets, load_check_plan, on_disk

    presets = list_presets()
    width = max(len(p.name) for p in presets)
    for p in presets:
        mark = "on disk" if on_disk(p) else "-"
        default = " (default)" if p.name == DEFAULT_MODEL else ""
        click.echo(f"{p.name:<{width}}  {mark:<7}  {p.title}{default}")
        click.echo(f"{'':<{width}}  {'':<7}  {p.note}")
    click.echo(load_check_plan())


@models.command("pull")
@click.argument("name")
def pull(name: str) -> None:
    """Fetch and convert a model preset (or a .gguf file) into the cache."""
    from eager_mlx.models import ModelError, pull_model

    bars = ProgressBars()
    start = time.perf_counter()
    try:
        where = pull_model(name, progress=bars)
    except ModelError as e:
        raise click.ClickException(str(e)) from None
    finally:
        bars.close()
    click.echo(f"{name}: ready in {where} ({time.perf_counter() - start:.1f} s)")
