"""Every architecture module of the installed mlx-lm, as a tiny random model (tiny_archs.py):
either every branched sequence's log-probs equal a plain forward pass over the same tokens
(forks early and late, two requests, one joining late, chunked prefill), or the engine refuses
the model at construction with its one-line reason. No architecture may run and be wrong.
"""
import re
from pathlib import Path

import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models.base import scaled_dot_product_attention

import eager_mlx.engine.prefix as prefix_module
import eager_mlx.engine.attention as attention
from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.results import RunFinished, RunPreempted

from fork_check import PROMPTS, TOK, fork_errors, reference, shared_prefix_errors
from fork_check import Scheduled as _Scheduled
from tiny_archs import REFUSED, SKIPPED, architectures, build, skip_reason, status

ARCHS = architectures()


@pytest.mark.parametrize("name,import_error", ARCHS, ids=[name for name, _ in ARCHS])
def test_architecture_is_fork_correct_or_refused(name, import_error, monkeypatch):
    if skip_reason(name, import_error):
        pytest.skip(skip_reason(name, import_error))
    model = build(name)
    monkeypatch.setattr(prefix_module, "_PREFILL_CHUNK", 4)  # the prompts prefill in several chunks
    if name in REFUSED:
        with pytest.raises(ValueError, match="^unsupported model: .*" + re.escape(REFUSED[name])):
            Engine(model, TOK, max_rows=8)
        return
    _assert_fork_correct(name, model)


def _assert_fork_correct(name, model):
    for rid, error in fork_errors(model).items():
        assert error <= 1e-4, f"{name} request {rid}: log-prob error {error:.2e}"


@pytest.mark.parametrize("path", ["split", "joined", "copied", "solo"])
@pytest.mark.parametrize("name", ["llama", "llama:sliding", "gpt_oss", "gemma3", "deepseek_v3", "glm4_moe_lite",
                                  "gemma4", "qwen3_next", "falcon_h1"])
def test_both_attention_paths_are_fork_correct(name, path, monkeypatch):
    """attention.py attends over [prompt | suffix] as one softmax (short prompts, one request), as two
    merged parts, or (GPU) with mx.fast attention over a per-pass copy: each path alone, on windows,
    sinks, latent attention, shared KV and recurrent layers."""
    monkeypatch.setattr(prefix_module, "_PREFILL_CHUNK", 4)
    with attention.forced_path(path):  # copied: the GPU path (mx.fast attention), forced here
        _assert_fork_correct(name, build(name))


def test_the_table_covers_every_architecture_module():
    """REFUSED and SKIPPED name only architectures that exist, and every module is listed."""
    names = {name for name, _ in ARCHS}
    assert set(REFUSED) <= names and set(SKIPPED) <= names
    assert {"gpt_oss", "gemma3", "olmo3", "qwen3_next", "qwen3_5", "lfm2", "deepseek_v3", "glm4_moe_lite"} <= names - set(
        REFUSED
    )


