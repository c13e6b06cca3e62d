"""Schedules against their closed forms; every optimizer against a hand-written numpy reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weibull_jax import optim

PEAK, TOTAL, WARM, FLOOR = 1e-3, 200, 20, 0.1


def _cosine(t):
    if t < WARM:
        return PEAK * t / WARM
    x = min(t - WARM, TOTAL - WARM) / (TOTAL - WARM)
    return PEAK * (FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * x)))


def _wsd(t):
    decay_start = WARM + round((TOTAL - WARM) * 0.8)
    if t < WARM:
        return PEAK * t / WARM
    if t < decay_start:
        return PEAK
    return PEAK * (1 - (1 - FLOOR) * min(t - decay_start, TOTAL - decay_start) / (TOTAL - decay_start))


def _step(t):
    return PEAK * t / WARM if t < WARM else PEAK * (0.1 if t >= 100 else 1) * (0.1 if t >= 150 else 1)


@pytest.mark.parametrize("kind,formula", [("cosine", _cosine), ("wsd", _wsd), ("step", _step)])
def test_schedules_match_closed_forms(kind, formula):
    schedule = optim.learning_rate_schedule(kind, PEAK, TOTAL, WARM, FLOOR)
    for t in (0, 7, 20, 21, 99, 100, 149, 150, 163, 179, 180, 190, 199, 200):
        assert float(schedule(t)) == pytest.approx(formula(t), rel=1e-5, abs=1e-12), t


def test_schedule_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.learning_rate_schedule("linear", 1.0, 10)
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        optim.learning_rate_schedule("cosine", 1.0, 10, 10)


LR, WD, MU, B1, B2, EPS = 0.05, 0.1, 0.9, 0.9, 0.95, 1e-8
GRADS = [{"w": np.random.default_rng(s).normal(size=(6, 5)), "b": np.random.default_rng(100 + s).normal(size=5)}
         for s in range(5)]


def _numpy_run(name):
    """Five steps of each optimizer written out by hand in float64 (decay on the matrix only)."""
    w = {"w": np.linspace(-1, 1, 30).reshape(6, 5), "b": np.linspace(0.5, -0.5, 5)}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    out = []
    for t, g in enumerate(GRADS, start=1):
        for k in w:
            wd = WD if k == "w" else 0.0
            if name == "adamw":
                m[k] = B1 * m[k] + (1 - B1) * g[k]
                v[k] = B2 * v[k] + (1 - B2) * g[k] ** 2
                u = (m[k] / (1 - B1 ** t)) / (np.sqrt(v[k] / (1 - B2 ** t)) + EPS)
                w[k] = w[k] - LR * (u + wd * w[k])
            elif name == "sgd":
                w[k] = w[k] - LR * (g[k] + wd * w[k])
            elif name == "sgd_momentum":
                m[k] = MU * m[k] + g[k] + wd * w[k]
                w[k] = w[k] - LR * m[k]
            elif name == "sgdw_nesterov":
                m[k] = MU * m[k] + g[k]
                w[k] = w[k] - LR * (g[k] + MU * m[k]) - LR * wd * w[k]
        out.append({k: x.copy() for k, x in w.items()})
    return out


@pytest.mark.parametrize("name", ["adamw", "sgd", "sgd_momentum", "sgdw_nesterov"])
def test_optimizers_match_numpy(name):
    opt = optim.make_optimizer(name, LR, weight_decay=WD, b1=B1, b2=B2, eps=EPS, momentum=MU)
    params = {"w": jnp.linspace(-1, 1, 30).reshape(6, 5), "b": jnp.linspace(0.5, -0.5, 5)}
    state = opt.init(params)
    for g, want in zip(GRADS, _numpy_run(name)):
        updates, state = opt.update(jax.tree.map(jnp.asarray, g), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        for k in params:
            np.testing.assert_allclose(params[k], want[k], rtol=2e-5, atol=2e-6)


def test_clipping_scales_the_gradient_by_its_global_norm():
    opt = optim.make_optimizer("sgd", 1.0, clip_norm=1.0)
    g = {"w": jnp.full((3, 4), 2.0), "b": jnp.zeros(4)}
    updates, _ = opt.update(g, opt.init(g), g)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(updates["w"])), 1.0, rtol=1e-6)


def test_muon_orthogonalises_hidden_matrices_only():
    params = {"model.layers.0.mlp.up_proj.weight": jnp.zeros((64, 32)),
              "model.embed_tokens.weight": jnp.zeros((100, 32)), "model.norm.weight": jnp.ones(32)}
    assert optim.hidden_matrices(params) == {"model.layers.0.mlp.up_proj.weight": True,
                                             "model.embed_tokens.weight": False, "model.norm.weight": False}
    opt = optim.make_optimizer("muon", 0.1)
    grads = {k: jax.random.normal(jax.random.key(i), v.shape) for i, (k, v) in enumerate(params.items())}
    updates, _ = opt.update(grads, opt.init(params), params)
    sv = np.linalg.svd(np.asarray(updates["model.layers.0.mlp.up_proj.weight"]) / -0.1, compute_uv=False)
    assert 0.6 < sv.min() and sv.max() < 1.2  # quintic Newton–Schulz: every singular value near 1
    sv_embed = np.linalg.svd(np.asarray(updates["model.embed_tokens.weight"]) / -0.1, compute_uv=False)
    assert sv_embed.max() > 3  # Adam's elementwise step is far from orthogonal


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make_optimizer("lion", 0.1)
