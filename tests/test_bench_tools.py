"""The benchmark's measuring tools (benchmarks/perf_*.py, bench.py's output, device.sh's checks).

No timing is asserted: these check what is counted, built and written.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench  # noqa: E402
import eager_mlx.engine.engine as engine_mod  # noqa: E402
import perf_decode  # noqa: E402
from fakes import ByteTokenizer, tiny_model  # noqa: E402
from mlx_lm.models.cache import KVCache  # noqa: E402
from perf_models import (  # noqa: E402
    approx_weights_bytes, build_random, kv_bytes_per_token, random_prompt, weights_bytes,
)
from perf_stats import paired, verdict  # noqa: E402

import mlx.core as mx  # noqa: E402


def test_paired_ratios_median_iqr_and_ci():
    p = paired([2, 4, 6, 8], [1, 2, 2, 2])  # ratios 2, 2, 3, 4
    assert p.ratios == (2.0, 2.0, 3.0, 4.0)
    assert (p.median, p.q1, p.q3) == (2.5, 2.0, 3.25)
    assert 2.0 <= p.ci_lo <= p.median <= p.ci_hi <= 4.0
    assert p.iqr_text() == "2.50 [2.00-3.25]"
    assert paired([1.05], [1.0]).ci_text(percent=True).startswith("+5.0%")


def test_paired_refuses_unequal_or_empty_lists():
    with pytest.raises(ValueError, match="equally long"):
        paired([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        paired([], [])


def test_verdict_needs_the_whole_iqr_for_holds():
    assert verdict(paired([1.1, 1.2, 1.3], [1, 1, 1]), 1.0) == "holds"
    assert verdict(paired([0.9, 1.1, 1.2], [1, 1, 1]), 1.05) == "median only"
    assert verdict(paired([0.8, 0.9, 0.95], [1, 1, 1]), 1.0) == "no"
    assert verdict(paired([0.2, 0.22], [1, 1]), 0.25, at_least=False) == "holds"


def test_configs_have_the_published_sizes():
    # SmolLM2-135M: 134,515,008 parameters (576 x 61 of them are norm weights, not counted here).
    assert approx_weights_bytes("smollm2-135m") // 4 == 134_515_008 - 576 * 61
    # Qwen2.5-0.5B: 494,032,768 with tied embeddings; the GGUF keeps a separate output matrix (+151936 x 896).
    qwen = approx_weights_bytes("qwen2.5-coder-0.5b") // 4
    assert abs(qwen - (494_032_768 + 151_936 * 896)) < 100_000  # biases and norms are not counted


def test_random_model_follows_the_config_with_fewer_layers():
    model = build_random("smollm2-135m", layers=2, context=16384)
    assert len(model.layers) == 2 and model.args.max_position_embeddings == 16384
    assert model.args.num_key_value_heads == 3 and model.args.vocab_size == 49152
    norms = 576 * (2 * 2 + 1)
    assert weights_bytes(model) // 4 - norms == 49152 * 576 + 2 * (134_515_008 - 576 * 61 - 49152 * 576) // 30


def test_kv_bytes_per_token_matches_an_mlx_lm_cache():
    model = tiny_model("llama", layers=3)
    caches = [KVCache() for _ in model.layers]
    model(mx.array(random_prompt(256, 250))[None], cache=caches)
    held = sum(c.keys.nbytes + c.values.nbytes for c in caches)
    assert held == 256 * kv_bytes_per_token(model)


def test_both_sides_decode_the_same_prompt_and_report_their_kv():
    model, tok = tiny_model("llama", layers=2), ByteTokenizer()
    prompt = random_prompt(300, 250, seed=3)
    cache = perf_decode.prefill_one(model, prompt)
    assert cache[0].offset == 299  # the last prompt token is fed by BatchGenerator
    ours = perf_decode.ours(model, tok, prompt, rows=4, tokens=2)
    theirs = perf_decode.theirs(model, prompt, cache, rows=4, tokens=2)
    per_token = kv_bytes_per_token(model)
    # mlx-lm: 4 copies of the 299 prompt columns, then one 256-column step for the decode.
    assert theirs.kv == 4 * (299 + 256) * per_token
    # eager-mlx: the prompt once, plus the rows' own columns.
    assert 300 * per_token <= ours.kv < 300 * per_token + 4 * 64 * per_token
    assert ours.tps > 0 and theirs.tps > 0 and ours.peak > 0 and theirs.peak > 0


def test_top_p_reaches_both_samplers_and_a_bad_value_is_refused(monkeypatch):
    model, tok = tiny_model("llama", layers=2), ByteTokenizer()
    prompt = random_prompt(20, 250, seed=1)
    seen = []
    real_sampler = perf_decode.make_sampler
    monkeypatch.setattr(perf_decode, "make_sampler", lambda **kw: seen.append(kw) or real_sampler(**kw))
    real_add = perf_decode.Engine.add
    monkeypatch.setattr(perf_decode.Engine, "add", lambda self, rid, p, cfg: seen.append(cfg.sampling)
                        or real_add(self, rid, p, cfg))
    ours, theirs = perf_decode.pair(model, tok, prompt, rows=2, tokens=2, repeats=1, top_p=0.9)
    assert ours[0].tps > 0 and theirs[0].tps > 0
    assert {"temp": perf_decode.TEMPERATURE, "top_p": 0.9} in seen
    assert perf_decode.SamplingConfig(temperature=perf_decode.TEMPERATURE, top_p=0.9) in seen
    assert bench.plan_from(bench.parse_args(["--top-p", "0.95", "--real"])).top_p == 0.95
    with pytest.raises(SystemExit, match="--top-p 1.5"):
        bench.plan_from(bench.parse_args(["--top-p", "1.5", "--real"]))
    with pytest.raises(SystemExit, match="--top-p 0.95 needs --real"):
        bench.plan_from(bench.parse_args(["--top-p", "0.95"]))


def test_entropy_blocks_pair_every_block_and_restore_the_engine():
    original = engine_mod.token_stats
    full, plain = perf_decode.entropy_blocks(tiny_model("llama", layers=2), ByteTokenizer(),
                                             random_prompt(20, 250), rows=2, pairs=3, block=2)
    assert len(full) == len(plain) == 3
    assert engine_mod.token_stats is original


def test_memory_check_names_what_it_skips(monkeypatch):
    monkeypatch.setattr(bench, "available_memory", lambda: 10 * 2**30)
    assert bench.too_big(2**30, "P=8192 B=32") is None
    reason = bench.too_big(8 * 2**30, "P=8192 B=32")
    assert reason == "skipped P=8192 B=32: needs about 8.0 GiB, 10.0 GiB free now"
    monkeypatch.setattr(bench, "available_memory", lambda: None)
    assert bench.too_big(2**50, "x") is None  # unknown: measured (a GPU that does not say)


def test_output_is_saved_between_the_markers_after_each_section(tmp_path):
    out_md, out_json = tmp_path / "B.md", tmp_path / "raw.json"
    out_md.write_text("# Benchmarks\n\nkept above\n\n<!-- bench.py -->\nthe old table\n<!-- bench.py -->\n"
                      "\nkept below\n")
    args = bench.parse_args(["--quick", "--out", str(out_md), "--json", str(out_json)])
    out = bench.Output(args, bench.plan_from(args), "python benchmarks/bench.py --quick", "1.0", ["skipped x"])
    out.add(bench.Section("2. second", "| a |", "holds", {"n": 2}))
    assert "**Partial: the run has not finished.**" in out_md.read_text()
    out.add(bench.Section("1. first", "| b |", "does not hold"))
    out.save(final=True)
    text = out_md.read_text()
    assert text.startswith("# Benchmarks\n\nkept above") and text.rstrip().endswith("kept below")
    assert "the old table" not in text and "Partial" not in text and "- skipped x" in text
    assert text.index("### 1. first") < text.index("### 2. second")
    assert "**Target: holds.**" in text and "Load average: at start 1.0" in text
    raw = json.loads(out_json.read_text())
    assert raw["final"] is True and raw["sections"][0]["raw"] == {"n": 2}


@pytest.mark.parametrize("setup, message", [
    ("", "usage: benchmarks/device.sh PARTS_DIR"),
    ("missing", "no such folder"),
    ("empty", "need exactly one mlx-*.whl"),
    ("wrong-python", "is for cp399 but"),
])
def test_device_script_refuses_bad_input_in_one_line(tmp_path, setup, message):
    args = []
    if setup == "missing":
        args = [str(tmp_path / "nope")]
    elif setup:
        parts = tmp_path / "parts"
        parts.mkdir()
        if setup == "wrong-python":
            for name in ["mlx-0.32.4-cp399-cp399-manylinux_2_35_x86_64.whl", "mlx_lm-0.32.2-py3-none-any.whl",
                         "cuda.part.aa"]:
                (parts / name).write_bytes(b"")
        args = [str(parts)]
    r = subprocess.run(["bash", str(BENCH / "device.sh"), *args], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "PYTHON": sys.executable})
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr
