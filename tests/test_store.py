"""The run store: a replayed evaluation equals a generated one (timing aside), parallel samples are shared by
parallel and parallel-adapt, any changed setting misses, a corrupt entry is a miss."""
import dataclasses
import gzip
import json

import numpy as np
import pytest
from click.testing import CliRunner

import dist_eval_entry
from eager_mlx.cli.main import cli
from eager_mlx.config import EagerConfig
from eager_mlx.evaluation.evaluate import MANIFEST, load_run
from eager_mlx.evaluation.store import RunStore, model_digest
from eager_mlx.results import RunResult, SequenceResult
from fakes import patch_load
from test_eval_reproducible import QUESTIONS, comparable

ARGS = ["--template", "{question}", "--no-chat", "-M", "3", "--threshold", "1.2", "--temperature", "0.6",
        "--max-tokens", "10", "--seed", "7"]


@pytest.fixture
def data(tmp_path, monkeypatch):
    p = tmp_path / "toy.jsonl"
    p.write_text("".join(json.dumps({"question": q, "answer": str(i)}) + "\n" for i, q in enumerate(QUESTIONS)))
    patch_load(monkeypatch, dist_eval_entry.loaded_model("markov"))
    return p


def evaluate(data, out, *extra, store=None):
    where = ["--store", str(store)] if store else ["--no-store"]
    r = CliRunner().invoke(cli, ["eval", "--data", str(data), "--out", str(out), *ARGS, *where, *extra])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / MANIFEST).read_text())
    replayed = (manifest["store"] or {}).get("replayed", 0)
    # a user timing the run is told that part of it was read, not generated
    assert (f"note: {replayed} runs were read from the run store" in r.output) == (replayed > 0), r.output
    return comparable(load_run(out)[1]), manifest["store"]


@pytest.mark.parametrize("method", [["--method", "eager-adapt", "--policy", "sequential"],
                                    ["--method", "parallel-adapt"], ["--method", "eager"]])
def test_a_replayed_evaluation_equals_a_generated_one(tmp_path, data, method):
    store = tmp_path / "store"
    plain, none = evaluate(data, tmp_path / "plain", *method)
    first, made = evaluate(data, tmp_path / "first", *method, store=store)
    again, read = evaluate(data, tmp_path / "again", *method, "--max-rows", "4", store=store)
    assert none is None and plain == first == again
    runs = sum(len(r["runs"]) for r in first)
    assert made["replayed"] == 0 and made["stored"] == runs > len(QUESTIONS)
    assert read["replayed"] == runs and read["stored"] == 0, (read, made)


def test_parallel_adapt_reads_the_samples_parallel_made(tmp_path, data):
    store = tmp_path / "store"
    par, _ = evaluate(data, tmp_path / "par", "--method", "parallel", store=store)
    rounds, use = evaluate(data, tmp_path / "rounds", "--method", "parallel-adapt", "--policy", "disagree",
                           "--budget", "0.5", store=store)  # 1.5 samples a prompt: within parallel's 3
    assert use["stored"] == 0 and use["replayed"] == sum(len(r["runs"]) for r in rounds)
    for p, r in zip(par, rounds):  # the same samples, in the same order
        n = len(r["sequences"])
        assert [s["text"] for s in r["sequences"]] == [s["text"] for s in p["sequences"][:n]]


def test_a_first_run_floor_takes_parallels_samples_and_bad_sizes_are_refused(tmp_path, data):
    store = tmp_path / "store"
    par, _ = evaluate(data, tmp_path / "par", "--method", "parallel", store=store)
    floor, use = evaluate(data, tmp_path / "floor", "--method", "parallel-adapt", "--first-samples", "3",
                          store=store)  # the floor is M (3): parallel sampling, every sample read back
    assert use["stored"] == 0 and floor == par
    for bad, says in ((["--method", "parallel-adapt", "--first-samples", "4"], "first_samples must be in 1..M (3)"),
                      (["--method", "eager-adapt", "--first-samples", "2"], "applies to parallel-adapt only")):
        r = CliRunner().invoke(cli, ["eval", "--data", str(data), "--out", str(tmp_path / "bad"), *ARGS, *bad])
        assert r.exit_code == 2 and says in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "bad").exists()  # refused before the run folder was made


@pytest.mark.parametrize("change", [["--threshold", "1.3"], ["--temperature", "0.7"], ["--seed", "8"],
                                    ["--max-tokens", "9"], ["--branch-rule", "keep"], ["-M", "4"]])
