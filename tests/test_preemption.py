"""Preemption: when a due branch finds every row taken, the most recently admitted request gives its rows
up and runs again later; every request's tree is the one it has alone, and nothing is skipped."""
import numpy as np
import pytest

from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.results import RunFinished, RunPreempted

from fakes import ByteTokenizer, MarkovModel, tiny_model

TOK = ByteTokenizer()
CFG = EagerConfig(threshold=1.0, max_sequences=5, max_tokens=16, sampling=SamplingConfig(temperature=0.6))
PROMPTS = ["Tell me about q", "abc", "A longer prompt, about z", "x", "Another one", "mm", "qq q", "last"]


def tree(result):
    return [(s.index, s.parent, s.branch_step, s.finish_reason, s.token_ids) for s in result.sequences]


def run_all(model, max_rows, preempt, prompts=PROMPTS, config=CFG, reserve=False):
    engine = Engine(model, TOK, max_rows=max_rows, seed=3, preempt=preempt, reserve=reserve)
    for i, p in enumerate(prompts):
        engine.add(f"r{i}", TOK.encode(p), config)
    results, preempted = {}, []
    while engine.has_work:
        for ev in engine.step():
            if isinstance(ev, RunFinished):
                results[ev.request_id] = ev.result
            elif isinstance(ev, RunPreempted):
                preempted.append(ev)
    assert engine.num_rows == 0 and not engine.has_work
    return results, preempted


@pytest.mark.parametrize("max_rows", [5, 7, 12])
def test_every_tree_is_its_own_with_preemption(max_rows):
    model = MarkovModel.random(4)
    roomy, none = run_all(model, 64, preempt=True)
    assert not none
    tight, preempted = run_all(model, max_rows, preempt=True)
    assert preempted, "the batch never ran full: the test does not exercise preemption"
    assert sum(r.num_sequences for r in roomy.values()) > len(PROMPTS)  # there are branches to take
    for rid, result in roomy.items():
        assert tree(tight[rid]) == tree(result), rid
        assert tight[rid].info["branches_skipped_full"] == 0


def test_without_preemption_a_full_engine_skips_branches():
    model = MarkovModel.random(4)
    roomy, _ = run_all(model, 64, preempt=False)
    tight, _ = run_all(model, 5, preempt=False)
    assert sum(r.info["branches_skipped_full"] for r in tight.values()) > 0
    assert any(tree(tight[k]) != tree(roomy[k]) for k in roomy)  # why eval preempts


@pytest.mark.parametrize("max_rows", [5, 7])
def test_reserving_m_rows_keeps_every_tree_its_own_without_preemption(max_rows):
    """Engine(reserve=True) (the server): a request starts once its M rows are free, so nothing is skipped or
    preempted and every tree is the one it has alone."""
    model = MarkovModel.random(4)
    roomy, _ = run_all(model, 64, preempt=False)
    tight, preempted = run_all(model, max_rows, preempt=False, reserve=True)
    assert not preempted
    for rid, result in roomy.items():
        assert tree(tight[rid]) == tree(result), rid
        assert tight[rid].info["branches_skipped_full"] == 0
    engine = Engine(model, TOK, max_rows=max_rows, reserve=True)
    engine.add("a", [1, 2], CFG)
    assert engine.free_rows == max_rows - CFG.max_sequences  # held for it before it starts
    with pytest.raises(ValueError, match="max_sequences 9 is more than the engine's"):
        engine.add("b", [1, 2], EagerConfig(max_sequences=9))


def test_preemption_on_a_real_attention_model():
    # slots of preempted rows are reused by children: their KV must be the child's, not the old row's
    model = tiny_model("llama")
    cfg = EagerConfig(threshold=2.5, max_sequences=4, max_tokens=12, sampling=SamplingConfig(temperature=1.0))
    roomy, _ = run_all(model, 64, preempt=True, prompts=PROMPTS[:5], config=cfg)
    tight, preempted = run_all(model, 5, preempt=True, prompts=PROMPTS[:5], config=cfg)
    assert preempted
    for rid, result in roomy.items():
        assert tree(tight[rid]) == tree(result), rid
        np.testing.assert_allclose(np.concatenate([s.logprobs for s in tight[rid].sequences]),
                                   np.concatenate([s.logprobs for s in result.sequences]), atol=1e-4)


def test_eval_preempting_and_reserving_rows_give_the_same_records(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    import dist_eval_entry
    from eager_mlx.cli.main import cli
    from eager_mlx.evaluation.evaluate import load_run
    from fakes import patch_load
    from test_eval_reproducible import comparable

    patch_load(monkeypatch, dist_eval_entry.loaded_model("markov"))
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "1"}) + "\n" for q in PROMPTS))
    common = ["eval", "--data", str(data), "--template", "{question}", "--no-chat", "--method", "eager-adapt", "-M",
              "4", "--threshold", "1.0", "--max-tokens", "12", "--max-rows", "5"]
    outs = {}
    for mode in ("preempt", "reserve"):
        outs[mode] = tmp_path / mode
        r = CliRunner().invoke(cli, common + ["--out", str(outs[mode])] + (["--reserve-rows"] if mode == "reserve"
                                                                            else []))
        assert r.exit_code == 0, r.output
    (m1, r1), (m2, r2) = load_run(outs["preempt"]), load_run(outs["reserve"])
    assert comparable(r1) == comparable(r2)
    assert m1["occupancy"]["preempted_tokens"] > 0 and m2["occupancy"]["preempted_tokens"] == 0
    assert m1["occupancy"]["mean_occupancy"] > m2["occupancy"]["mean_occupancy"]
