r"""Tails of the weight distribution beyond the Weibull body (framework paper §3.3, App. A.8).

The middle-80 % fit describes the body; trained matrices grow isolated outliers ("super-weights") that the
body does not predict. Per matrix (rows of a stack, batch axes as in :func:`weibull_jax.fit_weibull`):

* ``max_over_q99`` = max|w| / q99(|w|), q99 as numpy's linear-interpolation quantile to ~1e-5 (Table 2);
* ``excess_kurtosis`` of w: m4/m2² − 3 with biased central moments (scipy.stats.kurtosis's default);
* ``log10_p_tail`` = log10 P(|W| > max|w|) = −(max/λ)^k / ln 10 under the fitted body;
* ``n_super``: elements above the body's 99.9 % quantile Q(0.999) = λ(ln 1000)^{1/k}: a pure Weibull puts
  0.1 % of the elements there (``n_super_expected``), a super-weight tail puts more.

Distribution-free heaviness (npm-weibull-py ``per_block_metrics``, from the same 1024-bin histogram as the
fit, with linear-domain bin midpoints): Q90/Q10, Q99/Q50, P999/P50 and the Gini coefficient of |w|.

Distribution comparison (npm-weibull-py ``compare_distributions``): binned maximum likelihood of a Weibull,
a lognormal and a gamma on the histogram; AIC = 2·2 − 2 ln L and KS at the upper bin edges. This one is a
host-side scipy optimisation per matrix.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize, stats

from weibull_jax import weibull as wb


class TailSignature(NamedTuple):
    """Per-matrix tail statistics (§3.3, Table 2)."""

    max_abs: jax.Array
    q99: jax.Array
    max_over_q99: jax.Array
    excess_kurtosis: jax.Array
    log10_p_tail: jax.Array
    n_super: jax.Array
    n_super_expected: jax.Array


SUPER_WEIGHT_QUANTILE = 0.999


REFINE = 4096  # sub-bins of the second histogram pass: order statistics to 0.032/4096 ≈ 8e-6 relative

# Linear-domain bounds of each histogram slot (below-range, the 1024 bins, above-range).
_SLOT_LO = np.concatenate([[0.0], 10.0 ** wb.EDGES[:-1], [10.0 ** wb.LOG10_RANGE[1], np.nan]]).astype(np.float32)
_SLOT_HI = np.concatenate([[10.0 ** wb.LOG10_RANGE[0]], 10.0 ** wb.EDGES[1:], [np.inf, np.nan]]).astype(np.float32)


def _first_reaching(counts: jax.Array, rank: jax.Array):
    """Per row: the first column whose cumulative count exceeds ``rank``, and the count before it."""
    cum = jnp.cumsum(counts, axis=-1)
    col = jnp.sum(cum <= rank[:, None], axis=-1)
    before = jnp.where(col > 0, jnp.take_along_axis(cum, jnp.maximum(col - 1, 0)[:, None], -1)[:, 0], 0)
    return col, before


def _refine(a, slots, coarse, j: int):
    """The j-th smallest magnitude of each row (0-based), from its slot and a 4096-sub-bin second pass."""
    slot, before = _first_reaching(coarse, jnp.full((a.shape[0],), j))
    lo, hi = jnp.asarray(_SLOT_LO)[slot], jnp.asarray(_SLOT_HI)[slot]
    width = (hi - lo) / REFINE
    sub = jnp.clip(jnp.floor((a - lo[:, None]) / width[:, None]), 0, REFINE - 1).astype(jnp.int32)
    sub = jnp.where(slots == slot[:, None], sub, REFINE)
    fine = wb.count_rows([sub], REFINE + 1)[:, :REFINE]
    inner = j - before
    col, before2 = _first_reaching(fine, inner)
    count = jnp.take_along_axis(fine, jnp.minimum(col, REFINE - 1)[:, None], -1)[:, 0]
    value = lo + (col + (inner - before2 + 0.5) / jnp.maximum(count, 1)) * width
    return jnp.where(slot == wb.ABOVE, jnp.max(a, axis=-1), value)


def order_statistic(a: jax.Array, q: float) -> jax.Array:
    """numpy's linear-interpolation quantile ``q`` of each row of magnitudes ``a`` (R, n), in O(n).

    Histogram passes instead of a sort: the log10 slots locate the bin of each of the two order statistics
    around rank q(n − 1), 4096 linear sub-bins of that bin locate it to ~8e-6 relative (values inside a
    sub-bin are taken as evenly spread), and the two are interpolated as numpy does. A quantile above
    |w| = 100 is returned as the row's maximum.
    """
    n = a.shape[-1]
    rank = q * (n - 1)
    j = int(np.floor(rank))
    slots = wb.slot_index(a)
    coarse = wb.count_rows([slots], wb.NUM_SLOTS)
    below = _refine(a, slots, coarse, j)
    above = _refine(a, slots, coarse, min(j + 1, n - 1))
    return below + np.float32(rank - j) * (above - below)


def _signature_rows(w: jax.Array, k: jax.Array, scale: jax.Array, center: bool) -> TailSignature:
    rows = wb.as_rows(w).astype(jnp.float32)
    a = wb.magnitudes(rows, center)
    mx = jnp.max(a, axis=-1)
    q99 = order_statistic(a, 0.99)
    d = rows - jnp.mean(rows, axis=-1, keepdims=True)
    m2 = jnp.mean(d * d, axis=-1)
    m4 = jnp.mean((d * d) ** 2, axis=-1)
    threshold = wb.weibull_quantile(k, scale, SUPER_WEIGHT_QUANTILE)
    n_super = jnp.sum(a > threshold[:, None], axis=-1)
    n = a.shape[-1]
    out = TailSignature(mx, q99, mx / q99, m4 / (m2 * m2) - 3.0, wb.weibull_log10_sf(mx, k, scale),
                        n_super, jnp.full_like(mx, (1.0 - SUPER_WEIGHT_QUANTILE) * n))
    return jax.tree.map(lambda v: v.reshape(wb.batch_shape(w)), out)


@functools.partial(jax.jit, static_argnames="center")
def _signatures(arrays, fits, center):
    return tuple(_signature_rows(w, f.k.reshape(-1), f.scale.reshape(-1), center) for w, f in zip(arrays, fits))


def tail_signatures(arrays: Sequence[Any], fits: Sequence[wb.WeibullFit], center: bool = False) -> list[TailSignature]:
    """Tail signatures of several arrays (any shapes) in one compiled call, given their body fits."""
    return list(_signatures(tuple(arrays), tuple(fits), center))


def tail_signature(w: Any, fit: wb.WeibullFit | None = None, center: bool = False, name: str = "array") -> TailSignature:
    """Tail signature of a matrix or stack; fits the middle-80 % body first unless ``fit`` is given."""
    fit = wb.fit_weibull(w, center=center, name=name) if fit is None else fit
    return tail_signatures([w], [fit], center)[0]


# --------------------------------------------------------------------------------------------------
# Distribution-free heaviness from the histogram
# --------------------------------------------------------------------------------------------------

_EDGES_W = 10.0 ** wb.EDGES
_MID_W = (0.5 * (_EDGES_W[:-1] + _EDGES_W[1:])).astype(np.float32)


class Heaviness(NamedTuple):
    """Distribution-free tail heaviness (App. A.8): quantile ratios and the Gini coefficient of |w|."""

    q90_q10: jax.Array
    q99_q50: jax.Array
    p999_p50: jax.Array
    gini: jax.Array
    median: jax.Array


def _hist_quantile(cum: jax.Array, q: float) -> jax.Array:
    """Midpoint of the first bin whose cumulative count reaches q · total."""
    target = q * cum[..., -1:].astype(jnp.float32)
    idx = jnp.sum(cum.astype(jnp.float32) < target, axis=-1)
    return jnp.asarray(_MID_W)[jnp.minimum(idx, wb.NUM_BINS - 1)]


def heaviness_from_counts(counts: jax.Array) -> Heaviness:
    """Heaviness of each histogram row ``(..., NUM_BINS)`` (npm-weibull-py ``per_block_metrics``)."""
    cum = jnp.cumsum(counts, axis=-1)
    q10, q50, q90, q99, q999 = (_hist_quantile(cum, q) for q in (0.10, 0.50, 0.90, 0.99, 0.999))
    hf = counts.astype(jnp.float32)
    mass = jnp.cumsum(hf * _MID_W, axis=-1)
    lorenz = mass / mass[..., -1:]
    share = cum.astype(jnp.float32) / cum[..., -1:].astype(jnp.float32)
    area = jnp.sum(0.5 * (lorenz[..., 1:] + lorenz[..., :-1]) * jnp.diff(share, axis=-1), axis=-1)
    tiny = np.float32(1e-30)
    return Heaviness(q90 / jnp.maximum(q10, tiny), q99 / jnp.maximum(q50, tiny),
                     q999 / jnp.maximum(q50, tiny), 1.0 - 2.0 * area, q50)


@functools.partial(jax.jit, static_argnames="center")
def histogram_counts(w: jax.Array, center: bool = False) -> jax.Array:
    """The fit's 1024-bin log10|w| histogram of each matrix: ``(*batch, NUM_BINS)`` int32."""
    counts = wb.bins_of(wb.log10_histogram([wb.as_rows(w)], center))
    return counts.reshape(wb.batch_shape(w) + (wb.NUM_BINS,))


