"""Tiny random models of every architecture module in the installed mlx-lm, and what the engine
must do with each (the table behind tests/test_architectures.py and the README support table).

`architectures()` lists the modules of `mlx_lm.models` that define `Model` and `ModelArgs` (what
mlx-lm loads for a `model_type`), plus configuration variants ("llama:sliding"). A module added
by a new mlx-lm release is checked with the generic tiny config below: it either passes, or its
test fails and names it, until it gets overrides here or an entry in REFUSED or SKIPPED.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import pkgutil

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

__all__ = ["architectures", "build", "REFUSED", "SKIPPED", "needs_metal", "skip_reason", "status", "VOCAB"]

VOCAB = 300
_H = 64
_SW2 = ["sliding_attention", "full_attention"]  # one sliding layer (window 4), one global layer
_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
_YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "beta_fast": 32,
         "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}

# Every required ModelArgs field of the mlx-lm models, small; ModelArgs.from_dict ignores the rest.
BASE = dict(
    vocab_size=VOCAB, hidden_size=_H, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
    rms_norm_eps=1e-5, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
    head_dim=16, num_experts_per_tok=2, moe_intermediate_size=32, attention_bias=False, num_experts=4,
    tie_word_embeddings=False, norm_topk_prob=True, routed_scaling_factor=1.0, first_k_dense_replace=1,
    n_routed_experts=4, n_shared_experts=1, kv_lora_rank=16, sliding_window=4, qk_rope_head_dim=8,
    qk_nope_head_dim=8, v_head_dim=16, layer_norm_epsilon=1e-5, partial_rotary_factor=0.5,
    n_group=1, topk_group=1, use_bias=False, q_lora_rank=None, num_layers=2, mlp_bias=False,
    num_shared_experts=1, norm_eps=1e-5, mlp_only_layers=[], decoder_sparse_step=1, use_qk_norm=True,
    n_embd=_H, n_head=4, n_layer=2, layer_norm_eps=1e-5, logits_scaling=1.0, attention_multiplier=0.25,
    embedding_multiplier=1.0, residual_multiplier=1.0, moe_topk=2, conv_kernel=4, use_conv_bias=True,
    num_heads=4, num_kv_heads=2, rope_scaling=None, topk_method="noaux_tc", scoring_func="sigmoid",
    moe_layer_freq=1, n_positions=4096, num_local_experts=4, conv_bias=False, conv_L_cache=3,
    ffn_hidden_size=128, expert_ffn_hidden_size=32, state_size=8, time_step_rank=4, n_groups=1,
    dim_model_base=64, scale_depth=1.0, scale_emb=1.0, linear_num_key_heads=2, linear_num_value_heads=4,
    linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4,
    shared_expert_intermediate_size=64, n_ctx=4096, n_inner=128, hidden_act="silu",
)

_LINEAR_ATTN = dict(kda_layers=[1], full_attn_layers=[2], head_dim=16, num_heads=4, short_conv_kernel_size=4)
_MAMBA = dict(mamba_n_heads=4, mamba_d_head=16, mamba_proj_bias=False, mamba_d_state=8, mamba_d_conv=4,
              mamba_n_groups=1, mamba_conv_bias=True)

OVERRIDES: dict[str, dict] = {
    "afm7": dict(hidden_dim=_H, num_kv_reuse_layers=1, num_layers=3),
    "afmoe": dict(layer_types=_SW2, num_dense_layers=1, mup_enabled=False),
    "apertus": dict(post_norm=False, qk_norm=True),
    "baichuan_m1": dict(sliding_window_layers=[0], conv_window=2),
    "bailing_hybrid": dict(layer_group_size=2, group_norm_size=1, first_k_dense_replace=1),
    "bailing_moe_linear": dict(layer_group_size=2, group_norm_size=1, topk_group=1),
    "cohere2": dict(sliding_window_pattern=2),
    "dbrx": dict(d_model=_H, n_layers=2, n_heads=4, ffn_config=dict(ffn_hidden_size=128, moe_num_experts=4, moe_top_k=2),
                 attn_config=dict(kv_n_heads=2, clip_qkv=8, rope_theta=10000.0)),
    "deepseek_v2": dict(topk_method="greedy", rope_scaling=_YARN),
    "deepseek_v3": dict(q_lora_rank=16, rope_scaling=_YARN),
    "deepseek_v32": dict(q_lora_rank=16, index_head_dim=16, index_n_heads=2, index_topk=4),
    "deepseek_v41": dict(q_lora_rank=16),
    "ernie4_5_moe": dict(moe_num_experts=4, moe_k=2, moe_intermediate_size=32),
    "exaone4": dict(sliding_window_pattern="LG"),
    "exaone_moe": dict(layer_types=_SW2, is_moe_layer=[False, True]),
    "gear": dict(layer_types=_SW2),
    "gemma3_text": dict(sliding_window_pattern=2, query_pre_attn_scalar=16),
    "gemma3n": dict(num_kv_shared_layers=0, vocab_size_per_layer_input=VOCAB, rope_local_base_freq=10000.0,
                    final_logit_softcapping=30.0, layer_types=_SW2, activation_sparsity_pattern=[0.0, 0.0],
                    hidden_size_per_layer_input=8, altup_num_inputs=2, altup_coef_clip=120.0,
                    altup_correct_scale=True, altup_active_idx=0, laurel_rank=8),
    # Layers 2 and 3 reuse the KV of layers 0 and 1 (gemma-4 E2B/E4B do this).
    "gemma4": dict(num_hidden_layers=4, num_kv_shared_layers=2, sliding_window_pattern=2, global_head_dim=16,
                   hidden_size_per_layer_input=8, vocab_size_per_layer_input=VOCAB),
    "gemma4_text": dict(sliding_window_pattern=2, num_kv_shared_layers=0, global_head_dim=16,
                        hidden_size_per_layer_input=8, vocab_size_per_layer_input=VOCAB),
    "glm_moe_dsa": dict(index_head_dim=16, index_n_heads=2, index_topk=4, q_lora_rank=16, rope_parameters=dict(_ROPE)),
    "gpt_neox": dict(rotary_emb_base=10000, rotary_pct=0.5),
    "gptj": dict(rotary_dim=8),
    "granitemoehybrid": dict(layer_types=["mamba", "attention"], num_local_experts=None, **_MAMBA),
    "hunyuan": dict(num_shared_expert=1, use_mixed_mlp_moe=True, use_cla=False, cla_share_factor=2,
                    rope_scaling={"alpha": 1.0, "factor": 1.0, "type": "dynamic"}),
    "jamba": dict(attn_layer_offset=1, attn_layer_period=2, expert_layer_offset=1, expert_layer_period=2,
                  mamba_d_conv=4, mamba_d_state=8, mamba_expand=2),
    "kimi_k3": dict(hidden_act="situ", q_lora_rank=16, num_experts_per_token=2, linear_attn_config=_LINEAR_ATTN),
    "kimi_linear": dict(linear_attn_config=_LINEAR_ATTN, model_max_length=4096),
    "lfm2": dict(block_dim=_H, block_multiple_of=16, block_ffn_dim_multiplier=1.0, block_auto_adjust_ff_dim=False,
                 layer_types=["conv", "full_attention"]),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], use_expert_bias=True, num_dense_layers=1),
    "lille-130m": dict(block_size=4096, n_kv_heads=2),
    "llama4": dict(num_hidden_layers=4, num_experts_per_tok=1, attention_chunk_size=4, interleave_moe_layer_step=1,
                   intermediate_size_mlp=128),
    "llama4_text": dict(intermediate_size_mlp=128, no_rope_layers=[1, 0]),
    "longcat_flash": dict(attention_method="MLA", zero_expert_type="identity", zero_expert_num=1,
                          mla_scale_q_lora=True, mla_scale_kv_lora=True, q_lora_rank=16, num_layers=1),
    "longcat_flash_ngram": dict(zero_expert_num=1, mla_scale_q_lora=True, mla_scale_kv_lora=True, q_lora_rank=16,
                                num_layers=1),
    "mamba2": dict(time_step_limit=(0.0, float("inf")), num_heads=8),
    "mellum": dict(layer_types=_SW2, rope_parameters={"sliding_attention": dict(_ROPE), "full_attention": dict(_ROPE)}),
    "mimo_v2_flash": dict(hybrid_layer_pattern=[1, 0], moe_layer_freq=[0, 1], add_swa_attention_sink_bias=True,
                          add_full_attention_sink_bias=False, sliding_window_size=4, swa_rope_theta=10000.0,
                          swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=16, swa_v_head_dim=16,
                          layernorm_epsilon=1e-5),
    "minicpm3": dict(q_lora_rank=16, rope_scaling={"type": "longrope", "long_factor": [1.0] * 4,
                     "short_factor": [1.0] * 4, "original_max_position_embeddings": 4096}),
    "minimax": dict(shared_intermediate_size=64, rotary_dim=8),
    "minimax_m3_vl": dict(moe_layer_freq=[0, 1], dense_intermediate_size=128, shared_intermediate_size=32),
    "ministral3": dict(rope_parameters=dict(_ROPE, llama_4_scaling_beta=0.1, original_max_position_embeddings=4096),
                       layer_types=_SW2),
    "mistral4": dict(q_lora_rank=16, rope_parameters=dict(_ROPE, llama_4_scaling_beta=0.1,
                                                          original_max_position_embeddings=4096)),
    "muse_spark": dict(post_norm_eps=1e-5, rope_parameters=dict(_ROPE), layer_rope_theta=[10000.0, 0],
                       layer_types=_SW2, final_logit_softcapping=30.0, output_multiplier=1.0, moe_hidden_size=32,
                       mlp_layer_types=["sparse", "sparse"], num_shared_experts=0),
    "nemotron-nas": dict(block_configs=[dict(attention=dict(n_heads_in_group=2), ffn=dict(ffn_mult=1.0))] * 2),
    "nemotron_h": dict(mamba_num_heads=4, mamba_head_dim=16, mamba_proj_bias=False, ssm_state_size=8,
                       hybrid_override_pattern=["M", "*"], num_hidden_layers=None),
    "olmo3": dict(layer_types=_SW2),
    "olmo_hybrid": dict(linear_allow_neg_eigval=False, layer_types=["linear_attention", "full_attention"]),
    "openelm": dict(num_transformer_layers=2, model_dim=_H, ffn_dim_divisor=16, num_query_heads=[4, 4],
                    num_kv_heads=[2, 2], ffn_multipliers=[1.0, 1.0]),
    # Its logits mask token ids up to 100351.
    "phi3small": dict(vocab_size=100352, dense_attention_every_n_layers=2, ff_intermediate_size=128, gegelu_limit=20.0),
    "phixtral": dict(num_vocab=VOCAB, model_dim=_H, num_heads=4, num_layers=2, rotary_dim=8),
    "plamo": dict(n_shared_head=2),
    "qwen": dict(kv_channels=16, intermediate_size=256),
    "qwen3_5": dict(full_attention_interval=2),
    "qwen3_5_moe": dict(full_attention_interval=2),
    "qwen3_next": dict(full_attention_interval=2),
    "recurrent_gemma": dict(conv1d_width=4, logits_soft_cap=30.0, attention_window_size=4,
                            block_types=["recurrent", "attention"]),
    "rwkv7": dict(a_low_rank_dim=8, v_low_rank_dim=8, gate_low_rank_dim=8, decay_low_rank_dim=8),
    "spark2_5": dict(layer_types=_SW2, hidden_act="gelu",
                     rope_parameters={"sliding_attention": dict(_ROPE), "full_attention": dict(_ROPE)}),
    "stablelm": dict(use_qkv_bias=False),
    "step3p5": dict(num_attention_groups=2, layer_types=_SW2, moe_num_experts=4, moe_top_k=2, moe_intermediate_size=32,
                    share_expert_dim=32),
    # Configurations the module's defaults do not exercise.
    "llama:sliding": dict(layer_types=_SW2),
    "mistral3:sliding": dict(layer_types=_SW2),
}

# Wrappers whose text model comes in `text_config` (VLM checkpoints): module -> inner config's module.
TEXT_CONFIG = {"gemma3": "gemma3_text", "gemma3n": None, "gemma4": "gemma4_text", "kimi_k25": None, "kimi_k3": None,
               "kimi_vl": None, "lfm2-vl": "lfm2", "llama4": "llama4_text", "minimax_m3_vl": None,
               "mistral3": None, "mistral3:sliding": "ministral3", "muse_spark": None, "pixtral": "llama",
               "qwen3_5": None, "qwen3_vl_moe": "qwen3_moe"}

# What the engine must refuse at construction (a regex of the one-line reason), with why.
REFUSED = {
    "afm7": "keys_and_values",  # later layers reuse one layer's KV through a ConcatenateKVCache
    "deepseek_v32": "passes its own attention mask",  # sparse attention: an indexer picks top-k keys
    "deepseek_v41": "uses LayerCache",  # a cache class of its own
    "gemma2": "hand-written attention",  # soft-capped attention scores computed by hand
    "glm_moe_dsa": "passes its own attention mask",  # sparse attention (indexer), as deepseek_v32
    "gpt_bigcode": "decoding fails",  # uses the cache offset as a Python int
    "iquestloopcoder": "decoding fails",  # loops over its layers twice with a local window
    "llama4": "ChunkedKVCache",  # chunked local attention
    "mistral3:sliding": "asks for a sliding window of 4 but its cache from make_cache has no window",
    "phi3small": "hand-written attention",  # block-sparse layers
    "plamo": "changes the keys or values",  # tiles KV heads itself (head order differs from GQA)
    "plamo2": "hand-written attention",
    "plamo3": "asks for a sliding window of 5 but its cache from make_cache has a window of 4",
}

# Not checked on this machine, with the reason.
SKIPPED = {
    "olmo": "needs the ai2-olmo package (mlx-lm's module exits when it is missing)",
    "prism_hadamard_qwen35": "a 2-bit Hadamard weight-pack format: needs a real pack's manifest (its layers are qwen3_5's)",
}
_METAL = {"bitnet": "its BitLinear layers", "muse_spark": "its kernels"}


def needs_metal(name: str) -> str:
    """Why `name` cannot run without the Metal backend ('' when it can)."""
    if name in _METAL and not mx.metal.is_available():
        return f"{_METAL[name]} need the Metal backend"
    return ""


def skip_reason(name: str, import_error: str) -> str:
    """Why `name` is not checked on this machine ('' when it is)."""
    return SKIPPED.get(name) or import_error or needs_metal(name)


def status(name: str, import_error: str) -> str:
    """What the engine must do with `name`: 'supported', 'refused' or 'not checked here'."""
    if skip_reason(name, import_error):
        return "not checked here"
    return "refused" if name in REFUSED else "supported"


def _has_model(name: str) -> bool | str:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # olmo prints an install hint
            mod = importlib.import_module(f"mlx_lm.models.{name}")
    except BaseException as e:  # noqa: BLE001 - olmo exits the interpreter when ai2-olmo is missing
        return f"cannot import mlx_lm.models.{name} ({type(e).__name__}: {e})"
    return hasattr(mod, "Model") and hasattr(mod, "ModelArgs")


def architectures() -> list[tuple[str, str]]:
    """(name, reason it cannot be imported or '') for every model module, plus the variants."""
    import mlx_lm.models

    out = []
    for info in sorted(pkgutil.iter_modules(mlx_lm.models.__path__), key=lambda m: m.name):
        has = _has_model(info.name)
        if has:
            out.append((info.name, has if isinstance(has, str) else ""))
    out += [(name, "") for name in OVERRIDES if ":" in name]
    return sorted(out)


def config(name: str) -> dict:
    """The tiny config of architecture `name` ("module" or "module:variant")."""
    module = name.split(":")[0]
    over = {**OVERRIDES.get(module, {}), **OVERRIDES.get(name, {})}
    cfg = {**BASE, "model_type": module, **over}
    if name in TEXT_CONFIG or module in TEXT_CONFIG:
        inner = TEXT_CONFIG.get(name, TEXT_CONFIG.get(module))
        cfg["text_config"] = {**BASE, "model_type": inner or module, **OVERRIDES.get(inner or "", {}), **over}
    return cfg


def build(name: str, seed: int = 0):
    """A tiny random fp32 model. Parameters initialised to zero (biases, attention sinks, ...)
    get random values, so that every part of the model affects the output."""
    module = importlib.import_module(f"mlx_lm.models.{name.split(':')[0]}")
    args = module.ModelArgs.from_dict(config(name))
    mx.random.seed(seed)
    model = module.Model(args)
    zeros = [
        (k, (mx.random.normal(v.shape) * 0.5).astype(v.dtype))
        for k, v in tree_flatten(model.parameters())
        if mx.issubdtype(v.dtype, mx.floating) and not mx.any(v).item()
    ]
    model.update(tree_unflatten(zeros))
    mx.eval(model.parameters())
    return model
