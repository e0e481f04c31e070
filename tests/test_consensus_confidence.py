"""Consensus stop rules, confidence and weighted voting, on hand-computed values."""
from __future__ import annotations

import math

import pytest

from eager_mlx.adaptive.confidence import (
    ConfidenceConfig,
    WindowConfidence,
    confidence_weight,
    lowest_group_confidence,
    sequence_confidence,
    token_confidences,
)
from eager_mlx.answers import majority_vote
from eager_mlx.adaptive.consensus import ConsensusConfig, beta_mode_probability, beta_stop, consensus_reached, window_stop


def test_beta_mode_probability_hand_values():
    # Beta(4, 1): P(p > 1/2) = 1 - 0.5^4
    assert beta_mode_probability(3, 0) == pytest.approx(15 / 16)
    assert beta_mode_probability(4, 0) == pytest.approx(31 / 32)
    # Beta(6, 2): n = 7, sum_{j<=5} C(7, j) / 128 = (128 - 1 - 7) / 128
    assert beta_mode_probability(5, 1) == pytest.approx(120 / 128)
    # Beta(7, 2): n = 8, (256 - 1 - 8) / 256
    assert beta_mode_probability(6, 1) == pytest.approx(247 / 256)
    assert beta_mode_probability(2, 2) == pytest.approx(0.5)  # a tie is a coin flip
    assert beta_mode_probability(0, 0) == pytest.approx(0.5)


def test_beta_stop_counts_top_two_and_skips_missing_answers():
    assert not beta_stop(["7"] * 3)  # 0.9375
    assert beta_stop(["7"] * 4)  # 0.96875 > 0.95
    assert not beta_stop(["7", None, "7", None, "7"])  # Nones do not vote: still 3 vs 0
    assert not beta_stop(["7"] * 5 + ["8"])  # 5 vs 1: 0.9375
    assert beta_stop(["7"] * 6 + ["8"])  # 6 vs 1: 0.965
    assert beta_stop(["7"] * 6 + ["8", "9"])  # only the top two count: 6 vs 1
    assert beta_stop([" 7 ", "7", "7.", "7"])  # normalised as in the vote
    assert not beta_stop([])
    assert not beta_stop(["7"] * 4, confidence=0.97)


def test_window_stop():
    assert window_stop(["1", "2", "2", "2", "2"], 4)
    assert not window_stop(["2", "2", "2", "1"], 4)
    assert not window_stop(["2", "2", "2"], 4)  # too few answers
    assert not window_stop(["2", None, "2", "2"], 4)  # no answer breaks agreement
    assert window_stop(["2", "2"], 2)


def test_consensus_config():
    assert consensus_reached(["5"] * 4, ConsensusConfig("beta"))
    assert consensus_reached(["5"] * 3, ConsensusConfig("window", window=3))
    assert not consensus_reached(["5"] * 3, ConsensusConfig("window", window=4))
    with pytest.raises(ValueError, match="consensus must be one of beta, window"):
        ConsensusConfig("vote").validate()
    with pytest.raises(ValueError, match="window"):
        ConsensusConfig("window", window=1).validate()


def test_lowest_group_confidence_hand_values():
    vals = [-1.0, -1.0, -3.0, -1.0, -0.5]
    # windows of 2: -1, -2, -2, -0.75 -> lowest -2
    assert lowest_group_confidence(vals, 2) == pytest.approx(-2.0)
    # windows of 3: -5/3, -5/3, -4.5/3 -> -5/3
    assert lowest_group_confidence(vals, 3) == pytest.approx(-5 / 3)
    assert lowest_group_confidence(vals, 10) == pytest.approx(-6.5 / 5)  # shorter: mean of all
    assert lowest_group_confidence([], 4) is None


def test_sequence_confidence_signals():
    ent, lps = [0.5, 2.0, 0.1], [-0.1, -1.5, -0.2]
    assert token_confidences(ent, lps, "entropy") == [-0.5, -2.0, -0.1]
    assert sequence_confidence(ent, lps, ConfidenceConfig(window=2)) == pytest.approx(-1.25)
    assert sequence_confidence(ent, lps, ConfidenceConfig(window=2, signal="logprob")) == pytest.approx(-0.85)
    assert confidence_weight(math.log(0.25)) == pytest.approx(0.25)
    assert confidence_weight(None) == 0.0


def test_window_confidence_matches_offline():
    vals = [-1.0, -1.0, -3.0, -1.0, -0.5, -2.5, 0.0]
    for window in (1, 2, 3, 10):
        w = WindowConfidence(window)
        for i, v in enumerate(vals):
            w.push(v)
            assert w.lowest == pytest.approx(lowest_group_confidence(vals[: i + 1], window))
        assert w.full == (window <= len(vals))
    w = WindowConfidence(2)
    w.push(-1.0)
    c = w.copy()
    c.push(-3.0)
    assert w.current == -1.0 and c.current == -2.0 and c.lowest == -2.0


def test_majority_vote():
    # majority says 3 (x3), weights say 5: 0.9 + 0.8 = 1.7 > 0.2 * 3
    assert majority_vote(["3", "5", "3", "5", "3"], [0.2, 0.9, 0.2, 0.8, 0.2]) == "5"
    assert majority_vote(["3", "5"], [0.5, 0.5]) == "3"  # tie: first seen
    assert majority_vote([None, "4", " 4"], [9.0, 0.1, 0.1]) == "4"  # no answer, no vote; normalised
    assert majority_vote([None], [1.0]) is None
    with pytest.raises(ValueError):
        majority_vote(["1"], [])


def test_confidence_config_validate():
    ConfidenceConfig(prune_percentile=10).validate()
    with pytest.raises(ValueError, match="entropy signal"):
        ConfidenceConfig(signal="logprob", prune_percentile=10).validate()
    with pytest.raises(ValueError, match="prune_confidence must be > 0, < 100, got 100"):
        ConfidenceConfig(prune_percentile=100).validate()


def test_confidence_vote_on_a_run_result():
    from eager_mlx.adaptive.confidence import confidence_vote, weighted_vote_record
    from eager_mlx.results import RunResult, SequenceResult

    def seq(i, answer, h, reason="eos"):
        return SequenceResult(i, [1, 2], "", reason, None, None, [h, h], [-0.1, -0.1], answer)

    seqs = [seq(0, "3", 2.0), seq(1, "3", 2.0), seq(2, "5", 0.1), seq(3, "5", 0.0, "pruned")]
    result = RunResult("r", seqs, 5, 8, "3", 2.0, 0.1)
    assert confidence_vote(result) == "5"  # e^-0.1 = 0.905 > 2 e^-2 = 0.271; the pruned row does not vote
    assert confidence_vote(result, ConfidenceConfig(signal="logprob")) == "3"  # equal weights: majority
    assert weighted_vote_record(["3", "5", "5"], [False, True, True], [-2.0, None, -0.1]) == {"answer": "5",
                                                                                          "correct": True}
    assert weighted_vote_record(["3"], [True], [None]) == {"answer": None, "correct": False}
