"""In-graph statistics against numpy references; the per-sequence sampler's distribution and determinism."""
import mlx.core as mx
import numpy as np
import pytest

import eager_mlx.engine.sampling as sampling_module
from eager_mlx.config import SamplingConfig
from eager_mlx.engine.sampling import (
    STAT_FIELDS,
    RowSampling,
    child_key,
    entropy,
    gumbel_noise,
    request_key,
    row_seeds,
    sequence_key,
    token_stats,
    top_candidates,
)


def np_entropy(logits, k=None):
    x = np.asarray(logits, dtype=np.float64)
    if k is not None:
        x = np.sort(x)[::-1][:k]
    p = np.exp(x - x.max())
    p /= p.sum()
    return -(p * np.log(p)).sum()


def seeds_for(n, step=0, base=7):
    """Seeds of n rows with distinct keys at one step."""
    return row_seeds([sequence_key(request_key(base, "r"), i) for i in range(n)], [step] * n)


def draw(logits_row, configs, steps=64, rows=64, top_k=2):
    """Tokens sampled for `rows` rows x `steps` steps from one distribution (each row its own key)."""
    logits = mx.broadcast_to(mx.array(logits_row, dtype=mx.float32)[None], (rows, len(logits_row)))
    s = RowSampling.from_configs(configs if isinstance(configs, list) else [configs] * rows)
    keys = [sequence_key(request_key(3, "stat"), i) for i in range(rows)]
    out = [token_stats(logits, s, row_seeds(keys, [t] * rows), top_k)[:, 0]
           for t in range(steps)]
    return np.array(mx.stack(out)).astype(int).ravel()


def frequencies(tokens, n):
    return np.bincount(tokens, minlength=n) / len(tokens)


@pytest.mark.parametrize("k", [2, 20, None])
def test_entropy_matches_numpy(k):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 1000)) * 3
    lp = mx.array(logits) - mx.logsumexp(mx.array(logits), axis=-1, keepdims=True)
    got = np.array(entropy(lp.astype(mx.float32), k))
    want = [np_entropy(row, k) for row in logits]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [20, None])
def test_entropy_is_bitwise_the_token_stats_column(k):
    # The engine computes a second entropy kind with entropy(): it must equal what token_stats gives.
    logits = mx.array(np.random.default_rng(5).normal(size=(6, 500)).astype(np.float32) * 2)
    s = RowSampling.from_configs([SamplingConfig(top_p=0.9)] * 6)
    col = np.array(token_stats(logits, s, seeds_for(6), k))[:, STAT_FIELDS.index("entropy")]
    np.testing.assert_array_equal(col, np.array(entropy(logits, k)))


def test_stats_columns():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 50)).astype(np.float32)
    s = RowSampling.from_configs([SamplingConfig(temperature=0)] * 3)
    out = np.array(token_stats(mx.array(logits), s, seeds_for(3), 20))
    col = {name: out[:, i] for i, name in enumerate(STAT_FIELDS)}
    order = np.argsort(-logits, axis=1)
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(col["top1"], order[:, 0])
    np.testing.assert_array_equal(col["top2"], order[:, 1])
    np.testing.assert_array_equal(col["token"], order[:, 0])  # greedy
    np.testing.assert_allclose(col["lp_top2"], lp[np.arange(3), order[:, 1]], atol=1e-5)
    np.testing.assert_allclose(col["entropy"], [np_entropy(r, 20) for r in logits], atol=1e-5)


