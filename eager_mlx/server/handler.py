"""The HTTP handler: routes, access checks, reading the body, writing JSON and server-sent events.

Every answer but a success is OpenAI-style JSON (``{"error": {"message", "type",
"param", "code"}}``), the base class's own errors (a garbage request line, an
unknown method) included. A client that goes away mid-request is noticed within
one engine step (its socket is watched while it waits) and its rows are freed.
"""
from __future__ import annotations

import io
import json
import logging
import queue
import select
import socket
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Iterator, Optional, Protocol

from eager_mlx.results import RunFinished

from .access import check_api_key, check_host, check_origin, cors_headers
from .errors import APIError
from .requests import content_length, parse_json, parse_request
from .responses import ResponseShaper
from .config import ServerConfig
from .worker import EngineWorker, Failure

__all__ = ["Handler", "POST_ROUTES", "allowed_methods", "CLIENT_GONE"]

log = logging.getLogger("eager_mlx.server")

POST_ROUTES = {"/v1/chat/completions": "chat", "/chat/completions": "chat", "/v1/completions": "text"}
GET_ROUTES = ("/v1/models", "/health")  # and /v1/models/<id>
CLIENT_GONE = (ConnectionError, TimeoutError)  # BrokenPipe, ConnectionReset/Aborted; a read or write timed out


def allowed_methods(path: str) -> tuple[str, ...]:
    """The methods a route answers (none: no such route)."""
    if path in POST_ROUTES:
        return ("POST", "OPTIONS")
    if path in GET_ROUTES or path.startswith("/v1/models/"):
        return ("GET", "OPTIONS")
    return ()


class _Disconnected(Exception):
    pass


