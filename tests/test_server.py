"""`eager_mlx.server` against the real `openai` client: a live server on 127.0.0.1 (random port), tiny model."""
import http.client
import json
import threading
import time

import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai client (pip install -e '.[test]')")

from eager_mlx.server import EagerServer, ServerConfig  # noqa: E402

from fakes import ByteTokenizer, tiny_model  # noqa: E402

HI = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def server():
    srv = EagerServer(tiny_model(), ByteTokenizer(), ServerConfig(port=0, model_id="tiny", max_rows=32,
                                                                  defaults={"temperature": 1.0})).start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def health(server) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/health")
    res = conn.getresponse()
    assert res.status == 200
    return json.loads(res.read())


def raw(server, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
    res = conn.getresponse()
    return res.status, json.loads(res.read() or b"null")


def wait_idle(server, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health(server)
        if h["rows"] == 0 and h["requests"] == 0:
            return h
        time.sleep(0.02)
    raise AssertionError(f"server still busy: {health(server)}")


def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    assert health(server)["status"] == "ok"


def test_chat_completion(client):
    r = client.chat.completions.create(model="tiny", messages=HI, max_tokens=16, temperature=0)
    assert r.object == "chat.completion" and r.model == "tiny" and len(r.choices) == 1
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    prompt = ByteTokenizer().encode("user: What is 2+2?\nassistant: ")
    assert r.usage.prompt_tokens == len(prompt)
    assert 1 <= r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model_extra["eager"]["method"] == "parallel" and "answer" in r.model_extra


def test_text_completion_n3_is_three_independent_samples(client):
    r = client.completions.create(model="tiny", prompt="Once upon", max_tokens=24, n=3, temperature=1.0)
    assert r.object == "text_completion"
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert all(c.model_extra["parent"] is None for c in r.choices)
    assert len({c.text for c in r.choices}) > 1  # independent rows draw different tokens
    assert r.usage.completion_tokens <= 3 * 24 + 3
    assert r.model_extra["eager"] == {**r.model_extra["eager"], "method": "parallel", "num_sequences": 3}


def test_eager_options_branch_and_count_shared_prefixes_once(client):
    r = client.chat.completions.create(model="tiny", messages=HI, max_tokens=30, temperature=0,
                                       extra_body={"eager": {"threshold": 2.5, "max_sequences": 5}})
    extra = r.model_extra
    assert extra["eager"]["method"] == "eager" and extra["eager"]["threshold"] == 2.5
    assert 1 < len(r.choices) <= 5 and extra["eager"]["branch_points"] == len(r.choices) - 1
    children = [c for c in r.choices if c.index > 0]
    assert all(c.model_extra["parent"] is not None and c.model_extra["branch_step"] >= 0 for c in children)
    if all(c.finish_reason == "length" for c in r.choices):  # every sequence holds 30 tokens, prefix included
        own = 30 + sum(30 - c.model_extra["branch_step"] for c in children)
        assert r.usage.completion_tokens == own < 30 * len(r.choices)
    # top-level extras work too; method parallel ignores the threshold
    p = client.chat.completions.create(model="tiny", messages=HI, max_tokens=8,
                                       extra_body={"method": "parallel", "max_sequences": 2, "threshold": 0.0})
    assert len(p.choices) == 2 and p.model_extra["eager"]["branch_points"] == 0


def test_stream_matches_the_non_streamed_result(client):
    body = dict(model="tiny", messages=HI, max_tokens=30, temperature=0,
                extra_body={"eager": {"threshold": 2.5, "max_sequences": 4}})
    full = client.chat.completions.create(**body)
    texts, finish, final = {}, {}, None
    for chunk in client.chat.completions.create(stream=True, **body):
        assert chunk.object == "chat.completion.chunk"
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
        if not chunk.choices:
            final = chunk
    assert texts == {c.index: c.message.content for c in full.choices}
    assert finish == {c.index: c.finish_reason for c in full.choices}
    assert final is not None and final.usage.completion_tokens == full.usage.completion_tokens
    assert final.model_extra["answer"] == full.model_extra["answer"]
    assert final.model_extra["eager"]["num_sequences"] == len(full.choices)


def test_request_seed_decides_the_samples(client):
    body = dict(model="tiny", prompt="seeded", max_tokens=20, n=2, temperature=1.0)
    texts = [[c.text for c in client.completions.create(seed=seed, **body).choices] for seed in (42, 42, 43)]
    assert texts[0] == texts[1] != texts[2]
    assert texts[0][0] != texts[0][1]  # the n samples of one request still differ


def test_a_seeded_request_gives_the_same_text_alone_and_beside_another_client(client, server):
    text = dict(model="tiny", prompt="seeded", max_tokens=24, n=2, temperature=1.0, seed=7)
    eager = dict(model="tiny", messages=HI, max_tokens=24, temperature=1.0, seed=7,
                 extra_body={"eager": {"threshold": 2.5, "max_sequences": 4}})

    def run() -> tuple:
        return ([c.text for c in client.completions.create(**text).choices],
                [c.message.content for c in client.chat.completions.create(**eager).choices])

    alone = run()
    assert len(alone[1]) > 1  # the eager request branched: its children's draws are seeded too
    # greedy, the other client's rows run their 2000 tokens (sampled at 1.0 they could draw EOS within 50)
    other = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Go on"}],
                                           max_tokens=2000, n=4, stream=True, temperature=0)
    next(iter(other))  # the other client's rows are decoding
    beside = run()
    assert health(server)["rows"] >= 1  # ... and still were while the seeded requests ran
    other.close()
    assert beside == alone


def test_text_stream_n2(client):
    texts = {}
    for chunk in client.completions.create(model="tiny", prompt="abc", max_tokens=10, n=2, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert set(texts) == {0, 1}


def test_eight_concurrent_clients_share_the_batch(client, server):
    results, errors = {}, []

    def one(i: int) -> None:
        try:
            if i % 2:
                chunks = list(client.chat.completions.create(model="tiny", messages=HI, max_tokens=60, stream=True))
                results[i] = chunks[-1].usage.completion_tokens
            else:
                r = client.completions.create(model="tiny", prompt=f"prompt {i}", max_tokens=60, n=2)
                results[i] = r.usage.completion_tokens
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    before = health(server)["completed"]
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(results) == list(range(8))
    assert all(v > 0 for v in results.values())
    h = wait_idle(server)
    assert h["completed"] - before == 8
    assert h["peak_rows"] > 2  # requests were decoded together, not one after another


def test_disconnect_mid_stream_frees_rows(client, server):
    before = health(server)
    t0 = time.monotonic()
    stream = client.chat.completions.create(model="tiny", messages=HI, max_tokens=3000, n=4, stream=True)
    got = 0
    for chunk in stream:
        got += len(chunk.choices)
        if got >= 8:
            break
    assert 1 <= health(server)["rows"] <= 4  # a row may have drawn EOS already
    stream.close()
    h = wait_idle(server, timeout=5)
    assert h["aborted"] == before["aborted"] + 1
    assert time.monotonic() - t0 < 5  # 4 x 3000 tokens would take far longer: it was cut short


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"messages": HI, "n": 0}, 400, "n"),
        ({"messages": HI, "temperature": "hot"}, 400, "temperature"),
        ({"messages": HI, "top_p": 0}, 400, "top_p"),
        ({"messages": HI, "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": HI, "eager": {"theta": 1}}, 400, "eager"),
        ({"messages": HI, "eager": {"method": "beam"}}, 400, "method"),
        ({"messages": HI, "n": 3, "max_sequences": 2, "method": "parallel"}, 400, "n"),
        ({"messages": HI, "n": 1000}, 400, "n"),
        ({"messages": "hi"}, 400, "messages"),
        ({}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 5000}]}, 400, "messages"),  # context is 4096
        ({"messages": HI, "model": "gpt-4"}, 404, "model"),
    ],
)
def test_bad_requests_get_openai_errors(server, body, status, param):
    code, out = raw(server, "POST", "/v1/chat/completions", json.dumps(body).encode())
    assert code == status
    assert set(out["error"]) == {"message", "type", "param", "code"} and out["error"]["param"] == param


