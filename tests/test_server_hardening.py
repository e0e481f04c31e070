"""A hostile or broken client against a live server on 127.0.0.1: every bad request gets a one-line
OpenAI-style JSON error (never HTML, never a traceback in the log), idle connections time out, a
connection cap keeps the server answering, CORS is off unless origins are named, an optional API key."""
import json
import logging
import select
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai client (pip install -e '.[test]')")

from eager_mlx.server import EagerServer, ServerConfig, serve  # noqa: E402

from fakes import ByteTokenizer, tiny_model  # noqa: E402

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "What is 2+2?"}]
MODEL = tiny_model()


def start(**config) -> EagerServer:
    base = dict(port=0, model_id="tiny", max_rows=8, defaults={"temperature": 1.0}, timeout=5.0)
    return EagerServer(MODEL, ByteTokenizer(), ServerConfig(**{**base, **config})).start()


@pytest.fixture(scope="module")
def plain():
    srv = start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def guarded():
    srv = start(api_key="s3cret", cors_origins=("http://ok.example",))
    yield srv
    srv.shutdown()


@pytest.fixture()
def capped():
    srv = start(max_connections=3, timeout=0.5)
    yield srv
    srv.shutdown()


# ---- raw HTTP ------------------------------------------------------------------------------------
def req(method: str, path: str, body=b"", **headers) -> bytes:
    """A raw HTTP/1.1 request; Content-Length is the body's unless given (None: left out)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    headers = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(body)),
               **{k.replace("_", "-"): v for k, v in headers.items()}}
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if v is not None)
    return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + body


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    raw = b""
    while chunk := sock.recv(1 << 16):
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def exchange(port: int, data: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return read_response(s)


def health(srv) -> dict:
    status, _, body = exchange(srv.port, req("GET", "/health"))
    assert status == 200
    return json.loads(body)


def assert_openai_error(headers: dict, body: bytes) -> dict:
    assert headers["content-type"] == "application/json"
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "\n" not in err["message"] and "Traceback" not in err["message"]
    return err


def assert_no_traceback(caplog) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def nested(depth: int) -> bytes:
    return b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"


BAD = [  # (name, raw request, status, words in the message)
    ("content-length -5", req("POST", CHAT, b"{}", Content_Length="-5"), 400, "invalid Content-Length"),
    ("content-length text", req("POST", CHAT, b"{}", Content_Length="ten"), 400, "invalid Content-Length"),
    ("no content-length", req("POST", CHAT, b"", Content_Length=None), 411, "Content-Length header is required"),
    ("body too large", req("POST", CHAT, b"{}", Content_Length=str(64 << 20)), 413, "the limit is"),
    ("body shorter than announced", req("POST", CHAT, b'{"a": 1}', Content_Length="100"), 400,
     "ended after 8 of 100 bytes"),
    ("nested 100000 deep", req("POST", CHAT, nested(100_000)), 400, "nests deeper than 64 levels"),
    ("nested 65 deep", req("POST", CHAT, nested(65)), 400, "nests deeper than 64 levels"),
    ("not JSON", req("POST", CHAT, b"{not json"), 400, "invalid JSON"),
    ("not UTF-8", req("POST", CHAT, b'{"messages": "\xff\xfe"}'), 400, "invalid JSON"),
    ("JSON array", req("POST", CHAT, [1, 2]), 400, "must be a JSON object"),
    ("temperature NaN", req("POST", CHAT, b'{"messages": [], "temperature": NaN}'), 400, "NaN is not a JSON value"),
    ("temperature Infinity", req("POST", CHAT, b'{"temperature": Infinity}'), 400, "Infinity is not a JSON value"),
    ("threshold NaN", req("POST", CHAT, b'{"eager": {"threshold": NaN}}'), 400, "NaN is not a JSON value"),
    ("temperature 1e999", req("POST", CHAT, b'{"temperature": 1e999}'), 400, "1e999 is too large"),
    ("temperature -1", req("POST", CHAT, {"messages": HI, "temperature": -1}), 400, "temperature must be >= 0"),
    ("n 0", req("POST", CHAT, {"messages": HI, "n": 0}), 400, "n must be >= 1"),
    ("seed 2**64", req("POST", CHAT, {"messages": HI, "seed": 2**64}), 400,
     "seed must be >= -9223372036854775808, <= 9223372036854775807, got 18446744073709551616"),
    ("seed 2**63", req("POST", CHAT, {"messages": HI, "seed": 2**63}), 400, "seed must be >="),
    ("top_k 2**40", req("POST", CHAT, {"messages": HI, "top_k": 2**40}), 400, "top_k must be >= 0, <= 1048576"),
    ("max_tokens 2**63", req("POST", CHAT, {"messages": HI, "max_tokens": 2**63}), 400, "max_tokens must be >= 1"),
    ("max_sequences 2**70", req("POST", CHAT, {"messages": HI, "eager": {"max_sequences": 2**70}}), 400,
     "max_sequences must be >= 1, <= 1024"),
    ("duplicate key", req("POST", CHAT, b'{"messages": [], "max_tokens": 1, "max_tokens": 9}'), 400,
     "duplicate key 'max_tokens'"),
    ("unknown key", req("POST", CHAT, {"messages": HI, "temprature": 0.5}), 400,
     "unknown request key(s): [\"temprature\"]"),
    ("unknown eager key", req("POST", CHAT, {"messages": HI, "eager": {"theta": 1}}), 400, "unknown eager option"),
    ("unsupported penalty", req("POST", CHAT, {"messages": HI, "frequency_penalty": 0.5}), 400,
     "frequency_penalty is not supported by this server (only 0 or null), got 0.5"),
    ("two content-lengths", req("POST", CHAT, b"{}", Content_Length="2\r\nContent-Length: 20"), 400,
     "more than one Content-Length header"),
    ("content-length and chunked", req("POST", CHAT, b"2\r\n{}\r\n0\r\n\r\n", Transfer_Encoding="chunked"), 400,
     "Transfer-Encoding is not supported"),
    ("chunked alone", req("POST", CHAT, b"2\r\n{}\r\n0\r\n\r\n", Content_Length=None, Transfer_Encoding="chunked"),
     400, "Transfer-Encoding is not supported"),
    ("foreign host (DNS rebinding)", req("GET", "/v1/models", Host="evil.example:8080"), 403,
     "the Host header 'evil.example:8080' is not a name of this server"),
    ("lone surrogate", req("POST", CHAT, b'{"messages": [{"role": "user", "content": "a\\ud800"}]}'), 400,
     "messages[0].content holds a lone surrogate '\\ud800' at character 1"),
    ("two hosts", req("GET", "/v1/models", Host="127.0.0.1\r\nHost: evil.example"), 400, "more than one Host header"),
    ("token outside the vocabulary", req("POST", "/v1/completions", {"prompt": [1, 300]}), 400,
     "token id 300 is outside the vocabulary"),
    ("model not a string", req("POST", CHAT, {"messages": HI, "model": 5}), 400, "model must be str"),
    ("unknown model", req("POST", CHAT, {"messages": HI, "model": "gpt-4"}), 404, "does not exist"),
    ("logprobs", req("POST", CHAT, {"messages": HI, "logprobs": True}), 400, "logprobs is not supported"),
    ("GET on a POST route", req("GET", CHAT), 405, "GET is not allowed on /v1/chat/completions; use POST"),
    ("POST on a GET route", req("POST", "/v1/models", {}), 405, "POST is not allowed on /v1/models; use GET"),
    ("PUT", req("PUT", CHAT, {}), 405, "PUT is not allowed"),
    ("DELETE", req("DELETE", "/v1/models/tiny"), 405, "DELETE is not allowed"),
    ("PATCH on no route", req("PATCH", "/nothing"), 404, "Unknown route: PATCH /nothing"),
    ("GET on no route", req("GET", "/v1/nothing"), 404, "Unknown route: GET /v1/nothing"),
    ("unknown method", req("FOO", "/v1/models"), 501, "Unsupported method ('FOO')"),
    ("garbage request line", b"GARBAGE\r\n\r\n", 400, "Bad request syntax"),
    ("binary request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 x\r\n\r\n", 400, "Bad HTTP/0.9 request type"),
    ("HTTP/0.9", b"GET /health\r\n\r\n", 400, "HTTP/0.9 requests are not supported"),
    ("bad version", b"GET /health HTTP/x.y\r\n\r\n", 400, "Bad request version"),
    ("HTTP/2.0", b"GET /health HTTP/2.0\r\n\r\n", 505, "Invalid HTTP version"),
    ("URI too long", req("GET", "/" + "a" * 70_000), 414, "Request-URI Too Long"),
    ("header too long", req("GET", "/health", X_Big="a" * 70_000), 431, "Line too long"),
    ("origin not allowed", req("POST", CHAT, {"messages": HI}, Origin="http://evil.example"), 403,
     "the web origin 'http://evil.example' are not allowed"),
]


@pytest.mark.parametrize("raw, status, words", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_request_table(plain, caplog, raw, status, words):
    caplog.set_level(logging.DEBUG, logger="eager_mlx")
    got, headers, body = exchange(plain.port, raw)
    assert got == status
    err = assert_openai_error(headers, body)
    assert words in err["message"]
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    if status == 405:
        assert headers["allow"] in ("POST, OPTIONS", "GET, OPTIONS") and headers["allow"].split(",")[0] in err["message"]
    assert_no_traceback(caplog)


def test_the_server_answers_after_the_table(plain):
    assert health(plain)["status"] == "ok"
    c = openai.OpenAI(base_url=plain.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    assert c.chat.completions.create(model="tiny", messages=HI, max_tokens=4).choices


# ---- timeouts and the connection cap -------------------------------------------------------------
def busy(port: int) -> socket.socket:
    """A connection being answered: a greedy stream that runs to the model's context (close it with `reset`)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(req("POST", CHAT, {"messages": HI, "max_tokens": 100_000, "temperature": 0, "stream": True}))
    assert s.recv(64).startswith(b"HTTP/1.0 200")
    return s