class App(Protocol):
    """What the handler uses of the server (app.EagerServer), which imports the handler (not the reverse)."""

    config: ServerConfig
    worker: EngineWorker
    tokenizer: Any
    preset: Any
    context_length: Optional[int]
    vocab_size: Optional[int]
    fingerprint: str

    def model_card(self) -> dict: ...


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, each waiting at most the idle timeout and never past the handler's deadline, so
    a client that trickles its request a byte at a time is cut off like an idle one (slowloris)."""

    def __init__(self, sock: socket.socket, handler: "Handler"):
        super().__init__()
        self.sock, self.handler = sock, handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        wait = self.handler.app.config.timeout
        if self.handler.deadline is not None:
            left = self.handler.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request took too long to arrive")
            wait = min(wait, left)
        self.sock.settimeout(wait)
        return self.sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    """One connection, one request (HTTP/1.0: the connection closes after the answer)."""

    protocol_version = "HTTP/1.0"
    server_version = "eager-mlx"
    sys_version = ""
    _started = False  # a streamed answer's headers are out: errors go into the stream

    @property
    def app(self) -> App:
        return self.server.app  # type: ignore[attr-defined]

    def setup(self) -> None:
        self.timeout = self.app.config.timeout  # idle limit of every read and write on the socket
        self.deadline: Optional[float] = time.monotonic() + self.app.config.header_timeout  # request line + headers
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))
        self.server.reading(self)  # type: ignore[attr-defined]

    def finish(self) -> None:
        self.server.done_reading(self)  # type: ignore[attr-defined]
        super().finish()

    def _request_read(self) -> None:
        """The whole request is in: no more deadline (writes keep the idle timeout); this connection is no
        longer one a newcomer may take the place of."""
        self.deadline = None
        self.connection.settimeout(self.app.config.timeout)
        self.server.done_reading(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:  # timeouts of the base class: not worth a warning
        log.debug("%s %s", self.address_string(), format % args)

    # ---- answers --------------------------------------------------------------------------------
    def _origin(self) -> Optional[str]:
        headers = getattr(self, "headers", None)  # absent when the request line was garbage
        return headers.get("Origin") if headers is not None else None

    def _send_json(self, status: int, obj: Any, headers: Optional[dict[str, str]] = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in {**cors_headers(self._origin(), self.app.config.cors_origins), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if not self._head():  # a HEAD answer is the GET answer's status and headers only
            self.wfile.write(data)
        self.wfile.flush()

    def _head(self) -> bool:
        """A HEAD request, also one whose request line the base class refused before it set `command`."""
        first = (getattr(self, "raw_requestline", b"") or b"").split(b" ", 1)[0]
        return (self.command or first.decode("latin-1")) == "HEAD"

    def _send_error(self, error: APIError) -> None:
        self._send_json(error.status, error.body(), error.headers)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """The base class's errors (bad request line, unknown method, header too long) as JSON, not HTML."""
        if self.request_version == "HTTP/0.9":  # else the status line and headers would be left out
            self.request_version = "HTTP/1.0"
        self.close_connection = True
        log.debug("%s bad request: %d %s", self.address_string(), code, message)
        self._send_error(APIError(code, message or ""))

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            self.send_error(400, "HTTP/0.9 requests are not supported")
            return False
        return True

    # ---- routes ---------------------------------------------------------------------------------
    def do_OPTIONS(self) -> None:
        """CORS preflight: 204 with the CORS headers for an allowed origin, 403 for another."""
        try:
            self._check_framing()
            check_origin(self._origin(), self.app.config.cors_origins)
        except APIError as e:
            self._send_error(e)
            return
        allowed = allowed_methods(self._path()) or ("OPTIONS",)
        self.send_response(204)
        self.send_header("Allow", ", ".join(allowed))
        for name, value in cors_headers(self._origin(), self.app.config.cors_origins, preflight=True).items():
            self.send_header(name, value)
        self.end_headers()

    def do_GET(self) -> None:
        self._serve(self._get)

    def do_POST(self) -> None:
        self._serve(self._post)

    def do_HEAD(self) -> None:
        self._serve(self._get)

    def do_other(self) -> None:
        self._serve(self._not_allowed)

    do_PUT = do_DELETE = do_PATCH = do_other

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def _serve(self, route: Callable[[str], None]) -> None:
        """Check access, run the route; an APIError becomes its JSON answer, a client that left a debug line."""
        try:
            path = self._path()
            self._check_framing()
            check_origin(self._origin(), self.app.config.cors_origins)
            if path != "/health":
                check_api_key(self.app.config.api_key, self.headers.get("Authorization"))
            route(path)
        except APIError as e:
            self._send_error(e)
        except CLIENT_GONE as e:
            log.debug("client %s went away: %r", self.address_string(), e)
        except Exception:
            log.exception("unexpected error in %s %s", self.command, self.path)
            if not self._started:
                self._send_error(APIError(500, "internal server error; see the server log"))

    def _check_framing(self) -> None:
        """One Host, a name of this server (DNS rebinding); one way to tell where the body ends (two Content-Length
        headers, or one with Transfer-Encoding, would let a proxy and this server split requests differently)."""
        check_host(self.headers.get_all("Host") or [], self.app.host_names)
        if self.headers.get("Transfer-Encoding") is not None:
            raise APIError(400, "Transfer-Encoding is not supported: send the body with one Content-Length header",
                           code="unsupported_transfer_encoding")
        if len(self.headers.get_all("Content-Length") or []) > 1:
            raise APIError(400, "more than one Content-Length header", code="invalid_content_length")
        if self.command in ("GET", "HEAD", "OPTIONS"):
            self._request_read()

    def _not_allowed(self, path: str) -> None:
        allowed = allowed_methods(path)
        if not allowed:
            raise APIError(404, f"Unknown route: {self.command} {path}", code="not_found")
        raise APIError(405, f"{self.command} is not allowed on {path}; use {allowed[0]}", code="method_not_allowed",
                       headers={"Allow": ", ".join(allowed)})

    def _get(self, path: str) -> None:
        if "GET" not in allowed_methods(path):
            self._not_allowed(path)
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [self.app.model_card()]})
        elif path == "/health":
            self._send_json(200, {"status": "ok", **self.app.worker.stats})
        elif path[len("/v1/models/"):] == self.app.config.model_id:
            self._send_json(200, self.app.model_card())
        else:
            raise APIError(404, f"The model '{path[len('/v1/models/'):]}' does not exist", param="model",
                           code="model_not_found")

    def _post(self, path: str) -> None:
        if path not in POST_ROUTES:
            self._not_allowed(path)
        app = self.app
        req = parse_request(self._read_body(), POST_ROUTES[path], app.tokenizer, app.config, app.preset,
                            app.context_length, app.vocab_size)
        app.check_memory(req.config.max_sequences, req.config.max_tokens)
        rid = ("chatcmpl-" if req.kind == "chat" else "cmpl-") + uuid.uuid4().hex
        out = app.worker.submit(rid, req.tokens, req.config, req.seed)
        shaper = ResponseShaper(rid, req, app.fingerprint, int(time.time()))
        try:
            (self._stream if req.stream else self._complete)(shaper, out)
        except (_Disconnected, *CLIENT_GONE):
            log.info("client of %s went away; freeing its rows", rid)
            app.worker.abort(rid)
        except BaseException:
            app.worker.abort(rid)
            raise

    def _read_body(self) -> Any:
        n = content_length(self.headers.get("Content-Length"))
        config = self.app.config
        self.deadline = time.monotonic() + config.body_timeout
        try:
            raw = self.rfile.read(n)
        except TimeoutError:
            raise APIError(408, f"the request body did not arrive in time (idle limit {config.timeout:g} s, "
                                f"whole body {config.body_timeout:g} s)", code="timeout") from None
        if len(raw) < n:
            raise APIError(400, f"the request body ended after {len(raw)} of {n} bytes", code="incomplete_body")
        self._request_read()
        return parse_json(raw)

    # ---- generation -----------------------------------------------------------------------------
    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _events(self, out: queue.Queue) -> Iterator[list]:
        """Batches of the request's events as they come, the last ending with RunFinished or a Failure;
        raises _Disconnected when the client leaves (checked after every batch, not only when idle)."""
        while True:
            batch = []
            try:
                batch.append(out.get(timeout=0.05))
                while not isinstance(batch[-1], (RunFinished, Failure)):
                    batch.append(out.get_nowait())
            except queue.Empty:
                pass
            if batch:
                yield batch
                if isinstance(batch[-1], (RunFinished, Failure)):
                    return
            if self._client_gone():
                raise _Disconnected()

    def _complete(self, shaper: ResponseShaper, out: queue.Queue) -> None:
        last = None
        for batch in self._events(out):
            last = batch[-1]
        if isinstance(last, Failure):
            raise APIError(last.status, last.message)
        self._send_json(200, shaper.completion(last.result))

    def _send_event(self, obj: Any) -> None:
        self.wfile.write(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")
        self.wfile.flush()

    def _stream(self, shaper: ResponseShaper, out: queue.Queue) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        for name, value in cors_headers(self._origin(), self.app.config.cors_origins).items():
            self.send_header(name, value)
        self.end_headers()
        self._started = True
        self._send_event(shaper.opening())
        for batch in self._events(out):
            last = batch[-1]
            if isinstance(last, Failure):
                self._send_event(APIError(last.status, last.message).body())
                return
            chunk = shaper.chunk(batch)
            if chunk is not None:
                self._send_event(chunk)
            if isinstance(last, RunFinished):
                self._send_event(shaper.closing(last.result))
                self._send_event(b"[DONE]")
