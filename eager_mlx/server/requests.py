"""Request parsing, pure (no socket): the body's bytes to JSON, JSON to a validated GenerationRequest.

Request keys are the setting keys (docs/settings.md), at the top level or in an
``"eager"`` object. Every bad request raises APIError (400 / 404 / 411 / 413) whose
message is one line naming the bad part.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from eager_mlx import strict_json
from eager_mlx.config import EagerConfig, EngineConfig, SamplingConfig
from eager_mlx.prompts import PromptError, encode_prompt
from eager_mlx.settings import SettingError, check, settings_of

from .config import ServerConfig
from .errors import APIError

__all__ = ["GenerationRequest", "parse_request", "content_length", "parse_json", "MAX_BODY_BYTES", "MAX_DEPTH"]

MAX_BODY_BYTES = 8 << 20
MAX_DEPTH = 64  # nesting levels of a body's arrays and objects (a chat request needs about 5)
_SEED = next(s for s in settings_of(EngineConfig) if s.key == "seed")  # one range for the CLI and requests

# Request keys besides the settings: OpenAI's that this server implements or that change no output.
_KEYS = {"model", "messages", "prompt", "n", "stream", "stream_options", "seed", "eager", "method",
         "max_completion_tokens", "logprobs", "user", "metadata", "store", "service_tier"}
# OpenAI / mlx_lm.server keys this server does not implement: taken only at the value that changes nothing
# (or null), so that no request is answered as if its setting had been applied.
_NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "repetition_penalty": 1, "logit_bias": {},
            "top_logprobs": 0, "echo": False, "best_of": 1, "suffix": "", "tools": [], "tool_choice": "none",
            "response_format": {"type": "text"}}
_SETTINGS = {s.key: s for cls in (EagerConfig, SamplingConfig) for s in settings_of(cls) if s.key != "parallel"}
_BRANCHING = {k for k in _SETTINGS if k in {s.key for s in settings_of(EagerConfig)}} - {"max_tokens", "stop"}


@dataclass
class GenerationRequest:
    """A validated completion request."""

    kind: str  # "chat" | "text"
    tokens: list[int]
    config: EagerConfig
    n: int
    method: str  # "eager" | "parallel"
    stream: bool
    model: str
    seed: Optional[int] = None  # the request's own seed (None: the server's seed and the request id)


# ---- the body ---------------------------------------------------------------------------------
def content_length(header: Optional[str]) -> int:
    """The body size a Content-Length header announces: 411 when absent, 400 when not a size, 413 when too big."""
    if header is None:
        raise APIError(411, "a Content-Length header is required", code="length_required")
    text = header.strip()
    if not (text.isascii() and text.isdigit()):  # no sign, no spaces inside: "-5" and "+5" are refused
        raise APIError(400, f"invalid Content-Length header: {header[:40]!r}", code="invalid_content_length")
    if len(text) > 15 or int(text) > MAX_BODY_BYTES:  # (15 digits: int() of any length could fail)
        raise APIError(413, f"the request body is {text} bytes; the limit is {MAX_BODY_BYTES}",
                       code="request_too_large")
    return int(text)


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (iterative: no recursion limit)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            todo.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def parse_json(raw: bytes) -> Any:
    """The body as JSON (eager_mlx.strict_json: no NaN or Infinity, no repeated key), nested at most MAX_DEPTH
    deep; else a 400 APIError."""
    try:
        value = strict_json.loads(raw)
    except strict_json.TooDeep:
        raise APIError(400, f"the request body nests deeper than {MAX_DEPTH} levels", code="invalid_json") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN, a duplicate key, too deep, a huge integer
        raise APIError(400, f"invalid JSON in the request body: {e}", code="invalid_json") from None
    if _depth(value) > MAX_DEPTH:
        raise APIError(400, f"the request body nests deeper than {MAX_DEPTH} levels", code="invalid_json")
    return value


# ---- the request ------------------------------------------------------------------------------
def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _get(body: dict, name: str, types: tuple, default: Any = None, *, lo: Any = None, hi: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise APIError(400, f"{name} must be {names}, got {_shown(value)}", param=name, code="invalid_type")
    if lo is not None and value < lo:
        raise APIError(400, f"{name} must be >= {lo}, got {value}", param=name, code="invalid_value")
    if hi is not None and value > hi:
        raise APIError(400, f"{name} must be <= {hi}, got {value}", param=name, code="invalid_value")
    return value


def _settings(body: dict, eager: dict) -> dict[str, Any]:
    """The setting values a request gives, checked against the schema (400 naming the first bad one)."""
    values = {}
    for key, s in _SETTINGS.items():
        raw = eager.get(key, body.get(key))
        if key == "max_tokens":
            raw = body.get("max_completion_tokens", raw)
        if raw is None:
            continue
        try:
            values[key] = check(s, raw)
        except SettingError as e:
            raise APIError(400, str(e), param=key, code="invalid_value") from None
    return values


def _method(body: dict, eager: dict, given: dict) -> str:
    # any branching option turns branching on, unless the method says parallel
    branching = "eager" in body or any(k in given for k in _BRANCHING) or "method" in body
    method = _get(eager, "method", (str,), None) or _get(body, "method", (str,), "eager" if branching else "parallel")
    if method not in ("eager", "parallel"):
        raise APIError(400, f"method must be 'eager' or 'parallel', got {_shown(method)}", param="method",
                       code="invalid_value")
    return method


def _sequences(given: dict, n: int, method: str, config: ServerConfig) -> None:
    """Fill in max_sequences from n; 400 when they disagree or exceed the server's rows."""
    m = given.get("max_sequences")
    if method == "parallel" and m is not None and n > 1 and m != n:
        raise APIError(400, f"parallel sampling: n={n} and max_sequences={m} disagree", param="n",
                       code="invalid_value")
    if m is None and (method == "parallel" or n > 1):
        given["max_sequences"] = n
    if given.get("max_sequences", config.defaults.get("max_sequences", 1)) > config.max_rows:
        raise APIError(400, f"max_sequences must be <= {config.max_rows} (the server's max_rows)",
                       param="max_sequences", code="invalid_value")


