"""Theta calibration for a target mean #S: simulation on scripted traces, the scripted engine, presets, the CLI."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.adaptive.calibrate import (
    Trace,
    auto_threshold,
    calibrate,
    choose_threshold,
    mean_sequences,
    measure_traces,
    read_traces,
    resolve_target,
    simulate_sequences,
    stored_threshold,
    write_preset_threshold,
)
from eager_mlx.api import solve
from eager_mlx.cli.main import cli
from eager_mlx.models import ModelError
from eager_mlx.models.preset import PresetCalibration, get_preset, list_presets, override_path

from fakes import ByteTokenizer, FakeLoaded, ScriptedModel, patch_load

PROMPT = [ord("Q"), ord("?")]
CFG = EagerConfig(max_sequences=8, max_tokens=12, sampling=SamplingConfig(temperature=0))


def scripted_traces(rng: np.random.Generator, prompts: int, samples: int, high: float = 0.05) -> list[list[Trace]]:
    """iid entropies: U(0, 1) mostly, U(1, 3) with probability `high`; lengths U{40..120}."""
    def trace():
        n = int(rng.integers(40, 121))
        hi = rng.random(n) < high
        return Trace(tuple(np.where(hi, rng.uniform(1, 3, n), rng.uniform(0, 1, n)).tolist()))

    return [[trace() for _ in range(samples)] for _ in range(prompts)]


# ---------------------------------------------------------------- simulation (no model)

def test_chosen_theta_gives_the_target_mean_sequences_on_fresh_draws():
    cfg = EagerConfig(max_sequences=8, max_tokens=200)
    fit = scripted_traces(np.random.default_rng(1), 60, 4)
    theta, mean = choose_threshold(fit, cfg, 2.0, seed=3)
    assert 1.8 <= mean <= 2.0  # the largest simulated mean not above the target (steps are ~1/240)
    assert mean_sequences(fit, dataclasses.replace(cfg, threshold=theta - 1e-3), seed=3) > 2.0
    # iid tokens: a child continuing on another sample is exact, so fresh draws from the
    # same distribution must give the target too (tolerance: sampling error of 240 fitted runs)
    fresh = scripted_traces(np.random.default_rng(2), 300, 4)
    assert mean_sequences(fresh, dataclasses.replace(cfg, threshold=theta), seed=0) == pytest.approx(2.0, abs=0.2)


def test_m2_matches_the_closed_form():
    # M = 2: #S = 1 + P(some token of the root's trace > theta) = 2 - (theta / 3)^L for iid U(0, 3)
    rng = np.random.default_rng(0)
    traces = [[Trace(tuple(rng.uniform(0, 3, 20).tolist()))] for _ in range(1000)]
    theta, mean = choose_threshold(traces, EagerConfig(max_sequences=2), 1.5)
    assert mean <= 1.5
    assert theta == pytest.approx(3 * 0.5 ** (1 / 20), abs=0.03)


def test_simulation_is_deterministic_for_a_seed():
    traces = scripted_traces(np.random.default_rng(4), 20, 4, high=0.1)
    cfg = dataclasses.replace(CFG, threshold=1.5, max_tokens=200)
    first = simulate_sequences(traces, cfg, seed=7)
    assert simulate_sequences(traces, cfg, seed=7) == first
    assert simulate_sequences(traces, cfg, seed=8) != first  # the children's traces are drawn from the seed
    assert choose_threshold(traces, cfg, 3.0, seed=7) == choose_threshold(traces, cfg, 3.0, seed=7)


def test_branch_rule_details_in_the_simulation():
    one = [[Trace((0.0, 2.5, 0.0, 2.5, 0.0), think_end=2)]]
    cfg = dataclasses.replace(CFG, threshold=2.0)
    assert simulate_sequences(one, cfg) == [2]  # step 3 is after the thinking section closed
    assert simulate_sequences(one, dataclasses.replace(cfg, max_tokens=1)) == [1]  # rows end at max_tokens
    assert simulate_sequences(one, dataclasses.replace(cfg, no_branch_window=1)) == [1]  # closed at step 1
    # the child takes a trace still running at step 2: the long one, which branches again at step 4
    two = [[Trace((2.5, 0.0, 0.0, 0.0, 2.5)), Trace((0.0, 0.0))]]
    assert simulate_sequences(two, cfg) == [3, 1]
    with pytest.raises(ValueError, match=r"target mean #S must be in \[1, M=8\]"):
        choose_threshold(two, cfg, 9)
    with pytest.raises(ValueError, match="no entropies"):
        choose_threshold([[Trace(())]], cfg, 2)
    assert resolve_target(None, 8) == 2.0 and resolve_target(None, 2) == 1.0


# ---------------------------------------------------------------- against the engine (scripted model)

@pytest.mark.parametrize("schedule", [{2: "high", 5: "high", 7: "mid"}, {1: "high", 3: "think", 5: "high", 8: "eos"}])
@pytest.mark.parametrize("dynamic", [False, True])
def test_simulated_sequences_are_the_engines(schedule, dynamic):
    # the scripted model's entropy depends on the step only, so the simulation must be exact
    cfg = dataclasses.replace(CFG, dynamic_threshold=dynamic, dynamic_percentile=90.0)
    engine = Engine(ScriptedModel(len(PROMPT), schedule), ByteTokenizer(), max_rows=8, seed=0)
    traces = measure_traces(engine, [PROMPT], cfg, samples=2)
    assert len(traces[0]) == 2 and traces[0][0].think_end == (3 if "think" in schedule.values() else None)
    for target in (1, 2, 4, 8):
        cal = calibrate(None, [PROMPT], cfg, target_sequences=target, traces=traces)
        run = solve(ScriptedModel(len(PROMPT), schedule), PROMPT, dataclasses.replace(cfg, threshold=cal.threshold),
                    tokenizer=ByteTokenizer())
        assert run.num_sequences == cal.mean_sequences <= target


def test_calibrate_measures_on_the_engine():
    engine = Engine(ScriptedModel(len(PROMPT), {2: "high", 5: "high", 7: "mid"}), ByteTokenizer(), max_rows=8, seed=0)
    cal = calibrate(engine, [PROMPT, PROMPT], CFG, samples=3, seed=1)
    assert (cal.prompts, cal.samples, cal.tokens, cal.target_sequences) == (2, 3, 72, 2.0)
    # #S is 1 above ln 20, 4 between ln 8 and ln 20: target 2 needs theta >= ln 20; 3.0 is the shortest decimal
    assert cal.threshold == 3.0 and cal.mean_sequences == 1.0 and cal.rate == 0.0
    assert cal.summary["max"] == pytest.approx(math.log(20), abs=1e-2)


# ---------------------------------------------------------------- presets and --threshold auto

# Runs here but not calibrated yet: 1.5B at a few tokens/s on this 2-core CPU (issue 12 item 2 is open for it).
# gemma-3-270m: added by issue 21 for its sliding-window layers (a base model; its theta is the paper's for now).
NOT_YET_CALIBRATED = {"qwen2.5-coder-1.5b", "gemma-3-270m"}


def test_shipped_presets_say_how_theta_was_obtained():
    for preset in list_presets():
        rec = preset.calibration
        if preset.hub_id is not None or preset.name in NOT_YET_CALIBRATED:
            assert rec is None and preset.threshold == 2.0  # the paper's theta (hub: no hub here to calibrate on)
            continue
        assert rec is not None, preset.name
        assert rec.data == "gsm8k-train" and rec.mean_sequences <= rec.target_sequences <= rec.max_sequences
        assert rec.prompts >= 16 and rec.samples >= 2 and rec.command.startswith("eager-mlx calibrate")
        assert stored_threshold(preset) == preset.threshold


def test_write_preset_round_trips_and_auto_uses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path))
    preset = dataclasses.replace(get_preset("smollm2-135m"), calibration=None)  # as if never calibrated
    engine = Engine(ScriptedModel(len(PROMPT), {2: "high", 5: "high", 7: "mid"}), ByteTokenizer(), max_rows=8, seed=0)
    theta, how = auto_threshold(engine, [PROMPT], CFG, preset)  # nothing stored: calibrate now
    assert theta == 3.0 and "calibrated now on 1 prompt(s) x 4 samples" in how and "mean #S 1.00" in how
    cal = calibrate(None, [PROMPT], CFG, target_sequences=4, traces=[[Trace((0, 0, 3.0, 0, 0, 3.0, 0, 2.08))]])
    path = write_preset_threshold("smollm2-135m", cal, "gsm8k-train", "eager-mlx calibrate --data gsm8k-train")
    assert path == override_path("smollm2-135m") == tmp_path / "presets" / "smollm2-135m.toml"
    got = get_preset("smollm2-135m")
    assert got.threshold == cal.threshold == 2.1
    assert got.calibration == PresetCalibration(
        data="gsm8k-train", prompts=1, samples=1, max_tokens=12, max_sequences=8, target_sequences=4.0,
        mean_sequences=4.0, tokens=8, seed=0, date=got.calibration.date,
        command="eager-mlx calibrate --data gsm8k-train")
    theta, how = auto_threshold(None, [], CFG, got)  # stored: no engine needed
    assert theta == 2.1 and "calibrated value of preset smollm2-135m (on gsm8k-train, 1 prompts x 1)" in how
    path.write_text("threshold = 1.5\n")  # a bare theta: the shipped record no longer describes it
    assert get_preset("smollm2-135m").calibration is None and stored_threshold(get_preset("smollm2-135m")) == 1.5
    path.write_text("threshold = 1.5\ncalibration.data = 'x'\n")
    with pytest.raises(ModelError, match="calibration keys missing: command, date"):
        get_preset("smollm2-135m")


def test_cli_calibrate(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "1"}) + "\n" for q in ("Q?", "Q!")))
    tok = ByteTokenizer()
    schedule = {2: "high", 5: "high", 7: "mid"}

    def make_engine(config, events):
        return Engine(ScriptedModel(len(PROMPT), schedule), tok, max_rows=config.max_rows, seed=0)

    loaded = FakeLoaded(make_engine, tok.encode, preset=get_preset("smollm2-135m"), name="scripted", tokenizer=tok)
    asked = patch_load(monkeypatch, loaded)
    png, saved = tmp_path / "hist.png", tmp_path / "traces.json"
    r = CliRunner().invoke(cli, ["calibrate", "--data", str(data), "--template", "{question}", "--no-chat",
                                 "--max-tokens", "10", "--samples", "2", "-M", "8", "--target-sequences", "4",
                                 "--write-preset", "--plot", str(png), "--save-traces", str(saved)])
    assert r.exit_code == 0, r.output
    assert "measured: 40 tokens of 2 prompts x 2 samples" in r.output
    assert "theta = 2.1: simulated mean #S 4.000 for mean #S 4 at M=8" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [len(ts) for ts in read_traces(saved)] == [2, 2]
    rec = get_preset("smollm2-135m").calibration
    assert get_preset("smollm2-135m").threshold == 2.1 and rec.data == str(data) and rec.samples == 2
    assert f"--data {data}" in rec.command and "--target-sequences 4 " in rec.command and "--no-chat" in rec.command
    for bad, msg in ((["--target-sequences", "9"], "target mean #S must be in [1, M=8], got 9"),
                     (["--samples", "20"], "--samples 20 needs --max-rows >= 20 (got 16)")):
        r = CliRunner().invoke(cli, ["calibrate", "--data", str(data), *bad])
        assert r.exit_code in (1, 2) and msg in r.output, r.output
    assert len(asked) == 1  # the bad settings were refused before any model was loaded
