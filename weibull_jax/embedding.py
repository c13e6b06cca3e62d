r"""An embedding lookup whose gradient is summed in an order the tokens fix, not by unordered atomic adds.

The gradient of ``table[tokens]`` is a scatter-add, ∂L/∂E_v = Σ_{i: t_i = v} ∂L/∂x_i. On a GPU, XLA sums it
with floating-point atomic adds, whose order changes from run to run, and the table's gradient with it
(measured by ``python -m train.determinism``: the only leaf of a Pythia-70M step that does not repeat).
:func:`lookup` computes the same sum in an order fixed by the tokens alone, with no atomics (whether that
makes the GPU step repeat, and its cost there, are still to be measured):

1. sort the positions by token (a stable sort, so ties keep their positions' order);
2. a segmented inclusive scan of the rows in that order, ``(a, f) ⊕ (b, g) = (g ? b : a + b, f ∨ g)`` with
   f marking the first row of each token's run (associative, so ``lax.associative_scan`` may evaluate it
   as a tree whose shape depends only on the number of rows);
3. each run's last prefix sum is its token's gradient, written with a scatter whose indices are unique (the
   other rows are sent out of range and dropped): no two writes meet.

Each sum is formed in float32 by a tree of additions at most 2⌈log₂ n⌉ deep (n = the batch's tokens; the
scan's reduction and its down-sweep), so |error| ≤ 2⌈log₂ n⌉·u·Σ|∂L/∂x_i| to first order, against
(n_v − 1)·u·Σ|·| for a sum of n_v rows left to right (Higham, *Accuracy and Stability*, §4.2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def lookup(table: jax.Array, tokens: jax.Array) -> jax.Array:
    """``table[tokens]`` (``tokens`` int, any shape; rows of ``table``), its gradient in a fixed order."""
    return jnp.take(table, tokens, axis=0)


def _lookup_forward(table, tokens):
    return lookup(table, tokens), (table, tokens)


def _segmented_sum(left, right):
    (a, starts_a), (b, starts_b) = left, right
    return jnp.where(starts_b[:, None], b, a + b), starts_a | starts_b


def _lookup_backward(residuals, rows_cotangent):
    table, tokens = residuals
    ids = tokens.reshape(-1)
    order = jnp.argsort(ids, stable=True)
    ids = ids[order]
    rows = rows_cotangent.reshape(-1, table.shape[1])[order].astype(jnp.float32)
    change = ids[1:] != ids[:-1]
    starts = jnp.concatenate([jnp.ones((1,), bool), change])
    sums, _ = jax.lax.associative_scan(_segmented_sum, (rows, starts))
    ends = jnp.concatenate([change, jnp.ones((1,), bool)])
    rows_of = jnp.where(ends, ids, table.shape[0])  # out of range: dropped
    grad = jnp.zeros(table.shape, jnp.float32).at[rows_of].set(sums, mode="drop")
    return grad.astype(table.dtype), None


lookup.defvjp(_lookup_forward, _lookup_backward)
