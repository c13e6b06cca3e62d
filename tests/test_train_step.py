"""The jitted train step: its force budget closes on the real model, for AdamW and for Muon."""

import jax
import numpy as np
import pytest

from train import train
from weibull_jax import models, optim, tree

WD = 0.1


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_step_records_a_closing_budget_for_every_matrix(name):
    config = models.preset("pythia-14m", d_model=32, n_heads=4, n_layers=2, d_ff=64, vocab_size=61)
    schedule = optim.learning_rate_schedule("cosine", 3e-3, 100, 5)
    optimizer = optim.make_optimizer(name, schedule, WD, b1=0.9, b2=0.95)
    state = train.create_train_state(config, optimizer, jax.random.key(0))
    wd = jax.tree.map(lambda on: WD if on else 0.0, optim.matrices_decay(state.params))
    adam = dict(b1=0.9, b2=0.95, eps=1e-8) if name == "adamw" else None
    step = train.make_train_step(config, optimizer, schedule, wd, adam)
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
