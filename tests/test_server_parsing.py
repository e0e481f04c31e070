"""The server's pure parts, without a socket: body and request parsing (with a property-based fuzz test),
response shaping and the access checks."""
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eager_mlx.results import BranchEvent, RunResult, SequenceFinished, SequenceResult, TokenEvent
from eager_mlx.server import APIError, GenerationRequest, ServerConfig, parse_request
from eager_mlx.server.access import check_api_key, check_origin, cors_headers, exposure_warning, valid_origin
from eager_mlx.server.requests import MAX_DEPTH, content_length, parse_json
from eager_mlx.server.responses import ResponseShaper, finish_reason

from fakes import ByteTokenizer

TOK = ByteTokenizer()
CONFIG = ServerConfig(model_id="tiny", max_rows=8, defaults={"temperature": 1.0})
HI = [{"role": "user", "content": "hi"}]


def parse(body, kind="chat", config=CONFIG):
    return parse_request(body, kind, TOK, config, None, context_length=4096, vocab_size=TOK.vocab_size)


def error_of(fn, *args, **kwargs) -> APIError:
    with pytest.raises(APIError) as e:
        fn(*args, **kwargs)
    return e.value


# ---- the body ------------------------------------------------------------------------------------
@pytest.mark.parametrize("header, status", [(None, 411), ("-5", 400), ("+5", 400), ("abc", 400), ("1 2", 400),
                                            ("\u0663", 400), ("", 400), (str(64 << 20), 413), ("9" * 5000, 413)])
def test_content_length_refuses_what_is_not_a_size(header, status):
    e = error_of(content_length, header)
    assert e.status == status and "\n" not in e.message and len(e.message) <= 300


def test_content_length_reads_a_size():
    assert content_length("42") == 42 and content_length(" 0 ") == 0


@pytest.mark.parametrize("raw, words", [
    (b'{"temperature": NaN}', "NaN is not a JSON value"),
    (b'{"temperature": Infinity}', "Infinity is not a JSON value"),
    (b'{"temperature": -Infinity}', "-Infinity is not a JSON value"),
    (b'{"temperature": 1e999}', "1e999 is too large"),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), f"nests deeper than {MAX_DEPTH} levels"),
    (b"[" * 100_000 + b"]" * 100_000, f"nests deeper than {MAX_DEPTH} levels"),  # past the recursion limit
    (b'{"a": ' * 100_000, f"nests deeper than {MAX_DEPTH} levels"),
    (b'{"n": ' + b"9" * 5000 + b"}", "invalid JSON"),  # int() of a 5000-digit literal raises ValueError
    (b"\xff\xfe\xfa", "invalid JSON"),
    (b"{not json", "invalid JSON"),
])
def test_parse_json_is_strict(raw, words):
    e = error_of(parse_json, raw)
    assert e.status == 400 and words in e.message and "\n" not in e.message


def test_parse_json_accepts_plain_json():
    assert parse_json(b'{"a": [1, 2.5, {"b": null}]}') == {"a": [1, 2.5, {"b": None}]}
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)  # exactly the limit


# ---- the request ---------------------------------------------------------------------------------
@pytest.mark.parametrize("body, param", [
    ({"messages": HI, "temperature": math.nan}, "temperature"),  # Python callers bypass parse_json
    ({"messages": HI, "temperature": math.inf}, "temperature"),
    ({"messages": HI, "eager": {"threshold": math.nan}}, "threshold"),
    ({"messages": HI, "top_p": -math.inf}, "top_p"),
    ({"messages": HI, "seed": 2**64}, "seed"),
    ({"messages": HI, "seed": "1"}, "seed"),
])
def test_non_finite_and_out_of_range_values_are_400(body, param):
    e = error_of(parse, body)
    assert (e.status, e.param) == (400, param)


@pytest.mark.parametrize("prompt", [[1, 2, 300], [-1], [2**40]])
def test_token_ids_outside_the_vocabulary_are_400(prompt):
    e = error_of(parse, {"prompt": prompt}, kind="text")
    assert (e.status, e.param) == (400, "prompt") and "outside the vocabulary (0 to 299)" in e.message


def test_a_good_request_and_its_defaults():
    req = parse({"messages": HI, "n": 3, "seed": 7, "stream": True})
    assert isinstance(req, GenerationRequest)
    assert (req.n, req.method, req.stream, req.seed, req.model) == (3, "parallel", True, 7, "tiny")
    assert req.config.parallel and req.config.max_sequences == 3 and req.config.sampling.temperature == 1.0
    eager = parse({"prompt": [1, 2, 3], "eager": {"threshold": 1.5, "max_sequences": 4}}, kind="text")
    assert (eager.method, eager.tokens, eager.config.threshold, eager.config.max_sequences) == \
        ("eager", [1, 2, 3], 1.5, 4)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
