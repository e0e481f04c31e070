"""A chat's next turn through the server: time to first token of turn 1 (a long history) and of turn 2 (the same
history, turn 1's answer and a new question), with the prefix cache and without it (`--no-prefix-cache`).

Run:  python benchmarks/chat_turns.py [--model qwen2.5-coder-0.5b] [--history 2000] [--out BENCHMARKS.md]

The server runs in this process on 127.0.0.1 (a random port); requests are streamed with the openai client,
greedy, and the first token is the first chunk with text. Turn 2 repeats turn 1's messages, so with the prefix
cache only turn 1's answer and the new question are prefilled (the engine cuts prompts after each end-of-turn
token: eager_mlx/engine/prefix.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import eager_mlx  # noqa: F401  (preloads OpenBLAS before mlx.core on Linux)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_env import header_lines, load_average  # noqa: E402
from sections import write_section  # noqa: E402

MARKER = "<!-- chat_turns.py -->"
FILLER = ("The committee met on a grey Tuesday to review the quarterly figures, the open tickets and the plan for "
          "the next release, and every item was read aloud and noted in the minutes. ")


def _history(tokenizer, tokens: int) -> list[dict]:
    """A system prompt of about `tokens` tokens of meeting notes, and a first question."""
    per = len(tokenizer.encode(FILLER))
    return [{"role": "system", "content": "Notes:\n" + FILLER * max(1, tokens // per)},
            {"role": "user", "content": "In one sentence: what did the committee review?"}]


def _turn(client, messages: list[dict], max_tokens: int) -> tuple[float, float, str, int]:
    """(seconds to the first token, seconds in all, the answer, prompt tokens) of one streamed request."""
    start, first, text, usage = time.perf_counter(), None, "", 0
    stream = client.chat.completions.create(model="m", messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        for c in chunk.choices:
            if c.delta.content:
                first = first or time.perf_counter()
                text += c.delta.content
        if chunk.usage is not None:
            usage = chunk.usage.prompt_tokens
    return (first or time.perf_counter()) - start, time.perf_counter() - start, text, usage


def conversation(loaded, history: int, max_tokens: int, prefix_cache: bool) -> dict:
    import openai

    from eager_mlx.server import EagerServer, ServerConfig

    server = EagerServer(loaded.model, loaded.tokenizer, ServerConfig(port=0, model_id="m", max_rows=4,
                                                                       prefix_cache=prefix_cache),
                         preset=loaded.preset).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=3600)
        messages = _history(loaded.tokenizer, history)
        t1 = _turn(client, messages, max_tokens)
        messages += [{"role": "assistant", "content": t1[2]}, {"role": "user", "content": "And who took the notes?"}]
        t2 = _turn(client, messages, max_tokens)
        stats = server.worker.stats.get("prefix_cache", {})
    finally:
        server.shutdown()
    return {"ttft1": t1[0], "ttft2": t2[0], "prompt1": t1[3], "prompt2": t2[3],
            "saved": stats.get("tokens_saved", 0), "prefilled": stats.get("tokens_prefilled", 0)}


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--history", type=int, default=2000, help="tokens of history before turn 1's question")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    load_before = load_average()
    loaded = eager_mlx.load(args.model)
    runs = {on: conversation(loaded, args.history, args.max_tokens, on) for on in (True, False)}
    rows = ["| prefix cache | turn 1 prompt tokens | turn 1 first token (s) | turn 2 prompt tokens | "
            "turn 2 first token (s) | turn 2 / turn 1 | prompt tokens prefilled (both turns) |",
            "|---|---|---|---|---|---|---|"]
    for on, r in runs.items():
        prefilled = r["prefilled"] if on else r["prompt1"] + r["prompt2"]
        rows.append(f"| {'on' if on else 'off'} | {r['prompt1']} | {r['ttft1']:.2f} | {r['prompt2']} | "
                    f"{r['ttft2']:.2f} | {r['ttft2'] / r['ttft1']:.3f} | {prefilled} |")
    command = "python benchmarks/chat_turns.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([f"## A chat's next turn through the server, {args.model} (benchmarks/chat_turns.py)", "",
                      *header_lines(command.strip(), load_before), "",
                      f"Greedy, {args.max_tokens} tokens per answer, streamed; turn 2 = turn 1's messages, its "
                      "answer and a new question (target: turn 2's first token in <= 1/5 of turn 1's time):",
                      "", *rows])
    print(text)
    if args.out:
        write_section(args.out, MARKER, text)


if __name__ == "__main__":
    main()
