"""Trajectory Gram, spline recovery and the closed loop against scipy, float64 numpy and a known AdamW run."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import interpolate, stats

from weibull_jax import closed_loop, fit_weibull, forces, optim, trajectory


@pytest.mark.parametrize("n", [2, 3, 4, 9])
def test_spline_weights_match_scipy_not_a_knot(n):
    rng = np.random.default_rng(n)
    knots = np.cumsum(rng.uniform(0.5, 3.0, n))
    y = rng.normal(size=(n, 5))
    x = np.linspace(knots[0], knots[-1], 41)
    reference = interpolate.CubicSpline(knots, y, bc_type="not-a-knot")
    for derivative, ref in ((False, reference(x)), (True, reference(x, 1))):
        ours = trajectory.spline_weights(knots, x, derivative) @ y
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_gram_parts_rebuild_the_float64_gram_and_keep_small_differences():
    rng = np.random.default_rng(0)
    base = rng.normal(size=150_001)  # three blocks of the batched product, the last one padded
    slab = np.stack([base + 1e-3 * np.cumsum(rng.normal(size=(6, base.size)), 0)[i] for i in range(6)])
    slab = slab.astype(np.float32)
    gram = jax.device_get(trajectory.trajectory_gram(jnp.asarray(slab)))
    exact = slab.astype(np.float64) @ slab.astype(np.float64).T
    np.testing.assert_allclose(gram.full(), exact, rtol=1e-6)
    # ⟨w_j, w_{j+1} − w_j⟩ is ~1e-6 of ‖w‖²: the split Gram still gets it to 1e-3 (a plain float32 Gram cannot)
    a, b = np.eye(6)[:-1], np.eye(6)[1:] - np.eye(6)[:-1]
    truth = np.einsum("ri,ij,rj->r", a, exact, b)
    np.testing.assert_allclose(gram.bilinear(a, b), truth, rtol=1e-3)


@pytest.fixture(scope="module")
def adamw_run():
    """A 2-matrix least-squares model trained 121 steps by AdamW (warmup + cosine, clipping, decay 0.1):
    the weights at every step and the alignment force of every step, read from the optimizer moments."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 64, 24)), jnp.float32)  # four minibatches, cycled
    y = jnp.asarray(rng.normal(size=(4, 64, 8)), jnp.float32)
    params = {"a": jnp.asarray(rng.normal(size=(24, 16)) * 0.2, jnp.float32),
              "b": jnp.asarray(rng.normal(size=(16, 8)) * 0.2, jnp.float32)}
    steps, wd = 121, 0.1
    schedule = optim.learning_rate_schedule("cosine", 3e-2, steps, 10, 0.1)
    opt = optim.make_optimizer("adamw", schedule, wd, 0.9, 0.95, 1e-8, clip_norm=1.0)
    state = opt.init(params)

    def loss(p, i):
        xb, yb = x[i], y[i]
        return jnp.mean((jnp.tanh(xb @ p["a"]) @ p["b"] - yb) ** 2)

    @jax.jit
    def step(p, s, t):
        g = jax.grad(loss)(p, t % 4)
        u, s = opt.update(g, s, p)
        f = forces.adamw_forces(p, s, schedule(t), wd, 0.9, 0.95, 1e-8)
        return optax.apply_updates(p, u), s, f["a"].alignment + f["b"].alignment

    weights, alignment = [params], []
    for t in range(steps):
        params, state, f = step(params, state, t)
        weights.append(params)
        alignment.append(float(f))
    slab = np.stack([np.concatenate([np.ravel(w["a"]), np.ravel(w["b"])]) for w in weights])
    return slab, np.asarray(alignment), schedule, wd


def test_exact_identity_and_unit_spacing_recover_the_true_alignment(adamw_run):
    slab, truth, schedule, wd = adamw_run
    gram = jax.device_get(trajectory.trajectory_gram(jnp.asarray(slab)))
    knots = np.arange(slab.shape[0])
    lr = np.asarray([schedule(t) for t in knots], np.float64)
    for method in ("spline", "two_point"):  # the identity itself; the mean-rate form rescales by η_t/η̄
        steps, estimate = trajectory.alignment_estimate(gram, knots, lr, wd, method)
        np.testing.assert_allclose(estimate, truth, atol=1e-3 * np.abs(truth).max())
    t = 40
    u = trajectory.update_from_displacement(slab[t].astype(np.float64), slab[t + 1].astype(np.float64), lr[t], wd)
    assert abs(-2 * lr[t] * slab[t].astype(np.float64) @ u - truth[t]) < 1e-3 * np.abs(truth).max()