def heaviness(w: Any, center: bool = False) -> Heaviness:
    """Distribution-free heaviness of a matrix or stack."""
    return heaviness_from_counts(histogram_counts(jnp.asarray(w), center))


# --------------------------------------------------------------------------------------------------
# Weibull vs lognormal vs gamma
# --------------------------------------------------------------------------------------------------

FAMILIES = ("weibull", "lognormal", "gamma")


class DistributionComparison(NamedTuple):
    """Binned-MLE comparison of two-parameter families on one matrix, in the order of ``FAMILIES``.

    ``params``: Weibull (k, λ), lognormal (μ, σ of ln|w|), gamma (shape α, scale β)."""

    best: str
    aic: np.ndarray
    ks: np.ndarray
    params: np.ndarray


def _family_cdf(family: str, x: np.ndarray, p: np.ndarray) -> np.ndarray:
    if family == "weibull":
        return -np.expm1(-((x / p[1]) ** p[0]))
    if family == "lognormal":
        return stats.norm.cdf((np.log(np.maximum(x, 1e-30)) - p[0]) / p[1])
    return stats.gamma.cdf(x, a=p[0], scale=p[1])


def _initial_params(family: str, counts: np.ndarray) -> np.ndarray:
    prob = counts / counts.sum()
    if family == "weibull":
        fit = wb.fit_counts(jnp.asarray(counts, jnp.int32))
        return np.array([float(fit.fit.k), float(fit.fit.scale)])
    if family == "lognormal":
        ln_mid = wb.LN_CENTERS.astype(np.float64)
        mu = float(prob @ ln_mid)
        return np.array([mu, np.sqrt(prob @ (ln_mid - mu) ** 2)])
    mid = _MID_W.astype(np.float64)
    mean = float(prob @ mid)
    var = float(prob @ (mid - mean) ** 2)
    return np.array([mean * mean / var, var / mean])