def _fmix32(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_row_seeds_are_murmur_mixes_with_wrapping_uint32():
    # A pure-Python rendering (explicit mod 2**32): MLX's uint32 multiply must wrap the same way.
    keys = [0, 1, 2**64 - 1, 0x0123456789ABCDEF]
    steps = [0, 1, 5, 2**31 + 3]
    got = np.array(row_seeds(keys, steps)).tolist()
    want = []
    for k, t in zip(keys, steps):
        h = _fmix32((t * 0x9E3779B9 + 0x7F4A7C15) & 0xFFFFFFFF)
        h = _fmix32(h ^ (k & 0xFFFFFFFF))
        want.append(_fmix32(h ^ (k >> 32)))
    assert got == want


def test_keys_are_stable_and_distinct():
    # A pinned value: keys never depend on the process (Python's hash() of a str would, by PYTHONHASHSEED).
    assert request_key(55, "p0-r0") == 0xA1C9B204F97BB2AC
    r = request_key(55, "p0-r0")
    keys = {r, request_key(55, "p1-r0"), request_key(56, "p0-r0"), request_key(55), sequence_key(r, 0),
            sequence_key(r, 1), child_key(sequence_key(r, 0), 3), child_key(sequence_key(r, 0), 4)}
    assert len(keys) == 8 and all(0 <= k < 2**64 for k in keys)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampled_frequencies_follow_the_tempered_distribution(temperature):
    p = np.array([0.5, 0.25, 0.15, 0.1])
    logits = np.log(p)
    want = p ** (1 / temperature) / (p ** (1 / temperature)).sum()
    got = frequencies(draw(logits, SamplingConfig(temperature=temperature)), 4)  # 4096 draws
    np.testing.assert_allclose(got, want, atol=0.025)  # about 3 standard deviations


def test_top_k_top_p_and_min_p_frequencies():
    p = np.array([0.4, 0.3, 0.2, 0.1, 0.0])
    logits = np.log(p + 1e-12)
    got = frequencies(draw(logits, SamplingConfig(temperature=1.0, top_k=2)), 5)
    np.testing.assert_allclose(got, [4 / 7, 3 / 7, 0, 0, 0], atol=0.025)
    got = frequencies(draw(logits, SamplingConfig(temperature=1.0, top_p=0.8)), 5)  # mass above 0.2 is 0.7 < 0.8
    np.testing.assert_allclose(got, [4 / 9, 3 / 9, 2 / 9, 0, 0], atol=0.025)
    got = frequencies(draw(logits, SamplingConfig(temperature=1.0, min_p=0.6)), 5)  # keeps p >= 0.24
    np.testing.assert_allclose(got, [4 / 7, 3 / 7, 0, 0, 0], atol=0.025)


def test_draws_of_neighbouring_steps_and_keys_are_independent():
    # Uniform over 4 tokens: the pair (token at step t, token at step t+1) of a row, and the pair
    # (row i, row i+1) at one step, must be uniform over the 16 pairs (chi-square, 15 dof).
    tokens = draw(np.zeros(4), SamplingConfig(temperature=1.0), steps=64, rows=64).reshape(64, 64)
    for a, b in ((tokens[:-1], tokens[1:]), (tokens[:, :-1], tokens[:, 1:])):
        counts = np.bincount((4 * a + b).ravel(), minlength=16)
        expected = counts.sum() / 16
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 37.7  # p = 0.001 for 15 degrees of freedom


def test_a_rows_draw_does_not_depend_on_the_batch():
    rng = np.random.default_rng(2)
    logits = mx.array(rng.normal(size=(8, 400)).astype(np.float32) * 2)
    configs = [SamplingConfig(temperature=0.6), SamplingConfig(temperature=0.6, top_p=0.9),
               SamplingConfig(temperature=0), SamplingConfig(temperature=1.0, top_k=5),
               SamplingConfig(temperature=0.6, min_p=0.1), SamplingConfig(temperature=0.6),
               SamplingConfig(temperature=0.8, top_k=300, top_p=0.95), SamplingConfig(temperature=1.2)]
    keys = [sequence_key(request_key(1, "b"), i) for i in range(8)]
    for step in range(4):
        seeds = row_seeds(keys, [step] * 8)
        together = np.array(token_stats(logits, RowSampling.from_configs(configs), seeds, 20))
        for i in range(8):
            one = RowSampling.from_configs([configs[i]])
            alone = np.array(token_stats(logits[i : i + 1], one, seeds[i : i + 1], 20))
            np.testing.assert_array_equal(together[i], alone[0])


def test_greedy_rows_take_top1_and_noise_is_keyed_on_token_ids():
    logits = mx.array(np.random.default_rng(4).normal(size=(4, 300)).astype(np.float32))
    s = RowSampling.from_configs([SamplingConfig(temperature=0)] * 4)
    out = np.array(token_stats(logits, s, seeds_for(4), 20))
    np.testing.assert_array_equal(out[:, 0], np.argmax(np.array(logits), axis=1))
    seeds = seeds_for(2)
    full = np.array(gumbel_noise(seeds, mx.arange(300)[None]))
    some = np.array(gumbel_noise(seeds, mx.array([[7, 250], [3, 9]])))
    np.testing.assert_array_equal(some, [[full[0, 7], full[0, 250]], [full[1, 3], full[1, 9]]])


def test_noise_is_finite_at_the_largest_hash():
    # Seed 14901 hashes token 25 to the largest 24-bit uniform: (2**24 - 1 + 0.5) / 2**24 rounds to 1.0 in
    # float32, which gave infinite noise, so token 25 won at any probability (0.3-0.9% of full-vocabulary rows).
    assert sampling_module.uniform(mx.array([0xFFFFFFFF, 0], dtype=mx.uint32)).tolist() == [1.0 - 2.0**-24, 2.0**-25]
    seeds = mx.array([14901], dtype=mx.uint32)
    hashed = sampling_module._fmix32(sampling_module._fmix32(seeds[:, None] ^ sampling_module._vocabulary_hashes(300))
                                     + seeds[:, None])
    assert int(hashed[0, 25].item()) >> 8 == 2**24 - 1  # the case this test is about
    noise = np.array(gumbel_noise(seeds, mx.arange(300)[None]))
    assert np.isfinite(noise).all() and noise.max() < 17
    logits = mx.array(np.where(np.arange(300) == 25, -40.0, 0.0)[None].astype(np.float32))
    for config in (SamplingConfig(temperature=1.0), SamplingConfig(temperature=1.0, top_k=300)):
        out = np.array(token_stats(logits, RowSampling.from_configs([config]), seeds, 20))
        assert out[0, sampling_module.Stat.TOKEN] != 25


def test_temperature_is_applied_before_top_p():
    # Tempered at 0.5 the top token holds 88% of the mass, so top_p=0.85 keeps it alone;
    # at temperature 1 (filter first, as mlx-lm does) it holds 73% and two tokens survive.
    logits = mx.array([[2.0, 1.0, -5.0, -5.0]] * 64)
    s = RowSampling.from_configs([SamplingConfig(temperature=0.5, top_p=0.85)] * 64)
    tokens = np.array(token_stats(logits, s, seeds_for(64), 2))[:, 0]
    assert set(tokens.tolist()) == {0.0}
    s = RowSampling.from_configs([SamplingConfig(temperature=1.0, top_p=0.85)] * 64)
    tokens = np.array(token_stats(logits, s, seeds_for(64), 2))[:, 0]
    assert set(tokens.tolist()) == {0.0, 1.0}


def test_identical_rows_with_different_keys_draw_differently():
    logits = mx.zeros((256, 4))
    s = RowSampling.from_configs([SamplingConfig(temperature=1.0)] * 256)
    tokens = np.array(token_stats(logits, s, seeds_for(256), 2))[:, 0]
    assert len(set(tokens.tolist())) == 4


@pytest.mark.parametrize("vocab", [300, 5000, 49152, 50001])
@pytest.mark.parametrize("width", [2, 20, 256])
def test_top_candidates_are_the_largest_logits_in_order(vocab, width):
    # The chunked selection must give exactly the sorted top values, with ties and -inf present.
    rng = np.random.default_rng(vocab + width)
    x = rng.normal(size=(4, vocab)).astype(np.float32) * 3
    x[1, ::7] = -np.inf
    x[2] = np.round(x[2])  # many ties
    x[3, -5:] = 50.0  # the largest values in the last (padded) chunk
    vals, ids = (np.array(a) for a in top_candidates(mx.array(x), width))
    want = -np.sort(-x, axis=1)[:, :width]
    np.testing.assert_array_equal(vals, want)
    np.testing.assert_array_equal(np.take_along_axis(x, ids.astype(int), axis=1), want)
    assert all(len(set(row)) == width for row in ids.tolist())


def test_large_vocabulary_stats_match_numpy():
    # Big enough for the chunked top-K path; entropy, log-probabilities and top-2 against float64 numpy.
    rng = np.random.default_rng(6)
    logits = (rng.normal(size=(3, 60000)) * 4).astype(np.float32)
    s = RowSampling.from_configs([SamplingConfig(temperature=0.6)] * 3)
    out = np.array(token_stats(mx.array(logits), s, seeds_for(3), 20))
    col = {name: out[:, i] for i, name in enumerate(STAT_FIELDS)}
    x = logits.astype(np.float64)
    lp = x - (x.max(1, keepdims=True) + np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)))
    order = np.argsort(-x, axis=1)
    np.testing.assert_array_equal(col["top2"], order[:, 1])
    # MLX's float32 sum of 60k terms is itself off by ~1e-4 (mx.logsumexp is off by the same).
    np.testing.assert_allclose(col["lp_top1"], lp[np.arange(3), order[:, 0]], atol=2e-4)
    np.testing.assert_allclose(col["lp_token"], lp[np.arange(3), col["token"].astype(int)], atol=2e-4)
    np.testing.assert_allclose(col["entropy"], [np_entropy(r, 20) for r in x], rtol=1e-5)
    np.testing.assert_allclose(np.array(entropy(mx.array(logits), None)), [np_entropy(r) for r in x], atol=5e-4)


