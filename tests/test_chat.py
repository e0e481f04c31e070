"""`eager-mlx chat` through stdin (click's CliRunner), and the conversation it keeps (eager_mlx/chat.py)."""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from eager_mlx.chat import Chat
from eager_mlx.cli.main import cli
from eager_mlx.models import LoadedModel
from eager_mlx.results import RunResult, SequenceResult
from fakes import ByteTokenizer, patch_load, tiny_model

QUIET = ["--max-tokens", "10", "--temperature", "1", "-M", "3"]


@pytest.fixture
def loaded(monkeypatch):
    model = LoadedModel(tiny_model(), ByteTokenizer(), None, Path("."), "tiny")
    patch_load(monkeypatch, model)
    return model


def _chat(lines: list[str], *args: str):
    res = CliRunner().invoke(cli, ["chat", *QUIET, *args], input="".join(line + "\n" for line in lines))
    assert res.exit_code == 0, res.output
    return res


def test_three_turns_with_reset_and_save(loaded, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    res = _chat(["hello", "how are you", f"/save {a}", "/reset", "third one", f"/save {b}", "/quit"],
                "--threshold", "2.5")
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"] * 2
    assert [m["content"] for m in first["messages"][::2]] == ["hello", "how are you"]
    assert [t["reply"] for t in first["turns"]] == [m["content"] for m in first["messages"][1::2]]
    # every turn sends the whole conversation so far; after /reset only the new message
    assert first["turns"][0]["prompt_tokens"] == len(loaded.encode(first["messages"][:1]))
    assert first["turns"][1]["prompt_tokens"] == len(loaded.encode(first["messages"][:3]))
    assert [m["content"] for m in second["messages"]] == ["third one", second["turns"][0]["reply"]]
    assert second["turns"][0]["prompt_tokens"] == len(loaded.encode(second["messages"][:1]))
    assert res.output.count(" tok/s]") == 3 and "(the conversation is cleared)" in res.output
    assert "(saved 2 turns to" in res.output and "(saved 1 turns to" in res.output
    assert any(t["sequences"] > 1 for t in first["turns"] + second["turns"])  # it branched
    for turn in first["turns"] + second["turns"]:
        assert f"[{turn['sequences']} sequence" in res.output and turn["reply"][:4] in res.output
    assert first["config"]["threshold"] == 2.5 and first["model"] == "tiny"


def test_system_message_leads_the_conversation(loaded, tmp_path):
    _chat(["hi", f"/save {tmp_path / 'c.json'}"], "--system", "Be brief.")
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["messages"][0] == {"role": "system", "content": "Be brief."}
    assert saved["turns"][0]["prompt_tokens"] == len(loaded.encode(saved["messages"][:2]))


class _InterruptingTokenizer(ByteTokenizer):
    """Sends this process SIGINT (Ctrl-C) once, at the `at`-th token decoded."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.seen = at, 0

    @property
    def detokenizer(self):
        detok, tok = super().detokenizer, self
        add = detok.add_token

        def add_token(token: int) -> None:
            tok.seen += 1
            if tok.seen == tok.at:
                os.kill(os.getpid(), signal.SIGINT)
            add(token)
        detok.add_token = add_token
        return detok


def test_ctrl_c_stops_the_answer_not_the_chat(monkeypatch, tmp_path):
    patch_load(monkeypatch, LoadedModel(tiny_model(), _InterruptingTokenizer(at=3), None, Path("."), "tiny"))
    before = signal.getsignal(signal.SIGINT)
    res = CliRunner().invoke(cli, ["chat", "--max-tokens", "40", "-M", "1", "--temperature", "1"],
                             input=f"first\nsecond\n/save {tmp_path / 'c.json'}\n")
    assert res.exit_code == 0, res.output
    turns = json.loads((tmp_path / "c.json").read_text())["turns"]
    assert [t["stopped"] for t in turns] == [True, False] and res.output.count("(stopped)") == 1
    assert turns[0]["generated_tokens"] < 10 <= turns[1]["generated_tokens"]  # cut short; the next one ran
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_the_library_cancel_path_keeps_a_stopped_turn(loaded):
    from eager_mlx import config_for
    from eager_mlx.results import RunFinished, TokenEvent

    chat = Chat(loaded, config_for(None, max_tokens=30, max_sequences=2, threshold=100.0, temperature=1.0))
    cancel, streamed = threading.Event(), []
    for event in chat.ask("hello", cancel):
        if isinstance(event, TokenEvent) and event.sequence == 0:
            streamed.append(event.text)
            if len(streamed) == 3:
                cancel.set()  # what Ctrl-C does in the chat command
        last = event
    assert isinstance(last, RunFinished) and [s.finish_reason for s in last.result.sequences] == ["aborted"]
    turn = chat.turns[0]
    assert turn.stopped and turn.vote is None and turn.reply == "".join(streamed)
    assert chat.messages == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": turn.reply}]
    cancel = threading.Event()
    cancel.set()  # stopped before the first pass: nothing written
    list(chat.ask("again", cancel))
    assert chat.turns[1].stopped and (chat.turns[1].reply, chat.turns[1].sequences) == ("", 0)


def _result(answers: list) -> RunResult:
    seqs = [SequenceResult(i, [1], f"text {i}", "eos", None, None, [0.0], [0.0], a) for i, a in enumerate(answers)]
    return RunResult("0", seqs, 5, 4, None, 2.0, 0.0, branch_points=len(answers) - 1)


def test_the_reply_is_the_first_sequence_holding_the_vote(loaded, monkeypatch, capsys):
    from eager_mlx import config_for
    from eager_mlx.chat import Chat

    chat = Chat(loaded, config_for(None))
    chat._keep("q", _result([None, "4", "3", " 4"]), stopped=False)
    chat._keep("q2", _result([None, None]), stopped=False)
    assert [(t.sequence, t.reply, t.vote) for t in chat.turns] == [(1, "text 1", "4"), (0, "text 0", None)]
    monkeypatch.setattr(Chat, "_generate", lambda self, conversation, cancel: iter(
        [__import__("eager_mlx").RunFinished("0", _result(["3", "4", "4"]))]))
    res = _chat(["why"])
    assert "--- the vote chose sequence 1:\ntext 1\n[3 sequences, 2 branch points; vote 4 x2, 3 x1;" in res.output


def test_bad_commands_are_one_line_and_the_chat_goes_on(loaded, tmp_path):
    res = _chat(["/save", f"/save {tmp_path / 'no' / 'x.json'}", f"/save {tmp_path}", "/bogus", "hello"])
    lines = res.stderr.splitlines()
    assert "error: /save needs a file name" in lines
    assert f"error: Invalid value for /save: {tmp_path / 'no'} does not exist" in lines
    assert f"error: Invalid value for /save: {tmp_path} is a directory" in lines
    assert any(ln.startswith("error: unknown command /bogus; /reset: start over") for ln in lines)
    assert res.output.count(" tok/s]") == 1  # the message after them was answered


def test_bad_options_are_one_line_errors(loaded):
    res = CliRunner().invoke(cli, ["chat", "--threshold", "-1"], input="hi\n")
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1] == \
        "Error: Invalid value for '--threshold' / '-t': threshold must be >= 0, got -1.0"
    res = CliRunner().invoke(cli, ["chat", "--model", ""], input="hi\n")
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1] == \
        "Error: Invalid value for '--model' / '-m': '' is empty"


def test_threshold_auto_is_resolved_on_the_first_message(loaded, tmp_path):
    res = _chat(["hello", "again", f"/save {tmp_path / 'c.json'}"], "--threshold", "auto")
    theta = json.loads((tmp_path / "c.json").read_text())["config"]["threshold"]
    assert res.stderr.count("theta auto: ") == 1 and f"theta auto: {theta:.4f}" in res.stderr
