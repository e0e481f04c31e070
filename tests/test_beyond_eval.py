"""Consensus and confidence voting through the eval loop and the CLI (fake and scripted engines)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from eager_mlx.evaluation import report
from eager_mlx.cli.main import cli
from eager_mlx.adaptive.consensus import ConsensusConfig
from eager_mlx.evaluation.evaluate import EvalError, evaluate, read_records
from eager_mlx.results import RunFinished

from fakes import FakeLoaded, patch_load
from test_evaluate import Crash, FakeEngine, adapt_script, boxed, encode, make_dataset, settings


def test_consensus_in_eval_skips_extra_runs_of_agreeing_prompts(tmp_path):
    sched = settings().scheduler
    st = settings()
    from dataclasses import replace

    st = replace(st, scheduler=replace(sched, consensus=ConsensusConfig("beta")))
    eng = FakeEngine(adapt_script)
    res = evaluate(eng, encode, make_dataset(), st, tmp_path / "run")
    # p0 (4 x "99") and p3 (4 x gold) agree after their first run (31/32 > 0.95): no extra runs at all
    assert eng.added == ["p0-r0", "p1-r0", "p2-r0", "p3-r0"]
    assert res.metrics.pass_at_k == 0.75  # p0 never gets the budget that would have solved it
    assert all(r["runs"][0]["consensus_abort"] is False for r in res.records)


def test_consensus_resume_replays_the_same_decisions(tmp_path):
    from dataclasses import replace

    def script(i, attempt, config):
        if attempt == 0:
            return {0: [boxed(k) for k in range(4)], 1: [boxed(k) for k in range(4)], 2: [boxed(3)],
                    3: [boxed(4)] * 4}[i]
        return [boxed(3)] if i == 0 else [boxed(50 + attempt)]

    st = settings(m=4)
    st = replace(st, scheduler=replace(st.scheduler, consensus=ConsensusConfig("window", window=2)))
    full = FakeEngine(script)
    evaluate(full, encode, make_dataset(), st, tmp_path / "a")
    # B = 16 - 13 = 3: p0 gets 2, p1 1 (p3 agreed); p0's extra run agrees ("3", "3") after 1 of its 2: round 2 -> p1
    assert full.added == ["p0-r0", "p1-r0", "p2-r0", "p3-r0", "p0-r1", "p1-r1", "p1-r2"]
    crashing = FakeEngine(script, crash_after=5)
    with pytest.raises(Crash):
        evaluate(crashing, encode, make_dataset(), st, tmp_path / "b")
    again = FakeEngine(script)
    evaluate(again, encode, make_dataset(), st, tmp_path / "b", resume=True)
    assert again.added == ["p1-r1", "p1-r2"]  # p0's agreement was replayed from the journal


class EntropyEngine(FakeEngine):
    """FakeEngine whose sequences get entropy 0.1 if their text contains "1", else 2.0."""

    def step(self):
        events = super().step()
        for ev in events:
            if isinstance(ev, RunFinished):
                for s in ev.result.sequences:
                    s.entropies = [0.1 if "{1}" in s.text else 2.0] * len(s.token_ids)
        return events


def test_confidence_vote_record_and_report(tmp_path, monkeypatch):
    def script(i, attempt, config):
        return [boxed(1), boxed(9), boxed(9)]  # gold of prompt 0 is "1"

    res = evaluate(EntropyEngine(script), encode, make_dataset(1), settings(method="eager-init", confidence_vote=True),
                   tmp_path / "run")
    rec = res.records[0]
    assert [s["confidence"] for s in rec["sequences"]] == pytest.approx([-0.1, -2.0, -2.0])
    # majority: "9" (wrong); weights e^-0.1 = 0.905 vs 2 e^-2 = 0.271: "1" (right)
    assert rec["metrics"]["cons_at_k"] == 0.0
    assert rec["weighted_vote"] == {"answer": "1", "correct": True}
    summary = report.run_summary(tmp_path / "run")
    assert summary["wcons_at_k"] == 1.0 and summary["cons_at_k"] == 0.0
    assert "wcons@k" in report.format_table([summary])


def test_consensus_abort_needs_a_rule(tmp_path):
    with pytest.raises(EvalError, match="consensus_abort needs a consensus rule"):
        evaluate(FakeEngine(adapt_script), encode, make_dataset(), settings(consensus_abort=True), tmp_path / "r")


def test_cli_eval_with_consensus_and_confidence_vote(tmp_path, monkeypatch):
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(4)))
    loaded = FakeLoaded(lambda config, events: FakeEngine(adapt_script, max_rows=config.max_rows), encode)
    patch_load(monkeypatch, loaded)
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["eval", "--data", str(data), "-M", "4", "--method", "eager-adapt", "--out", str(out),
                                 "--consensus", "beta", "--confidence-vote"])
    assert r.exit_code == 0, r.output
    assert loaded.made[0][1] is False  # no online monitor: the engine need not emit TokenEvents
    assert loaded.made[0][2].added == ["p0-r0", "p1-r0", "p2-r0", "p3-r0"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["scheduler"]["consensus"] == {"rule": "beta", "confidence": 0.95, "window": 4}
    assert all("weighted_vote" in rec for rec in read_records(out / "results.jsonl"))
    r = CliRunner().invoke(cli, ["eval", "--data", str(data), "--out", str(tmp_path / "x"), "--consensus-abort"])
    assert r.exit_code == 2 and "consensus_abort needs a consensus rule" in r.output
    r = CliRunner().invoke(cli, ["eval", "--data", str(data), "--out", str(tmp_path / "y"), "--threshold", "high"])
    assert r.exit_code == 2 and "neither a number nor 'auto'" in r.output
