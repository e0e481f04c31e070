"""`eager-mlx serve`: an OpenAI-compatible HTTP server (flags follow `mlx_lm.server` where they exist)."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import click

from eager_mlx import strict_json
from eager_mlx.server.access import valid_origin
from eager_mlx.server.config import API_KEY_ENV, MAX_TIMEOUT

from .options import ENGINE, GENERATION, FiniteFloatRange, IntRange, fail, not_empty, pop_settings, setting_options
from .progress import load_model

__all__ = ["serve"]


def _origins(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in value)
    bad = next((o for o in origins if not valid_origin(o)), None)
    if bad is not None:
        raise click.BadParameter(f"{bad!r} is not an origin such as http://localhost:3000 (scheme://host[:port]) "
                                 "or '*'")
    return origins


def _hosts(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(h.strip().lower() for h in value)
    bad = next((h for h in names if not h or "/" in h or " " in h), None)
    if bad is not None:
        raise click.BadParameter(f"{bad!r} is not a host name such as localhost or myhost.lan")
    return names


def _api_key(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    """An empty key is a mistake, never "no key" (click reads an empty environment variable as unset)."""
    if value is None and os.environ.get(API_KEY_ENV) == "":
        raise click.BadParameter(f"{API_KEY_ENV} is set but empty: unset it to serve without a key")
    if value is not None and not value.strip():
        raise click.BadParameter(f"{value!r} is empty: give a key, or leave --api-key out to serve without one")
    return value


@click.command()
@click.option("--model", "-m", default=None, callback=not_empty,
              help="Preset name, mlx-lm folder, .gguf file or hub id (default: the default preset).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Host to bind (loopback by default).")
@click.option("--port", type=IntRange(0, 65535), default=8080, show_default=True,
              help="Port to bind (0: any free port).")
@setting_options(*GENERATION, exclude=("parallel",))  # the defaults of requests that give none
@setting_options(*ENGINE, exclude=("max_kv_memory",))
@click.option("--chat-template-args", default=None, help="JSON object of apply_chat_template arguments, e.g. '{\"enable_thinking\":false}'.")
@click.option("--cors-origin", "cors_origins", multiple=True, callback=_origins, metavar="ORIGIN",
              help="A web origin (e.g. http://localhost:3000) whose pages may call the server (repeatable; "
                   "'*' for any page). Default: none, so no web page can use it.")
@click.option("--api-key", default=None, envvar=API_KEY_ENV, show_envvar=True, metavar="KEY", callback=_api_key,
              help="Require 'Authorization: Bearer KEY' on every route but /health.")
@click.option("--idle-timeout", type=FiniteFloatRange(0, MAX_TIMEOUT, min_open=True), default=30.0, show_default=True,
              help="Seconds a connection may wait on a read or write before it is closed.")
@click.option("--header-timeout", type=FiniteFloatRange(0, MAX_TIMEOUT, min_open=True), default=10.0,
              show_default=True, help="Seconds a connection has for its request line and headers, all told.")
@click.option("--body-timeout", type=FiniteFloatRange(0, MAX_TIMEOUT, min_open=True), default=60.0,
              show_default=True, help="Seconds a request has for its body, all told.")
@click.option("--max-connections", type=IntRange(1), default=128, show_default=True,
              help="Connections open at once; past it a new one replaces the oldest still sending its request, "
                   "or gets a 503 when all are being answered.")
@click.option("--allow-host", "allowed_hosts", multiple=True, metavar="NAME", callback=_hosts,
              help="A name clients reach the server by, checked against the Host header (repeatable; '*': any). "
                   "Default: the loopback names when bound to loopback, any name otherwise.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]), default="INFO",
              show_default=True)
def serve(model: Optional[str], host, port, chat_template_args, cors_origins, api_key, idle_timeout, header_timeout,
          body_timeout, max_connections, allowed_hosts, log_level, **settings: Any) -> None:
    """Serve the model over an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models)."""
    from eager_mlx import config_for
    from eager_mlx import server as srv

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        template_args = strict_json.loads(chat_template_args) if chat_template_args else {}
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--chat-template-args") from None
    if not isinstance(template_args, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--chat-template-args")
    defaults = {k: v for k, v in pop_settings(settings, *GENERATION).items() if v is not None}
    max_rows, seed, no_prefix = settings.pop("max_rows"), settings.pop("seed"), settings.pop("no_prefix_cache")
    if defaults["max_sequences"] > max_rows:
        raise click.BadParameter(f"{defaults['max_sequences']} is more than --max-rows {max_rows}",
                                 param_hint="--max-sequences")
    try:
        loaded = load_model(model)
        config_for(loaded.preset, **defaults)  # the request defaults must make a valid config
        config = srv.ServerConfig(
            host=host, port=port, model_id=loaded.name, max_rows=max_rows, seed=seed, defaults=defaults,
            chat_template_args=template_args, cors_origins=cors_origins, api_key=api_key,
            timeout=idle_timeout, header_timeout=header_timeout, body_timeout=body_timeout,
            max_connections=max_connections, allowed_hosts=allowed_hosts, prefix_cache=not no_prefix,
        )
        srv.serve(loaded, config)
    except ValueError as e:  # ModelError, SettingError
        raise fail(e) from None
    except OSError as e:
        raise click.ClickException(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
