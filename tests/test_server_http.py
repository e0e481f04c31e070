"""HTTP framing against a live server: HEAD, pipelining, the Host check, IPv6, and a fuzz test of the request
parsing (methods, header names and values, lengths, encodings, bodies): every answer is one well-formed HTTP
response (JSON errors), nothing is logged as an error, and the server keeps answering."""
import json
import logging
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eager_mlx.server.access import check_host, host_names
from eager_mlx.server.errors import APIError

from test_server_hardening import CHAT, HI, assert_no_traceback, exchange, read_response, req, start


@pytest.fixture(scope="module")
def srv():
    server = start()
    yield server
    server.shutdown()


def test_head_answers_carry_no_body(srv):
    status, headers, body = exchange(srv.port, req("HEAD", "/health"))
    assert status == 200 and int(headers["content-length"]) > 0 and body == b""
    status, headers, body = exchange(srv.port, req("HEAD", CHAT))
    assert status == 405 and headers["allow"] == "POST, OPTIONS" and body == b""


def test_pipelined_requests_get_the_first_answer_then_the_connection_closes(srv):
    """HTTP/1.0, one request per connection (decided, README): a second request sent along is not answered."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(req("GET", "/health") + req("GET", "/v1/models"))
        raw = b""
        while chunk := s.recv(1 << 16):
            raw += chunk
    assert raw.count(b"HTTP/1.0 ") == 1 and b'"status": "ok"' in raw


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:8080", True), ("localhost", True), ("LOCALHOST.:1", True), ("[::1]:8080", True),
    ("127.1.2.3", True), ("evil.example", False), ("evil.example:80", False), ("127.0.0.1.evil.example", False),
    ("[::1", False), ("", False),
])
def test_host_names_on_loopback(host, ok):
    names = host_names("127.0.0.1", ())
    if ok:
        check_host([host], names)
    else:
        with pytest.raises(APIError) as e:
            check_host([host], names)
        assert e.value.status == 403 and e.value.code == "host_not_allowed"


def test_host_names_elsewhere_and_allowed():
    assert host_names("0.0.0.0", ()) is None  # reachable by address anyway: any name (README)
    assert host_names("127.0.0.1", ("*",)) is None
    names = host_names("192.168.1.5", ("box.lan",))
    check_host(["box.lan:8080"], names)
    check_host(["192.168.1.5:8080"], names)
    with pytest.raises(APIError):
        check_host(["other.lan"], names)
    check_host([], names)  # an HTTP/1.0 client without Host: never a browser


def test_ipv6_host_binds_and_answers():
    try:
        server = start(host="::1")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here ({e})")
    try:
        assert server.url.startswith("http://[::1]:")
        with socket.create_connection(("::1", server.port), timeout=10) as s:
            s.sendall(req("GET", "/health", Host=f"[::1]:{server.port}"))
            s.shutdown(socket.SHUT_WR)
            status, _, body = read_response(s)
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        server.shutdown()


# ---- fuzz ----------------------------------------------------------------------------------------
_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_", min_size=1, max_size=12)
_BYTES = st.binary(max_size=40)
_LENGTHS = st.sampled_from(["0", "2", "5", "-1", "+3", " 4 ", "1e3", "99999999999999999999", "0x10", "", "2, 2"])
_HEADER = st.one_of(
    st.tuples(st.sampled_from(["Content-Length", "content-length", "Content-Length "]), _LENGTHS),
    st.tuples(st.sampled_from(["Transfer-Encoding", "Host", "Origin", "Authorization", "Expect", "Connection"]),
              st.sampled_from(["chunked", "gzip", "127.0.0.1", "evil.example", "100-continue", "keep-alive",
                               "Bearer x", "http://a.example", ""])),
    st.tuples(_TOKEN, st.text(max_size=20)),
    st.tuples(_BYTES.map(lambda b: b.decode("latin-1")), _BYTES.map(lambda b: b.decode("latin-1"))),
)
_METHOD = st.one_of(st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "TRACE",
                                     "CONNECT", "get", "POST "]), _TOKEN)
_PATH = st.one_of(st.sampled_from(["/health", "/v1/models", "/v1/models/tiny", CHAT, "/v1/completions", "*", "",
                                   "/%00", "//", "/v1/chat/completions?x=1", "http://a/health"]),
                  _BYTES.map(lambda b: "/" + b.decode("latin-1")))
_BODY = st.one_of(_BYTES, st.sampled_from([b"{}", b'{"messages": []}', b'{"prompt": [1, 2], "max_tokens": 1}',
                                           b'{"messages": 1}', b"\xff\xfe{}", b'{"a": NaN}', b"[" * 70]))
_VERSION = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.1 ", "HTTP/1", ""])
_STATUSES = {200, 204, 400, 401, 403, 404, 405, 408, 411, 413, 414, 431, 501, 505}


def _raw(method: str, path: str, version: str, headers: list, body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return f"{method} {path} {version}\r\n{head}\r\n".encode("latin-1", "replace") + body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=_METHOD, path=_PATH, version=_VERSION, headers=st.lists(_HEADER, max_size=5), body=_BODY)
def test_fuzzed_requests_get_one_well_formed_answer(srv, caplog, method, path, version, headers, body):
    caplog.set_level(logging.DEBUG, logger="eager_mlx")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(_raw(method, path, version, headers, body))
        s.shutdown(socket.SHUT_WR)
        raw = b""
        while chunk := s.recv(1 << 16):
            raw += chunk
    if raw:  # nothing at all only when the request line never ended (the base class closes: nothing to answer)
        assert raw.startswith(b"HTTP/1.0 ") and raw.count(b"HTTP/1.0 ") <= 1 + body.count(b"HTTP/1.0 ")
        head, _, payload = raw.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        assert status in _STATUSES, raw[:200]
        if method == "HEAD":  # errors included
            assert payload == b"", raw[:200]
        elif status >= 400:
            err = json.loads(payload)["error"]
            assert err["message"] and "\n" not in err["message"]
    assert_no_traceback(caplog)


def test_the_server_answers_after_the_fuzz(srv):
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:  # (a half-close means "gone")
        s.sendall(req("POST", CHAT, {"messages": HI, "max_tokens": 2}))
        status, _, body = read_response(s)
    assert status == 200 and json.loads(body)["choices"]
