"""GGUF import: tiny random llama / qwen2 / qwen3 files -> mlx-lm models with the right logits."""
import json

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.utils import _get_classes

from eager_mlx.models import convert_gguf, load_model
from tiny_gguf import write_tiny_gguf

_TOKENS = mx.array([[1, 100, 7, 42, 200, 3, 265, 2]])


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path / "cache"))


def _reference_logits(tiny, stored_dtype) -> np.ndarray:
    """Logits of mlx-lm's own model class on the float weights (HF layout, standard rope)."""
    model_class, args_class = _get_classes(tiny.config)
    model = model_class(args_class.from_dict(tiny.config))
    weights = {k: mx.array(v.astype(stored_dtype).astype(np.float32) if v.ndim == 2 else v)
               for k, v in tiny.weights.items()}
    model.load_weights(list(weights.items()))
    return np.array(model(_TOKENS))


@pytest.mark.parametrize("arch, qtype, tied", [
    ("llama", "F32", True),
    ("llama", "Q4_0", False),
    ("llama", "Q4_1", True),
    ("qwen2", "F16", True),
    ("qwen2", "Q8_0", False),
    ("qwen2", "Q4_K", True),
    ("qwen3", "Q6_K", True),
    ("qwen3", "Q8_0", False),
])
def test_logits_match_mlx_lm_reference(tmp_path, arch, qtype, tied):
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", arch, qtype, tied=tied)
    loaded = load_model(str(tiny.path))
    assert loaded.preset is None
    if mx.default_device().type == mx.DeviceType.cpu:
        assert loaded.model.model.layers[0].mlp.up_proj.weight.dtype == mx.float32
    got = np.array(loaded.model(_TOKENS))
    # the converter stores non-F32 weights as float16
    want = _reference_logits(tiny, np.float32 if qtype == "F32" else np.float16)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    config = json.loads((loaded.path / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied
    assert ("lm_head.weight" in config["eager_mlx"]["gguf_types"]) is not tied


def test_conversion_is_cached_and_reused(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", "qwen2", "Q8_0")
    first = load_model(str(tiny.path)).path
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert load_model(str(tiny.path)).path == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no temp leftovers


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    from eager_mlx.models import convert as convert_mod

    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", "llama", "F16")
    monkeypatch.setattr(convert_mod, "write_tokenizer", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    out = tmp_path / "out" / "m"
    with pytest.raises(OSError):
        convert_gguf(tiny.path, out)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_incomplete_cache_entry_is_rebuilt(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", "llama", "F16")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{half written")
    convert_gguf(tiny.path, out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"


@pytest.mark.parametrize("qtype, bits", [("Q8_0", 8), ("Q4_K", 4), ("F16", None)])
def test_gpu_path_requantizes_by_gguf_type(tmp_path, monkeypatch, qtype, bits):
    """On Metal/CUDA, weights quantized in the GGUF are quantized again (run here on CPU)."""
    import mlx.nn as nn

    monkeypatch.setattr("eager_mlx.models.loader.on_cpu", lambda: False)
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", "qwen2", qtype, layers=1)
    model = load_model(str(tiny.path)).model
    up = model.model.layers[0].mlp.up_proj
    if bits is None:
        assert isinstance(up, nn.Linear) and up.weight.dtype == mx.float16
    else:
        assert isinstance(up, nn.QuantizedLinear) and (up.bits, up.group_size) == (bits, 32)
    assert isinstance(model.model.layers[0].input_layernorm, nn.RMSNorm)
    got = np.array(model(_TOKENS).astype(mx.float32))
    want = _reference_logits(tiny, np.float16)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
