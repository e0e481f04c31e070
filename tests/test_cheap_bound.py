"""benchmarks/cheap_bound.py: the token shares an allocation needs, on hand-made samples and on a real run folder."""
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import cheap_bound  # noqa: E402
from eager_mlx.evaluation.rundir import load_run  # noqa: E402


def sample(tokens, correct, flag=0.0):
    return {"tokens": tokens, "correct": correct, "answer": "1" if correct else "2", "finish_reason": "eos",
            "confidence": -1.0, "flag": flag}


def test_the_label_oracle_stops_at_the_first_right_sample():
    # orders (wrong 10, right 20): 30 tokens; (right 20, ...): 20
    assert cheap_bound.label_oracle_tokens([sample(10, False), sample(20, True)]) == 25
    assert cheap_bound.label_oracle_tokens([sample(10, False), sample(30, False)]) == 40
    # against every order of four samples, two of them right
    import itertools
    four = [sample(10, False), sample(20, True), sample(40, False), sample(80, True)]
    orders = list(itertools.permutations(four))
    by_order = sum(sum(s["tokens"] for s in o[:next(k for k, s in enumerate(o) if s["correct"]) + 1])
                   for o in orders) / len(orders)
    assert cheap_bound.label_oracle_tokens(four) == pytest.approx(by_order)


def test_auroc_counts_pairs_and_half_ties():
    assert cheap_bound.auroc([3, 2, 1], [True, False, True]) == 0.5
    assert cheap_bound.auroc([2, 2], [True, False]) == 0.5
    assert cheap_bound.auroc([5, 1], [True, False]) == 1.0


def test_a_perfect_ranking_tops_up_only_the_rescuable_problem():
    # problem 0 is rescuable when its wrong sample comes first (flag 1); problem 1 is never solved
    probs = [[sample(10, False, flag=1.0), sample(10, True)], [sample(10, False), sample(10, False)]]
    at_half, need, area = cheap_bound.ranking(probs, lambda s: s["flag"], 0.5, 2000, random.Random(0), 40)
    # wrong first: 20 first tokens + 10 for problem 0 = 75%; right first: 50%; each half the draws
    assert need == pytest.approx(0.625, abs=0.03)
    # at 50% nothing beyond the first samples: solved only when problem 0's right sample came first
    assert at_half == pytest.approx(0.25, abs=0.03)
    assert area == 1.0  # over the draws that have a rescuable problem
    at_most, _, _ = cheap_bound.ranking(probs, lambda s: s["flag"], 0.75, 200, random.Random(0), 40)
    assert at_most == 0.5


def test_the_report_reads_a_parallel_run(tmp_path, monkeypatch):
    from test_store import QUESTIONS, evaluate  # the Markov fake behind the CLI
    import dist_eval_entry
    from fakes import patch_load

    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": str(i)}) + "\n" for i, q in enumerate(QUESTIONS)))
    patch_load(monkeypatch, dist_eval_entry.loaded_model("markov"))
    evaluate(data, tmp_path / "parallel", "--method", "parallel")
    records = load_run(tmp_path / "parallel")[1]
    full = sum(any(s["correct"] for s in r["sequences"]) for r in records) / len(records)
    tokens = sum(s["tokens"] for r in records for s in r["sequences"])
    text = cheap_bound.report(tmp_path / "parallel", 0.5, 20, 0)
    assert f"parallel's Pass@k {full:.3f} on {tokens} tokens" in text
    assert "| label oracle (sample until right) |" in text and "| random |" in text
