"""The numeric load check (engine/numeric_check.py): forked log-probs against a plain forward pass, every
attention path; a model past the tolerance is refused at load with the measured error."""
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

import eager_mlx.engine.attention as attention
from eager_mlx.cli.main import cli
from eager_mlx.engine.numeric_check import TOLERANCE, NumericCheck, check_numerics, not_run
from eager_mlx.models import LoadedModel, ModelError, load_model
from fakes import ByteTokenizer, patch_load, tiny_model
from tiny_archs import build
from tiny_gguf import write_tiny_gguf

STEPS = 4


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def broken_split(monkeypatch):
    """The split attention path off by a constant in its output (as a faulty backend kernel would be)."""
    real = attention._split
    monkeypatch.setattr(attention, "_split", lambda *a: real(*a) + 0.5)


@pytest.mark.parametrize("name", ["llama", "gpt_oss", "qwen3_next"])
def test_exact_engine_passes_on_every_path(name):
    check = check_numerics(build(name), ByteTokenizer(), steps=STEPS)
    assert set(check.errors) == {"default", *attention.FORCED_PATHS}
    assert check.tokens == len(check.errors) * 2 * STEPS  # two rows (one fork) per path, none ended by EOS
    assert check.max_error <= 1e-4 and check.passed
    assert "numeric fork check on" in check.describe() and "tolerance 0.1" in check.describe()


def test_a_wrong_attention_path_fails_with_its_error(broken_split):
    check = check_numerics(build("llama"), ByteTokenizer(), steps=STEPS)
    assert check.errors["split"] > TOLERANCE and not check.passed
    assert "the split attention path" in check.describe()


def test_nan_fails():
    check = NumericCheck(device="gpu", errors={"split": math.nan, "joined": 0.0})
    assert check.ran and not check.passed


def test_load_refuses_a_model_past_tolerance(tmp_path, broken_split):
    tiny = write_tiny_gguf(tmp_path / "t.gguf", "llama", "F32", layers=1)
    with pytest.raises(ModelError, match=r"cannot run correctly on this backend: numeric fork check .* nats \(the "
                                         r"split attention path"):
        load_model(str(tiny.path), numeric_check=True)


def test_load_runs_the_check_on_request_and_not_on_the_cpu_by_default(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "t.gguf", "llama", "F32", layers=1)
    checked = load_model(str(tiny.path), numeric_check=True).load_check
    assert checked.ran and checked.passed and checked.max_error <= 1e-4
    skipped = load_model(str(tiny.path)).load_check
    assert not skipped.ran and skipped.passed and "test suite" in skipped.describe()


def test_solve_json_and_models_say_which_check_ran(monkeypatch):
    loaded = LoadedModel(tiny_model(), ByteTokenizer(), None, Path("."), "tiny", not_run("the reason"))
    patch_load(monkeypatch, loaded)
    res = CliRunner().invoke(cli, ["solve", "1+1?", "--json", "--max-tokens", "4"])
    assert res.exit_code == 0, res.output
    check = json.loads(res.output)["load_check"]
    assert check["ran"] is False and check["note"] == "the reason" and "not run" in check["summary"]
    listed = CliRunner().invoke(cli, ["models"])
    assert listed.exit_code == 0 and "numeric fork check at load: not run on Device(cpu" in listed.output


def test_forced_path_restores_the_settings_and_refuses_an_unknown_path():
    before = {k: getattr(attention, k) for k in attention.FORCED_PATHS["split"]}
    with attention.forced_path("joined"):
        assert attention._SHORT_SCORES == 1 << 40 and attention._SOLO is False
    assert {k: getattr(attention, k) for k in before} == before
    with pytest.raises(ValueError, match="unknown attention path 'nope'"):
        with attention.forced_path("nope"):
            pass
