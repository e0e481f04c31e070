"""`eager-mlx serve`: an OpenAI-compatible HTTP server (flags follow `mlx_lm.server` where they exist)."""
from __future__ import annotations

import json
import logging
from typing import Optional

import click

__all__ = ["serve"]


@click.command()
@click.option("--model", "-m", default=None, help="Preset name, mlx-lm folder, .gguf file or hub id (default: the default preset).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Host to bind (loopback by default).")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to bind (0: any free port).")
@click.option("--max-rows", type=int, default=64, show_default=True, help="Rows decoded per forward pass, over all requests.")
@click.option("--max-sequences", "-M", type=int, default=8, show_default=True, help="Default M for eager requests.")
@click.option("--threshold", "-t", type=float, default=None, help="Default theta for eager requests (default: the preset's).")
@click.option("--temp", "temperature", type=float, default=None, help="Default sampling temperature (default: the preset's).")
@click.option("--top-p", type=float, default=None, help="Default nucleus sampling top-p (default: the preset's).")
@click.option("--top-k", type=int, default=None, help="Default top-k (0: off).")
@click.option("--min-p", type=float, default=None, help="Default min-p (0: off).")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Default maximum tokens per sequence.")
@click.option("--chat-template-args", default=None, help="JSON object of apply_chat_template arguments, e.g. '{\"enable_thinking\":false}'.")
@click.option("--allowed-origins", default="*", show_default=True, help="Comma-separated CORS origins.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]), default="INFO",
              show_default=True)
def serve(model: Optional[str], host, port, max_rows, max_sequences, threshold, temperature, top_p, top_k, min_p,
          max_tokens, chat_template_args, allowed_origins, seed, log_level) -> None:
    """Serve the model over an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models)."""
    import eager_mlx
    from eager_mlx import server as srv
    from eager_mlx.models import ModelError

    from .progress import ProgressBars

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        template_args = json.loads(chat_template_args) if chat_template_args else {}
    except json.JSONDecodeError as e:
        raise click.ClickException(f"--chat-template-args is not JSON: {e}") from None
    if not isinstance(template_args, dict):
        raise click.ClickException("--chat-template-args must be a JSON object")
    if max_rows < 1 or not 1 <= max_sequences <= max_rows:
        raise click.ClickException(f"need 1 <= --max-sequences ({max_sequences}) <= --max-rows ({max_rows})")
    try:
        bars = ProgressBars()
        try:
            loaded = eager_mlx.load(model, progress=bars)
        finally:
            bars.close()
        name = model or (loaded.preset.name if loaded.preset is not None else str(loaded.path))
        config = srv.ServerConfig(
            host=host, port=port, model_id=name, max_rows=max_rows, seed=seed, max_tokens=max_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, threshold=threshold,
            max_sequences=max_sequences, chat_template_args=template_args,
            allowed_origins=tuple(o.strip() for o in allowed_origins.split(",") if o.strip()),
        )
        srv.serve(loaded, config)
    except ModelError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
