"""Progress displays shared by the commands: model fetch/convert bars, the eval bar, loading a model."""
from __future__ import annotations

import sys


__all__ = ["ProgressBars", "EvalBar", "RunBars", "load_model"]


class ProgressBars:
    """Model fetch/convert progress: one tqdm bar per stage ("fetch ...", "convert"), on stderr."""

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


def load_model(ref):
    """`eager_mlx.load(ref)` with fetch/convert progress bars on stderr."""
    import eager_mlx

    bars = ProgressBars()
    try:
        return eager_mlx.load(ref, progress=bars)
    finally:
        bars.close()


class EvalBar:
    """A tqdm bar fed by evaluation progress reports (eager_mlx.evaluation.evaluate.EvalProgress)."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, p) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=p.total, initial=p.done, unit="prompt", desc="eval", file=sys.stderr,
                            dynamic_ncols=True)
        self.bar.set_postfix_str(f"Pass@k {p.pass_at_k:.3f}, {p.runs} runs back, {p.run_tokens} tok", refresh=False)
        self.bar.update(p.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunBars:
    """One EvalBar per run of a series (calibrate's frontier), each headed by `label: NAME` on stderr."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: EvalBar | None = None

    def next(self, name: str) -> EvalBar:
        """Close the previous run's bar and return the next one's."""
        import click

        self.close()
        click.echo(f"{self.label}: {name}", err=True)
        self.bar = EvalBar()
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