KEYS = ["model", "messages", "prompt", "n", "temperature", "top_p", "top_k", "min_p", "max_tokens",
        "max_completion_tokens", "stream", "stream_options", "seed", "stop", "logprobs", "method", "eager",
        "threshold", "max_sequences", "entropy_top_k", "dynamic_threshold", "think_end", "role", "content"]
GOOD = {  # a valid value for each key (n and max_sequences within the server's 8 rows)
    "model": st.just("tiny"), "n": st.integers(1, 8), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
    "top_k": st.integers(0, 50), "min_p": st.floats(0, 0.99), "max_tokens": st.integers(1, 8),
    "max_completion_tokens": st.integers(1, 8), "stream": st.booleans(), "seed": st.integers(-(2**63), 2**63 - 1),
    "stop": st.lists(st.text(min_size=1, max_size=3), max_size=2), "method": st.sampled_from(["eager", "parallel"]),
    "threshold": st.floats(0, 5), "max_sequences": st.integers(1, 8), "entropy_top_k": st.integers(2, 30),
    "dynamic_threshold": st.booleans(), "think_end": st.none() | st.text(min_size=1, max_size=4),
    "logprobs": st.just(False), "stream_options": st.just({"include_usage": True}),
    "eager": st.fixed_dictionaries({}, optional={"threshold": st.floats(0, 5), "max_sequences": st.integers(1, 8)}),
}
KEYS = sorted(GOOD) + ["messages", "prompt", "role", "content"]
# random keys and values; and a valid request (for either kind) with a few keys changed, mostly to valid values
request_like = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8)
mutated = st.lists(st.sampled_from(KEYS), max_size=3, unique=True).flatmap(lambda keys: st.fixed_dictionaries(
    {k: st.one_of(GOOD.get(k, json_values), GOOD.get(k, json_values), json_values) for k in keys})).map(
    lambda extra: {"messages": HI, "prompt": "Once", "max_tokens": 4, **extra})


@settings(max_examples=250, deadline=None)
@given(body=st.one_of(json_values, request_like, mutated), kind=st.sampled_from(["chat", "text"]))
def test_fuzz_parse_request_gives_a_request_or_a_4xx(body, kind):
    try:
        req = parse(body, kind)
    except APIError as e:
        assert 400 <= e.status < 500 and e.message and "\n" not in e.message
        assert set(e.body()["error"]) == {"message", "type", "param", "code"}
        json.dumps(e.body())  # the error body is always JSON
        return
    req.config.validate()
    assert req.tokens and all(0 <= t < TOK.vocab_size for t in req.tokens) and 1 <= req.n <= CONFIG.max_rows
    assert req.config.max_sequences <= CONFIG.max_rows


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzz_parse_json_gives_a_value_or_a_400(raw):
    try:
        parse_json(raw)
    except APIError as e:
        assert e.status == 400 and "\n" not in e.message


# ---- responses -----------------------------------------------------------------------------------
def result_of(texts: list[str], parents=None) -> RunResult:
    parents = parents or [None] * len(texts)
    seqs = [SequenceResult(i, [1] * len(t), t, "eos" if i == 0 else "length", p, None if p is None else 1, [], [],
                           answer="4") for i, (t, p) in enumerate(zip(texts, parents))]
    return RunResult("r1", seqs, prompt_tokens=5, generated_tokens=7, answer="4", threshold=2.0, elapsed_s=0.01234,
                     branch_points=len(texts) - 1)


def shaper(kind="chat", n=1, method="eager") -> ResponseShaper:
    req = parse({"messages" if kind == "chat" else "prompt": HI if kind == "chat" else "x", "n": n,
                 "method": method}, kind)
    return ResponseShaper("r1", req, "fp", 123)


def test_completion_has_a_choice_per_sequence_and_the_vote():
    body = shaper().completion(result_of(["ab", "ac"], parents=[None, 0]))
    assert body["object"] == "chat.completion" and body["created"] == 123 and body["system_fingerprint"] == "fp"
    assert [c["message"]["content"] for c in body["choices"]] == ["ab", "ac"]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length"]
    assert body["choices"][1]["parent"] == 0 and body["votes"] == {"4": 2} and body["answer"] == "4"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert body["eager"]["num_sequences"] == 2 and body["eager"]["elapsed_s"] == 0.012
    text = shaper("text").completion(result_of(["x"]))
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == "x"
    assert [finish_reason(r) for r in ("eos", "length", "pruned", "nonfinite")] == ["stop", "length", "stop", "error"]


