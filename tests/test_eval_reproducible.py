"""An evaluation's records depend only on its seed and settings: straight, killed (-9) and resumed,
sharded, or run with another --max-rows give the same results.jsonl records."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import dist_eval_entry
from eager_mlx.cli.main import cli
from eager_mlx.evaluation import shards
from eager_mlx.evaluation.evaluate import JOURNAL, RESULTS, load_run
from eager_mlx.evaluation.shards import Shard, load_merged
from fakes import patch_load

ENTRY = Path(dist_eval_entry.__file__)
QUESTIONS = ["What is q", "Tell me a story about x", "Stop!", "hm", "Why is the sky blue, k", "z", "Count to b"]
TIMING = {"elapsed_s", "wall_s", "t_done", "tokens_per_s", "rank", "local_index"}  # and shard bookkeeping


def settings(method):
    return ["--template", "{question}", "--no-chat", "--method", method, "-M", "2", "--threshold", "1.2",
            "--temperature", "0.6", "--max-tokens", "10", "--seed", "7", "--no-store"]  # every run generated


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "toy.jsonl"
    p.write_text("".join(json.dumps({"question": q, "answer": str(i)}) + "\n" for i, q in enumerate(QUESTIONS)))
    return p


@pytest.fixture
def markov(monkeypatch):
    loaded = dist_eval_entry.loaded_model("markov")
    patch_load(monkeypatch, loaded)
    return loaded


def evaluate(data, out, method, *extra):
    r = CliRunner().invoke(cli, ["eval", "--data", str(data), "--out", str(out), *settings(method), *extra])
    assert r.exit_code == 0, r.output
    return out


def comparable(records):
    """Records without timing fields, by index."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in TIMING}
        return [strip(v) for v in x] if isinstance(x, list) else x
    return [strip(r) for r in sorted(records, key=lambda r: r["index"])]


def records(run_dir):
    return comparable(load_run(run_dir)[1])


def assert_close(a, b, tol, where="records"):
    """Equal, except floats within `tol`."""
    if isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= tol, f"{where}: {a} vs {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], tol, f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, tol, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def lines(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_straight_killed_and_resumed_and_fewer_rows_agree(tmp_path, data, markov):
    straight = records(evaluate(data, tmp_path / "straight", "eager-adapt", "--max-rows", "8"))
    steps = markov.steps
    assert len(straight) == len(QUESTIONS)
    assert any(len(r["runs"]) > 1 for r in straight)  # the budget phase ran (it needs the journal on resume)
    assert any(s["parent"] is not None for r in straight for s in r["sequences"])  # and branches were made
    for kill_at in (steps // 3, 2 * steps // 3):
        out = tmp_path / f"killed-{kill_at}"
        env = dict(os.environ, EAGER_TEST_MODEL="markov", EAGER_TEST_KILL_AT_STEP=str(kill_at))
        cmd = [sys.executable, str(ENTRY), "--data", str(data), "--out", str(out), *settings("eager-adapt"),
               "--max-rows", "8"]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        assert lines(out / RESULTS) < len(QUESTIONS)  # killed mid-run
        if kill_at == 2 * steps // 3:
            assert lines(out / JOURNAL) > 0  # with runs to replay
        assert records(evaluate(data, out, "eager-adapt", "--max-rows", "8", "--resume")) == straight
    assert records(evaluate(data, tmp_path / "rows2", "eager-adapt", "--max-rows", "2")) == straight


def test_straight_and_two_shards_agree(tmp_path, data, markov, monkeypatch):
    # eager-init: each prompt's budget is its own (eager-adapt / eager share theirs within a shard).
    straight = records(evaluate(data, tmp_path / "straight", "eager-init", "--max-rows", "8"))
    monkeypatch.setattr(shards, "barrier", lambda: None)
    for rank in (0, 1):
        monkeypatch.setattr(shards, "current_shard", lambda rank=rank: Shard(rank, 2))
        evaluate(data, tmp_path / "sharded", "eager-init", "--max-rows", "4")
    merged = comparable(load_merged(tmp_path / "sharded")[1])
    assert merged == straight
    assert {s["run"] for r in merged for s in r["sequences"]} == {f"p{i}-r0" for i in range(len(QUESTIONS))}


def test_tiny_llama_straight_fewer_rows_and_shards_agree(tmp_path, data, monkeypatch):
    # Sampled (T=0.6) runs of a random llama: same tokens, texts and trees; the confidences (floats
    # from entropies) may differ in the last bits where BLAS rounds batched matmuls differently.
    patch_load(monkeypatch, dist_eval_entry.loaded_model("tiny"))
    straight = records(evaluate(data, tmp_path / "straight", "eager-init", "--max-rows", "8"))
    assert any(s["parent"] is not None for r in straight for s in r["sequences"])
    assert_close(records(evaluate(data, tmp_path / "rows2", "eager-init", "--max-rows", "2")), straight, 1e-4)
    monkeypatch.setattr(shards, "barrier", lambda: None)
    for rank in (0, 1):
        monkeypatch.setattr(shards, "current_shard", lambda rank=rank: Shard(rank, 2))
        evaluate(data, tmp_path / "sharded", "eager-init", "--max-rows", "4")
    assert_close(comparable(load_merged(tmp_path / "sharded")[1]), straight, 1e-4)
