"""An OpenAI-compatible HTTP server over one shared Engine (`eager-mlx serve`).

Routes follow `mlx_lm.server`: POST /v1/chat/completions (and /chat/completions),
POST /v1/completions, GET /v1/models, GET /health. Differences:

* `n` is supported: n independent samples (parallel mode) in the shared batch.
* EAGer options in the body: ``"eager": {"method": "eager"|"parallel",
  "threshold": theta, "max_sequences": M}`` or the same keys at the top level.
  An eager request returns one choice per sequence it grew.
* A response carries every sequence as a choice (with its `answer`, `parent`,
  `branch_step`), the voted `answer` and `votes`, `usage` (completion tokens =
  generated tokens with shared prefixes counted once) and an `eager` summary.
  Streams (server-sent events) send a branch's inherited text as the first delta
  of the new choice and end with a chunk holding the vote and the usage.

One worker thread owns the engine (MLX streams are per thread) and steps it
while any request has rows; HTTP handler threads hand it requests through a
queue and read their events from a per-request queue. A client that goes away
mid-request is noticed within one step (its socket is watched while it waits)
and its rows are freed at once. Errors are OpenAI-shaped JSON
(``{"error": {"message", "type", "param", "code"}}``).
"""
from __future__ import annotations

import json
import logging
import queue
import select
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Optional

from eager_mlx.config import EagerConfig, EngineConfig, SamplingConfig
from eager_mlx.prompts import PromptError, encode_prompt
from eager_mlx.settings import SettingError, check, settings_of
from eager_mlx.results import BranchEvent, Event, RunFinished, RunResult, SequenceFinished, TokenEvent
from eager_mlx.threads import start_mlx_thread

