"""Equal-cost comparison with parallel sampling: cons@n over subsets, interpolated pass@n / cons@n, the paired
bootstrap, and the report's table and frontier."""
import json
from itertools import combinations

import numpy as np
import pytest
from click.testing import CliRunner

from eager_mlx.cli.main import cli
from eager_mlx.evaluation.equal_cost import bootstrap_interval, cons_at_n, equal_cost, parallel_at, parallel_curve
from eager_mlx.evaluation.metrics import unbiased_pass_at_k


def test_cons_at_n_averages_the_vote_over_every_subset():
    answers, correct = ["7", "3", "7", "3"], [True, False, True, False]
    assert cons_at_n(answers, correct, 4) == 1.0  # a 2-2 tie goes to the first answer seen
    assert cons_at_n(answers, correct, 1) == 0.5
    # pairs in order, ties to the first: (7,3) (7,7) (7,3) right, (3,7) (3,3) wrong, (7,3) right -> 4 of 6
    want = np.mean([correct[s[0]] for s in combinations(range(4), 2)])
    assert cons_at_n(answers, correct, 2) == want == pytest.approx(2 / 3)
    assert cons_at_n([None, None], [False, False], 2) == 0.0
    many = ["1"] * 10 + ["2"] * 10  # C(20, 10) subsets: sampled, close to exact by symmetry (~0.5 + ties)
    assert 0.4 < cons_at_n(many, [True] * 10 + [False] * 10, 10) < 0.75
    with pytest.raises(ValueError):
        cons_at_n(answers, correct, 5)


def test_parallel_at_interpolates_and_caps():
    answers, correct = ["1", "2", "1", "3"], [True, False, True, False]
    p2, c2 = parallel_at(answers, correct, 2)
    p3, c3 = parallel_at(answers, correct, 3)
    assert p2 == unbiased_pass_at_k(4, 2, 2)
    mid = parallel_at(answers, correct, 2.25)
    assert mid == pytest.approx((p2 + 0.25 * (p3 - p2), c2 + 0.25 * (c3 - c2)))
    assert parallel_at(answers, correct, 9.0) == parallel_at(answers, correct, 4)
    assert parallel_at(answers, correct, 0.3) == parallel_at(answers, correct, 1)


def record(i, answers, correct, tokens):
    return {"index": i, "sequences": [{"answer": a, "correct": c} for a, c in zip(answers, correct)],
            "metrics": {"generated_tokens": tokens, "pass_at_k": float(any(correct)),
                        "cons_at_k": float(correct[0]) if correct else 0.0}}


def test_a_run_against_parallel_at_its_tokens():
    rng = np.random.default_rng(0)
    par, run = [], []
    for i in range(40):
        c = list(rng.random(4) < 0.4)
        par.append(record(i, [str(int(x)) for x in c], c, 400))
        run.append(record(i, ["1"], [bool(c[0])], 100))  # one sample at a quarter of the tokens: parallel's own 1st
    e = equal_cost(run, par)
    assert e.n == pytest.approx(1.0) and e.tokens_ratio == pytest.approx(0.25) and not e.beyond_parallel
    assert e.parallel_pass == pytest.approx(np.mean([sum(r["sequences"][k]["correct"] for k in range(4)) / 4
                                                     for r in par]))
    assert e.pass_ci[0] <= e.pass_diff <= e.pass_ci[1]
    assert equal_cost(par, par).pass_diff == 0 and equal_cost(par, par).n == pytest.approx(4)
    with pytest.raises(ValueError, match="no record of problem 40"):
        equal_cost(run + [record(40, ["1"], [True], 9)], par)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_problems():
    rng = np.random.default_rng(1)
    small, big = rng.normal(0.1, 1, 30), rng.normal(0.1, 1, 3000)
    lo, hi = bootstrap_interval(small)
    assert lo < small.mean() < hi
    blo, bhi = bootstrap_interval(big)
    assert bhi - blo < (hi - lo) / 5
    assert bootstrap_interval(np.zeros(10)) == (0.0, 0.0)


def test_parallel_curve_ends_at_the_parallel_run():
    par = [record(i, ["1", "2"], [i % 2 == 0, i % 3 == 0], 100) for i in range(6)]
    curve = parallel_curve(par)
    assert [round(t) for t, _, _ in curve] == [300, 600]
    assert curve[-1][1] == np.mean([r["metrics"]["pass_at_k"] for r in par])


def test_report_shows_the_equal_cost_table(tmp_path, monkeypatch):
    from test_store import QUESTIONS, evaluate  # the Markov fake behind the CLI
    import dist_eval_entry
    from fakes import patch_load

    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": str(i)}) + "\n" for i, q in enumerate(QUESTIONS)))
    patch_load(monkeypatch, dist_eval_entry.loaded_model("markov"))
    for name, method in (("par", "parallel"), ("init", "eager-init"), ("seq", "eager-adapt")):
        evaluate(data, tmp_path / name, "--method", method, *(["--policy", "sequential"] if name == "seq" else []))
    png = tmp_path / "f.png"
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "init"), str(tmp_path / "seq"),
                                 "--baseline", str(tmp_path / "par"), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    table = r.output.split("equal cost:")[1].splitlines()
    assert "par pass@n" in table[1] and any(x.startswith("seq ") and "sequential" in x for x in table)
    assert png.read_bytes()[:4] == b"\x89PNG"
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "seq"), "--baseline", str(tmp_path / "init")])
    assert r.exit_code == 1 and "not a parallel run" in r.output
