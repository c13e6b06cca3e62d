"""Tail signatures, distribution-free heaviness and the distribution comparison against numpy, scipy and
npm-weibull-py."""

import jax.numpy as jnp
import numpy as np
import npm_weibull
import pytest
from scipy import stats

import weibull_jax
from weibull_jax import tails
from weibull_jax import weibull as wb

RNG = np.random.default_rng(11)


def _with_super_weights(shape=(1024, 1024), sigma=0.02):
    w = RNG.normal(0.0, sigma, shape).astype(np.float32)
    w[5, 9], w[-3, 2], w[-1, -1] = 60 * sigma, -45 * sigma, 30 * sigma
    return w


@pytest.mark.parametrize("n", [1000, 262_144, 2_000_000])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99, 0.999])
def test_order_statistic_matches_numpy_quantile(n, q):
    """Against the exact quantile of the same float32 data (numpy in float64; numpy's own float32 quantile
    is off by up to 2.5e-5 in numpy 2.0). Each of the two order statistics is placed inside the sub-bin that
    holds it, so the error is at most one sub-bin, (10^Δ − 1)/4096 ≈ 7.8e-6 of the value for the log10 bin
    width Δ = 14/1024, plus the float32 rounding of the interpolation (a few u)."""
    a = np.abs(RNG.standard_t(4, (3, n))).astype(np.float32) * 0.01
    ours = np.asarray(tails.order_statistic(jnp.asarray(a), q))
    sub_bin = (10.0 ** (np.diff(wb.EDGES).max()) - 1) / tails.REFINE
    np.testing.assert_allclose(ours, np.quantile(a.astype(np.float64), q, axis=-1), rtol=sub_bin + 4 * 2.0 ** -24)


def test_tail_signature_against_numpy_and_scipy():
    w = _with_super_weights()
    fit = weibull_jax.fit_weibull(w)
    sig = weibull_jax.tail_signature(w, fit)
    a = np.abs(w)
    assert float(sig.max_abs) == a.max()
    np.testing.assert_allclose(sig.max_over_q99, a.max() / np.quantile(a, 0.99), rtol=1e-5)
    np.testing.assert_allclose(sig.excess_kurtosis, stats.kurtosis(w.reshape(-1)), rtol=1e-3)
    dist = stats.weibull_min(float(fit.k), scale=float(fit.scale))
    np.testing.assert_allclose(sig.log10_p_tail, dist.logsf(a.max()) / np.log(10), rtol=1e-4)
    assert int(sig.n_super) == int(np.sum(a > dist.ppf(0.999)))
    assert float(sig.n_super_expected) == pytest.approx(1e-3 * w.size)
    assert float(sig.max_over_q99) > 20  # the planted 60σ element


def test_tail_signature_of_a_stack():
    stack = np.stack([_with_super_weights((256, 512)), RNG.normal(0, 0.02, (256, 512)).astype(np.float32)])
    sig = weibull_jax.tail_signature(stack)
    assert sig.max_over_q99.shape == (2,)
    for i in range(2):
        np.testing.assert_allclose(sig.excess_kurtosis[i], stats.kurtosis(stack[i].reshape(-1)), rtol=1e-3)


@pytest.mark.parametrize("w", [_with_super_weights(), 0.01 * RNG.standard_t(3, (700, 900))])
def test_heaviness_matches_npm_weibull_per_block_metrics(w):
    ref = npm_weibull.per_block_metrics(npm_weibull.extract_to_histogram(w))
    ours = weibull_jax.heaviness(w)
    for field, key in (("q90_q10", "q90_q10"), ("q99_q50", "q99_q50"), ("p999_p50", "p999_p50"),
                       ("gini", "gini"), ("median", "median_abs_w")):
        np.testing.assert_allclose(float(getattr(ours, field)), ref[key], rtol=2e-5, err_msg=field)


@pytest.mark.parametrize("w,best", [
    (0.02 * RNG.weibull(1.1, (400, 500)), "weibull"),
    (np.exp(RNG.normal(-4.0, 0.6, (400, 500))), "lognormal"),
    (RNG.gamma(2.5, 0.01, (400, 500)), "gamma"),
])
def test_distribution_comparison_matches_npm_weibull(w, best):
    ref = npm_weibull.compare_distributions(npm_weibull.extract_to_histogram(w))
    ours = weibull_jax.compare_distributions(w)
    assert ours.best == ref["best"] == best
    ref_aic = {r["name"]: r["aic"] for r in ref["aic_ranking"]}
    ref_params = {name: list(p.values()) for name, p in ref["params_per_dist"].items()}
    for i, family in enumerate(tails.FAMILIES):
        # The two histograms can differ by a handful of elements (float32 log10 rounding at bin edges).
        assert ours.aic[i] == pytest.approx(ref_aic[family], rel=1e-6)
        np.testing.assert_allclose(ours.params[i], ref_params[family], rtol=1e-4)
        assert ours.ks[i] == pytest.approx(ref["ks_per_dist"][family], abs=1e-3)
