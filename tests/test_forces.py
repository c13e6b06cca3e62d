"""The AdamW force budget read from optax state, against a hand-written numpy AdamW on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from weibull_jax import forces, models, taxonomy, tree

B1, B2, EPS, WD = 0.9, 0.95, 1e-8, 0.1


def _tiny_model():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"w_in": 0.2 * jax.random.normal(k1, (8, 16)), "bias": jnp.zeros(16),
              "w_out": 0.2 * jax.random.normal(k2, (2, 16, 4))}  # a stack of two output heads
    x = jax.random.normal(k3, (32, 8))
    y = jnp.sin(x[:, :4])

    def loss(p):
        h = jnp.tanh(x @ p["w_in"] + p["bias"])
        return sum(jnp.mean((h @ p["w_out"][i] - y) ** 2) for i in range(2))

    return params, loss


def _schedule(step):
    return 3e-2 * jnp.minimum(1.0, (step + 1) / 5)  # warmup, so the step's lr matters


def test_adamw_forces_match_numpy_adamw_and_close_the_budget():
    params, loss = _tiny_model()
    decay_mask = {"w_in": True, "bias": False, "w_out": True}
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(_schedule, b1=B1, b2=B2, eps=EPS, weight_decay=WD, mask=decay_mask))
    state = opt.init(params)
    wd_tree = {k: WD if on else 0.0 for k, on in decay_mask.items()}
    m = {k: np.zeros(v.shape) for k, v in params.items()}
    v = {k: np.zeros(v.shape) for k, v in params.items()}
    step_fn = jax.jit(lambda p, s, lr: _step(opt, loss, p, s, lr, wd_tree))
    for t in range(1, 21):
        lr = float(_schedule(t - 1))
        new_params, state, f, clipped = step_fn(params, state, lr)
        for k in params:
            w, g = np.asarray(params[k], np.float64), np.asarray(clipped[k], np.float64)
            m[k] = B1 * m[k] + (1 - B1) * g
            v[k] = B2 * v[k] + (1 - B2) * g * g
            u = (m[k] / (1 - B1 ** t)) / (np.sqrt(v[k] / (1 - B2 ** t)) + EPS)
            wd = wd_tree[k]
            # the optimizer itself: w ← w − η(u + λ_wd w), and its float32 moments track the float64 ones
            np.testing.assert_allclose(new_params[k], w - lr * (u + wd * w), rtol=1e-5, atol=1e-7)
            adam = forces.find_adam_state(state)
            np.testing.assert_allclose(adam.mu[k], m[k], rtol=1e-5, atol=1e-5 * np.abs(m[k]).max())
            np.testing.assert_allclose(adam.nu[k], v[k], rtol=1e-5, atol=1e-5 * np.abs(v[k]).max())
            # the forces are read from the optimizer's own moments: u from its float32 m, v in float64
            mu, nu = np.asarray(adam.mu[k], np.float64), np.asarray(adam.nu[k], np.float64)
            u = (mu / (1 - B1 ** t)) / (np.sqrt(nu / (1 - B2 ** t)) + EPS)
            axes = (-2, -1) if w.ndim >= 2 else (-1,)
            wu, uu, ww = (np.sum(a * b, axis=axes) for a, b in ((w, u), (u, u), (w, w)))
            expected = [-2 * lr * wu, lr * lr * uu, -2 * lr * wd * ww, 2 * lr * lr * wd * wu, (lr * wd) ** 2 * ww]
            scale = np.abs(expected[0]) + np.abs(expected[1]) + np.abs(expected[2])
            for name, got, want in zip(forces.Forces._fields, f[k], expected):
                assert np.all(np.abs(np.asarray(got) - want) <= 1e-6 * scale), (t, k, name)
            after = np.sum(np.asarray(new_params[k], np.float64) ** 2, axis=axes)
            change = after - np.sum(w * w, axis=axes)
            # exact closure: the five terms add up to the change of ‖w‖², to float32 rounding of ‖w‖²
            rounding = 1e-6 * (np.sum(w * w, axis=axes) + after)
            assert np.all(np.abs(np.asarray(f[k].total()) - change) <= rounding), (t, k)
            assert np.all(np.abs(np.asarray(f[k].total()) - change) <= 1e-3 * scale), (t, k)
            # the public code's truth, −2η⟨w_{t+1}, u_t⟩ at the weights after the step: alignment + cross +
            # 2 injection, each within 1e-6 · scale (checked above), so the sum within 4e-6 · scale
            post = -2 * lr * np.sum((w - lr * (u + wd * w)) * u, axis=axes)
            assert np.all(np.abs(np.asarray(f[k].post_update_alignment()) - post) <= 4e-6 * scale), (t, k)
        params = new_params
    assert f["w_out"].alignment.shape == (2,)  # one budget per matrix of the stack
    assert float(jnp.abs(f["bias"].decay)) == 0.0


def _step(opt, loss, params, state, lr, wd_tree):
    grads = jax.grad(loss)(params)
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    updates, state = opt.update(grads, state, params)
    f = forces.adamw_forces(params, state, lr, wd_tree, b1=B1, b2=B2, eps=EPS)
    return optax.apply_updates(params, updates), state, f, clipped


def test_find_adam_state_needs_exactly_one():
    params = {"w": jnp.ones((4, 4))}
    with pytest.raises(ValueError, match="found 0"):
        forces.adamw_forces(params, optax.sgd(0.1).init(params), 0.1, 0.0)
    two = optax.chain(optax.adam(0.1), optax.adam(0.1)).init(params)
    with pytest.raises(ValueError, match="found 2"):
        forces.find_adam_state(two)


def test_forces_from_update_agree_with_the_moments_for_adamw():
    params, loss = _tiny_model()
    opt = optax.adamw(0.03, b1=B1, b2=B2, eps=EPS, weight_decay=WD)
    state = opt.init(params)
    for _ in range(5):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        from_moments = forces.adamw_forces(params, state, 0.03, WD, b1=B1, b2=B2, eps=EPS)
        from_step = forces.forces_from_update(params, updates, 0.03, WD)
        for k in params:
            scale = float(jnp.sum(jnp.abs(jnp.stack(from_moments[k][:3]))))
            for a, b in zip(from_moments[k], from_step[k]):
                assert np.all(np.abs(np.asarray(a) - np.asarray(b)) <= 1e-4 * scale)
        params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("name", ["sgd", "sgd_momentum", "sgdw_nesterov", "muon"])
def test_forces_from_update_close_the_budget_for_every_optimizer(name):
    from weibull_jax import optim

    params, loss = _tiny_model()
    params = {"model.layers.0.mlp.up_proj.weight": params["w_in"], "model.layers.0.mlp.up_proj.bias": params["bias"],
              "model.layers.0.mlp.down_proj.weight": params["w_out"][0]}

    def renamed_loss(p):
        return loss({"w_in": p["model.layers.0.mlp.up_proj.weight"], "bias": p["model.layers.0.mlp.up_proj.bias"],
                     "w_out": jnp.stack([p["model.layers.0.mlp.down_proj.weight"]] * 2)})

    opt = optim.make_optimizer(name, 0.05, weight_decay=WD)
    state = opt.init(params)
    wd = optim.decay_per_leaf(params, WD)
    for _ in range(5):
        grads = jax.grad(renamed_loss)(params)
        updates, state = opt.update(grads, state, params)
        f = forces.forces_from_update(params, updates, 0.05, wd)
        new = optax.apply_updates(params, updates)
        for k in params:
            before = np.sum(np.asarray(params[k], np.float64) ** 2)
            after = np.sum(np.asarray(new[k], np.float64) ** 2)
            assert abs(float(f[k].total()) - (after - before)) <= 1e-5 * (before + after), (name, k)
        if name == "sgd":  # plain SGD: the direction is the gradient itself
            k = "model.layers.0.mlp.up_proj.weight"
            w, g = np.asarray(params[k], np.float64), np.asarray(grads[k], np.float64)
            np.testing.assert_allclose(float(f[k].alignment), -2 * 0.05 * np.sum(w * g), rtol=1e-4)
        params = new


def test_group_sums_by_class_kind_block_and_the_norm_bridge():
    config = models.preset("llama-70m", d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=64, vocab_size=50)
    params = models.init_params(config, jax.random.key(0))
    u = jax.tree.map(lambda w: jnp.cos(w * 100.0), params)  # any direction
    f = forces.adamw_forces(params, optax.ScaleByAdamState(jnp.ones((), jnp.int32), u, jax.tree.map(
        jnp.ones_like, u)), 0.01, 0.1, b1=0.0, b2=0.0, eps=0.0, select=tree.is_matrix)
    assert f["final_norm"]["scale"] is None and f["layers_0"]["attention"]["q"]["kernel"] is not None
    by_class = jax.jit(lambda f: forces.group_sums(f, "class"))(f)
    names, leaves, _, _ = tree.named_leaves(params)
    expected = {}
    for n, w in zip(names, leaves):  # the budget's alignment by hand, float64
        cls = taxonomy.describe(n).cls
        w64 = np.asarray(w, np.float64)
        expected[cls] = expected.get(cls, 0.0) - 2 * 0.01 * np.sum(w64 * np.cos(w64 * 100.0))
    assert set(by_class) == {"selection", "transmission", "other"}
    for cls, value in expected.items():
        assert abs(float(by_class[cls].alignment) - value) <= 1e-5 * abs(value) + 1e-7, cls
    by_block = forces.group_sums(f, "block")
    assert set(by_block) == {"block_0", "block_1", "outside"}
    total = forces.group_sums(f, "all")["all"]
    assert abs(float(total.decay) - sum(float(g.decay) for g in by_block.values())) < 1e-6 * abs(float(total.decay))
    stats = forces.group_sums(forces.norm_stats(params), "kind")
    q = np.asarray(params["layers_0"]["attention"]["q"]["kernel"], np.float64)
    q1 = np.asarray(params["layers_1"]["attention"]["q"]["kernel"], np.float64)
    want_rms = np.sqrt((np.sum(q * q) + np.sum(q1 * q1)) / (q.size + q1.size))
    assert abs(float(stats["q"].rms()) / want_rms - 1) < 1e-6 and float(stats["q"].size) == 2 * q.size
    with pytest.raises(ValueError, match="unknown grouping"):
        forces.group_sums(f, "layer")


def test_muon_with_its_own_adam_rate_gets_per_leaf_learning_rates():
    """Muon's AdamW part at η_adam: with a tree of η the decay term of an AdamW-stepped matrix is −2η_adam λ‖w‖²
    (closed form) and the budget still closes."""
    from weibull_jax import optim

    rng = np.random.default_rng(4)
    params = {"model.layers.0.mlp.up_proj.weight": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
              "model.embed_tokens.weight": jnp.asarray(rng.normal(size=(20, 8)), jnp.float32)}
    opt = optim.make_optimizer("muon", 0.05, weight_decay=WD, adam_learning_rate=0.002)
    grads = jax.tree.map(lambda w: jnp.asarray(rng.normal(size=w.shape), jnp.float32), params)
    updates, _ = opt.update(grads, opt.init(params), params)
    eta = {"model.layers.0.mlp.up_proj.weight": 0.05, "model.embed_tokens.weight": 0.002}
    f = forces.forces_from_update(params, updates, eta, WD)
    new = optax.apply_updates(params, updates)
    for k, w in params.items():
        sq = np.sum(np.asarray(w, np.float64) ** 2)
        np.testing.assert_allclose(float(f[k].decay), -2 * eta[k] * WD * sq, rtol=1e-5)
        assert abs(float(f[k].total()) - (np.sum(np.asarray(new[k], np.float64) ** 2) - sq)) <= 1e-5 * sq