def test_any_changed_setting_misses(tmp_path, data, change):
    store = tmp_path / "store"
    evaluate(data, tmp_path / "a", "--method", "eager-init", store=store)
    _, use = evaluate(data, tmp_path / "b", "--method", "eager-init", *change, store=store)
    assert use["replayed"] == 0


def result(text="x", entropies=(1.0, 2.0)):
    seq = SequenceResult(0, [5, 6], text, "eos", None, None, list(entropies), [-0.1, -0.2], None)
    return RunResult("p0-r0", [seq], 3, len(entropies), None, 2.0, 0.5, 0, {"parallel": False})


def test_the_key_holds_every_setting_and_a_corrupt_entry_is_a_miss(tmp_path):
    store = RunStore(tmp_path, model="m", backend="cpu")
    key = lambda **kw: store.key(**dict(dict(prompt=[1, 2], seed=1, key_id="p0-r0", config=EagerConfig(),  # noqa
                                             context=100), **kw))
    store.put(key(), result())
    assert store.get(key()) == result()
    for other in (key(prompt=[1, 3]), key(seed=2), key(key_id="p0-r1"), key(context=99),
                  key(config=EagerConfig(threshold=2.5)), key(config=EagerConfig(entropy_top_k=10)),
                  RunStore(tmp_path, model="m2", backend="cpu").key(prompt=[1, 2], seed=1, key_id="p0-r0",
                                                                    config=EagerConfig(), context=100)):
        assert store.get(other) is None
    path = next(tmp_path.glob("*/*.json.gz"))
    path.write_bytes(path.read_bytes()[:-9])  # torn
    assert store.get(key()) is None
    path.write_bytes(gzip.compress(json.dumps({"key": {"format": 0}, "result": {}}).encode()))  # another key's
    assert store.get(key()) is None
    # a parallel sample's key ignores what a sample does not depend on (M, theta), not what it does
    sample = lambda cfg, k=0: store.key(prompt=[1], seed=1, key_id="p0-r0", config=cfg, context=9, sequence=k)  # noqa
    base = EagerConfig(parallel=True, max_sequences=4)
    assert sample(base) == sample(dataclasses.replace(base, max_sequences=2, threshold=9.0))
    assert sample(base) != sample(base, 1) != sample(dataclasses.replace(base, max_tokens=7))


