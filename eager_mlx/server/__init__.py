"""An OpenAI-compatible HTTP server over one shared Engine (`eager-mlx serve`).

Routes follow `mlx_lm.server`: POST /v1/chat/completions (and /chat/completions),
POST /v1/completions, GET /v1/models, GET /health. Differences:

* `n` is supported: n independent samples (parallel mode) in the shared batch.
* EAGer options in the body: ``"eager": {"method": "eager"|"parallel",
  "threshold": theta, "max_sequences": M}`` or the same keys at the top level.
  An eager request returns one choice per sequence it grew (responses.py).
* Errors are OpenAI-shaped JSON (``{"error": {"message", "type", "param", "code"}}``).
* Access: no web page may call it unless `cors_origins` names its origin; an
  optional API key; an idle timeout and a connection cap.

Modules: `requests` (body and request parsing, pure), `responses` (response
shaping, pure), `access` (API key, CORS, exposure warning, pure), `worker` (the
engine thread and its typed messages), `handler` (HTTP routes), `app`
(`EagerServer`, `serve`), `config` (`ServerConfig`), `errors` (`APIError`).
"""
from .app import EagerServer, serve
from .config import API_KEY_ENV, ServerConfig
from .errors import APIError
from .requests import GenerationRequest, parse_request
from .worker import EngineWorker

__all__ = ["ServerConfig", "APIError", "GenerationRequest", "EngineWorker", "EagerServer", "parse_request", "serve",
           "API_KEY_ENV"]
