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


def test_grid_methods_and_first_run_sizes():
    names = [x.name for x in grid([2.0], ["top2"], ["sequential"], first_samples=[None, 3],
                                  methods=["parallel-adapt"])]
    assert names == ["parallel-adapt-sequential", "parallel-adapt-sequential-f3", "parallel-adapt-disagree",
                     "parallel-adapt-disagree-f3", "parallel-adapt-fewest"]  # fewest fills to M: one size


def test_the_frontier_tries_first_run_sizes_and_stores_the_chosen_one(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": str(i)}) + "\n" for i, q in enumerate(QUESTIONS)))
    patch_load(monkeypatch, dist_eval_entry.loaded_model("markov"))
    out = tmp_path / "grid"
    args = ["calibrate", "--objective", "frontier", "--data", str(data), "--template", "{question}", "--no-chat",
            "-M", "3", "--max-tokens", "8", "--methods", "parallel-adapt", "--out", str(out),
            "--store", str(tmp_path / "store")]
    bad = CliRunner().invoke(cli, args + ["--first-samples", "1,4"])
    assert bad.exit_code == 2 and "'--first-samples'" in bad.output and "1..M (3)" in bad.output
    assert not (out / "parallel").exists()  # refused before anything ran
    r = CliRunner().invoke(cli, args + ["--first-samples", "1,3"])
    assert r.exit_code == 0, r.output
    made = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert made == ["parallel", "parallel-adapt-disagree-f1", "parallel-adapt-disagree-f3", "parallel-adapt-fewest",
                    "parallel-adapt-sequential-f1", "parallel-adapt-sequential-f3"]
    assert "sequential/f3" in (out / "frontier.txt").read_text()  # the table names the size that ran
    f3 = json.loads((out / "parallel-adapt-sequential-f3" / "manifest.json").read_text())
    assert f3["settings"]["scheduler"]["first_samples"] == 3
    assert f3["store"]["replayed"] == len(QUESTIONS) and f3["store"].get("stored", 0) == 0  # = parallel's samples


def test_a_chosen_first_run_size_is_stored_and_none_is_left_out(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path))
    record = PresetEval("parallel-adapt", "sequential", 2.69, first_samples=3)
    path = write_preset_eval("smollm2-135m", record)
    assert get_preset("smollm2-135m").eval == record and "eval.first_samples = 3" in path.read_text()
    write_preset_eval("smollm2-135m", PresetEval("parallel-adapt", "sequential", 2.69))
    assert "first_samples" not in path.read_text() and get_preset("smollm2-135m").eval.first_samples is None
