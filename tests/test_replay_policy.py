"""benchmarks/replay_policy.py: a parallel-adapt policy replayed over recorded samples equals the eval that ran it."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import replay_policy  # noqa: E402
from eager_mlx.evaluation.rundir import RESULTS, read_records  # noqa: E402
from eager_mlx.evaluation.scheduler import SchedulerConfig  # noqa: E402


def test_a_replay_equals_the_eval_and_names_a_sample_it_lacks(tmp_path, monkeypatch):
    from test_store import QUESTIONS, evaluate  # the Markov fake behind the CLI
    import dist_eval_entry
    from fakes import patch_load

    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": str(i)}) + "\n" for i, q in enumerate(QUESTIONS)))
    patch_load(monkeypatch, dist_eval_entry.loaded_model("markov"))
    runs = tmp_path / "runs"
    evaluate(data, runs / "parallel", "--method", "parallel")
    evaluate(data, runs / "rounds", "--method", "parallel-adapt", "--policy", "sequential")
    ran = {r["index"]: r for r in read_records(runs / "rounds" / RESULTS)}
    assert any(len(r["sequences"]) > 3 for r in ran.values())  # some prompts got more than parallel's M (3)
    config = SchedulerConfig(method="parallel-adapt", policy="sequential", max_sequences=3, threshold=0.0)
    samples = replay_policy.recorded_samples([runs / "parallel", runs / "rounds"])
    replayed, missing = replay_policy.replay(samples, config)
    assert missing is None and len(replayed) == len(ran)
    for r in replayed:
        mine = ran[r["index"]]
        assert [s["text"] for s in r["sequences"]] == [s["text"] for s in mine["sequences"]]
        assert r["metrics"]["generated_tokens"] == mine["metrics"]["generated_tokens"]
        assert (r["metrics"]["pass_at_k"], r["metrics"]["cons_at_k"]) == (mine["metrics"]["pass_at_k"],
                                                                          mine["metrics"]["cons_at_k"])
    # from parallel's samples alone, the first prompt given a fourth sample is named
    _, missing = replay_policy.replay(replay_policy.recorded_samples([runs / "parallel"]), config)
    assert missing is not None and missing.startswith("problem ") and missing.endswith(" sample 3")