def _exact_gram(slab):
    """(n_0, c, H) of a knot slab in float64 (the reference of the float32 ``trajectory_gram``)."""
    w = slab.astype(np.float64)
    d = w - w[0]
    return trajectory.TrajectoryGram(w[0] @ w[0], d @ w[0], d @ d.T)


def _gram_rounding_bound(slab):
    """A bound on |Δ| of every entry of the float32 ``trajectory_gram``: each entry is a float32 sum of k
    products (a block's GEMM of ``GRAM_BLOCK`` elements, then the scan over the blocks), whose error is at
    most λ √k u Σ|x_i y_i| with probability ≥ 1 − 2 exp(−λ²/2) (the probabilistic bound of Higham & Mary,
    SIAM J. Sci. Comput. 41(5), 2019; λ = 6: 3e-8 per entry), plus 2u Σ|x_i y_i| for the rounding of
    d_j = w_j − w_0; u = 2⁻²⁴."""
    n = slab.shape[1]
    k = min(n, trajectory.GRAM_BLOCK) + -(-n // trajectory.GRAM_BLOCK)
    gamma = (6 * np.sqrt(k) + 2) * 2.0 ** -24
    w = np.abs(slab.astype(np.float64))
    d = np.abs(slab.astype(np.float64) - slab[0].astype(np.float64))
    return trajectory.TrajectoryGram(gamma * (w[0] @ w[0]), gamma * (d @ w[0]), gamma * (d @ d.T))


def _bilinear_bound(entry, a, b):
    """max |Σ_ij a_ri b_rj ΔG_ij| per row r when each part of G = n_0 + c_i + c_j + H_ij errs by at most
    ``entry``."""
    e0, ec, eh = entry
    sa, sb = np.abs(a.sum(-1)), np.abs(b.sum(-1))
    return e0 * sa * sb + sa * (np.abs(b) @ ec) + sb * (np.abs(a) @ ec) + np.einsum("ri,ij,rj->r", np.abs(a), eh,
                                                                                     np.abs(b))


def test_sparse_spline_estimate_matches_a_dense_scipy_spline(adamw_run):
    slab, truth, schedule, wd = adamw_run
    knots = np.arange(0, slab.shape[0], 20)
    lr = np.asarray([schedule(t) for t in range(slab.shape[0])], np.float64)
    gram = jax.device_get(trajectory.trajectory_gram(jnp.asarray(slab[knots])))
    steps, estimate = trajectory.alignment_estimate(gram, knots, lr, wd, "spline")
    spline = interpolate.CubicSpline(knots, slab[knots].astype(np.float64), bc_type="not-a-knot")
    w, w_next = spline(steps), spline(steps + 1)
    reference = 2 * np.sum(w * (w_next - w), 1) + 2 * lr[steps] * wd * np.sum(w * w, 1)
    # the method: from the knots' exact (float64) Gram, the estimate is scipy's spline to float64 rounding
    _, exact = trajectory.alignment_estimate(_exact_gram(slab[knots]), knots, lr, wd, "spline")
    np.testing.assert_allclose(exact, reference, rtol=1e-9, atol=1e-9 * np.abs(reference).max())
    # the float32 Gram the program computes: within the rounding bound of its entries, carried through the
    # estimate's two bilinear forms (linear in the Gram): |ΔF̂_t| ≤ 2 B(a_t, b_t) + 2 η_t λ_wd B(a_t, a_t)
    a = trajectory.spline_weights(knots, steps)
    b = trajectory.spline_weights(knots, steps + 1) - a
    entry = _gram_rounding_bound(slab[knots])
    bound = 2 * _bilinear_bound(entry, a, b) + 2 * lr[steps] * wd * _bilinear_bound(entry, a, a)
    assert np.all(np.abs(estimate - exact) <= bound), np.max(np.abs(estimate - exact) / bound)
    # two-point: per interval, 2⟨w_j, w_{j+1} − w_j⟩ + 2 λ_wd ‖w_j‖² Σ_t η_t
    _, naive = trajectory.alignment_estimate(gram, knots, lr, wd, "two_point")
    w_j, w_next = slab[knots[:-1]].astype(np.float64), slab[knots[1:]].astype(np.float64)
    eta_sums = lr[: knots[-1]].reshape(-1, 20).sum(1)
    reference = 2 * np.sum(w_j * (w_next - w_j), 1) + 2 * wd * eta_sums * np.sum(w_j * w_j, 1)
    np.testing.assert_allclose(trajectory.interval_sums(steps, naive, knots), reference, rtol=1e-5)


def test_closed_loop_is_exact_with_exact_forces_and_the_true_shape():
    rng = np.random.default_rng(2)
    k, size = 1.3, 200_000
    scales = 0.02 * np.exp(np.linspace(0, 1.2, 9))
    samples = [stats.weibull_min.rvs(k, scale=s, size=size, random_state=rng) for s in scales]
    sq = np.asarray([np.sum(x.astype(np.float64) ** 2) for x in samples])
    integrated = closed_loop.integrate_sq_norm(sq[0], np.diff(sq), 1)
    np.testing.assert_allclose(integrated, sq, rtol=1e-12)
    fitted = np.asarray([float(fit_weibull(x.astype(np.float32).reshape(400, 500)).scale) for x in samples])
    predicted = closed_loop.bridge_scale(integrated, size, k)
    assert closed_loop.log_rmse(predicted, scales) < 3e-3
    assert closed_loop.log_rmse(predicted, fitted) < 1e-2
    # forward Euler at Δ = 2 on a straight line of ‖w‖² is still exact at its grid points
    line = closed_loop.integrate_sq_norm(1.0, np.full(8, 0.5), 2)
    np.testing.assert_allclose(line, [1.0, 2.0, 3.0, 4.0, 5.0])


def test_an_overshooting_integration_is_flagged_not_warned():
    # one strongly negative force: dense Euler goes through zero at row 2, the Δ = 2 grid skips that force
    leading = np.array([1.0, -5.0, 1.0, 1.0])
    dense = closed_loop.integrate_sq_norm(2.0, leading, 1)
    np.testing.assert_allclose(dense, [2.0, 3.0, -2.0, -1.0, 0.0])
    assert closed_loop.first_nonpositive(dense) == 2
    assert closed_loop.first_nonpositive(closed_loop.integrate_sq_norm(2.0, leading, 2)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scale = closed_loop.bridge_scale(dense, 4, 2.0)  # Γ(2) = 1: λ = √(‖w‖²/4)
        np.testing.assert_allclose(scale[:2], [np.sqrt(0.5), np.sqrt(0.75)])
        assert np.isnan(scale[2:]).all() and np.isnan(closed_loop.log_rmse(scale, np.ones(5)))


def test_the_public_codes_two_point_form_and_pointwise_median(adamw_run):
    """The authors' baseline written out per step from the weights (u = −(w_hi − w_lo)/(½(η_lo + η_hi)Δ) −
    λ_wd w_lo, alignment 2η_t⟨w_lo, u⟩ in their sign) against the Gram form, and their estimand: the median
    over every 10th step of estimate/true."""
    slab, truth, schedule, wd = adamw_run
    knots = np.arange(0, slab.shape[0], 20)
    lr = np.asarray([schedule(t) for t in range(slab.shape[0])], np.float64)
    steps, estimate = trajectory.alignment_estimate(_exact_gram(slab[knots]), knots, lr, wd, "two_point_mean_lr")
    w = slab.astype(np.float64)
    reference = []
    for t in steps:
        lo = t // 20 * 20
        hi = lo + 20
        u = -(w[hi] - w[lo]) / (0.5 * (lr[lo] + lr[hi]) * (hi - lo)) - wd * w[lo]
        reference.append(-2 * lr[t] * w[lo] @ u)  # our sign: F_align = −2η⟨w, u⟩
    np.testing.assert_allclose(estimate, reference, rtol=1e-9, atol=1e-12 * np.abs(reference).max())
    assert not np.allclose(estimate, trajectory.alignment_estimate(_exact_gram(slab[knots]), knots, lr, wd,
                                                                   "two_point")[1], rtol=1e-3)
    at, ratios = trajectory.pointwise_ratios(steps, estimate, truth, 10)
    assert truth[0] == 0 and list(at) == list(range(10, knots[-1], 10))  # η_0 = 0: no step, no ratio
    np.testing.assert_allclose(ratios, [reference[t] / truth[t] for t in at], rtol=1e-9)
