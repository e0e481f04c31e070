"""`eager-mlx models` and `eager-mlx models pull`."""
import pytest
from click.testing import CliRunner

from eager_mlx.cli.models import models
from tiny_gguf import write_tiny_gguf


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path / "cache"))


def test_list_shows_presets_and_default():
    result = CliRunner().invoke(models, [])
    assert result.exit_code == 0
    first = result.output.splitlines()[0]
    assert first.startswith("smollm2-135m") and "(default)" in first and " - " in first
    assert "qwen2.5-coder-0.5b" in result.output and "qwen3-4b" in result.output


def test_pull_gguf_file_then_cached(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "t.gguf", "qwen3", "Q8_0", layers=1)
    runner = CliRunner()
    first = runner.invoke(models, ["pull", str(tiny.path)])
    assert first.exit_code == 0, first.output
    assert "ready in" in first.output and "convert" in first.output  # the progress bar
    second = runner.invoke(models, ["pull", str(tiny.path)])
    assert second.exit_code == 0 and "convert" not in second.output


def test_pull_unknown_is_one_line_error():
    result = CliRunner().invoke(models, ["pull", "nope"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: unknown model preset 'nope'; known presets: smollm2-135m")
    assert len(result.output.strip().splitlines()) == 1