def test_model_digest_follows_the_files(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.safetensors").write_bytes(b"abc")
    cache = tmp_path / "digests.json"
    first = model_digest(tmp_path / "m", cache)
    assert model_digest(tmp_path / "m", cache) == first and cache.exists()
    (tmp_path / "m" / "w.safetensors").write_bytes(b"abd")
    second = model_digest(tmp_path / "m", cache)
    assert second != first


def test_model_digest_leaves_out_the_digest_list(tmp_path):
    from eager_mlx.evaluation import store
    from eager_mlx.models import digests

    assert store.DIGESTS == digests.DIGESTS
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.safetensors").write_bytes(b"abc")
    first = model_digest(tmp_path / "m")
    digests.record_digests(tmp_path / "m")  # what conversion writes: a folder converted before it keeps its runs
    assert (tmp_path / "m" / digests.DIGESTS).exists() and model_digest(tmp_path / "m") == first


def test_a_folder_from_before_the_policy_settings_resumes(tmp_path, data):
    out = tmp_path / "old"
    evaluate(data, out, "--method", "eager-adapt", "--limit", "3")
    manifest = json.loads((out / MANIFEST).read_text())
    for group, key in (("scheduler", "policy"), ("scheduler", "budget"), ("scheduler", "wave_runs"),
                       ("scheduler", "round_size"), ("scheduler", "first_samples"), ("eager", "branch_rule")):
        del manifest["settings"][group][key]
    (out / MANIFEST).write_text(json.dumps(manifest))
    evaluate(data, out, "--method", "eager-adapt", "--limit", "3", "--resume")
    r = CliRunner().invoke(cli, ["eval", "--data", str(data), "--out", str(out), *ARGS, "--method", "eager-adapt",
                                 "--limit", "3", "--policy", "rank", "--resume", "--no-store"])
    assert r.exit_code == 1 and "settings.scheduler.policy" in r.output


def test_format_2_samples_drawn_the_same_by_format_3_are_kept(tmp_path, data):
    """A store written before format 3 (simulated: this store's entries moved under format-2 keys) is not lost:
    each parallel sample none of whose draws had the largest hash is read again, and kept under its new key."""
    from eager_mlx.evaluation.store import same_in_format_3

    store = tmp_path / "store"
    plain, _ = evaluate(data, tmp_path / "plain", "--method", "parallel")
    evaluate(data, tmp_path / "first", "--method", "parallel", store=store)
    kept = 0
    for path in list(store.glob("*/*.json.gz")):
        entry = json.loads(gzip.decompress(path.read_bytes()))
        old = dict(entry, key=dict(entry["key"], format=2))
        kept += same_in_format_3(old, entry["key"])
        path.unlink()
        RunStore(store, model="-")._write(old["key"], {k: v for k, v in old.items() if k != "key"})
    again, read = evaluate(data, tmp_path / "again", "--method", "parallel", store=store)
    assert again == plain and read["migrated"] == kept > 0
    assert len(list(store.glob("*/*.json.gz"))) == 2 * 3 * len(QUESTIONS)  # the old entries and the new ones


def test_a_format_2_sample_with_infinite_noise_is_drawn_again():
    from eager_mlx.engine.sampling import infinite_before_format_3, request_key, sequence_key
    from eager_mlx.evaluation.store import same_in_format_3

    key = {"format": 3, "seed": 7, "key_id": "p0-r0", "sequence": 1,
           "settings": {"sampling": {"temperature": 0.6, "top_p": 1.0, "top_k": 0, "min_p": 0.0}}}
    row = sequence_key(request_key(7, "p0-r0"), 1)
    n = 300
    tokens = [5] * n
    hit = [(j, t) for j in range(n) for t in np.flatnonzero(infinite_before_format_3([row], [j], [range(1 << 18)])[0])]
    step, token = hit[0]  # the test needs one: about 1 step in 64 has a token id below 2**18 with the largest hash
    entry = lambda ids, reason: {"sequence": {"token_ids": ids, "finish_reason": reason}}  # noqa: E731
    assert not infinite_before_format_3([row] * n, range(n), [[t] for t in tokens]).any()
    assert same_in_format_3(entry(tokens, "length"), key)
    assert not same_in_format_3(entry(tokens[:step] + [int(token)] + tokens[step + 1:], "length"), key)
    assert not same_in_format_3(entry(tokens[:step], "eos"), key)  # its EOS step: that token may have been drawn
    assert same_in_format_3(entry(tokens[:step], "length"), key)
    greedy = dict(key, settings={"sampling": dict(key["settings"]["sampling"], temperature=0.0)})
    assert same_in_format_3(entry(tokens[:step] + [int(token)], "length"), greedy)  # no noise at all
    assert not same_in_format_3({"result": {}}, dict(key, sequence=None))  # branching runs: drawn again


def test_the_store_derives_each_sample_row_key_as_the_engine_does():
    """Every token of parallel rows added with a key id and a first sequence is the Gumbel-max over the
    whole vocabulary with the noise of (sequence_key(request_key(seed, key id), first + k), step): the
    keys same_in_format_3 checks are the ones the engine drew with."""
    import mlx.core as mx

    from eager_mlx import Engine, SamplingConfig
    from eager_mlx.engine.sampling import RowSampling, request_key, row_seeds, sequence_key, token_stats
    from fakes import ByteTokenizer, tiny_model

    model, prompt = tiny_model(), list(b"Keys")
    config = SamplingConfig(temperature=1.0)
    engine = Engine(model, ByteTokenizer(), max_rows=4, seed=7)
    engine.eos = set()
    engine.add("p3-r2", prompt, EagerConfig(parallel=True, max_sequences=2, max_tokens=12, sampling=config),
               key_id="p3-r0", first_sequence=2)
    result = None
    while engine.has_work:
        result = next((e.result for e in engine.step() if hasattr(e, "result")), result)
    for k, seq in enumerate(result.sequences):
        row = sequence_key(request_key(7, "p3-r0"), 2 + k)
        logits = model(mx.array(prompt + seq.token_ids)[None])[0].astype(mx.float32)
        for t, token in enumerate(seq.token_ids):
            drawn = token_stats(logits[len(prompt) - 1 + t][None], RowSampling.from_configs([config]),
                                row_seeds([row], [t]), 20)
            assert int(np.array(drawn)[0, 0]) == token
