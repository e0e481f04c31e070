"""Serving that never depends on load (eager requests reserve their M rows) and chat turns that reuse the
earlier turns' prompt through the prefix cache; a live server on 127.0.0.1, tiny model."""
import http.client
import json
import threading

import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai client (pip install -e '.[test]')")

from eager_mlx.server import EagerServer, ServerConfig  # noqa: E402

from fakes import ChatTokenizer, tiny_model  # noqa: E402


def _server(**config) -> EagerServer:
    return EagerServer(tiny_model(), ChatTokenizer(), ServerConfig(port=0, model_id="tiny", **config)).start()


def _health(server) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def _client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _eager(client, seed: int, question: str = "What is 2+2?") -> list[str]:
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                       max_tokens=12, temperature=1.0, seed=seed,
                                       extra_body={"eager": {"threshold": 0.5, "max_sequences": 4}})
    return [c.message.content for c in r.choices]


def test_an_eager_request_gives_the_same_choices_alone_and_among_30():
    """8 rows, 30 concurrent eager requests of M = 4 that all want to branch: without a reservation the
    target's branches would find the engine full and be skipped; with it the choices are those it has alone."""
    server = _server(max_rows=8)
    try:
        client = _client(server)
        alone = _eager(client, seed=11)
        assert len(alone) == 4  # it branches up to M when it has the rows
        results, errors = {}, []

        def one(i: int) -> None:
            try:
                results[i] = _eager(client, seed=11) if i == 15 else _eager(client, seed=100 + i, question=f"Q{i}")
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and len(results) == 30
        assert results[15] == alone
        assert _health(server)["peak_rows"] == 8  # the batch was full while it ran
    finally:
        server.shutdown()


def test_a_chat_turn_reuses_the_earlier_turns_through_the_prefix_cache():
    """Turn 2 repeats turn 1's system prompt and question: only the answer and the new question are prefilled."""
    server = _server(max_rows=8)
    try:
        client = _client(server)
        history = [{"role": "system", "content": "You are a careful assistant. " * 8},
                   {"role": "user", "content": "What is 2+2?"}]
        first = client.chat.completions.create(model="tiny", messages=history, max_tokens=8, temperature=0)
        before = _health(server)["prefix_cache"]
        turn = history + [{"role": "assistant", "content": first.choices[0].message.content},
                          {"role": "user", "content": "And 3+3?"}]
        second = client.chat.completions.create(model="tiny", messages=turn, max_tokens=8, temperature=0)
        after = _health(server)["prefix_cache"]
        tok = ChatTokenizer()
        shared = len(tok.apply_chat_template(history, add_generation_prompt=False))
        assert after["hits"] == before["hits"] + 1
        assert after["tokens_saved"] - before["tokens_saved"] == shared
        assert after["tokens_prefilled"] - before["tokens_prefilled"] == second.usage.prompt_tokens - shared
    finally:
        server.shutdown()
