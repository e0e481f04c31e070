"""Sharded eval: rank folders, merging in `report`, and 2 ranks on localhost through `mlx.launch`."""
import json
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from eager_mlx.cli.main import cli
from eager_mlx.evaluation.data import Dataset, Example
from eager_mlx.evaluation.evaluate import EvalError
from eager_mlx.evaluation.shards import Shard, load_merged, shard_run

ENTRY = Path(__file__).parent / "dist_eval_entry.py"


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "toy.jsonl"
    p.write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(5)))
    return p


def test_shard_run_splits_round_robin(tmp_path):
    ds = Dataset("toy", "mem", [Example(i, str(i), f"q{i}", str(i)) for i in range(5)])
    assert shard_run(tmp_path / "one", ds, Shard(0, 1)) == (tmp_path / "one", ds)
    d1, part = shard_run(tmp_path / "run", ds, Shard(1, 2))
    assert d1 == tmp_path / "run" / "rank-1" and [e.id for e in part.examples] == ["1", "3"]
    info = json.loads((d1 / "shard.json").read_text())
    assert info == {"rank": 1, "size": 2, "dataset_size": 5, "dataset_hash": ds.hash}
    with pytest.raises(ValueError, match="--out"):
        shard_run(None, ds, Shard(0, 2))


def _free_port_pair() -> int:
    for _ in range(50):
        port = random.randint(20000, 60000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


# The launcher of this interpreter's environment (a venv's bin/ need not be on PATH).
_LAUNCH = Path(sys.executable).parent / "mlx.launch"
LAUNCH = str(_LAUNCH) if _LAUNCH.exists() else shutil.which("mlx.launch")


@pytest.mark.skipif(LAUNCH is None, reason="mlx.launch is not installed (it comes with mlx)")
def test_two_ranks_on_localhost_then_report_merges(tmp_path, data_file):
    out = tmp_path / "run"
    cmd = [LAUNCH, "--backend", "ring", "-n", "2", "--hosts", "127.0.0.1",
           "--starting-port", str(_free_port_pair()), sys.executable, str(ENTRY),
           "--data", str(data_file), "--out", str(out), "--method", "parallel", "-M", "2",
           "--max-tokens", "8", "--max-rows", "8", "--save-trace", "--no-store"]
    res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    for rank, mine in ((0, [0, 2, 4]), (1, [1, 3])):
        recs = [json.loads(x) for x in (out / f"rank-{rank}" / "results.jsonl").read_text().splitlines()]
        assert sorted(r["question"] for r in recs) == [f"What is {i}+1?" for i in mine]
        assert (out / f"rank-{rank}" / "trees.jsonl").exists()
    assert "all 2 ranks" in res.stdout and "5/5" in res.stdout  # rank 0's merged summary

    manifest, records = load_merged(out)
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["question"] for r in records] == [f"What is {i}+1?" for i in range(5)]
    assert manifest["dataset"]["size"] == 5 and manifest["shards"] == 2 and manifest["finished"]

    r = CliRunner().invoke(cli, ["report", str(out), "--no-plot", "--html"])
    assert r.exit_code == 0, r.output
    assert "5/5" in r.output and "parallel" in r.output
    index = (out / "trees" / "index.html").read_text()
    assert all(f'href="p{i}.html"' in index for i in range(5))
    page = (out / "trees" / "p3.html").read_text()
    assert "What is 3+1?" in page and page.count('class="seq"') == 2 and 'class="theta"' in page


def test_report_refuses_a_partial_shard_set(tmp_path):
    (tmp_path / "rank-1").mkdir()
    (tmp_path / "rank-1" / "shard.json").write_text(json.dumps({"rank": 1, "size": 2, "dataset_size": 4,
                                                                 "dataset_hash": "x"}))
    with pytest.raises(EvalError, match="copy every rank-N folder"):
        load_merged(tmp_path)
