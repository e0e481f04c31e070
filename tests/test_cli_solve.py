"""`eager-mlx solve` through click's CliRunner, on a tiny random model."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import eager_mlx
from eager_mlx.cli.main import cli

from eager_mlx.models import LoadedModel
from fakes import patch_load, ByteTokenizer, tiny_model


@pytest.fixture
def fake_load(monkeypatch):
    loaded = LoadedModel(tiny_model(), ByteTokenizer(), None, Path("."), "tiny")
    patch_load(monkeypatch, loaded)
    return loaded


Q = r"What is 12*12? Put the final answer in \boxed{}."


def solve_json(*args):
    res = CliRunner().invoke(cli, ["solve", Q, "--json", "--max-tokens", "12", "--temperature", "1", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_low_threshold_branches_high_threshold_does_not(fake_load):
    many = solve_json("--threshold", "2.5", "-M", "6")
    assert len(many["sequences"]) > 1
    assert many["generated_tokens"] > 12
    one = solve_json("--threshold", "100")
    assert len(one["sequences"]) == 1
    seq = one["sequences"][0]
    assert one["generated_tokens"] == len(seq["token_ids"]) + (seq["finish_reason"] == "eos")
    assert one["config"]["threshold"] == 100


def test_parallel_flag_gives_m_sequences(fake_load):
    out = solve_json("--parallel", "-M", "3")
    assert len(out["sequences"]) == 3 and out["config"]["parallel"] is True


def test_text_view_prints_summary(fake_load):
    res = CliRunner().invoke(cli, ["solve", Q, "--max-tokens", "8", "--threshold", "100"])
    assert res.exit_code == 0, res.output
    assert "sequences:  1" in res.output and "tokens/s" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threshold", "-1"], "Invalid value for '--threshold' / '-t': threshold must be >= 0, got -1.0"),
        (["-M", "0"], "Invalid value for '--max-sequences' / '-M': max_sequences must be >= 1, <= 1024, got 0"),
        (["--entropy-k", "1"], "Invalid value for '--entropy-top-k' / '--entropy-k': entropy_top_k must be >= 2, "
                               "<= 1048576, got 1"),
        (["--top-p", "0"], "Invalid value for '--top-p': top_p must be > 0, <= 1, got 0.0"),
        (["--temperature", "nan"], "Invalid value for '--temperature' / '--temp': temperature must be a finite "
                                   "number, got nan"),
    ],
)
def test_bad_values_are_one_line_errors(fake_load, args, message):
    res = CliRunner().invoke(cli, ["solve", Q, *args])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == f"Error: {message}"


def test_unknown_model_is_one_line_error():
    res = CliRunner().invoke(cli, ["solve", Q, "--model", "no-such-model-anywhere"])
    assert res.exit_code == 1
    assert res.output.startswith("Error: ") and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_max_kv_memory_option(fake_load):
    capped = solve_json("--threshold", "2.5", "-M", "6", "--max-kv-memory", "1KB")
    assert len(capped["sequences"]) == 1 and capped["info"]["branches_skipped_memory"] > 0
    res = CliRunner().invoke(cli, ["solve", Q, "--max-kv-memory", "lots"])
    assert res.exit_code == 2 and "'lots' is not a size such as 512MB or 2GB" in res.output


def test_parse_size():
    from eager_mlx.cli.options import parse_size

    assert parse_size("512MB") == 512 * 2**20
    assert parse_size("1.5g") == int(1.5 * 2**30)
    assert parse_size("2048") == 2048
    assert parse_size(None) is None


def test_an_answer_without_boxed_is_read_from_the_text_and_marked():
    from types import SimpleNamespace as S

    from eager_mlx.cli.solve import _unboxed

    assert _unboxed([S(text="3 + 5 = 8"), S(text="so 3 + 5 = 8."), S(text="7")]) == \
        "8  (no \\boxed{} answer; read from the text: last number)"
    assert _unboxed([S(text="The answer is 12."), S(text="maybe 11")]).startswith("12  (no \\boxed{} answer; "
                                                                                   "read from the text: answer is)")
    assert _unboxed([S(text="no idea"), S(text="")]) == "(no \\boxed{} answer)"