def _prompt(body: dict, kind: str) -> Any:
    field_name = "messages" if kind == "chat" else "prompt"
    if field_name not in body:
        raise APIError(400, f"{field_name} is required", param=field_name, code="missing_required_parameter")
    prompt = body[field_name]
    if kind == "text" and isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if kind == "chat" and not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt)):
        raise APIError(400, "messages must be a non-empty list of objects", param="messages", code="invalid_value")
    if kind == "text" and not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                                           and not any(isinstance(t, dict) for t in prompt))):
        raise APIError(400, "prompt must be a string or a list of token ids", param="prompt", code="invalid_type")
    return prompt


def _encode(tokenizer, kind: str, body: dict, template_args: dict, vocab_size: Optional[int]) -> list[int]:
    prompt = _prompt(body, kind)
    param = "messages" if kind == "chat" else "prompt"
    try:
        tokens = encode_prompt(tokenizer, prompt, chat=kind == "chat", chat_template_kwargs=template_args)
    except PromptError as e:
        raise APIError(400, str(e), param=e.param if kind == "chat" else "prompt", code="invalid_value") from None
    top = vocab_size or 2**31
    bad = next((t for t in tokens if not 0 <= t < top), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside the vocabulary (0 to {top - 1})", param=param,
                       code="invalid_value")
    return tokens


def _check_keys(body: dict, eager: dict) -> None:
    """400 for a key the server does not know, or one it does not implement given a value that would matter."""
    unknown = sorted(set(eager) - set(_SETTINGS) - {"method"})
    if unknown:
        raise APIError(400, f"unknown eager option(s): {_shown(unknown)}", param="eager", code="invalid_value")
    unknown = sorted(set(body) - _KEYS - set(_SETTINGS) - set(_NEUTRAL))
    if unknown:
        raise APIError(400, f"unknown request key(s): {_shown(unknown)} (docs/settings.md lists the settings)",
                       param=unknown[0], code="unknown_parameter")
    if body.get("logprobs"):
        raise APIError(400, "logprobs is not supported by this server", param="logprobs", code="unsupported")
    for key, neutral in _NEUTRAL.items():
        value = body.get(key)
        if value is not None and (value != neutral or type(value) is bool and type(neutral) is not bool):
            raise APIError(400, f"{key} is not supported by this server (only {_shown(neutral)} or null), got "
                           f"{_shown(value)}", param=key, code="unsupported")


def _seed(value: Any) -> Optional[int]:
    """The request's own seed: the range of the engine's `seed` setting (the CLI's), or None."""
    try:
        return None if value is None else check(_SEED, value)
    except SettingError as e:
        raise APIError(400, str(e), param="seed", code="invalid_value") from None


def parse_request(body: Any, kind: str, tokenizer, config: ServerConfig, preset=None,
                  context_length: Optional[int] = None, vocab_size: Optional[int] = None) -> GenerationRequest:
    """Validate a completion body into a GenerationRequest; raises APIError (400 / 404)."""
    from eager_mlx.api import config_for

    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = _get(body, "model", (str,), config.model_id)
    if model not in (config.model_id, "default_model"):
        raise APIError(404, f"The model {_shown(model)} does not exist; this server serves '{config.model_id}'",
                       param="model", code="model_not_found")
    eager = _get(body, "eager", (dict,), {})
    _check_keys(body, eager)
    given = _settings(body, eager)
    n = _get(body, "n", (int,), 1, lo=1, hi=config.max_rows)
    method = _method(body, eager, given)
    _sequences(given, n, method, config)
    stream = _get(body, "stream", (bool,), False)
    _get(body, "stream_options", (dict,), None)
    seed = _seed(body.get("seed"))
    try:
        cfg = config_for(preset, **{**config.defaults, **given, "parallel": method == "parallel"})
    except SettingError as e:
        raise APIError(400, str(e), code="invalid_value") from None
    args = dict((preset.chat_template_kwargs if preset is not None else None) or {}, **config.chat_template_args)
    tokens = _encode(tokenizer, kind, body, args, vocab_size)
    if context_length and len(tokens) >= context_length:
        raise APIError(400, f"This model's maximum context length is {context_length} tokens; the prompt has "
                       f"{len(tokens)}", param="messages" if kind == "chat" else "prompt",
                       code="context_length_exceeded")
    return GenerationRequest(kind, tokens, cfg, n, method, stream, model, seed)
