"""`eager-mlx models`: list the presets; `eager-mlx models pull NAME` fetches and converts one."""
from __future__ import annotations

import time

import click

__all__ = ["models"]


@click.group(invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """List the model presets and which are on disk."""
    if ctx.invoked_subcommand is not None:
        return
    from eager_mlx.models import DEFAULT_MODEL, list_presets, on_disk

    presets = list_presets()
    width = max(len(p.name) for p in presets)
    for p in presets:
        mark = "on disk" if on_disk(p) else "-"
        default = " (default)" if p.name == DEFAULT_MODEL else ""
        click.echo(f"{p.name:<{width}}  {mark:<7}  {p.title}{default}")
        click.echo(f"{'':<{width}}  {'':<7}  {p.note}")


class _Bars:
    """One tqdm bar per stage ("fetch ...", "convert"), on stderr."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        kind = stage.split()[0]
        if kind != self.stage:
            self.close()
            self.stage = kind
            self.bar = tqdm(total=total, desc=kind, unit="part" if kind == "fetch" else "tensor",
                            leave=True)
        if stage != kind:
            self.bar.set_postfix_str(stage[len(kind) + 1:])
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@models.command("pull")
@click.argument("name")
def pull(name: str) -> None:
    """Fetch and convert a model preset (or a .gguf file) into the cache."""
    from eager_mlx.models import ModelError, pull_model

    bars = _Bars()
    start = time.perf_counter()
    try:
        where = pull_model(name, progress=bars)
    except ModelError as e:
        raise click.ClickException(str(e)) from None
    finally:
        bars.close()
    click.echo(f"{name}: ready in {where} ({time.perf_counter() - start:.1f} s)")
