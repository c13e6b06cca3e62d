"""The fused AdamW step (its Pallas kernel: on a GPU the Triton kernel, elsewhere Pallas' interpreter) against a
float64 AdamW and against optax.

Error analysis (float32, u = 2⁻²⁴; first order, every operation one rounding, constants rounded alike on
both sides). With g̃ = s·g (the clip factor applied as one product: 2u against float64), M = (1−β₁)|g̃| + β₁|m|,
d = √v̂ + ε and U = M/(c₁d) ≥ |u|:

* m' = (1−β₁)g̃ + β₁m: |δm'| ≤ 4u·M;  v' = (1−β₂)g̃² + β₂v (no cancellation): |δv'| ≤ 7u·v';
* m̂ = m'/c₁, v̂ = v'/c₂, c_i = 1 − β_iᵗ (float32: 2u): |δm̂| ≤ 6u·M/c₁, |δd| ≤ 7.5u·d;
  u = m̂/d: |δu| ≤ 15u·U;
* w' = w − η(u + λw): |δw'| ≤ u|w'| + η(15u·U + 3u(|u| + λ|w|)) ≤ u|w'| + 18u·η(U + λ|w|).
* Σ over N terms in float32, in any order (blocks of B, then the P block sums): |δΣxy| ≤ Σ|x||δy| +
  (B + P)u·Σ|xy|.

The test asserts twice these bounds against float64 (and four times against optax, both being within them).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from weibull_jax import forces, fused_adamw, pallas_triton, tree

pytestmark = pytest.mark.skipif(not pallas_triton.AVAILABLE, reason="this JAX has no Pallas Triton backend")

B1, B2, EPS, WD, CLIP = 0.9, 0.95, 1e-8, 0.1, 1.0
U32 = 2.0 ** -24


def _model():
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    params = {"w_in": 0.2 * jax.random.normal(k1, (48, 100)),  # 4800 weights: 3 programs, the last ragged
              "bias": jnp.zeros(100), "w_out": 0.2 * jax.random.normal(k2, (2, 100, 4))}  # a stack: in XLA
    x = jax.random.normal(k3, (64, 48))

    def loss(p):
        h = jnp.tanh(x @ p["w_in"] + p["bias"])
        return sum(jnp.mean((h @ p["w_out"][i] - jnp.sin(x[:, :4])) ** 2) for i in range(2))

    return params, loss


def _reference(w, g, m, v, t, lr, wd, scale):
    """The step in float64 from the same float32 inputs, with the bounds of the module docstring."""
    w, g, m, v = (np.asarray(x, np.float64) for x in (w, g, m, v))
    g = g * scale
    m2, v2 = (1 - B1) * g + B1 * m, (1 - B2) * g * g + B2 * v
    c1, c2 = 1 - B1 ** t, 1 - B2 ** t
    d = np.sqrt(v2 / c2) + EPS
    u = m2 / c1 / d
    w2 = w - lr * (u + wd * w)
    big_u = ((1 - B1) * np.abs(g) + B1 * np.abs(m)) / (c1 * d)
    bounds = (4 * U32 * ((1 - B1) * np.abs(g) + B1 * np.abs(m)), 7 * U32 * v2,
              U32 * np.abs(w2) + 18 * U32 * lr * (big_u + wd * np.abs(w)))
    return (m2, v2, w2), bounds, u, 15 * U32 * big_u


def _force_bounds(w, u, du, lr, wd, terms):
    """|δ| of the five forces from |δu| and the float32 sums over ``terms`` additions."""
    w, u = np.abs(np.asarray(w, np.float64)), np.abs(u)
    gamma = terms * U32
    wu = np.sum(w * du) + gamma * np.sum(w * u)
    uu = np.sum(2 * u * du) + gamma * np.sum(u * u)
    ww = gamma * np.sum(w * w)
    return np.asarray([2 * lr * wu, lr * lr * uu, 2 * lr * wd * ww, 2 * lr * lr * wd * wu, (lr * wd) ** 2 * ww])


@pytest.mark.parametrize("grad_dtype", [jnp.float32, jnp.bfloat16])
def test_fused_step_and_forces_match_float64_and_optax_within_their_rounding(grad_dtype):
    """With bfloat16 gradients (the training step's: models.cast_kernels) the kernel reads them as their
    float32 values, which optax and the float64 reference get."""
    params, loss = _model()
    mask = {"w_in": True, "bias": False, "w_out": True}
    wd_tree = {k: WD if on else 0.0 for k, on in mask.items()}
    opt = optax.chain(optax.clip_by_global_norm(CLIP), optax.adamw(1e-2, b1=B1, b2=B2, eps=EPS, weight_decay=WD,
                                                                    mask=mask))
    state = opt.init(params)
    lr = 1e-2
    for t in range(1, 4):
        given = jax.tree.map(lambda g: g.astype(grad_dtype), jax.grad(loss)(params))
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), given)
        norm = optax.tree.norm(grads)
        scale = jnp.where(norm < CLIP, 1.0, CLIP / norm)
        updates, new_state = opt.update(grads, state, params)
        before, after = forces.find_adam_state(state), forces.find_adam_state(new_state)
        got_params, got_adam, got_forces = fused_adamw.adamw_step(
            params, given, before, after.count, lr, wd_tree, B1, B2, EPS, scale, select=tree.is_matrix)
        ref_forces = forces.adamw_forces(params, new_state, lr, wd_tree, B1, B2, EPS, select=tree.is_matrix)
        assert int(got_adam.count) == t and got_forces["bias"] is None
        optax_params = optax.apply_updates(params, updates)
        for k in params:
            exact, bounds, u, du = _reference(params[k], grads[k], before.mu[k], before.nu[k], t, lr, wd_tree[k],
                                              float(scale))
            ours = (got_adam.mu[k], got_adam.nu[k], got_params[k])
            optax_values = (after.mu[k], after.nu[k], optax_params[k])
            for got, theirs, want, bound in zip(ours, optax_values, exact, bounds):
                got, theirs = np.asarray(got, np.float64), np.asarray(theirs, np.float64)
                assert np.all(np.abs(got - want) <= 2 * bound + 1e-45), k
                assert np.all(np.abs(got - theirs) <= 4 * bound + 1e-45), k
            if got_forces[k] is None:
                continue
            w = np.asarray(params[k], np.float64)
            matrices = w.reshape(-1, *w.shape[-2:])
            for i, (wi, ui, dui) in enumerate(zip(matrices, u.reshape(matrices.shape), du.reshape(matrices.shape))):
                want = np.asarray([-2 * lr * np.sum(wi * ui), lr * lr * np.sum(ui * ui),
                                   -2 * lr * wd_tree[k] * np.sum(wi * wi), 2 * lr * lr * wd_tree[k] * np.sum(wi * ui),
                                   (lr * wd_tree[k]) ** 2 * np.sum(wi * wi)])
                bound = _force_bounds(wi, ui, dui, lr, wd_tree[k], fused_adamw.BLOCK + 8 + wi.size // 64) \
                    + 8 * U32 * np.abs(want)
                got = np.asarray([np.reshape(f, -1)[i] for f in got_forces[k]], np.float64)
                theirs = np.asarray([np.reshape(f, -1)[i] for f in ref_forces[k]], np.float64)
                np.testing.assert_array_less(np.abs(got - want), 2 * bound + 1e-30)
                np.testing.assert_array_less(np.abs(got - theirs), 4 * bound + 1e-30)
        params, state = optax_params, new_state  # both paths start every step from optax's trajectory


def test_the_kernel_counts_every_weight_once_whatever_the_block():
    """Σw², Σu² and Σwu of a ragged matrix are the same with blocks of 64 and of 2048 (to the float32 sums'
    rounding): no block tail is lost or counted twice; m', v', w' are the same values."""
    rng = np.random.default_rng(0)
    g, m, w = (jnp.asarray(rng.normal(size=(37, 91)), jnp.float32) for _ in range(3))
    v = jnp.asarray(rng.random((37, 91)), jnp.float32)
    constants = fused_adamw.scalars(B1, B2, EPS, jnp.int32(7), 1e-3, WD)
    small = fused_adamw.step_matrix(g, m, v, w, constants, block=64)
    large = fused_adamw.step_matrix(g, m, v, w, constants, block=2048)
    for a, b in zip(small[:3], large[:3]):
        np.testing.assert_array_equal(a, b)
    w64 = np.asarray(w, np.float64)
    np.testing.assert_allclose(small[3][2], np.sum(w64 * w64), rtol=(64 + 60) * U32)
    np.testing.assert_allclose(large[3][2], np.sum(w64 * w64), rtol=(2048 + 8) * U32)
    np.testing.assert_allclose(small[3][:2], large[3][:2], rtol=2 * (2048 + 60) * U32)
