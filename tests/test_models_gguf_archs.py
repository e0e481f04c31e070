"""GGUF import of every architecture llama.cpp writes and the engine runs: a tiny random mlx-lm model of each is
written the way llama.cpp's converter writes it (its tensor names from gguf.TensorNameMap, its q/k permutation
for llama, the +1 on Gemma's norms, llama3 rope factors, stacked experts), read back by eager-mlx, and must give
the same logits; then the engine's forked log-probs must equal a plain forward pass (tests/fork_check.py)."""
import math

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.utils import _get_classes

from eager_mlx.models import load_model
from tiny_gguf import _header, _llama_permute, tiny_vocab

VOCAB = len(tiny_vocab()[0])
BASE = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512, vocab_size=VOCAB,
            tie_word_embeddings=False)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
CASES = {  # name: (GGUF architecture, mlx-lm config)
    "gemma3": ("gemma3", dict(BASE, model_type="gemma3_text", num_hidden_layers=6, num_key_value_heads=1,
                              head_dim=32, query_pre_attn_scalar=32, rope_theta=1e6, rope_local_base_freq=10000.0,
                              sliding_window=4, sliding_window_pattern=6, tie_word_embeddings=True)),
    "phi3": ("phi3", dict(BASE, model_type="phi3", num_key_value_heads=4)),
    "qwen2_moe": ("qwen2moe", dict(BASE, model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2,
                                   moe_intermediate_size=32, shared_expert_intermediate_size=64)),
    "qwen3_moe": ("qwen3moe", dict(BASE, model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2,
                                   moe_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[],
                                   norm_topk_prob=True)),
    "mixtral": ("llama", dict(BASE, model_type="mixtral", intermediate_size=32, num_local_experts=4,
                              num_experts_per_tok=2)),
    "llama3_rope": ("llama", dict(BASE, model_type="llama", rope_theta=500000.0, rope_scaling=LLAMA3)),
    "mistral": ("llama", dict(BASE, model_type="llama", num_key_value_heads=1, rope_theta=1e6)),
}
_MOE_NAMES = {"mixtral": {"switch_mlp.gate_proj": "experts.w1", "switch_mlp.up_proj": "experts.w3",
                          "switch_mlp.down_proj": "experts.w2"},
              "qwen": {"switch_mlp.": "experts."}}


def _model(config: dict):
    model_class, args_class = _get_classes(config)
    mx.random.seed(3)
    model = model_class(args_class.from_dict(config))
    # random weights of a realistic size, norms around 1 (the constructors' zeros and ones prove little)
    params = {k: (mx.random.normal(v.shape) * (0.3 if "norm" in k else 0.08) + (1.0 if "norm" in k and v.ndim == 1
              and config["model_type"] != "gemma3_text" else 0.0)) for k, v in tree_flatten(model.parameters())}
    model.load_weights(list(params.items()))
    mx.eval(model.parameters())
    return model


def _gguf_name(tmap, mlx_name: str, model_type: str) -> str:
    hf = mlx_name
    for old, new in _MOE_NAMES.get("mixtral" if model_type == "mixtral" else "qwen", {}).items():
        hf = hf.replace(old, new)
    name = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
    assert name is not None, f"llama.cpp's names have no {hf}"
    return name


def _write_header(w, arch: str, c: dict) -> None:
    _header(w, c, "default", tiny_vocab())
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    if "num_experts" in c or "num_local_experts" in c:
        w.add_expert_count(c.get("num_experts", c.get("num_local_experts")))
        w.add_expert_used_count(c["num_experts_per_tok"])
        w.add_expert_feed_forward_length(c.get("moe_intermediate_size", c["intermediate_size"]))
    if "shared_expert_intermediate_size" in c:
        w.add_expert_shared_feed_forward_length(c["shared_expert_intermediate_size"])
    if arch == "gemma3":
        w.add_sliding_window(c["sliding_window"])
    if arch == "phi3":
        w.add_rope_dimension_count(c["head_dim"])


def _llama3_factors(c: dict) -> np.ndarray:
    """llama.cpp's rope_freqs tensor (convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors)."""
    s, dim = c["rope_scaling"], c["head_dim"]
    old, low, high, factor = s["original_max_position_embeddings"], s["low_freq_factor"], s["high_freq_factor"], \
        s["factor"]
    out = []
    for freq in 1.0 / (c["rope_theta"] ** (np.arange(0, dim, 2) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_like_llama_cpp(path, arch: str, config: dict, model) -> None:
    import gguf
    from gguf.constants import MODEL_ARCH

    tmap = gguf.get_tensor_name_map(next(a for a in MODEL_ARCH if gguf.MODEL_ARCH_NAMES[a] == arch),
                                    config["num_hidden_layers"])
    w = gguf.GGUFWriter(path, arch)
    _write_header(w, arch, config)
    for name, value in tree_flatten(model.parameters()):
        data = np.array(value, dtype=np.float32)
        if config["model_type"] in ("llama", "mixtral") and ("q_proj" in name or "k_proj" in name):
            heads = config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
            data = _llama_permute(data, heads)
        if config["model_type"] == "gemma3_text" and name.endswith("norm.weight"):
            data = data + 1.0
        if name.endswith("shared_expert_gate.weight"):
            data = data.reshape(-1)
        w.add_tensor(_gguf_name(tmap, name, config["model_type"]), data)
    if "rope_scaling" in config:
        w.add_tensor("rope_freqs.weight", _llama3_factors(config))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


TOKENS = mx.array([[(i * 37 + 11) % VOCAB for i in range(300)]])  # long enough for windows and low rope frequencies


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("case", list(CASES))
def test_llama_cpp_files_load_with_the_same_logits(tmp_path, case):
    arch, config = CASES[case]
    model = _model(config)
    write_like_llama_cpp(tmp_path / f"{case}.gguf", arch, config, model)
    loaded = load_model(str(tmp_path / f"{case}.gguf"))
    want, got = np.array(model(TOKENS)), np.array(loaded.model(TOKENS))
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    if case == "llama3_rope":  # the scaling was read back: without it the logits differ
        plain = _model({k: v for k, v in config.items() if k != "rope_scaling"})
        assert np.abs(np.array(plain(TOKENS)) - want).max() > 1e-2


@pytest.mark.parametrize("case", list(CASES))
def test_forked_log_probs_equal_a_plain_forward_pass(tmp_path, case):
    from fork_check import fork_errors

    arch, config = CASES[case]
    write_like_llama_cpp(tmp_path / f"{case}.gguf", arch, config, _model(config))
    errors = fork_errors(load_model(str(tmp_path / f"{case}.gguf")).model)
    assert max(errors.values()) < 1e-4, errors


def test_phi3_context_stops_at_its_sliding_window(tmp_path):
    import gguf

    arch, config = CASES["phi3"]
    real = gguf.GGUFWriter.write_header_to_file

    def with_window(self, *a, **kw):
        self.add_sliding_window(100)
        return real(self, *a, **kw)

    gguf.GGUFWriter.write_header_to_file = with_window
    try:
        write_like_llama_cpp(tmp_path / "w.gguf", arch, config, _model(config))
    finally:
        gguf.GGUFWriter.write_header_to_file = real
    assert load_model(str(tmp_path / "w.gguf")).context_length == 100
