"""`eager-mlx lm-eval ARGS`: lm-evaluation-harness's command line with eager-mlx as its model."""
from __future__ import annotations

import click

__all__ = ["lm_eval_cmd"]


@click.command("lm-eval", add_help_option=False,
               context_settings=dict(ignore_unknown_options=True, allow_interspersed_args=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def lm_eval_cmd(args: tuple[str, ...]) -> None:
    """lm-eval with `--model eager-mlx` (needs the lm-eval extra). ARGS are lm-eval's own, e.g.
    `--model_args model=qwen2.5-coder-0.5b,method=eager-adapt,max_sequences=8 --tasks gsm8k`; --help lists them."""
    try:
        from eager_mlx.integrations.lm_eval import main
    except ImportError as e:
        raise click.ClickException(str(e)) from None
    main(list(args))
