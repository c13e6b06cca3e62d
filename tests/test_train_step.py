"""The jitted train step: its force budget closes on the real model, for AdamW (optax's update, and the fused
kernel of weibull_jax.fused_adamw, on a CPU in Pallas' interpreter) and for Muon; the fused step follows optax's."""

import jax
import numpy as np
import pytest

from train import train
from weibull_jax import models, optim, pallas_triton, tree

WD = 0.1
NEEDS_KERNEL = pytest.mark.skipif(not pallas_triton.AVAILABLE, reason="this JAX has no Pallas Triton backend")


def _tiny(name: str, clip_norm: float = 0.0, dtype: str = "float32"):
    config = models.preset("pythia-14m", d_model=32, n_heads=4, n_layers=2, d_ff=64, vocab_size=61, dtype=dtype)
    schedule = optim.learning_rate_schedule("cosine", 3e-3, 100, 5)
    optimizer = optim.make_optimizer(name, schedule, WD, b1=0.9, b2=0.95, clip_norm=clip_norm or None)
    state = train.create_train_state(config, optimizer, jax.random.key(0))
    wd = optim.decay_per_leaf(state.params, WD)
    adam = dict(b1=0.9, b2=0.95, eps=1e-8, clip_norm=clip_norm) if name == "adamw" else None
    return config, schedule, optimizer, state, wd, adam


@pytest.mark.parametrize("name,fused", [("adamw", False), pytest.param("adamw", True, marks=NEEDS_KERNEL),
                                        ("muon", False)])
def test_step_records_a_closing_budget_for_every_matrix(name, fused):
    config, schedule, optimizer, state, wd, adam = _tiny(name)
    step = train.make_train_step(config, optimizer, schedule, wd, adam, fused=fused)
    tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, 61)
    losses = []
    for t in range(8):
        before = jax.tree.map(lambda x: np.asarray(x, np.float64), state.params)
        state, metrics = step(state, tokens)
        losses.append(float(metrics["loss"]))
        cosine = 0.1 + 0.9 * (1 + np.cos(np.pi * (t - 5) / 95)) / 2
        assert abs(float(metrics["lr"]) - 3e-3 * (t / 5 if t < 5 else cosine)) < 1e-9
        after = jax.tree.map(lambda x: np.asarray(x, np.float64), state.params)
        table = np.asarray(metrics["forces"], np.float64)  # (matrices, 5), rows in matrix_names order
        names = train.matrix_names(state.params)
        assert table.shape == (len(names), 5) and len(names) == 2 * 4 + 2
        _, w0, _, _ = tree.named_leaves(before)
        _, w1, _, _ = tree.named_leaves(after)
        for name, row, a, b in zip(names, table, w0, w1):
            change = np.sum(b ** 2) - np.sum(a ** 2)
            assert abs(row.sum() - change) <= 2e-6 * np.sum(a ** 2), (t, name)
    assert losses[-1] < losses[0] - 0.1
    assert int(state.step) == 8


@NEEDS_KERNEL
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_step_follows_optaxs_with_clipping(dtype):
    """Eight steps along optax's trajectory with the gradient clipped (clip 0.05: every step here), each
    step taken by both from the same state and batch: the fused step's weights, moments, counts and forces
    against optax's. They differ by the update's float32 rounding (tests/test_fused_adamw.py: |δw'| ≲
    4u|w'| + 72u·η, u = 2⁻²⁴, here ≤ 2.4e-7|w| + 1e-9; the moments' rounding scales with their terms, not
    with their cancelling sum), far below the 1e-5 asserted; a wrong count, learning rate, clip or decay
    moves the weights by O(η) = 1e-3 relative and more. In bfloat16 the fused step takes the kernels'
    gradients in bfloat16 (models.cast_kernels), optax the same values in float32. Both take the loss's
    kernel on a GPU (weibull_jax.cross_entropy), so both get the same gradients: Adam's direction turns a
    gradient's float32 rounding into O(η) where the gradient is near zero."""
    config, schedule, optimizer, state, wd, adam = _tiny("adamw", clip_norm=0.05, dtype=dtype)
    fused = train.make_train_step(config, optimizer, schedule, wd, adam, fused=True)
    reference = train.make_train_step(config, optimizer, schedule, wd, adam, fused_loss=True)
    tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, 61)
    for _ in range(8):
        squares = np.asarray([np.sum(np.asarray(w, np.float64) ** 2) for w in tree.named_leaves(state.params)[1]])
        a, got = fused(jax.tree.map(lambda x: x.copy(), state), tokens)
        state, want = reference(state, tokens)
        assert float(want["grad_norm"]) > 0.05
        assert jax.tree.structure(a.opt_state) == jax.tree.structure(state.opt_state)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(state)):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * np.max(np.abs(y)))
        # alignment and cross are sums that cancel: their rounding scales with Σ|wu| ≤ ‖w‖‖u‖, so each row's
        # tolerance is relative to 2η‖w‖‖u‖ = 2√(‖w‖²·injection)
        want = np.asarray(want["forces"], np.float64)
        scale = 2 * np.sqrt(squares * want[:, 1])
        assert np.all(np.abs(np.asarray(got["forces"], np.float64) - want) <= 1e-4 * (np.abs(want) + scale[:, None]))
