"""Metrics against hand-computed values."""
from __future__ import annotations

from math import comb

import pytest

from eager_mlx.evaluation.metrics import prompt_metrics, run_metrics, unbiased_pass_at_k


def test_unbiased_pass_at_k_hand_values():
    assert unbiased_pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert unbiased_pass_at_k(4, 2, 2) == pytest.approx(1 - comb(2, 2) / comb(4, 2))  # 5/6
    assert unbiased_pass_at_k(5, 1, 2) == pytest.approx(1 - comb(4, 2) / comb(5, 2))  # 0.4
    assert unbiased_pass_at_k(10, 3, 4) == pytest.approx(1 - comb(7, 4) / comb(10, 4))
    assert unbiased_pass_at_k(4, 3, 2) == 1.0  # n - c < k
    assert unbiased_pass_at_k(4, 0, 2) == 0.0
    assert unbiased_pass_at_k(2, 1, 4) is None  # n < k: undefined
    with pytest.raises(ValueError):
        unbiased_pass_at_k(2, 3, 1)


def test_prompt_metrics_hand_values():
    answers = ["12", "7", "7", None, "12"]
    correct = [False, True, True, False, False]
    m = prompt_metrics(answers, correct, generated_tokens=300, prompt_tokens=40, wall_s=2.0, ks=(1, 2))
    assert (m.num_sequences, m.num_correct) == (5, 2)
    assert m.pass_at_k == 1.0
    assert m.pass_at_1 == 0.0  # the first sequence is wrong
    assert m.majority_answer == "12"  # 2 vs 2: "12" seen first
    assert m.cons_at_k == 0.0
    assert m.pass_rate == pytest.approx(0.4)
    assert m.tokens_per_s == 150.0
    assert m.unbiased["pass@1"] == pytest.approx(0.4)
    assert m.unbiased["pass@2"] == pytest.approx(1 - comb(3, 2) / comb(5, 2))  # 0.7


def test_cons_uses_normalised_vote_and_first_giver():
    m = prompt_metrics(["7.", " 7", "3"], [True, True, False], generated_tokens=10)
    assert m.majority_answer == "7." and m.cons_at_k == 1.0
    none = prompt_metrics([None, None], [False, False], generated_tokens=5)
    assert none.majority_answer is None and none.cons_at_k == 0.0 and none.pass_at_k == 0.0


def test_run_metrics_means_and_totals():
    a = prompt_metrics(["1", "2"], [True, False], generated_tokens=100, prompt_tokens=10, ks=(1, 4))
    b = prompt_metrics(["5", "5", "5", "5"], [False, False, False, False], generated_tokens=300,
                       prompt_tokens=20, ks=(1, 4))
    r = run_metrics([a, b], wall_s=8.0)
    assert r.num_prompts == 2
    assert r.pass_at_k == 0.5 and r.pass_at_1 == 0.5 and r.cons_at_k == 0.5
    assert r.pass_rate == pytest.approx((0.5 + 0.0) / 2)
    assert (r.total_tokens, r.tokens_per_prompt) == (400, 200.0)
    assert (r.total_sequences, r.sequences_per_prompt) == (6, 3.0)
    assert r.prompt_tokens == 30 and r.tokens_per_s == 50.0
    assert r.unbiased["pass@1"] == pytest.approx(0.25)
    assert r.unbiased["pass@4"] == 0.0  # only b has n >= 4
    empty = run_metrics([], wall_s=0.0)
    assert empty.pass_at_k == 0.0 and empty.tokens_per_s == 0.0
