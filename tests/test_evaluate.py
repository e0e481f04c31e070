"""The eval loop with a fake engine that implements the engine contract (scripted outcomes)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from eager_mlx.config import EagerConfig, EngineConfig
from eager_mlx.evaluation.data import Dataset, Example
from eager_mlx.evaluation.evaluate import (
    JOURNAL,
    MANIFEST,
    RESULTS,
    EvalError,
    EvalSettings,
    evaluate,
    load_run,
    read_records,
)
from eager_mlx.results import RunFinished, RunResult, SequenceFinished, SequenceResult
from eager_mlx.evaluation.scheduler import SchedulerConfig


class Crash(Exception):
    pass


class FakeEngine:
    """Engine contract without a model: script(prompt_index, attempt, config) -> list of (text, n_tokens).

    One step finishes the oldest request; rows in use = sequences of the active requests.
    """

    context_length = None

    def __init__(self, script, max_rows=64, crash_after=None):
        self.script, self.max_rows, self.crash_after = script, max_rows, crash_after
        self.active: list[tuple[str, list[int], EagerConfig, list]] = []
        self.added: list[str] = []
        self.finished = 0

    @property
    def has_work(self):
        return bool(self.active)

    @property
    def num_rows(self):
        return sum(len(a[3]) for a in self.active)

    @property
    def free_rows(self):
        return self.max_rows - self.num_rows

    def add(self, request_id, prompt_tokens, config):
        config.validate()
        assert prompt_tokens
        i, attempt = (int(x) for x in request_id[1:].split("-r"))
        seqs = self.script(i, attempt, config)
        assert 1 <= len(seqs) <= config.max_sequences
        self.added.append(request_id)
        self.active.append((request_id, prompt_tokens, config, seqs))

    def step(self):
        if self.crash_after is not None and self.finished >= self.crash_after:
            raise Crash()
        rid, prompt, config, seqs = self.active.pop(0)
        self.finished += 1
        results = [
            SequenceResult(k, list(range(n)), text, "eos", 0 if k else None, 1 if k else None, [0.0] * n, [0.0] * n)
            for k, (text, n) in enumerate(seqs)
        ]
        shared = max(n for _, n in seqs) + sum(n // 2 for _, n in seqs[1:])
        rr = RunResult(rid, results, len(prompt), shared, None, config.threshold, 0.01, len(seqs) - 1)
        return [SequenceFinished(rid, 0, "eos"), RunFinished(rid, rr)]

    def abort(self, request_id):
        return []


def make_dataset(n=4):
    return Dataset("toy", "memory", [Example(i, f"q{i}", f"What is {i}+1?", str(i + 1)) for i in range(n)])


def boxed(x, n=10):
    return (f"so \\boxed{{{x}}}", n)


def adapt_script(i, attempt, config):
    """M=4. First runs: p0 hits the cap with wrong answers; p1 one right; p2 two, one right; p3 hits the cap, right.
    Extra runs: as many sequences as allowed, p0 now right."""
    gold = i + 1
    if attempt == 0:
        return {
            0: [boxed(99)] * 4,
            1: [boxed(gold)],
            2: [boxed(gold), boxed(7)],
            3: [boxed(gold)] * 4,
        }[i]
    return [boxed(gold, 20)] * config.max_sequences


def settings(method="eager-adapt", m=4, **kw):
    return EvalSettings(scheduler=SchedulerConfig(method=method, max_sequences=m, threshold=2.0, max_rows=16),
                        eager=EagerConfig(max_tokens=64), **kw)


def encode(text):
    return [ord(c) for c in text[:8]]


def test_eager_adapt_end_to_end(tmp_path):
    eng = FakeEngine(adapt_script)
    progress = []
    res = evaluate(eng, encode, make_dataset(), settings(), tmp_path / "run", model="fake", progress=progress.append)
    # |D| = 4, M = 4 -> 16; first pass uses 4 + 1 + 2 + 4 = 11 -> B = 5 over p0, p3 -> 3, 2
    assert sorted(eng.added) == ["p0-r0", "p0-r1", "p1-r0", "p2-r0", "p3-r0", "p3-r1"]
    recs = {r["index"]: r for r in res.records}
    assert [r["num_sequences"] for r in recs[0]["runs"]] == [4, 3]
    assert [r["max_sequences"] for r in recs[3]["runs"]] == [4, 2]
    assert res.metrics.total_sequences == 16
    m0 = recs[0]["metrics"]
    assert (m0["num_sequences"], m0["num_correct"], m0["pass_at_k"], m0["pass_at_1"], m0["cons_at_k"]) == (7, 3, 1.0, 0.0, 0.0)
    assert recs[2]["metrics"]["pass_rate"] == 0.5
    assert recs[0]["sequences"][0] == {
        "run": "p0-r0", "index": 0, "answer": "99", "extracted_by": "boxed", "correct": False, "tokens": 10,
        "finish_reason": "eos", "parent": None, "branch_step": None, "confidence": 0.0,
        "text": "so \\boxed{99}"}
    assert res.metrics.pass_at_k == 1.0 and res.metrics.pass_at_1 == 0.75 and res.metrics.cons_at_k == 0.75
    assert res.metrics.total_tokens == sum(r["metrics"]["generated_tokens"] for r in res.records)
    # files: one line per prompt, manifest with settings, hash and summary
    lines = (tmp_path / "run" / RESULTS).read_text().splitlines()
    assert sorted(json.loads(x)["index"] for x in lines) == [0, 1, 2, 3]
    man = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert man["finished"] and man["model"] == "fake" and man["method"] == "eager-adapt"
    assert man["dataset"]["hash"] == make_dataset().hash and man["seed"] == 55
    assert man["settings"]["scheduler"]["max_sequences"] == 4
    assert man["versions"]["mlx"] and man["summary"]["pass_at_k"] == 1.0
    # occupancy: rows in flight after each step (the fake engine finishes one run a step)
    occ = man["occupancy"]
    assert occ["steps"] == 6 and occ["max_rows"] == 16 and occ["mean_rows"] == occ["rows"] / 6
    assert 0 < occ["mean_occupancy"] == occ["mean_rows"] / 16 < 1
    # progress: an initial report, then one per prompt, counting up
    assert [p.done for p in progress if p.index is not None] == [1, 2, 3, 4] and progress[-1].pass_at_k == 1.0
    assert progress[-1].sequences == 16
    # every run back is reported too (the wave policies write prompts only once the pool is spent)
    assert [p.runs for p in progress if p.index is None] == list(range(7))
    assert progress[-1].run_tokens == res.metrics.total_tokens


def test_parallel_and_eager_labels(tmp_path):
    def script(i, attempt, config):
        if config.parallel:
            return [boxed(i + 1)] + [boxed(0)] * (config.max_sequences - 1)
        return [boxed(0)] if attempt < 2 else [boxed(i + 1)]  # solved on the third try

    eng = FakeEngine(script)
    res = evaluate(eng, encode, make_dataset(2), settings("parallel", m=3), tmp_path / "par")
    assert eng.added == ["p0-r0", "p1-r0"] and res.metrics.sequences_per_prompt == 3
    assert res.metrics.pass_rate == pytest.approx(1 / 3)
    eng = FakeEngine(script)
    res = evaluate(eng, encode, make_dataset(2), settings("eager", m=3), tmp_path / "lab")
    th = [r["threshold"] for r in res.records[0]["runs"]]
    assert th == pytest.approx([2.0, 1.6, 1.44])
    assert res.metrics.pass_at_k == 1.0


def test_refuses_to_overwrite_and_bad_settings(tmp_path):
    evaluate(FakeEngine(adapt_script), encode, make_dataset(), settings(), tmp_path / "r")
    with pytest.raises(EvalError, match="already holds results"):
        evaluate(FakeEngine(adapt_script), encode, make_dataset(), settings(), tmp_path / "r")
    with pytest.raises(EvalError, match="settings differ.*max_sequences"):
        evaluate(FakeEngine(adapt_script), encode, make_dataset(), settings(m=8), tmp_path / "r", resume=True)
    with pytest.raises(EvalError, match="unknown method"):
        evaluate(FakeEngine(adapt_script), encode, make_dataset(), settings("beam"), tmp_path / "x")


def test_resume_refuses_runs_of_another_engine_format(tmp_path):
    from eager_mlx.evaluation.store import STORE_FORMAT

    run = tmp_path / "r"
    evaluate(FakeEngine(adapt_script), encode, make_dataset(3), settings(), run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["engine_format"] == STORE_FORMAT
    manifest["engine_format"] = STORE_FORMAT - 1
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EvalError, match=f"another engine format \\({STORE_FORMAT - 1}; this one draws by format "
                                        f"{STORE_FORMAT}\\)"):
        evaluate(FakeEngine(adapt_script), encode, make_dataset(3), settings(), run, resume=True)
    del manifest["engine_format"]  # a manifest from before the field: resumed as before
    (run / "manifest.json").write_text(json.dumps(manifest))
    res = evaluate(FakeEngine(adapt_script), encode, make_dataset(3), settings(), run, resume=True)
    assert len(res.records) == 3


def test_resume_after_crash_with_torn_line(tmp_path):
    ds, st = make_dataset(6), settings()

    def script(i, attempt, config):
        return adapt_script(i % 4, attempt, config)

    full = evaluate(FakeEngine(script), encode, ds, st, tmp_path / "full")
    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        evaluate(FakeEngine(script, crash_after=5), encode, ds, st, run)
    before = read_records(run / RESULTS)
    assert 0 < len(before) < 6
    with open(run / RESULTS, "a") as f:
        f.write('{"index": 5, "id": "q5", "quest')  # SIGKILL mid-write
    with pytest.raises(json.JSONDecodeError):  # a naive reader would choke; ours skips the torn tail
        json.loads((run / RESULTS).read_text().splitlines()[-1])
    assert len(read_records(run / RESULTS)) == len(before)
    journaled = {e["run"]["request_id"] for e in read_records(run / JOURNAL)}
    assert "p0-r0" in journaled and 0 not in {r["index"] for r in before}  # run, prompt waiting for the barrier
    with open(run / JOURNAL, "a") as f:
        f.write('{"index": 5, "t_st')  # torn journal line too
    eng = FakeEngine(script)
    progress = []
    res = evaluate(eng, encode, ds, st, run, resume=True, progress=progress.append)
    assert res.resumed == len(before)
    # the runs back count the earlier session's (recorded and journaled) from the first report on
    assert progress[0].runs == len(journaled | {run["request_id"] for r in before for run in r["runs"]})
    assert progress[-1].runs == sum(len(r["runs"]) for r in res.records)
    assert progress[-1].run_tokens == res.metrics.total_tokens
    done_before = {r["index"] for r in before}
    assert not any(int(rid[1:].split("-")[0]) in done_before for rid in eng.added)  # no prompt redone
    assert not journaled & set(eng.added)  # no finished run redone either
    assert "p5-r0" in eng.added  # the run in flight at the crash is run again
    lines = (run / RESULTS).read_text().splitlines()
    idx = [json.loads(x)["index"] for x in lines]  # every line parses: the torn one was cut
    assert sorted(idx) == list(range(6))  # no duplicates
    # the budget decisions match an uninterrupted run
    assert [[r["request_id"] for r in x["runs"]] for x in res.records] == \
        [[r["request_id"] for r in x["runs"]] for x in full.records]
    assert res.metrics.pass_at_k == full.metrics.pass_at_k
    assert res.metrics.total_sequences == full.metrics.total_sequences
    manifest, records = load_run(run)
    assert manifest["finished"] and len(records) == 6


def test_resume_of_finished_run_runs_nothing(tmp_path):
    evaluate(FakeEngine(adapt_script), encode, make_dataset(), settings(), tmp_path / "r")
    eng = FakeEngine(adapt_script)
    res = evaluate(eng, encode, make_dataset(), settings(), tmp_path / "r", resume=True)
    assert eng.added == [] and res.resumed == 4 and res.metrics.num_prompts == 4


def test_read_records_corrupt_middle_line(tmp_path):
    p = tmp_path / RESULTS
    p.write_text('{"index": 0}\nnot json\n{"index": 2}\n')
    with pytest.raises(EvalError, match=":2: corrupt"):
        read_records(p)
    p.write_text('{"index": 0}\n{"index": 1, "x\n')  # torn line that ends in a newline
    assert read_records(p, repair=True) == [{"index": 0}]
    assert p.read_text() == '{"index": 0}\n'


def test_save_text_off_and_fallbacks(tmp_path):
    def script(i, attempt, config):
        return [(f"The answer is {i + 1}.", 5)]

    res = evaluate(FakeEngine(script), encode, make_dataset(2), replace(settings("eager-init"), save_text=False),
                   tmp_path / "r")
    s = res.records[0]["sequences"][0]
    assert "text" not in s and s["extracted_by"] == "answer_is" and s["correct"]
    res = evaluate(FakeEngine(script), encode, make_dataset(2),
                   replace(settings("eager-init"), answer_fallbacks=()), tmp_path / "r2")
    assert res.records[0]["sequences"][0]["answer"] is None and res.metrics.pass_at_k == 0.0


# ---------------------------------------------------------------- CLI (CliRunner, fake engine)
from click.testing import CliRunner  # noqa: E402

from eager_mlx.cli.main import cli  # noqa: E402

from fakes import FakeLoaded, patch_load  # noqa: E402


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "toy.jsonl"
    p.write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(4)))
    return p


@pytest.fixture
def fake_runner(monkeypatch):
    """Every model the CLI loads is this FakeLoaded (`.asked`: the model refs, `.made`: the engines)."""
    loaded = FakeLoaded(lambda config, events: FakeEngine(adapt_script, max_rows=config.max_rows), encode)
    loaded.asked = patch_load(monkeypatch, loaded)
    return loaded


def test_cli_eval_and_report(tmp_path, data_file, fake_runner):
    runner = CliRunner()
    out = tmp_path / "adapt"
    r = runner.invoke(cli, ["eval", "--model", "fake", "--data", str(data_file), "--method", "eager-adapt",
                            "--max-sequences", "4", "--max-rows", "16", "--out", str(out), "--k", "2"])
    assert r.exit_code == 0, r.output
    assert fake_runner.asked == ["fake"] and fake_runner.made[0][0] == EngineConfig(max_rows=16, seed=55)
    assert "Pass@k" in r.output and "eager-adapt" in r.output and "1.000" in r.output
    man = json.loads((out / MANIFEST).read_text())
    assert man["settings"]["scheduler"]["method"] == "eager-adapt" and man["settings"]["ks"] == [2]
    assert man["settings"]["eager"]["threshold"] == 2.0 and man["model"] == "fake"
    out2 = tmp_path / "par"
    r = runner.invoke(cli, ["eval", "--data", str(data_file), "--method", "parallel", "-M", "4", "--out", str(out2)])
    assert r.exit_code == 0, r.output
    png = tmp_path / "fig.png"
    r = runner.invoke(cli, ["report", str(out), str(out2), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:2] == ["run", "method"]
    assert any(x.startswith("adapt ") and "eager-adapt" in x for x in lines)
    assert any(x.startswith("par ") and "parallel" in x for x in lines)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_resume(tmp_path, data_file, fake_runner):
    out = tmp_path / "run"
    args = ["eval", "--data", str(data_file), "--method", "eager-adapt", "-M", "4", "--out", str(out)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "--resume" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, args + ["--resume"])
    assert r.exit_code == 0, r.output
    assert fake_runner.made[-1][2].added == []  # nothing redone
    assert len((out / RESULTS).read_text().splitlines()) == 4


@pytest.mark.parametrize(
    "args,message",
    [
        (["--data", "gsm9k"], "unknown dataset"),
        (["--data", "{bad}", "--method", "beam"], "Invalid value for '--method'"),
        (["--data", "{bad}", "--method", "parallel", "--token-budget", "100"], "token budget"),
        (["--data", "{bad}", "--answer-field", "label"], "no answer field 'label'"),
        (["--data", "{bad}", "--resume"], "--resume needs --out"),
        (["--data", "{empty}"], "empty"),
        (["--data", "{malformed}"], "malformed.jsonl:2: not valid JSON"),
    ],
)
def test_cli_eval_errors_are_one_line(tmp_path, data_file, fake_runner, args, message):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "malformed.jsonl").write_text('{"question": "a", "answer": "1"}\n{oops\n')
    paths = {"{bad}": str(data_file), "{empty}": str(tmp_path / "empty.jsonl"),
             "{malformed}": str(tmp_path / "malformed.jsonl")}
    args = [paths.get(a, a) for a in args]
    r = CliRunner().invoke(cli, ["eval", *args, "--out", str(tmp_path / "o")] if "--resume" not in args
                           else ["eval", *args])
    usage = ("Invalid value", "--resume needs --out", "token budget")
    assert r.exit_code == (2 if any(u in message for u in usage) else 1)
    assert message in r.output and "Traceback" not in r.output
    assert not fake_runner.asked  # errors come before the model is loaded


def test_cli_report_bad_dir(tmp_path):
    r = CliRunner().invoke(cli, ["report", str(tmp_path), "--no-plot"])
    assert r.exit_code == 1 and "not a run directory" in r.output
