"""Nothing computed is lost: skipped over-long prompts, resume rules, journal repair, signals and kill -9."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from eager_mlx.cli.main import cli
from eager_mlx.evaluation.data import Dataset, Example
from eager_mlx.evaluation.evaluate import JOURNAL, MANIFEST, RESULTS, EvalError, evaluate, read_records
from eager_mlx.evaluation.report import COLUMNS, run_summary
from eager_mlx.evaluation.rundir import TRACES
from fakes import FakeLoaded, patch_load
import dist_eval_entry
from test_evaluate import Crash, FakeEngine, adapt_script, settings

ENTRY = Path(dist_eval_entry.__file__)
TIMING = {"wall_s", "t_done", "elapsed_s", "tokens_per_s"}


def untimed(x):
    """A record without its timing fields (at any depth)."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


def by_index(run: Path) -> dict[int, dict]:
    records = read_records(run / RESULTS)
    indices = [r["index"] for r in records]
    assert len(indices) == len(set(indices)), f"a prompt recorded twice: {sorted(indices)}"
    return {r["index"]: untimed(r) for r in records}


# ------------------------------------------------------------------------------ over-long prompts
LONG = "What is 4+1? " + "Think about it. " * 10  # 173 bytes, over the context of 64


def long_dataset() -> Dataset:
    qs = [f"What is {i}+1?" for i in range(4)]
    qs.insert(2, LONG)  # index 2; the others keep adapt_script's outcomes through `script`
    return Dataset("toy", "memory", [Example(i, f"q{i}", q, str(i + 1 if i < 2 else i)) for i, q in enumerate(qs)],
                   template="{question}")


def script(i, attempt, config):
    return adapt_script(i if i < 2 else i - 1, attempt, config)


def outcome(record: dict) -> tuple:
    """What the scheduler decided for a prompt and what came of it (no ids, no timing)."""
    return [(r["attempt"], r["max_sequences"], r["num_sequences"]) for r in record["runs"]], untimed(record["metrics"])


def engine(**kw) -> FakeEngine:
    eng = FakeEngine(script, **kw)
    eng.context_length = 64  # what the real Engine exposes; prompts of 64 tokens or more cannot run
    return eng


def encode(text: str) -> list[int]:
    return list(text.encode())


def test_overlong_prompt_is_recorded_as_skipped_and_the_rest_runs(tmp_path):
    eng = engine()
    res = evaluate(eng, encode, long_dataset(), settings(), tmp_path / "run")
    assert not any(rid.startswith("p2-") for rid in eng.added)  # never given to the engine
    recs = {r["index"]: r for r in res.records}
    assert sorted(recs) == [0, 1, 2, 3, 4]
    assert recs[2]["skipped"] == f"the prompt has {len(LONG)} tokens, the model's context is 64"
    assert recs[2]["runs"] == [] and recs[2]["metrics"] is None and recs[2]["question"] == LONG
    # the other prompts run exactly as in the dataset without it: the budget is M x the prompts that run
    alone = evaluate(FakeEngine(adapt_script), encode, Dataset("toy", "memory", [
        Example(i, f"q{i}", f"What is {i}+1?", str(i + 1)) for i in range(4)], template="{question}"), settings(),
        tmp_path / "alone")
    assert [outcome(r) for r in res.records if "skipped" not in r] == [outcome(r) for r in alone.records]
    assert res.metrics.num_prompts == 4 and res.metrics.total_sequences == 16 and res.skipped == 1
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert manifest["skipped"] == 1 and manifest["summary"]["num_prompts"] == 4
    row = run_summary(tmp_path / "run")
    assert row["skipped"] == 1 and row["prompts"] == "4/5" and row["pass_at_k"] == alone.metrics.pass_at_k


def test_resume_does_not_hit_the_skipped_prompt_again(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Crash):
        evaluate(engine(crash_after=2), encode, long_dataset(), settings(), run)
    before = read_records(run / RESULTS)
    assert [r["index"] for r in before if "skipped" in r] == [2]  # recorded before anything ran
    eng = engine()
    res = evaluate(eng, encode, long_dataset(), settings(), run, resume=True)
    assert sorted(r["index"] for r in read_records(run / RESULTS)) == [0, 1, 2, 3, 4]  # each once
    assert res.skipped == 1 and not any(rid.startswith("p2-") for rid in eng.added)
    again = engine()
    evaluate(again, encode, long_dataset(), settings(), run, resume=True)
    assert again.added == [] and len(read_records(run / RESULTS)) == 5


