"""Consensus, confidence voting and calibration through the eval loop and the CLI (fake and scripted engines)."""
from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.evaluation import report
from eager_mlx.adaptive.calibrate import (
    auto_threshold,
    branching_rate,
    calibrate,
    threshold_for_percentile,
    threshold_for_rate,
    write_preset_threshold,
)
from eager_mlx.cli.main import cli
from eager_mlx.adaptive.consensus import ConsensusConfig
from eager_mlx.evaluation.evaluate import EvalError, evaluate, read_records
from eager_mlx.models.preset import get_preset, override_path
from eager_mlx.results import RunFinished

from fakes import ByteTokenizer, FakeLoaded, ScriptedModel, patch_load
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
    r = CliRunner().invoke(cli, ["eval", "--data", str(data), "-M", "4", "--out", str(out), "--consensus", "beta",
                                 "--confidence-vote"])
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


# ---------------------------------------------------------------- calibration

def test_threshold_selection_hand_values():
    values = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
    assert threshold_for_rate(values, 0.2) == 3.5  # 4.0 and 4.5 above: 20%
    assert branching_rate(values, 3.5) == 0.2
    assert threshold_for_rate(values, 0.25) == 3.5  # floor(2.5) = 2 above
    assert threshold_for_rate(values, 0.0) == 4.5  # nothing above
    assert threshold_for_percentile(values, 50) == pytest.approx(2.25)
    assert threshold_for_percentile(values, 90) == pytest.approx(4.05)
    with pytest.raises(ValueError):
        threshold_for_rate([], 0.1)
    with pytest.raises(ValueError):
        threshold_for_rate(values, 1.0)


PROMPT = [ord("Q"), ord("?")]
SCHEDULE = {2: "high", 5: "high", 7: "mid"}  # 10 tokens: entropies ln20-ish x2, ln8-ish, 7 x ~0


def scripted_engine(rows=4):
    return Engine(ScriptedModel(len(PROMPT), SCHEDULE), ByteTokenizer(), max_rows=rows, seed=0)


def test_calibrate_on_the_engine():
    cfg = EagerConfig(max_tokens=10, sampling=SamplingConfig(temperature=0))
    cal = calibrate(scripted_engine(), [PROMPT, PROMPT], cfg, rate=0.25)
    assert cal.tokens == 20 and cal.prompts == 2
    # 20 tokens sorted: 4 high (~3.0), 2 mid (ln 8), 14 low; position floor(0.25 * 20) = 5 is a mid
    assert cal.threshold == pytest.approx(math.log(8), abs=1e-3) and cal.rate == 0.2
    assert cal.summary["max"] == pytest.approx(math.log(20), abs=1e-2)
    cal = calibrate(scripted_engine(), [PROMPT], cfg, percentile=50)
    assert cal.threshold < 1e-3 and cal.target == "percentile 50"


def test_preset_override_and_auto_threshold(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path))
    preset = get_preset("smollm2-135m")
    cfg = EagerConfig(max_tokens=10, sampling=SamplingConfig(temperature=0))
    theta, how = auto_threshold(scripted_engine(), [PROMPT], cfg, preset)  # nothing stored: calibrate now
    assert theta == pytest.approx(math.log(20), abs=1e-2) and "calibrated now" in how  # rate 0.02 of 10: top value
    cal = calibrate(scripted_engine(), [PROMPT], cfg, rate=0.25)
    path = write_preset_threshold("smollm2-135m", cal)
    assert path == override_path("smollm2-135m") == tmp_path / "presets" / "smollm2-135m.toml"
    assert get_preset("smollm2-135m").threshold == pytest.approx(math.log(8), abs=1e-3)
    theta, how = auto_threshold(None, [], cfg, get_preset("smollm2-135m"))  # stored: no engine needed
    assert theta == cal.threshold and "stored" in how
    path.write_text("source = 'x'\n")
    from eager_mlx.models import ModelError

    with pytest.raises(ModelError, match="cannot override source"):
        get_preset("smollm2-135m")


def test_cli_calibrate(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "1"}) + "\n" for q in ("Q?", "Q!")))
    tok = ByteTokenizer()

    loaded = FakeLoaded(lambda config, events: scripted_engine(config.max_rows), tok.encode,
                        preset=get_preset("smollm2-135m"), name="scripted")
    patch_load(monkeypatch, loaded)
    png = tmp_path / "hist.png"
    r = CliRunner().invoke(cli, ["calibrate", "--data", str(data), "--template", "{question}", "--no-chat",
                                 "--max-tokens", "10", "--target-rate", "0.25", "--write-preset", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    assert "measured: 20 tokens of 2 prompts" in r.output
    assert "theta = 2.0794 for rate 0.25 (20.00% of tokens above)" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert get_preset("smollm2-135m").threshold == pytest.approx(math.log(8), abs=1e-3)
    r = CliRunner().invoke(cli, ["calibrate", "--data", str(data), "--target-rate", "0.1", "--percentile", "90"])
    assert r.exit_code == 2 and "not both" in r.output
