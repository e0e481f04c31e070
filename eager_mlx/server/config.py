"""`ServerConfig`: what the server binds, serves and lets in."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from eager_mlx.config import EngineConfig

from .access import valid_origin

__all__ = ["ServerConfig", "API_KEY_ENV", "MAX_TIMEOUT"]

API_KEY_ENV = "EAGER_MLX_API_KEY"  # `serve --api-key` also reads it
MAX_TIMEOUT = 86400.0  # seconds: every timeout is finite (a socket cannot wait forever) and at most a day


@dataclass(frozen=True)
class ServerConfig:
    """Server settings.

    `defaults`: setting values (docs/settings.md) that requests which give none get (the
    `serve` command's options); settings absent from both come from the preset, then the
    schema. `cors_origins`: the web origins whose pages may call the server (none: no
    page may). `api_key`: when set, every route but /health needs ``Authorization: Bearer KEY``.
    `timeout`: seconds a connection may sit idle on a read or write before it is closed.
    `header_timeout` / `body_timeout`: seconds from the connection's start to the end of its request line and
    headers, and from then to the end of its body, however the bytes trickle in.
    `max_connections`: open connections at once; past it a new connection takes the place of the oldest one
    still sending its request, and gets a 503 only when every connection is being answered.
    `allowed_hosts`: the names the Host header may carry (a DNS-rebinding guard): empty means the loopback
    names when bound to loopback and any name otherwise; '*' allows any.
    `prefix_cache`: keep prompt segments (system prompts, earlier chat turns) for later requests.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    model_id: str = "default_model"
    max_rows: int = EngineConfig.max_rows
    seed: int = EngineConfig.seed
    defaults: dict = field(default_factory=dict)
    chat_template_args: dict = field(default_factory=dict)
    cors_origins: tuple[str, ...] = ()
    api_key: Optional[str] = field(default=None, repr=False)
    timeout: float = 30.0
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 128
    allowed_hosts: tuple[str, ...] = ()
    prefix_cache: bool = True

    def __post_init__(self) -> None:
        bad = next((o for o in self.cors_origins if not valid_origin(o)), None)
        if bad is not None:
            raise ValueError(f"CORS origin {bad!r} is not an origin such as http://localhost:3000 (or '*')")
        for name in ("timeout", "header_timeout", "body_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
                raise ValueError(f"{name} must be > 0 and <= {MAX_TIMEOUT:g} seconds, got {value}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty")