def test_stream_chunks_a_branch_inherits_its_parents_text():
    s = shaper()
    assert s.opening()["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                       "finish_reason": None, "logprobs": None}]
    one = s.chunk([TokenEvent("r1", 0, 97, "a", 0.1), TokenEvent("r1", 0, 98, "b", 0.1)])
    assert one["object"] == "chat.completion.chunk" and one["choices"][0]["delta"] == {"content": "ab"}
    two = s.chunk([BranchEvent("r1", 0, 1, 2, 2.5, 99, 100), TokenEvent("r1", 1, 100, "d", 0.2),
                   SequenceFinished("r1", 0, "eos")])
    assert two["branches"] == [{"parent": 0, "child": 1, "step": 2, "entropy": 2.5}]
    assert two["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    assert two["choices"][1]["delta"] == {"role": "assistant", "content": "abd"}  # inherited text, then its own
    assert s.chunk([TokenEvent("r1", 0, 0, "", 0.0)]) is None  # nothing to say
    closing = s.closing(result_of(["ab", "abd"], parents=[None, 0]))
    assert closing["choices"] == [] and closing["usage"]["completion_tokens"] == 7
    assert [q["index"] for q in closing["sequences"]] == [0, 1]


def test_text_stream_of_parallel_rows_opens_every_row():
    s = shaper("text", n=3, method="parallel")
    assert [c["index"] for c in s.opening()["choices"]] == [0, 1, 2]
    assert s.chunk([TokenEvent("r1", 2, 97, "a", 0.1)])["choices"] == [
        {"index": 2, "text": "a", "finish_reason": None, "logprobs": None}]


# ---- access --------------------------------------------------------------------------------------
@pytest.mark.parametrize("header, ok", [("Bearer s3cret", True), ("bearer s3cret", True), ("Bearer wrong", False),
                                        ("Bearer ", False), ("s3cret", False), (None, False), ("Basic s3cret", False)])
def test_api_key(header, ok):
    check_api_key(None, header)  # no key set: anything goes
    if ok:
        check_api_key("s3cret", header)
    else:
        e = error_of(check_api_key, "s3cret", header)
        assert e.status == 401 and e.code == "invalid_api_key" and e.headers == {"WWW-Authenticate": "Bearer"}
        assert "s3cret" not in e.message


def test_origins_and_cors_headers():
    check_origin(None, ())  # not a browser
    assert error_of(check_origin, "http://evil.example", ()).status == 403
    assert error_of(check_origin, "http://evil.example", ("http://ok.example",)).status == 403
    check_origin("http://ok.example", ("http://ok.example",))
    check_origin("http://any.example", ("*",))
    assert cors_headers("http://evil.example", ("http://ok.example",)) == {}
    assert cors_headers(None, ("*",)) == {}
    assert cors_headers("http://ok.example", ("http://ok.example",)) == {
        "Access-Control-Allow-Origin": "http://ok.example", "Vary": "Origin"}
    pre = cors_headers("http://a.example", ("*",), preflight=True)
    assert pre["Access-Control-Allow-Origin"] == "*" and "Authorization" in pre["Access-Control-Allow-Headers"]


@pytest.mark.parametrize("origin, ok", [("http://localhost:3000", True), ("https://app.example.com", True),
                                        ("*", True), ("localhost:3000", False), ("http://a.example/path", False),
                                        ("", False), ("http://", False)])
def test_valid_origin(origin, ok):
    assert valid_origin(origin) is ok


def test_server_config_refuses_bad_values():
    for kwargs, words in [(dict(cors_origins=("nope",)), "CORS origin 'nope'"), (dict(timeout=0), "timeout"),
                          (dict(max_connections=0), "max_connections"), (dict(api_key=" "), "API key is empty")]:
        with pytest.raises(ValueError, match=words):
            ServerConfig(**kwargs)
    assert "s3cret" not in repr(ServerConfig(api_key="s3cret"))


@pytest.mark.parametrize("host, warns", [("127.0.0.1", False), ("127.0.0.2", False), ("::1", False),
                                         ("localhost", False), ("0.0.0.0", True), ("192.168.1.5", True),
                                         ("::", True)])
def test_exposure_warning(host, warns):
    warning = exposure_warning(host, None)
    assert (warning is not None) is warns
    if warns:
        assert host in warning and "--api-key" in warning
        assert "need the API key" in exposure_warning(host, "k")