def test_in_graph_mix_wraps_like_the_reference():
    # The Gumbel noise mixes in the graph: MLX's uint32 multiply must wrap as the pure-Python rendering does.
    values = [0, 1, 0x7F4A7C15, 0x9E3779B9, 2**32 - 1, 123456789]
    got = np.array(sampling_module._fmix32(mx.array(values, dtype=mx.uint32))).tolist()
    assert got == [_fmix32(v) for v in values]


def draw_pairs(logits_row, config, steps=64, rows=64):
    """(sampled token, runner-up) pairs with `alt` on, rows x steps draws from one distribution."""
    logits = mx.broadcast_to(mx.array(logits_row, dtype=mx.float32)[None], (rows, len(logits_row)))
    s = RowSampling.from_configs([config] * rows)
    keys = [sequence_key(request_key(3, "pairs"), i) for i in range(rows)]
    cols = [STAT_FIELDS.index("token"), STAT_FIELDS.index("alt")]
    out = [token_stats(logits, s, row_seeds(keys, [t] * rows), 2, alt=True)[:, cols] for t in range(steps)]
    return np.array(mx.concatenate(out)).astype(int)


@pytest.mark.parametrize("config", [SamplingConfig(temperature=1.0), SamplingConfig(temperature=1.0, top_k=4),
                                    SamplingConfig(temperature=1.0, top_p=0.999)])
