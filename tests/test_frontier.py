"""`calibrate --objective frontier`: the grid through the run store, the table, the choice, the preset record."""
import json

import pytest
from click.testing import CliRunner

import dist_eval_entry
from eager_mlx.cli.main import cli
from eager_mlx.evaluation.equal_cost import EqualCost
from eager_mlx.evaluation.frontier import Candidate, choose, grid, write_preset_eval
from eager_mlx.models.preset import PresetEval, get_preset
from fakes import patch_load
from test_eval_reproducible import QUESTIONS


def cost(ratio, dp, dc):
    return EqualCost(30, 4 * ratio, ratio, 0.5, 0.5 - dp, dp, (dp - .1, dp + .1), 0.4, 0.4 - dc, dc, (dc - .1, dc + .1),
                     4)


def test_choose_takes_the_best_worst_side_within_parallels_tokens():
    a, b, c, d = (Candidate("eager-adapt", p, 2.0) for p in ("hit-m", "rank", "disagree", "sequential"))
    results = [(a, cost(0.4, 0.10, -0.05)), (b, cost(0.9, 0.02, 0.01)), (c, cost(1.2, 0.3, 0.3)),
               (d, cost(0.95, 0.02, 0.01))]
    assert choose(results)[0] == b  # c spends more than parallel; b and d tie but b is cheaper
    assert choose([(c, cost(1.2, 0.3, 0.3))]) is None
    names = [x.name for x in grid([2.0, 2.5], ["top2"], ["hit-m", "sequential"])]
    assert names == ["eager-adapt-hit-m-t2-top2", "eager-adapt-sequential-t2-top2", "eager-adapt-hit-m-t2.5-top2",
                     "eager-adapt-sequential-t2.5-top2", "eager-parallel-sequential-t2-top2",
                     "eager-parallel-disagree-t2-top2", "eager-parallel-fewest-t2-top2",
                     "eager-parallel-sequential-t2.5-top2", "eager-parallel-disagree-t2.5-top2",
                     "eager-parallel-fewest-t2.5-top2", "parallel-adapt-sequential", "parallel-adapt-disagree",
                     "parallel-adapt-fewest"]


def test_the_frontier_runs_through_the_store_and_writes_its_table(tmp_path, monkeypatch):
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": str(i)}) + "\n" for i, q in enumerate(QUESTIONS)))
    patch_load(monkeypatch, dist_eval_entry.loaded_model("markov"))
    out, png = tmp_path / "grid", tmp_path / "frontier.png"
    args = ["calibrate", "--objective", "frontier", "--data", str(data), "--template", "{question}", "--no-chat",
            "-M", "3", "--max-tokens", "8", "--thresholds", "1.2", "--branch-rules", "top2",
            "--policies", "hit-m,sequential", "--out", str(out), "--store", str(tmp_path / "store"), "--plot",
            str(png)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "chosen: " in r.output and (out / "frontier.txt").read_text().startswith("equal cost")
    assert "frontier: parallel" in r.output and "runs back" in r.output  # each run's progress bar
    folders = ["parallel", "eager-adapt-hit-m-t1.2-top2", "eager-adapt-sequential-t1.2-top2",
               "eager-parallel-sequential-t1.2-top2", "parallel-adapt-sequential", "parallel-adapt-disagree"]
    assert all((out / f / "results.jsonl").exists() for f in folders)
    manifests = {f: json.loads((out / f / "manifest.json").read_text()) for f in folders}
    # the two eager-adapt policies share every first run; parallel-adapt reads parallel's samples
    assert manifests["eager-adapt-sequential-t1.2-top2"]["store"]["replayed"] >= len(QUESTIONS)
    assert manifests["parallel-adapt-sequential"]["store"]["replayed"] >= len(QUESTIONS)
    # eager-parallel: its first runs are eager-adapt's, and its extra samples parallel's (from sample 1)
    assert manifests["eager-parallel-sequential-t1.2-top2"]["store"]["stored"] == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    again = CliRunner().invoke(cli, args)  # every folder finished: nothing runs again
    assert again.exit_code == 0 and "frontier: " not in again.output
    bad = CliRunner().invoke(cli, args[:-2] + ["--branch-rules", "top3"])
    assert bad.exit_code == 2 and "top3" in bad.output


def test_the_choice_is_stored_as_the_presets_eval_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path))
    record = PresetEval("parallel-adapt", "sequential", 2.69, "top2", "gsm8k-train", "eager-mlx calibrate ...",
                        "2026-12-07", "Pass@k +0.01")
    path = write_preset_eval("smollm2-135m", record)
    assert get_preset("smollm2-135m").eval == record
    path.write_text("threshold = 2.5\n" + path.read_text())
    write_preset_eval("smollm2-135m", record)  # again: the theta line stays, the eval lines are not doubled
    assert get_preset("smollm2-135m").threshold == 2.5 and path.read_text().count("eval.method") == 1
