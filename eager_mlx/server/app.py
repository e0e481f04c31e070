"""`EagerServer`: the HTTP server (a thread per connection, capped) and its engine worker; `serve`."""
from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
import uuid
from http.server import ThreadingHTTPServer
from typing import Any, Callable, Optional

from .access import exposure_warning, host_names
from .config import ServerConfig
from .errors import APIError
from .handler import CLIENT_GONE, Handler
from .worker import EngineWorker

__all__ = ["EagerServer", "serve"]

log = logging.getLogger("eager_mlx.server")


class _HTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once. Past that, a new connection takes the place
    of the oldest one still sending its request (so slow senders cannot hold every slot: slowloris), and gets a
    503 at once only when every connection is being answered. IPv4 or IPv6, by the host's address."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: "EagerServer"):
        self.app = app
        self._slots = threading.BoundedSemaphore(app.config.max_connections)
        self._warned_at = {"refuse": -3600.0, "evict": -3600.0}  # when the log last said so
        self._lock = threading.Lock()
        self._reading: dict[Any, socket.socket] = {}  # handlers still reading their request, oldest first
        self.address_family = _family(address[0])
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] in ("::", ""):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # '::' takes IPv4 clients too
        super().server_bind()

    def reading(self, handler: Any) -> None:
        with self._lock:
            self._reading[handler] = handler.connection

    def done_reading(self, handler: Any) -> None:
        with self._lock:
            self._reading.pop(handler, None)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False) and not self._evict_slowest():
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._slots.release()
            raise

    def _evict_slowest(self) -> bool:
        """Close the oldest connection still sending its request and take its slot (False: none to close)."""
        with self._lock:
            victim = next(iter(self._reading.items()), None)
            if victim is not None:
                del self._reading[victim[0]]
        if victim is None:
            return False
        self._log_once("evict", "%d connections are open, the limit (--max-connections): new ones take the place "
                                "of the oldest still sending a request", self.app.config.max_connections)
        try:
            victim[1].shutdown(socket.SHUT_RDWR)  # its thread's read returns at once, and the thread ends
        except OSError:
            pass
        return self._slots.acquire(timeout=5.0)

    def _log_once(self, kind: str, message: str, *args: Any) -> None:
        if time.monotonic() - self._warned_at[kind] > 60:  # a flood must not flood the log
            self._warned_at[kind] = time.monotonic()
            log.warning(message, *args)

    def shutdown_request(self, request: socket.socket) -> None:
        """Close after the answer; what the client sent beyond its request (a pipelined one, an unread body) is
        read first, since closing over unread bytes resets the connection and can destroy the answer."""
        try:
            request.shutdown(socket.SHUT_WR)
            request.setblocking(False)
            for _ in range(16):
                if not request.recv(1 << 16):
                    break
        except OSError:
            pass
        self.close_request(request)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, sock: socket.socket) -> None:
        """Answer 503 without a thread and close: the server keeps answering however many clients hang on."""
        limit = self.app.config.max_connections
        self._log_once("refuse", "%d connections are open and being answered, the limit (--max-connections): new "
                                 "ones get a 503", limit)
        body = json.dumps(APIError(503, f"the server has {limit} connections open, its limit; retry shortly",
                                   code="too_many_connections").body()).encode()
        head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            sock.setblocking(False)
            try:
                sock.recv(1 << 16)  # what the client sent already (closing over unread bytes resets the connection)
            except (BlockingIOError, InterruptedError):
                pass
            sock.send(head + body)
        except OSError as e:
            log.debug("refusing a connection: %r", e)
        finally:
            self.shutdown_request(sock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, CLIENT_GONE):  # no traceback for a client that went away
            log.debug("connection from %s ended: %r", client_address[0], error)
        else:
            log.exception("error on the connection from %s", client_address[0])


def _family(host: str) -> int:
    """AF_INET6 for an IPv6 address (or a name that resolves only to one), else AF_INET."""
    try:
        return socket.getaddrinfo(host or None, None, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError):
        return socket.AF_INET6 if ":" in host else socket.AF_INET  # binding then says why it cannot


class EagerServer:
    """The HTTP server and its engine worker. `start()` serves on a background thread; `serve_forever()` blocks."""

    def __init__(self, model, tokenizer, config: Optional[ServerConfig] = None, *, preset=None,
                 context_length: Optional[int] = None, make_engine: Optional[Callable[[], Any]] = None):
        self.config = config or ServerConfig()
        self.tokenizer = tokenizer
        self.preset = preset
        args = getattr(model, "args", None)
        self.context_length = context_length or (preset.context_length if preset is not None else None) \
            or getattr(args, "max_position_embeddings", None)
        self.vocab_size: Optional[int] = getattr(args, "vocab_size", None)
        self.model = model
        self.host_names = host_names(self.config.host, self.config.allowed_hosts)  # None: any Host
        self.fingerprint = "eager-mlx-" + uuid.uuid4().hex[:8]
        self.created = int(time.time())

        def default_engine():
            from eager_mlx.engine.engine import Engine

            # reserve: an eager request starts once its M rows are free, so no branch is lost to the load
            return Engine(model, tokenizer, max_rows=self.config.max_rows, seed=self.config.seed,
                          context_length=self.context_length, prefix_cache=self.config.prefix_cache, reserve=True)

        self.worker = EngineWorker(make_engine or default_engine)
        self.worker.start()
        try:
            self.httpd = _HTTPServer((self.config.host, self.config.port), self)
        except OSError:
            self.worker.stop()
            raise
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def check_memory(self, rows: int, max_tokens: int) -> None:
        """400 when a request's rows, run to its max_tokens, would need more KV cache than the machine has."""
        from eager_mlx.models.loader import on_cpu
        from eager_mlx.models.memory import check_kv_fits
        from eager_mlx.settings import SettingError

        try:
            check_kv_fits(self.model, rows, max_tokens, context_length=self.context_length, on_cpu=on_cpu())
        except SettingError as e:
            raise APIError(400, str(e), param="max_tokens", code="invalid_value") from None

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
    """Serve a LoadedModel until interrupted (Ctrl-C); warns on stderr when bound beyond loopback."""
    server = EagerServer(loaded.model, loaded.tokenizer, config, preset=loaded.preset)
    print(f"eager-mlx: serving {config.model_id} on {server.url} (OpenAI API at {server.url}/v1)", flush=True)
    warning = exposure_warning(server.httpd.server_address[0], config.api_key)
    if warning:
        print(f"eager-mlx: {warning}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