def test_past_the_cap_a_503_only_when_every_connection_is_being_answered(capped, caplog):
    caplog.set_level(logging.DEBUG, logger="eager_mlx")
    answered = [busy(capped.port) for _ in range(3)]  # the cap
    try:
        for _ in range(50):  # each is answered at once, then closed (no file descriptor kept)
            with socket.create_connection(("127.0.0.1", capped.port), timeout=10) as s:
                status, headers, body = read_response(s)
            assert status == 503 and headers["retry-after"] == "1"
            assert assert_openai_error(headers, body)["code"] == "too_many_connections"
        assert sum("new ones get a 503" in r.getMessage() for r in caplog.records) == 1  # said once, not 50 times
    finally:
        for s in answered:
            reset(s)
    deadline = time.monotonic() + 10
    while (status := _status_or_503(capped.port)) == 503 and time.monotonic() < deadline:
        time.sleep(0.05)  # the slots are released just after the streams are aborted
    assert status == 200
    assert_no_traceback(caplog)


def _status_or_503(port: int) -> int:
    """GET /health's status; a connection the server refused before reading it (reset) counts as its 503."""
    try:
        return exchange(port, req("GET", "/health"))[0]
    except OSError:
        return 503


def test_idle_connections_time_out(capped):
    idle = [socket.create_connection(("127.0.0.1", capped.port), timeout=10) for _ in range(3)]
    try:
        for s in idle:  # the server closes an idle connection after its timeout (0.5 s), sending nothing
            assert s.recv(1) == b""
    finally:
        for s in idle:
            s.close()