def test_resume_refuses_when_a_recorded_prompt_changes_sides(tmp_path):
    run = tmp_path / "run"
    evaluate(engine(), encode, long_dataset(), settings(), run)
    wide = engine()
    wide.context_length = 4096  # the skipped prompt would now run
    with pytest.raises(EvalError, match="prompt 2 was skipped .*, now it would run"):
        evaluate(wide, encode, long_dataset(), settings(), run, resume=True)


def test_cli_eval_skips_and_reports(tmp_path, monkeypatch):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "1"}) + "\n" for q in ("short", LONG, "short too")))

    def make(config, events):
        eng = FakeEngine(lambda i, a, c: [(f"\\boxed{{{i}}}", 3)], max_rows=config.max_rows)
        eng.context_length = 64
        return eng

    patch_load(monkeypatch, FakeLoaded(make, encode))
    res = CliRunner().invoke(cli, ["eval", "--data", str(data), "--template", "{question}", "--method", "parallel",
                                   "-M", "2", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    cells = next(line for line in res.output.splitlines() if line.startswith("run ")).split()
    row = dict(zip([title for _, title, _ in COLUMNS], cells))
    assert row["skipped"] == "1" and row["prompts"] == "2/3"
    assert "note: 1 prompts were skipped, too long for the model's context" in res.output


# ---------------------------------------------------------------------------------------- resume rules
def test_resume_needs_the_manifest(tmp_path):
    run = tmp_path / "run"
    evaluate(FakeEngine(script), encode, long_dataset(), settings(), run)
    (run / MANIFEST).unlink()
    with pytest.raises(EvalError, match="manifest.json is missing, so the settings of its results.jsonl and "
                                        "runs.jsonl cannot be checked"):
        evaluate(FakeEngine(script), encode, long_dataset(), settings("parallel", m=1), run, resume=True)
    with pytest.raises(EvalError, match="nothing to resume"):
        evaluate(FakeEngine(script), encode, long_dataset(), settings(), tmp_path / "new", resume=True)
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------- journal repair, signals, kill -9
ARGS = ["--no-store", "--no-chat", "--template", "{question}", "-t", "2.8", "--temperature", "0.6", "-M", "4", "--max-tokens",
        "12", "--max-rows", "8", "--method", "eager-adapt", "--save-trace"]
ENV = dict(os.environ, EAGER_TEST_MODEL="markov")  # for dist_eval_entry.py


@pytest.fixture
def markov(tmp_path, monkeypatch):
    """Eval arguments over 16 prompts; the Markov fake model behind the CLI (in-process; ENV for subprocesses)."""
    data = tmp_path / "d.jsonl"
    rows = [{"question": "qwertyuiopasdfghjklzxcvbnm"[i:i + 1 + i % 5], "answer": str(i)} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    patch_load(monkeypatch, dist_eval_entry.loaded_model("markov"))
    return ["--data", str(data), *ARGS]


def test_every_journal_is_repaired_on_resume(tmp_path, markov):
    full, run = tmp_path / "full", tmp_path / "run"
    assert CliRunner().invoke(cli, ["eval", *markov, "--out", str(full)]).exit_code == 0
    shutil.copytree(full, run)
    for name, keep in ((RESULTS, 3), (JOURNAL, 6), (TRACES, 6)):  # a kill: lines lost, the last one torn
        lines = (run / name).read_bytes().splitlines(keepends=True)
        (run / name).write_bytes(b"".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])
    res = CliRunner().invoke(cli, ["eval", *markov, "--out", str(run), "--resume"])
    assert res.exit_code == 0, res.output
    for name in (RESULTS, JOURNAL, TRACES):  # every line parses: the torn ones were cut, not appended to
        for line in (run / name).read_text().splitlines():
            json.loads(line)
    assert by_index(run) == by_index(full)
    res = CliRunner().invoke(cli, ["report", str(run), "--no-plot", "--html"])
    assert res.exit_code == 0, res.output
    assert len(list((run / "trees").glob("p*.html"))) == 16


class SignalAt(FakeEngine):
    """Sends `signum` to this process at its third step, as a user's Ctrl-C or a `kill` would."""

    signum = signal.SIGTERM

    def step(self):
        if self.finished == 2:
            os.kill(os.getpid(), self.signum)
        return super().step()


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_with_a_resume_hint(tmp_path, monkeypatch, signum, code):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": str(i + 1)}) + "\n"
                            for i in range(4)))
    cls = type("Signal", (SignalAt,), {"signum": signum})
    patch_load(monkeypatch, FakeLoaded(lambda c, e: cls(adapt_script, max_rows=c.max_rows), encode))
    out = tmp_path / "run"
    args = ["eval", "--data", str(data), "--method", "eager-init", "-M", "4", "--out", str(out)]
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    res = CliRunner().invoke(cli, args)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == code, res.output
    name = signal.Signals(signum).name
    assert res.output.rstrip().splitlines()[-1] == (
        f"interrupted ({name}): what is written in {out} is kept; to continue, run the same command with "
        f"--resume --out {out}")
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    assert len(read_records(out / RESULTS)) == 2  # the prompts done before the signal stay written
    assert not json.loads((out / MANIFEST).read_text())["finished"]
    patch_load(monkeypatch, FakeLoaded(lambda c, e: FakeEngine(adapt_script, max_rows=c.max_rows), encode))
    assert CliRunner().invoke(cli, args + ["--resume"]).exit_code == 0
    assert sorted(r["index"] for r in read_records(out / RESULTS)) == [0, 1, 2, 3]


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """`eager-mlx eval ARGS` on the Markov model in a subprocess; returns once its evaluation has begun."""
    proc = subprocess.Popen([sys.executable, str(ENTRY), *args], cwd=cwd, env=ENV, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    deadline = time.monotonic() + 60
    while b"eval:" not in log.read_bytes() and proc.poll() is None:  # the progress bar: the run has begun
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    return proc


def test_sigterm_in_a_subprocess(tmp_path, markov):
    out, log = tmp_path / "run", tmp_path / "stderr"
    proc = _start([*markov, "--out", str(out)], tmp_path, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text
    assert text.rstrip().splitlines()[-1].endswith(f"to continue, run the same command with --resume --out {out}")


def test_kill_9_at_random_points_then_resume(tmp_path, markov):
    """SIGKILL 5 sessions at seeded random moments, resume each time: every prompt is recorded once, and the
    records equal an uninterrupted run's (random draws are keyed on the seed and the request id)."""
    full, run = tmp_path / "full", tmp_path / "run"
    began = time.perf_counter()
    assert CliRunner().invoke(cli, ["eval", *markov, "--out", str(full)]).exit_code == 0
    span = time.perf_counter() - began  # how long an evaluation takes on this machine
    reference = by_index(full)
    assert any(len(r["runs"]) > 1 for r in reference.values())  # the budget phase ran: the journal matters
    assert any(s["parent"] is not None for r in reference.values() for s in r["sequences"])  # forks were made
    rng = random.Random(14)
    killed_mid_run = 0
    for session in range(5):
        resume = ["--resume"] if (run / MANIFEST).exists() else []
        proc = _start([*markov, "--out", str(run), *resume], tmp_path, tmp_path / f"stderr{session}")
        time.sleep(rng.uniform(0, 0.3) * span)  # each session gets a part of the run
        proc.kill()
        proc.wait(timeout=60)
        by_index(run)  # no prompt recorded twice, every line but a torn last one parses
        killed_mid_run += not json.loads((run / MANIFEST).read_text())["finished"]
    assert killed_mid_run >= 1
    res = CliRunner().invoke(cli, ["eval", *markov, "--out", str(run), "--resume"])
    assert res.exit_code == 0, res.output
    assert by_index(run) == reference
    assert CliRunner().invoke(cli, ["report", str(run), "--no-plot", "--html"]).exit_code == 0
