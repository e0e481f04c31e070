"""In-graph statistics against numpy references."""
import mlx.core as mx
import numpy as np
import pytest

from eager_mlx.config import SamplingConfig
from eager_mlx.engine.sampling import STAT_FIELDS, RowSampling, entropy, token_stats


def np_entropy(logits, k=None):
    x = np.asarray(logits, dtype=np.float64)
    if k is not None:
        x = np.sort(x)[::-1][:k]
    p = np.exp(x - x.max())
    p /= p.sum()
    return -(p * np.log(p)).sum()


@pytest.mark.parametrize("k", [2, 20, None])
def test_entropy_matches_numpy(k):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 1000)) * 3
    lp = mx.array(logits) - mx.logsumexp(mx.array(logits), axis=-1, keepdims=True)
    got = np.array(entropy(lp.astype(mx.float32), k))
    want = [np_entropy(row, k) for row in logits]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_stats_columns():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 50)).astype(np.float32)
    s = RowSampling.from_configs([SamplingConfig(temperature=0)] * 3)
    out = np.array(token_stats(mx.array(logits), s, mx.random.key(0), 20))
    col = {name: out[:, i] for i, name in enumerate(STAT_FIELDS)}
    order = np.argsort(-logits, axis=1)
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(col["top1"], order[:, 0])
    np.testing.assert_array_equal(col["top2"], order[:, 1])
    np.testing.assert_array_equal(col["token"], order[:, 0])  # greedy
    np.testing.assert_allclose(col["lp_top2"], lp[np.arange(3), order[:, 1]], atol=1e-5)
    np.testing.assert_allclose(col["entropy"], [np_entropy(r, 20) for r in logits], atol=1e-5)


def test_temperature_is_applied_before_top_p():
    # Tempered at 0.5 the top token holds 88% of the mass, so top_p=0.85 keeps it alone;
    # at temperature 1 (filter first, as mlx-lm does) it holds 73% and two tokens survive.
    logits = mx.array([[2.0, 1.0, -5.0, -5.0]] * 64)
    s = RowSampling.from_configs([SamplingConfig(temperature=0.5, top_p=0.85)] * 64)
    tokens = np.array(token_stats(logits, s, mx.random.key(0), 2))[:, 0]
    assert set(tokens.tolist()) == {0.0}
    s = RowSampling.from_configs([SamplingConfig(temperature=1.0, top_p=0.85)] * 64)
    tokens = np.array(token_stats(logits, s, mx.random.key(0), 2))[:, 0]
    assert set(tokens.tolist()) == {0.0, 1.0}


def test_min_p_and_rows_draw_their_own_noise():
    logits = mx.zeros((256, 4))
    s = RowSampling.from_configs([SamplingConfig(temperature=1.0)] * 256)
    tokens = np.array(token_stats(logits, s, mx.random.key(3), 2))[:, 0]
    assert len(set(tokens.tolist())) == 4  # identical rows, different draws
    logits = mx.array([[0.0, -1.0, -10.0, -10.0]] * 256)
    s = RowSampling.from_configs([SamplingConfig(temperature=1.0, min_p=0.2)] * 256)
    tokens = np.array(token_stats(logits, s, mx.random.key(3), 2))[:, 0]
    assert set(tokens.tolist()) == {0.0, 1.0}