__all__ = ["ServerConfig", "APIError", "GenerationRequest", "EngineWorker", "EagerServer", "parse_request", "serve"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 << 20
_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass(frozen=True)
class ServerConfig:
    """Server settings. `defaults`: setting values (docs/settings.md) that requests which give none get
    (the `serve` command's options); settings absent from both come from the preset, then the schema."""

    host: str = "127.0.0.1"
    port: int = 8080
    model_id: str = "default_model"
    max_rows: int = EngineConfig.max_rows
    seed: int = EngineConfig.seed
    defaults: dict = field(default_factory=dict)
    chat_template_args: dict = field(default_factory=dict)
    allowed_origins: tuple[str, ...] = ("*",)


class APIError(Exception):
    """A request error, sent as OpenAI-style JSON with `status`."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


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
    seed: Optional[int] = None  # the request's own random key (None: the server's seed and the request id)


# ---- request parsing ------------------------------------------------------------------------
# Request keys are the setting keys (docs/settings.md), at the top level or in an "eager" object.
_SETTINGS = {s.key: s for cls in (EagerConfig, SamplingConfig) for s in settings_of(cls) if s.key != "parallel"}
_BRANCHING = {k for k in _SETTINGS if k in {s.key for s in settings_of(EagerConfig)}} - {"max_tokens", "stop"}


def _get(body: dict, name: str, types: tuple, default: Any = None, *, lo: Any = None, hi: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise APIError(400, f"{name} must be {names}, got {json.dumps(value)}", param=name, code="invalid_type")
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


def _encode(tokenizer, kind: str, body: dict, template_args: dict) -> list[int]:
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
    try:
        return encode_prompt(tokenizer, prompt, chat=kind == "chat", chat_template_kwargs=template_args)
    except PromptError as e:
        raise APIError(400, str(e), param=e.param if kind == "chat" else "prompt", code="invalid_value") from None


def parse_request(body: Any, kind: str, tokenizer, config: ServerConfig, preset=None,
                  context_length: Optional[int] = None) -> GenerationRequest:
    """Validate a completion body into a GenerationRequest; raises APIError (400 / 404)."""
    from eager_mlx.api import config_for

    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = _get(body, "model", (str,), config.model_id)
    if model not in (config.model_id, "default_model"):
        raise APIError(404, f"The model '{model}' does not exist; this server serves '{config.model_id}'",
                       param="model", code="model_not_found")
    eager = _get(body, "eager", (dict,), {})
    unknown = sorted(set(eager) - set(_SETTINGS) - {"method"})
    if unknown:
        raise APIError(400, f"unknown eager option(s): {', '.join(unknown)}", param="eager", code="invalid_value")
    given = _settings(body, eager)
    n = _get(body, "n", (int,), 1, lo=1, hi=config.max_rows)
    # any branching option turns branching on, unless the method says parallel
    branching = "eager" in body or any(k in given for k in _BRANCHING) or "method" in body
    method = _get(eager, "method", (str,), None) or _get(body, "method", (str,), "eager" if branching else "parallel")
    if method not in ("eager", "parallel"):
        raise APIError(400, f"method must be 'eager' or 'parallel', got {method!r}", param="method",
                       code="invalid_value")
    m = given.get("max_sequences")
    if method == "parallel" and m is not None and n > 1 and m != n:
        raise APIError(400, f"parallel sampling: n={n} and max_sequences={m} disagree", param="n",
                       code="invalid_value")
    if m is None and (method == "parallel" or n > 1):
        given["max_sequences"] = n
    if given.get("max_sequences", config.defaults.get("max_sequences", 1)) > config.max_rows:
        raise APIError(400, f"max_sequences must be <= {config.max_rows} (the server's max_rows)",
                       param="max_sequences", code="invalid_value")
    if body.get("logprobs"):
        raise APIError(400, "logprobs is not supported by this server", param="logprobs", code="unsupported")
    stream = _get(body, "stream", (bool,), False)
    _get(body, "stream_options", (dict,), None)
    seed = _get(body, "seed", (int,), None)
    try:
        cfg = config_for(preset, **{**config.defaults, **given, "parallel": method == "parallel"})
    except SettingError as e:
        raise APIError(400, str(e), code="invalid_value") from None
    args = dict((preset.chat_template_kwargs if preset is not None else None) or {}, **config.chat_template_args)
    tokens = _encode(tokenizer, kind, body, args)
    if context_length and len(tokens) >= context_length:
        raise APIError(400, f"This model's maximum context length is {context_length} tokens; the prompt has "
                       f"{len(tokens)}", param="messages" if kind == "chat" else "prompt",
                       code="context_length_exceeded")
    return GenerationRequest(kind, tokens, cfg, n, method, stream, model, seed)


# ---- the engine worker -------------------------------------------------------------------------
@dataclass
class _Failure:
    status: int
    message: str


_STOP = object()


class EngineWorker:
    """The one thread that owns and steps the engine; other threads talk to it through queues."""

    def __init__(self, make_engine: Callable[[], Any]):
        self._make_engine = make_engine
        self._inbox: queue.Queue = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self.stats: dict[str, int] = {"rows": 0, "peak_rows": 0, "requests": 0, "completed": 0, "aborted": 0,
                                      "failed": 0}

    def start(self, timeout: float = 120.0) -> None:
        """Start the thread and build the engine on it; raises what building raised."""
        self._thread = start_mlx_thread(self._run, name="eager-engine")
        if not self._ready.wait(timeout):
            raise RuntimeError("the engine did not start in time")
        if self._error is not None:
            raise self._error

    def submit(self, request_id: str, tokens: list[int], config: EagerConfig,
               seed: Optional[int] = None) -> queue.Queue:
        """Queue a request; its events (then RunFinished, or a failure) arrive on the returned queue."""
        out: queue.Queue = queue.Queue()
        self._inbox.put(("add", request_id, tokens, config, seed, out))
        return out

    def abort(self, request_id: str) -> None:
        """Free the request's rows at the worker's next turn."""
        self._inbox.put(("abort", request_id))

    def stop(self, timeout: float = 10.0) -> None:
        """Fail what is in flight and end the thread."""
        self._inbox.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            engine = self._make_engine()
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        outboxes: dict[str, queue.Queue] = {}
        counts = dict(peak_rows=0, completed=0, aborted=0, failed=0)

        def route(events: list[Event], done: str = "completed") -> None:
            for ev in events:
                out = outboxes.get(ev.request_id)
                if out is not None:
                    out.put(ev)
                    if isinstance(ev, RunFinished):
                        del outboxes[ev.request_id]
                        counts[done] += 1

        while True:
            msgs = [] if engine.has_work else [self._inbox.get()]
            while True:
                try:
                    msgs.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for msg in msgs:
                if msg is _STOP:
                    for out in outboxes.values():
                        out.put(_Failure(503, "the server is shutting down"))
                    return
                if msg[0] == "add":
                    _, rid, tokens, config, seed, out = msg
                    try:
                        engine.add(rid, tokens, config, seed=seed)
                        outboxes[rid] = out
                    except ValueError as e:
                        out.put(_Failure(400, str(e).splitlines()[0]))
                elif msg[1] in outboxes:
                    route(engine.abort(msg[1]), done="aborted")
            if engine.has_work:
                try:
                    events = engine.step()
                    counts["peak_rows"] = max(counts["peak_rows"], engine.num_rows)
                    route(events)
                except Exception:
                    log.exception("engine step failed; failing %d request(s) and restarting the engine",
                                  len(outboxes))
                    for out in outboxes.values():
                        out.put(_Failure(500, "internal error while generating; see the server log"))
                    counts["failed"] += len(outboxes)
                    outboxes.clear()
                    engine = self._make_engine()
            self.stats = {"rows": engine.num_rows, "requests": len(outboxes), **counts}


# ---- HTTP ----------------------------------------------------------------------------------------
class _Disconnected(Exception):
    pass


def _choice_extras(result: RunResult) -> list[dict]:
    return [{"index": s.index, "finish_reason": _FINISH.get(s.finish_reason, "stop"), "logprobs": None,
             "answer": s.answer, "parent": s.parent, "branch_step": s.branch_step} for s in result.sequences]


def _summary(req: GenerationRequest, result: RunResult) -> dict:
    votes = Counter(s.answer for s in result.sequences if s.answer is not None)
    return {
        "answer": result.answer,
        "votes": dict(votes.most_common()),
        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.generated_tokens,
                  "total_tokens": result.prompt_tokens + result.generated_tokens},
        "eager": {"method": req.method, "threshold": result.threshold, "max_sequences": req.config.max_sequences,
                  "num_sequences": result.num_sequences, "branch_points": result.branch_points,
                  "elapsed_s": round(result.elapsed_s, 3)},
    }


class _Handler(BaseHTTPRequestHandler):
    server: "_HTTPServer"
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    # -- plumbing
    def _cors(self) -> None:
        origins = self.server.app.config.allowed_origins
        origin = self.headers.get("Origin")
        if "*" in origins:
            self.send_header("Access-Control-Allow-Origin", "*")
        elif origin in origins:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Vary", "Origin")
        self.send_header("Access-Control-Allow-Methods", "*")
        self.send_header("Access-Control-Allow-Headers", "*")

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._cors()
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _events(self, out: queue.Queue) -> Iterator[list]:
        """Batches of the request's events, as they come; raises _Disconnected when the client leaves."""
        while True:
            try:
                batch = [out.get(timeout=0.05)]
            except queue.Empty:
                if self._client_gone():
                    raise _Disconnected() from None
                continue
            while not isinstance(batch[-1], (RunFinished, _Failure)):
                try:
                    batch.append(out.get_nowait())
                except queue.Empty:
                    break
            yield batch
            if isinstance(batch[-1], (RunFinished, _Failure)):
                return

    # -- routes
    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self._cors()
        self.end_headers()

    def do_GET(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path == "/v1/models":
                self._json(200, {"object": "list", "data": [app.model_card()]})
            elif path.startswith("/v1/models/"):
                if path[len("/v1/models/"):] != app.config.model_id:
                    raise APIError(404, f"The model '{path[len('/v1/models/'):]}' does not exist",
                                   param="model", code="model_not_found")
                self._json(200, app.model_card())
            elif path == "/health":
                self._json(200, {"status": "ok", **app.worker.stats})
            else:
                raise APIError(404, f"Unknown route: GET {self.path}", code="not_found")
        except APIError as e:
            self._json(e.status, e.body())

    def do_POST(self) -> None:
        kinds = {"/v1/chat/completions": "chat", "/chat/completions": "chat", "/v1/completions": "text"}
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path not in kinds:
                raise APIError(404, f"Unknown route: POST {self.path}", code="not_found")
            body = self._read_body()
            app = self.server.app
            req = parse_request(body, kinds[path], app.tokenizer, app.config, app.preset, app.context_length)
            rid = ("chatcmpl-" if req.kind == "chat" else "cmpl-") + uuid.uuid4().hex
            out = app.worker.submit(rid, req.tokens, req.config, req.seed)
            try:
                if req.stream:
                    self._stream(rid, req, out)
                else:
                    self._complete(rid, req, out)
            except (_Disconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                log.info("client of %s went away; freeing its rows", rid)
                app.worker.abort(rid)
            except BaseException:
                app.worker.abort(rid)
                raise
        except APIError as e:
            self._json(e.status, e.body())
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass
        except Exception:
            log.exception("unexpected error in %s", self.path)
            if not self._headers_sent:
                self._json(500, APIError(500, "internal server error", type="server_error").body())

    _headers_sent = False

    def _read_body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None:
            raise APIError(411, "Content-Length header is required")
        try:
            n = int(length)
        except ValueError:
            raise APIError(400, "invalid Content-Length header") from None
        if n > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is {n} bytes; the limit is {MAX_BODY_BYTES}",
                           code="request_too_large")
        raw = self.rfile.read(n)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"invalid JSON in the request body: {e}") from None

    def _base(self, rid: str, req: GenerationRequest, chunk: bool) -> dict:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if req.kind == "chat" else "text_completion"
        return {"id": rid, "object": obj, "created": int(time.time()), "model": req.model,
                "system_fingerprint": self.server.app.fingerprint}

    def _complete(self, rid: str, req: GenerationRequest, out: queue.Queue) -> None:
        for batch in self._events(out):
            last = batch[-1]
            if isinstance(last, _Failure):
                raise APIError(last.status, last.message, type="server_error" if last.status >= 500 else
                               "invalid_request_error")
        result = last.result
        choices = _choice_extras(result)
        for c, s in zip(choices, result.sequences):
            if req.kind == "chat":
                c["message"] = {"role": "assistant", "content": s.text}
            else:
                c["text"] = s.text
        self._json(200, {**self._base(rid, req, False), "choices": choices, **_summary(req, result)})

    def _stream(self, rid: str, req: GenerationRequest, out: queue.Queue) -> None:
        chat = req.kind == "chat"
        texts: dict[int, str] = {}

        def piece(index: int, text: str, first: bool) -> dict:
            if chat:
                delta = {"role": "assistant", "content": text} if first else {"content": text}
                return {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}
            return {"index": index, "text": text, "finish_reason": None, "logprobs": None}

        def send(obj: Any) -> None:
            self.wfile.write(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")
            self.wfile.flush()

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self._cors()
        self.end_headers()
        self._headers_sent = True
        first = range(req.n if req.method == "parallel" else 1)
        texts.update({i: "" for i in first})
        send({**self._base(rid, req, True), "choices": [piece(i, "", True) for i in first]})
        for batch in self._events(out):
            choices: dict[int, dict] = {}
            branches = []
            for ev in batch:
                if isinstance(ev, _Failure):
                    send({"error": APIError(ev.status, ev.message, type="server_error").body()["error"]})
                    return
                if isinstance(ev, BranchEvent):
                    texts[ev.child] = texts.get(ev.parent, "")
                    choices[ev.child] = piece(ev.child, texts[ev.child], True)
                    branches.append({"parent": ev.parent, "child": ev.child, "step": ev.step,
                                     "entropy": round(ev.entropy, 4)})
                elif isinstance(ev, TokenEvent) and ev.text:
                    texts[ev.sequence] = texts.get(ev.sequence, "") + ev.text
                    c = choices.setdefault(ev.sequence, piece(ev.sequence, "", False))
                    key = c["delta"] if chat else c
                    key["content" if chat else "text"] = key.get("content" if chat else "text", "") + ev.text
                elif isinstance(ev, SequenceFinished):
                    c = choices.setdefault(ev.sequence, piece(ev.sequence, "", False))
                    c["finish_reason"] = _FINISH.get(ev.finish_reason, "stop")
                    if chat and not c["delta"].get("content"):
                        c["delta"] = {}
            if choices:
                chunk = {**self._base(rid, req, True), "choices": [choices[i] for i in sorted(choices)]}
                if branches:
                    chunk["branches"] = branches
                send(chunk)
            if isinstance(batch[-1], RunFinished):
                result = batch[-1].result
                final = {**self._base(rid, req, True), "choices": [], **_summary(req, result)}
                final["sequences"] = _choice_extras(result)
                send(final)
                send(b"[DONE]")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: "EagerServer"


class EagerServer:
    """The HTTP server and its engine worker. `start()` serves on a background thread; `serve_forever()` blocks."""

    def __init__(self, model, tokenizer, config: Optional[ServerConfig] = None, *, preset=None,
                 context_length: Optional[int] = None, make_engine: Optional[Callable[[], Any]] = None):
        self.config = config or ServerConfig()
        self.tokenizer = tokenizer
        self.preset = preset
        self.context_length = context_length or (preset.context_length if preset is not None else None) \
            or getattr(getattr(model, "args", None), "max_position_embeddings", None)
        self.fingerprint = "eager-mlx-" + uuid.uuid4().hex[:8]
        self.created = int(time.time())

        def default_engine():
            from eager_mlx.engine.engine import Engine

            return Engine(model, tokenizer, max_rows=self.config.max_rows, seed=self.config.seed,
                          context_length=self.context_length)

        self.worker = EngineWorker(make_engine or default_engine)
        self.worker.start()
        try:
            self.httpd = _HTTPServer((self.config.host, self.config.port), _Handler)
        except OSError:
            self.worker.stop()
            raise
        self.httpd.app = self
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def model_card(self) -> dict:
        return {"id": self.config.model_id, "object": "model", "created": self.created, "owned_by": "eager-mlx"}

    def start(self) -> "EagerServer":
        """Serve on a background thread (for tests and apps); returns self."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="eager-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def shutdown(self) -> None:
        """Stop serving, fail the requests in flight and stop the engine worker."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(10)
        self.httpd.server_close()
        self.worker.stop()


def serve(loaded, config: ServerConfig) -> None:
    """Serve a LoadedModel until interrupted (Ctrl-C)."""
    server = EagerServer(loaded.model, loaded.tokenizer, config, preset=loaded.preset)
    print(f"eager-mlx: serving {config.model_id} on {server.url} (OpenAI API at {server.url}/v1)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