def test_readme_support_table_lists_every_architecture():
    """The README's table (tests/support_table.py prints it) has one row per architecture, with its status."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("<!-- support-table -->")[1].split("<!-- /support-table -->")[0]
    rows = [line.split("|")[1:3] for line in table.strip().splitlines()[2:]]
    listed = {cells[0].strip(): cells[1].strip() for cells in rows}
    assert listed == {name: status(name, error) for name, error in ARCHS}, "rerun tests/support_table.py"


def test_sliding_layers_keep_only_their_window():
    """Layer 0 of llama:sliding has a window of 4: it keeps 3 prompt positions and a ring of 4
    columns per row however long the rows get; the global layer keeps everything. Rows stay
    exact across many turns of the ring and a fork made long after the window moved on."""
    model = build("llama:sliding")
    engine = Engine(model, TOK, max_rows=4, seed=2)
    config = EagerConfig(max_sequences=2, max_tokens=40, sampling=SamplingConfig(temperature=1.0))
    engine.add("a", PROMPTS["a"], config)
    engine._requests["a"].policy = _Scheduled(config, {(0, 30)})
    sliding, full = engine._kv.attention
    results, widths, full_width = {}, set(), 0
    while engine.has_work:
        for ev in engine.step():
            if isinstance(ev, RunFinished):
                results[ev.request_id] = ev.result
        if "a" in engine._kv.prompts:
            assert engine._kv.prompts["a"][0][0].shape[2] == 3 and engine._kv.prompts["a"][1][0].shape[2] == 11
            widths.add(sliding.keys.shape[2])
            if full.keys is not None:  # the row ran alone ([prompt | suffix] buffers) until its fork
                full_width = full.keys.shape[2]
    assert widths == {4} and full_width >= 40
    tokens = [s.token_ids for s in results["a"].sequences]
    assert len(tokens) == 2
    for seq, ref in zip(results["a"].sequences, reference(model, PROMPTS["a"], tokens)):
        np.testing.assert_allclose(seq.logprobs, ref, atol=1e-4)


@pytest.mark.parametrize("name", ["qwen3_next", "gpt_oss", "deepseek_v3"])
def test_preempted_rows_hand_their_slots_to_children(name):
    """With 4 rows, request a's third fork preempts request b: the child takes b's slot (its
    recurrent state and window ring are copied there) and b runs again later; both stay exact."""
    model = build(name)
    engine = Engine(model, TOK, max_rows=4, seed=1, preempt=True)
    results, preempted = {}, []
    for rid, threshold in (("a", 0.0), ("b", 100.0)):  # b never branches
        config = EagerConfig(threshold=threshold, max_sequences=4, max_tokens=8,
                             sampling=SamplingConfig(temperature=1.0))
        engine.add(rid, PROMPTS[rid], config)
    engine._requests["a"].policy = _Scheduled(engine._requests["a"].config, {(0, 0), (0, 1), (1, 3)})
    while engine.has_work:
        for ev in engine.step():
            if isinstance(ev, RunFinished):
                results[ev.request_id] = ev.result
            preempted += [ev.request_id] if isinstance(ev, RunPreempted) else []
    assert preempted == ["b"]
    assert [len(results[r].sequences) for r in "ab"] == [4, 1]
    for rid, result in results.items():
        tokens = [s.token_ids for s in result.sequences]
        for seq, ref in zip(result.sequences, reference(model, PROMPTS[rid], tokens)):
            np.testing.assert_allclose(seq.logprobs, ref, atol=1e-4, err_msg=f"{name} request {rid}")


class _SideAttention(nn.Module):
    """One layer that writes its cache but attends to keys it made itself (cache=None)."""

    def __init__(self):
        super().__init__()
        self.layers = [None]  # make_prompt_cache builds one KVCache
        self.embed = nn.Embedding(300, 8)

    def __call__(self, inputs, cache=None):
        h = self.embed(inputs)[:, None]  # (B, 1 head, L, 8)
        if cache is not None:
            cache[0].update_and_fetch(h, h)
        k = h * 2  # not what the cache returned
        out = scaled_dot_product_attention(h, k, k, cache=None, scale=1.0, mask=None)
        return out[:, 0] @ self.embed.weight.T


def test_attention_on_keys_no_cache_returned_is_refused():
    with pytest.raises(ValueError, match="^unsupported model: a layer attends to keys that did not come from its cache$"):
        Engine(_SideAttention(), TOK)


def test_sinks_models_are_refused_on_cuda(monkeypatch):
    """On MLX's CUDA backend a model with attention sinks is refused (measured wrong there, see
    BENCHMARKS.md); models without sinks are not affected."""
    import eager_mlx.engine.probe as probe

    monkeypatch.setattr(probe, "_on_cuda", lambda: True)
    with pytest.raises(ValueError, match="^unsupported model: attention sinks on the CUDA backend"):
        Engine(build("gpt_oss"), TOK, max_rows=8)
    Engine(build("llama:sliding"), TOK, max_rows=8)


@pytest.mark.parametrize("name", ["llama", "llama:sliding", "gpt_oss", "gemma3", "deepseek_v3", "glm4_moe_lite",
                                  "gemma4", "qwen3_next", "falcon_h1", "lfm2"])
def test_shared_prefixes_are_exact_for_every_cache_kind(name, monkeypatch):
    """Prompts sharing a header of two segments (prefix.py): the second prefills only its own rest, a prompt
    seen before nothing; results are bitwise those of an engine without the prefix cache, and equal a plain
    forward pass: global, sliding-window (longer than the window), sinks, latent, shared KV, recurrent layers."""
    monkeypatch.setattr(prefix_module, "_PREFILL_CHUNK", 4)  # segments prefill in several chunks
    for rid, error in shared_prefix_errors(build(name)).items():
        assert error <= 1e-4, f"{name} request {rid}: log-prob error {error:.2e}"


@pytest.mark.parametrize("name", ["llama", "gemma3", "gpt_oss", "gemma4", "qwen3_next", "falcon_h1"])
def test_a_row_alone_runs_in_one_buffer_and_hands_over_at_forks(name):
    """B = 1: a request's only row keeps [prompt | suffix] in one buffer per global layer (one fused attention
    call, as mlx-lm); a fork moves its suffix into the row buffers, and when the child is stopped the parent
    runs alone again from [prompt | its suffix so far]. Every sequence stays equal to a plain forward pass."""
    model = build(name)
    engine = Engine(model, TOK, max_rows=4, seed=3)
    config = EagerConfig(max_sequences=3, max_tokens=16, sampling=SamplingConfig(temperature=1.0))
    engine.add("a", PROMPTS["a"], config)
    engine._requests["a"].policy = _Scheduled(config, {(0, 3), (0, 10)})
    results, alone, step = {}, [], 0
    while engine.has_work:
        if step == 7:
            engine.finish_sequence("a", 1)  # the first child stops: the parent is alone again
        for ev in engine.step():
            if isinstance(ev, RunFinished):
                results[ev.request_id] = ev.result
        alone.append(engine._kv.solo is not None)
        step += 1
    assert alone[:3] == [True] * 3 and not alone[4] and alone[8] and not alone[11]  # alone, forked, alone, forked
    tokens = [s.token_ids for s in results["a"].sequences]
    assert len(tokens) == 3
    for seq, ref in zip(results["a"].sequences, reference(model, PROMPTS["a"], tokens)):
        np.testing.assert_allclose(seq.logprobs[: len(ref)], ref, atol=1e-4, err_msg=name)