def test_bad_routes_and_bodies(server, client):
    assert raw(server, "POST", "/v1/nothing", b"{}")[0] == 404
    assert raw(server, "GET", "/v1/nothing")[0] == 404
    status, out = raw(server, "POST", "/v1/completions", b"{not json")
    assert status == 400 and out["error"]["type"] == "invalid_request_error"
    status, out = raw(server, "POST", "/v1/completions", b"[1, 2]")
    assert status == 400
    status, out = raw(server, "POST", "/v1/completions", b"{}",
                      headers={"Content-Length": str(64 << 20), "Content-Type": "application/json"})
    assert status == 413 and out["error"]["code"] == "request_too_large"
    status, out = raw(server, "POST", "/v1/completions", json.dumps({"prompt": "x" * 4100}).encode())
    assert status == 400 and out["error"]["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=HI)
    assert health(server)["status"] == "ok"  # still serving


def test_engine_failure_is_a_500_and_the_server_goes_on():
    boom = threading.Event()

    class Flaky:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def step(self):
            if boom.is_set():
                boom.clear()
                raise RuntimeError("boom")
            return self.inner.step()

    from eager_mlx.engine.engine import Engine

    model, tok = tiny_model(), ByteTokenizer()
    srv = EagerServer(model, tok, ServerConfig(port=0, model_id="tiny"),
                      make_engine=lambda: Flaky(Engine(model, tok, max_rows=8))).start()
    try:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        boom.set()
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="tiny", messages=HI, max_tokens=8)
        assert e.value.status_code == 500 and e.value.body["type"] == "server_error"
        assert c.chat.completions.create(model="tiny", messages=HI, max_tokens=8).choices
        assert health(srv)["failed"] == 1
    finally:
        srv.shutdown()