def test_slow_senders_cannot_keep_a_client_from_its_answer(caplog):
    """Slowloris: 40 sockets (5x the cap) each send a header byte every 0.2 s and reconnect when closed;
    a normal client still gets its answer, because a newcomer takes the oldest slow sender's place."""
    srv = start(max_connections=8, timeout=5.0, header_timeout=3.0)
    stop = threading.Event()

    def slow_sender() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                    s.sendall(b"GET /health HTTP/1.1\r\n")
                    while not stop.wait(0.2):
                        s.sendall(b"X")
            except OSError:
                pass  # closed by the server: connect again

    threads = [threading.Thread(target=slow_sender, daemon=True) for _ in range(40)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)  # every slot is held by a slow sender, and more are waiting
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        for _ in range(3):
            assert client.chat.completions.create(model="tiny", messages=HI, max_tokens=4).choices
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        srv.shutdown()


def test_a_request_trickled_a_byte_at_a_time_is_cut_off_at_its_deadline():
    srv = start(timeout=5.0, header_timeout=1.0, body_timeout=1.0)
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:  # headers, never idle
            t0 = time.monotonic()
            s.sendall(b"GET /health HTTP/1.1\r\n")
            closed = False
            while not closed and time.monotonic() - t0 < 5:
                time.sleep(0.1)
                try:
                    s.sendall(b"X")
                except OSError:
                    closed = True
                closed = closed or bool(select.select([s], [], [], 0)[0])
            assert closed and time.monotonic() - t0 < 2.5
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:  # a body, never idle
            t0 = time.monotonic()
            s.sendall(req("POST", CHAT, b"{", Content_Length="1000"))
            while not select.select([s], [], [], 0.1)[0] and time.monotonic() - t0 < 5:
                s.sendall(b" ")
            status, headers, body = read_response(s)
        assert status == 408 and "whole body 1 s" in assert_openai_error(headers, body)["message"]
        assert time.monotonic() - t0 < 2.5
    finally:
        srv.shutdown()


def test_a_body_that_stops_arriving_is_a_408(capped):
    with socket.create_connection(("127.0.0.1", capped.port), timeout=10) as s:
        s.sendall(req("POST", CHAT, b'{"messages": ', Content_Length="100"))  # and then nothing
        status, headers, body = read_response(s)
    assert status == 408 and assert_openai_error(headers, body)["code"] == "timeout"


def test_a_request_line_that_stops_arriving_is_closed(capped):
    with socket.create_connection(("127.0.0.1", capped.port), timeout=10) as s:
        s.sendall(b"GET /hea")
        assert s.recv(1) == b""


