"""`eager-mlx solve` with --threshold auto, consensus, confidence vote and pruning (tiny random model)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import eager_mlx
from eager_mlx.cli.main import cli

from eager_mlx.models import LoadedModel
from fakes import patch_load, ByteTokenizer, tiny_model

Q = r"What is 12*12? Put the final answer in \boxed{}."


@pytest.fixture
def fake_load(monkeypatch):
    loaded = LoadedModel(tiny_model(), ByteTokenizer(), None, Path("."), "tiny")
    patch_load(monkeypatch, loaded)
    return loaded


def run(*args):
    res = CliRunner().invoke(cli, ["solve", Q, "--max-tokens", "16", "--temperature", "1", "--view", "quiet", *args])
    assert res.exit_code == 0, res.output
    return res.output


def test_threshold_auto_calibrates_on_the_question(fake_load):
    out = run("--threshold", "auto", "-M", "4")
    m = re.search(r"theta auto: ([0-9.]+) \(calibrated now on 1 prompt\(s\) x 4 samples, \d+ tokens, "
                  r"simulated mean #S [0-9.]+ for mean #S 1 at M=4\)", out)
    assert m, out
    used = float(re.search(r"branch points \d+, theta ([0-9.]+)\)", out).group(1))
    assert used == pytest.approx(float(m.group(1)), abs=1e-4)  # the run used the calibrated theta


def test_confidence_vote_consensus_and_pruning_options(fake_load):
    out = run("-M", "4", "--parallel", "--confidence-vote", "--consensus", "window", "--consensus-window", "2",
              "--prune-confidence", "50", "--prune-warmup", "1", "--confidence-window", "4")
    assert "confidence: " in out and "(confidence-weighted vote)" in out
    res = CliRunner().invoke(cli, ["solve", Q, "--prune-confidence", "100"])
    assert res.exit_code == 2 and "prune_confidence must be > 0, < 100, got 100" in res.output