def compare_distributions(w: Any, center: bool = False) -> DistributionComparison:
    """KS and AIC of a Weibull, a lognormal and a gamma fit by binned maximum likelihood (one matrix)."""
    counts = np.asarray(histogram_counts(jnp.asarray(w), center), np.float64)
    if counts.ndim != 1:
        raise ValueError("compare_distributions takes one matrix, not a stack")
    if counts.sum() < wb.MIN_VALUES:
        raise ValueError(f"compare_distributions: fewer than {wb.MIN_VALUES} values inside the histogram range")
    lower, upper = _EDGES_W[:-1], _EDGES_W[1:]
    emp = np.cumsum(counts) / counts.sum()
    aic, ks, params = [], [], []
    for family in FAMILIES:
        # Optimise in unconstrained coordinates (logs of the positive parameters), restarting Nelder–Mead
        # from its own optimum so that a collapsed simplex does not stop it early.
        positive = np.array([family != "lognormal", True])

        def nll(z, family=family, positive=positive):
            p = np.where(positive, np.exp(z), z)
            prob = _family_cdf(family, upper, p) - _family_cdf(family, lower, p)
            return -float(counts @ np.log(np.maximum(prob, 1e-30)))

        p0 = _initial_params(family, counts)
        z = np.array([np.log(v) if pos else v for v, pos in zip(p0, positive)])
        for _ in range(3):
            res = optimize.minimize(nll, z, method="Nelder-Mead",
                                    options={"xatol": 1e-10, "fatol": 1e-10, "maxiter": 4000})
            z = res.x
        p = np.where(positive, np.exp(z), z)
        params.append(p)
        aic.append(2 * 2 + 2 * res.fun)
        ks.append(np.max(np.abs(emp - _family_cdf(family, upper, p))))
    aic = np.array(aic)
    return DistributionComparison(FAMILIES[int(np.argmin(aic))], aic, np.array(ks), np.array(params))