# ---- disconnects ---------------------------------------------------------------------------------
def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): the server's next write fails with ECONNRESET / EPIPE."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_for(srv, key: str, value: int) -> dict:
    deadline = time.monotonic() + 10
    while (h := health(srv))[key] != value and time.monotonic() < deadline:
        time.sleep(0.02)
    return h


def test_clients_that_vanish_leave_no_traceback(plain, caplog):
    caplog.set_level(logging.DEBUG, logger="eager_mlx")
    before = health(plain)["aborted"]
    for k, stream in enumerate((True, False), start=1):
        s = socket.create_connection(("127.0.0.1", plain.port), timeout=10)
        s.sendall(req("POST", CHAT, {"messages": HI, "max_tokens": 2000, "n": 2, "stream": stream}))
        if stream:
            assert s.recv(64).startswith(b"HTTP/1.0 200")
        else:
            wait_for(plain, "requests", 1)  # generating
        reset(s)
        assert wait_for(plain, "aborted", before + k)["aborted"] == before + k
    for _ in range(20):  # bad requests whose clients are gone before the answer
        s = socket.create_connection(("127.0.0.1", plain.port), timeout=10)
        s.sendall(req("PUT", CHAT, b"{}"))
        reset(s)
    h = wait_for(plain, "aborted", before + 2)
    assert (h["aborted"], h["rows"], h["requests"]) == (before + 2, 0, 0)
    assert_no_traceback(caplog)


# ---- CORS and the API key ------------------------------------------------------------------------
def test_no_cors_unless_origins_are_named(plain, guarded):
    status, headers, body = exchange(plain.port, req("GET", "/v1/models", Origin="http://ok.example"))
    assert status == 403 and "access-control-allow-origin" not in headers
    status, headers, _ = exchange(plain.port, req("GET", "/v1/models"))  # not a browser
    assert status == 200 and "access-control-allow-origin" not in headers
    status, headers, _ = exchange(plain.port, req("OPTIONS", CHAT, Origin="http://ok.example",
                                                  Access_Control_Request_Method="POST"))
    assert status == 403 and "access-control-allow-origin" not in headers
    # named origins: their preflight and requests get the CORS headers, others a 403
    status, headers, _ = exchange(guarded.port, req("OPTIONS", CHAT, Origin="http://ok.example",
                                                    Access_Control_Request_Method="POST"))
    assert status == 204 and headers["access-control-allow-origin"] == "http://ok.example"
    assert "Authorization" in headers["access-control-allow-headers"] and headers["allow"] == "POST, OPTIONS"
    status, headers, _ = exchange(guarded.port, req("GET", "/v1/models", Origin="http://ok.example",
                                                    Authorization="Bearer s3cret"))
    assert status == 200 and headers["access-control-allow-origin"] == "http://ok.example"
    assert headers["vary"] == "Origin"
    completed = health(guarded)["completed"]
    status, headers, body = exchange(guarded.port, req("POST", CHAT, {"messages": HI, "max_tokens": 2},
                                                       Origin="http://evil.example", Authorization="Bearer s3cret"))
    assert status == 403 and assert_openai_error(headers, body)["code"] == "origin_not_allowed"
    assert health(guarded)["completed"] == completed  # refused before any work


def test_api_key(guarded):
    wrong = openai.OpenAI(base_url=guarded.url + "/v1", api_key="wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.chat.completions.create(model="tiny", messages=HI, max_tokens=2)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    status, headers, body = exchange(guarded.port, req("GET", "/v1/models"))
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert "didn't provide an API key" in assert_openai_error(headers, body)["message"]
    right = openai.OpenAI(base_url=guarded.url + "/v1", api_key="s3cret", max_retries=0, timeout=30)
    assert right.chat.completions.create(model="tiny", messages=HI, max_tokens=2).choices
    assert [m.id for m in right.models.list().data] == ["tiny"]
    assert exchange(guarded.port, req("GET", "/health"))[0] == 200  # liveness needs no key


# ---- serve() -------------------------------------------------------------------------------------
@pytest.mark.parametrize("host, warns", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_serve_warns_when_bound_beyond_loopback(monkeypatch, capsys, host, warns):
    from eager_mlx.models import LoadedModel

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(EagerServer, "serve_forever", interrupted)
    serve(LoadedModel(MODEL, ByteTokenizer(), None, Path("/m/tiny"), "tiny"), ServerConfig(host=host, port=0, model_id="tiny"))
    out = capsys.readouterr()
    assert "serving tiny on" in out.out
    assert ("warning: listening on 0.0.0.0, reachable by any machine" in out.err) is warns
    if warns:
        assert "set --api-key" in out.err