def test_cli_serve_passes_flags(monkeypatch):
    from pathlib import Path

    from click.testing import CliRunner

    from eager_mlx import server as srv
    from eager_mlx.cli.main import cli
    from eager_mlx.models import LoadedModel

    from fakes import patch_load

    patch_load(monkeypatch, LoadedModel(None, ByteTokenizer(), None, Path("/models/tiny"), "/models/tiny"))
    seen = {}
    monkeypatch.setattr(srv, "serve", lambda lm, config: seen.update(loaded=lm, config=config))
    res = CliRunner().invoke(cli, ["serve", "--port", "0", "--temp", "0.7", "-M", "4", "--threshold", "1.5",
                                   "--chat-template-args", '{"enable_thinking": false}'])
    assert res.exit_code == 0, res.output
    cfg = seen["config"]
    assert (cfg.host, cfg.port, cfg.max_rows, cfg.seed) == ("127.0.0.1", 0, 16, 55)
    assert {k: cfg.defaults[k] for k in ("temperature", "max_sequences", "threshold")} == \
        {"temperature": 0.7, "max_sequences": 4, "threshold": 1.5}
    assert cfg.chat_template_args == {"enable_thinking": False} and cfg.model_id == "/models/tiny"
    res = CliRunner().invoke(cli, ["serve", "--chat-template-args", "{bad"])
    assert res.exit_code == 2 and "Invalid value for --chat-template-args: not JSON" in res.output
    res = CliRunner().invoke(cli, ["serve", "--temp", "-1"])
    assert res.exit_code == 2 and "temperature must be >= 0, got -1.0" in res.output
    res = CliRunner().invoke(cli, ["serve", "--port", "70000"])
    assert res.exit_code == 2 and "70000 is not in the range 0<=x<=65535" in res.output
    assert cfg.cors_origins == () and cfg.api_key is None  # no web page, no key unless asked


def test_cli_serve_access_flags(monkeypatch):
    from pathlib import Path

    from click.testing import CliRunner

    from eager_mlx import server as srv
    from eager_mlx.cli.main import cli
    from eager_mlx.models import LoadedModel

    from fakes import patch_load

    patch_load(monkeypatch, LoadedModel(None, ByteTokenizer(), None, Path("/models/tiny"), "/models/tiny"))
    seen = {}
    monkeypatch.setattr(srv, "serve", lambda lm, config: seen.update(config=config))
    run = CliRunner().invoke
    res = run(cli, ["serve", "--cors-origin", "http://localhost:3000/", "--cors-origin", "https://app.example",
                    "--api-key", "k1", "--idle-timeout", "5", "--max-connections", "9"])
    assert res.exit_code == 0, res.output
    cfg = seen["config"]
    assert cfg.cors_origins == ("http://localhost:3000", "https://app.example") and cfg.api_key == "k1"
    assert (cfg.timeout, cfg.max_connections) == (5.0, 9)
    assert run(cli, ["serve"], env={"EAGER_MLX_API_KEY": "k2"}).exit_code == 0 and seen["config"].api_key == "k2"
    for args, words in [(["--cors-origin", "localhost:3000"], "'localhost:3000' is not an origin"),
                        (["--allowed-origins", "*"], "'--cors-origin'"),
                        (["--idle-timeout", "0"], "not in the range 0<x"), (["--max-connections", "0"], "x>=1")]:
        res = run(cli, ["serve", *args])
        assert res.exit_code == 2 and words in res.output, res.output
