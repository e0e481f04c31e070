"""A run directory is written by one evaluation at a time, never over files it did not write, and every record
read back is checked: two evals on one --out, foreign files, wrong-shaped records, occupancy over sessions."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from eager_mlx.cli.main import cli
from eager_mlx.evaluation.evaluate import JOURNAL, MANIFEST, RESULTS, EvalError, evaluate, read_records
from eager_mlx.evaluation.rundir import LOCK, run_lock
from test_cli_errors import check
from test_eval_resume import ENTRY, ENV, markov  # noqa: F401 (a fixture)
from fakes import FakeLoaded, patch_load
from test_evaluate import FakeEngine, adapt_script, encode, make_dataset, settings


def test_two_evals_on_one_out_the_second_refuses_and_the_first_finishes_intact(tmp_path, markov):  # noqa: F811
    out, log = tmp_path / "run", tmp_path / "stderr"
    first = subprocess.Popen([sys.executable, str(ENTRY), *markov, "--out", str(out)], cwd=tmp_path,
                             env=dict(ENV, EAGER_TEST_STEP_DELAY="0.02"), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    deadline = time.monotonic() + 60
    while not (out / MANIFEST).exists():  # the first has begun
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    second = CliRunner().invoke(cli, ["eval", *markov, "--out", str(out)])
    check(second, 1, f"{out} is in use by another evaluation (pid {first.pid} on ")
    again = CliRunner().invoke(cli, ["eval", *markov, "--out", str(out), "--resume"])
    check(again, 1, "is in use by another evaluation")
    assert first.wait(timeout=120) == 0, log.read_text()
    records = read_records(out / RESULTS)
    assert sorted(r["index"] for r in records) == list(range(16))  # each prompt once
    assert not (out / LOCK).exists()
    res = CliRunner().invoke(cli, ["report", str(out), "--no-plot"])
    assert res.exit_code == 0 and "16/16" in res.output, res.output


def test_the_library_takes_the_same_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from eager_mlx.evaluation.rundir import "
                               f"run_lock\nwith run_lock({str(tmp_path / 'run')!r}):\n print('held', flush=True)\n "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(EvalError, match=f"in use by another evaluation \\(pid {holder.pid} on .* since "):
            evaluate(FakeEngine(adapt_script, max_rows=8), encode, make_dataset(2), settings(), tmp_path / "run")
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK]  # nothing written
    finally:
        holder.communicate("", timeout=60)
    assert evaluate(FakeEngine(adapt_script, max_rows=8), encode, make_dataset(2), settings(), tmp_path / "run")


def test_a_lock_left_by_kill_9_does_not_hold(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import os, signal; from eager_mlx.evaluation.rundir import "
                               f"run_lock\nwith run_lock({str(tmp_path / 'run')!r}):\n os.kill(os.getpid(), "
                               "signal.SIGKILL)"])
    assert holder.wait(timeout=60) == -9 and (tmp_path / "run" / LOCK).exists()
    with run_lock(tmp_path / "run"):
        pass
    assert list((tmp_path / "run").iterdir()) == []  # the stale lock file was taken over, then removed


def test_a_failed_start_leaves_no_folder_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path / "a" / "b" / "run"):
            raise RuntimeError("the model did not load")
    assert list(tmp_path.iterdir()) == []


def _foreign(d: Path) -> None:
    (d / "foreign").mkdir()
    (d / "foreign" / "manifest.json").write_text('{"mine": "not eager-mlx"}\n')


def _wrong_shapes(d: Path, fake_eval_args: list[str]) -> None:
    assert CliRunner().invoke(cli, [*fake_eval_args, "--out", str(d / "done")]).exit_code == 0
    for name, first in (("journal", (JOURNAL, {"index": 0, "run": {}})),
                        ("results", (RESULTS, {"index": 7, "runs": [], "sequences": []})),
                        ("deep", (RESULTS, None))):
        (d / name).mkdir()
        for f in (d / "done").iterdir():
            (d / name / f.name).write_bytes(f.read_bytes())
        path = d / name / first[0]
        line = b"[" * 100_000 + b"]" * 100_000 if first[1] is None else json.dumps(first[1]).encode()
        path.write_bytes(line + b"\n" + path.read_bytes())


@pytest.mark.parametrize("args,message", [
    (["--out", "{d}/foreign"], "{d}/foreign is not empty (it holds manifest.json): a new run needs a new or empty "
                               "directory"),
    (["--out", "{d}/foreign", "--resume"], "{d}/foreign/manifest.json: not an eager-mlx manifest"),
    (["--out", "{d}/journal", "--resume"], "{d}/journal/runs.jsonl:1: not a run record (no 't_start')"),
    (["--out", "{d}/results", "--resume"], "{d}/results/results.jsonl:1: not a prompt's record (no 't_done')"),
    (["--out", "{d}/deep", "--resume"], "{d}/deep/results.jsonl:1: corrupt record"),
])
def test_foreign_files_and_wrong_shaped_records(tmp_path, fake_eval, args, message):
    from test_cli_errors import _files, _fill

    _files(tmp_path)
    base = ["eval", "--data", str(tmp_path / "good.jsonl"), "-M", "4", "--method", "eager-adapt"]
    _foreign(tmp_path)
    _wrong_shapes(tmp_path, base)
    fake_eval.asked.clear()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    check(CliRunner().invoke(cli, base + _fill(args, tmp_path)), 1, _fill([message], tmp_path)[0])
    assert not fake_eval.asked
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing touched


@pytest.mark.parametrize("spoil,message", [
    (lambda r: {k: v for k, v in r.items() if k != "t_done"}, "results.jsonl:1: not a prompt's record (no 't_done')"),
    (lambda r: dict(r, metrics={}), "results.jsonl:1: not a prompt's record (its 'metrics' lack "),
    (lambda r: dict(r, runs=[{"request_id": "p0-r0"}]), "a run has no 'num_sequences'"),
    (lambda r: dict(r, sequences=[dict(r["sequences"][0], correct="yes")]), "sequence field 'correct' is str"),
    (lambda r: dict(r, index=True), "field 'index' is bool"),
])
def test_report_names_the_missing_field(tmp_path, fake_eval, spoil, message):
    from test_cli_errors import _files

    _files(tmp_path)
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, ["eval", "--data", str(tmp_path / "good.jsonl"), "-M", "4", "--method",
                                    "eager-adapt", "--out", str(out)]).exit_code == 0
    lines = (out / RESULTS).read_text().splitlines()
    (out / RESULTS).write_text("\n".join([json.dumps(spoil(json.loads(lines[0])))] + lines[1:]) + "\n")
    check(CliRunner().invoke(cli, ["report", str(out), "--no-plot"]), 1, message)


@pytest.fixture
def fake_eval(monkeypatch):
    loaded = FakeLoaded(lambda config, events: FakeEngine(adapt_script, max_rows=config.max_rows), encode)
    loaded.asked = patch_load(monkeypatch, loaded)
    return loaded


def test_occupancy_counts_the_steps_of_a_session_killed_by_kill_9(tmp_path, monkeypatch, markov):  # noqa: F811
    import dist_eval_entry

    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, str(ENTRY), *markov, "--out", str(out)], cwd=tmp_path,
                            env=dict(ENV, EAGER_TEST_KILL_AT_STEP="40"), stdin=subprocess.DEVNULL, capture_output=True)
    assert killed.returncode == -9
    saved = [e["occupancy"] for e in read_records(out / JOURNAL)]
    assert saved and 0 < saved[-1]["steps"] < 40  # journaled with the killed session's last finished run
    loaded = dist_eval_entry.loaded_model("markov")
    patch_load(monkeypatch, loaded)
    res = CliRunner().invoke(cli, ["eval", *markov, "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    occupancy = json.loads((out / MANIFEST).read_text())["occupancy"]
    assert occupancy["steps"] == saved[-1]["steps"] + loaded.steps  # both sessions counted
    assert loaded.steps > 0
