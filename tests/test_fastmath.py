"""fastmath: exp through exp2 (the CPU's fast path) stays within float32 rounding of mx.exp."""
import mlx.core as mx
import numpy as np

from eager_mlx.engine import fastmath


def test_exp_matches_float64_within_a_few_ulps():
    x = np.concatenate([np.linspace(-87.0, 0.0, 20001), np.linspace(-5.0, 5.0, 1001)]).astype(np.float32)
    got = np.array(fastmath.exp(mx.array(x))).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    # x * log2(e) is rounded to float32 first: a relative error of about |x| * 6e-8, plus powf's own.
    assert np.all(np.abs(got - want) <= want * 1e-7 * (2 + np.abs(x)))


def test_exp_of_minus_infinity_is_zero():
    assert np.array(fastmath.exp(mx.array([-np.inf, -1e30], dtype=mx.float32))).tolist() == [0.0, 0.0]


def test_logsumexp_matches_mlx():
    rng = np.random.default_rng(0)
    x = mx.array((rng.normal(size=(4, 3000)) * 5).astype(np.float32))
    got = np.array(fastmath.logsumexp(x, x.max(axis=-1, keepdims=True)))
    np.testing.assert_allclose(got, np.array(mx.logsumexp(x, axis=-1, keepdims=True)), rtol=1e-6)