def test_the_runner_up_is_a_draw_without_replacement(config):
    # Gumbel top-2: P(alt = j | token = i) = p_j / (1 - p_i), on the vocabulary path and the candidate path.
    p = np.array([0.4, 0.3, 0.2, 0.1])
    pairs = draw_pairs(np.log(p), config)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    want = np.array([[p[i] * p[j] / (1 - p[i]) if i != j else 0 for j in range(4)] for i in range(4)])
    got = np.bincount(4 * pairs[:, 0] + pairs[:, 1], minlength=16).reshape(4, 4) / len(pairs)
    np.testing.assert_allclose(got, want, atol=0.02)  # 4096 draws: about 3 standard deviations


def test_the_runner_up_falls_back_to_the_best_other_token():
    # Greedy rows, and a filter that leaves one token: the most probable token besides the sampled one.
    logits = np.log(np.array([0.1, 0.6, 0.3]))
    for config in (SamplingConfig(temperature=0), SamplingConfig(temperature=1.0, top_k=1)):
        pairs = draw_pairs(logits, config, steps=4, rows=8)
        assert (pairs == [1, 2]).all()


def test_alt_leaves_the_other_columns_bitwise_unchanged():
    logits = mx.array(np.random.default_rng(9).normal(size=(6, 700)).astype(np.float32) * 2)
    configs = [SamplingConfig(temperature=0.6), SamplingConfig(temperature=0.6, top_p=0.9),
               SamplingConfig(temperature=0), SamplingConfig(temperature=0.6, min_p=0.1),
               SamplingConfig(temperature=1.0, top_k=5), SamplingConfig(temperature=0.6)]
    s, seeds = RowSampling.from_configs(configs), seeds_for(6)
    off, on = (np.array(token_stats(logits, s, seeds, 20, alt=a)) for a in (False, True))
    alt = STAT_FIELDS.index("alt")
    np.testing.assert_array_equal(off[:, :alt], on[:, :alt])
    lp = np.array(logits) - np.log(np.exp(np.array(logits, dtype=np.float64)).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(on[:, alt + 1], lp[np.arange(6), on[:, alt].astype(int)], atol=1e-4)


def test_cut_marks_a_nucleus_that_reaches_past_the_candidates():
    flat = mx.zeros((1, 1000))  # 950 tokens in a 0.95 nucleus: past the 256 candidates
    peaked = mx.array(np.where(np.arange(1000) < 5, 10.0, 0.0), dtype=mx.float32)[None]
    logits = mx.concatenate([flat, peaked, flat, flat])
    configs = [SamplingConfig(temperature=1.0, top_p=0.95)] * 2 + [
        SamplingConfig(temperature=1.0, top_p=0.95, top_k=300), SamplingConfig(temperature=0.0, top_p=0.95)]
    cut = STAT_FIELDS.index("cut")
    got = np.array(token_stats(logits, RowSampling.from_configs(configs), seeds_for(4), 20))[:, cut]
    assert got.tolist() == [1, 0, 0, 0]  # cut; its candidates hold the nucleus; top-k bounds it; greedy
    whole = RowSampling.from_configs(configs, candidates=1000)
    assert np.array(token_stats(logits, whole, seeds_for(4), 20))[:, cut].tolist() == [0, 0, 0, 0]


def test_the_whole_vocabulary_draws_from_the_exact_nucleus():
    # 600 equal tokens and 400 far below: the 0.95 nucleus is the first 570 or so of the 600
    logits = np.where(np.arange(1000) < 600, 0.0, -30.0)
    config = SamplingConfig(temperature=1.0, top_p=0.95)
    rows = 64
    x = mx.broadcast_to(mx.array(logits, dtype=mx.float32)[None], (rows, 1000))
    keys = [sequence_key(request_key(3, "nucleus"), i) for i in range(rows)]
    whole = RowSampling.from_configs([config] * rows, candidates=1000)
    tokens = np.concatenate([np.array(token_stats(x, whole, row_seeds(keys, [t] * rows), 20))[:, 0]
                             for t in range(16)]).astype(int)
    assert tokens.max() < 600 and (tokens >= 256).mean() > 0.5  # about 314 / 570 of the draws
    # Where the usual candidates hold the nucleus, both give the same draw (the noise is keyed on token ids).
    peaked = np.where(np.arange(1000) < 20, 5.0, -5.0) - 1e-3 * np.arange(1000)  # no ties: top-2 is one token
    y = mx.broadcast_to(mx.array(peaked, dtype=mx.float32)[None], (rows, 1000))
    seeds = row_seeds(keys, [0] * rows)
    usual = RowSampling.from_configs([config] * rows)
    assert np.array_equal(np.array(token_stats(y, usual, seeds, 20)), np.array(token_stats(y, whole, seeds, 20)))


def test_wide_candidates_give_the_whole_vocabulary_draw_where_they_hold_the_nucleus():
    vocab, rows = 10000, 32
    config = SamplingConfig(temperature=1.0, top_p=0.95)
    keys = [sequence_key(request_key(4, "wide"), i) for i in range(rows)]
    cut = STAT_FIELDS.index("cut")
    # 3000 equal tokens: past 256 candidates, within 4096; then all 10000: past 4096 as well
    for flat, cut_wide in ((3000, 0), (vocab, 1)):
        logits = np.where(np.arange(vocab) < flat, 0.0, -40.0) - 1e-4 * np.arange(vocab)  # no ties
        x = mx.broadcast_to(mx.array(logits, dtype=mx.float32)[None], (rows, vocab))
        seeds = row_seeds(keys, [2] * rows)
        usual, wide, whole = (np.array(token_stats(x, RowSampling.from_configs([config] * rows, candidates=c), seeds,
                                                    20)) for c in (256, 4096, vocab))
        assert (usual[:, cut] == 1).all() and (wide[:, cut] == cut_wide).all() and (whole[:, cut] == 0).all()
        assert (whole[:, 0] >= 256).any()
        if not cut_wide:
            assert np.array_equal(wide, whole)
