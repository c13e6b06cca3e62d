r"""The AdamW forces on the squared weight norm, read from optax optimizer state (arXiv 2606.19367, §2–3, App. A).

Decoupled AdamW in the PyTorch convention (optax ``adamw``: ``scale_by_adam`` → ``add_decayed_weights`` →
``scale_by_learning_rate``) steps each matrix as

.. math:: w_{t+1} = w_t - \eta\,(u_t + \lambda_{wd}\, w_t), \qquad u_t = \hat m_t / (\sqrt{\hat v_t} + \epsilon),

with the bias-corrected moments :math:`\hat m_t = m_t/(1-\beta_1^t)`, :math:`\hat v_t = v_t/(1-\beta_2^t)`.
Expanding the square gives five terms whose sum is the change of the squared norm exactly:

.. math:: \|w_{t+1}\|^2 - \|w_t\|^2 =
   \underbrace{-2\eta\langle w,u\rangle}_{\text{alignment}}
   + \underbrace{\eta^2\|u\|^2}_{\text{injection}}
   \underbrace{-\,2\eta\lambda_{wd}\|w\|^2}_{\text{decay}}
   + \underbrace{2\eta^2\lambda_{wd}\langle w,u\rangle}_{\text{cross}}
   + \underbrace{\eta^2\lambda_{wd}^2\|w\|^2}_{\text{wd2}} .

The first three are the paper's leading-order forces; alignment is positive when the step −ηu points along
w. The last two are the higher-order terms the paper drops (App. A), kept here so that the budget closes.

Any other optimizer (Muon, the SGD family) is read the same way from its own step Δ = w_{t+1} − w_t: its
direction is what the step holds beyond the instantaneous decay, u = −Δ/η − λ_wd w, so the five terms keep
their meaning and still sum to the change of ‖w‖² (:func:`forces_from_update`; a generalisation beyond the
papers, which treat AdamW only). For SGD with L2 decay u is the gradient itself.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Forces(NamedTuple):
    """The five terms of ‖w_{t+1}‖² − ‖w_t‖² for one matrix (or one per matrix of a stack)."""

    alignment: jax.Array
    injection: jax.Array
    decay: jax.Array
    cross: jax.Array
    wd2: jax.Array

    def total(self) -> jax.Array:
        """‖w_{t+1}‖² − ‖w_t‖², exactly (to float rounding)."""
        return self.alignment + self.injection + self.decay + self.cross + self.wd2

    def leading(self) -> jax.Array:
        """The paper's leading-order change: alignment + injection + decay."""
        return self.alignment + self.injection + self.decay


def _matrix_sum(x: jax.Array) -> jax.Array:
    """Sum over each matrix: the last two axes (all axes of a vector or scalar); leading axes are a stack."""
    return jnp.sum(x, axis=tuple(range(max(x.ndim - 2, 0), x.ndim)))


def forces_from_direction(w: jax.Array, u: jax.Array, lr: Any, weight_decay: Any) -> Forces:
    """The five terms for a step ``w ← w − η(u + λ_wd w)`` with update direction ``u`` (float32 sums)."""
    w = w.astype(jnp.float32)
    u = u.astype(jnp.float32)
    lr = jnp.asarray(lr, jnp.float32)
    wd = jnp.asarray(weight_decay, jnp.float32)
    wu, uu, ww = _matrix_sum(w * u), _matrix_sum(u * u), _matrix_sum(w * w)
    return Forces(-2.0 * lr * wu, lr * lr * uu, -2.0 * lr * wd * ww, 2.0 * lr * lr * wd * wu, (lr * wd) ** 2 * ww)


def _map_leaves(fn, params: Any, weight_decay: Any, *trees: Any) -> Any:
    """``fn(w, wd, *rest)`` leaf by leaf, with λ_wd a number or a tree like ``params``."""
    if isinstance(weight_decay, (int, float)) or jax.tree.structure(weight_decay) != jax.tree.structure(params):
        weight_decay = jax.tree.map(lambda _: weight_decay, params)
    return jax.tree.map(fn, params, weight_decay, *trees)


def forces_from_update(params: Any, updates: Any, lr: Any, weight_decay: Any = 0.0) -> Any:
    """A tree of :class:`Forces` for any optimizer's step ``updates`` = w_{t+1} − w_t (what optax returned).

    The direction is u = −Δ/η − λ_wd w (the step beyond the instantaneous decay), so ``total()`` equals
    ‖w + Δ‖² − ‖w‖² for every optimizer; for AdamW it is the same u that :func:`adamw_forces` reads from the
    moments, up to the rounding of Δ.
    """
    lr = jnp.asarray(lr, jnp.float32)

    def one(w, wd, delta):
        w = w.astype(jnp.float32)
        return forces_from_direction(w, -delta.astype(jnp.float32) / lr - jnp.asarray(wd, jnp.float32) * w, lr, wd)

    return _map_leaves(one, params, weight_decay, updates)


def find_adam_state(opt_state: Any) -> optax.ScaleByAdamState:
    """The (single) ``ScaleByAdamState`` inside an optax state, however the transformations are chained."""
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one optax ScaleByAdamState in the optimizer state, found {len(found)}")
    return found[0]


def adam_direction(state: optax.ScaleByAdamState, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Any:
    """u = m̂/(√v̂ + ε) per leaf from the state an ``update`` returned (its count is this step's t)."""
    t = state.count
    c1 = 1.0 - jnp.asarray(b1, jnp.float32) ** t
    c2 = 1.0 - jnp.asarray(b2, jnp.float32) ** t
    return jax.tree.map(lambda m, v: (m / c1.astype(m.dtype)) / (jnp.sqrt(v / c2.astype(v.dtype)) + eps),
                        state.mu, state.nu)


def adamw_forces(params: Any, opt_state: Any, lr: Any, weight_decay: Any, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8) -> Any:
    """A tree of :class:`Forces`, one per leaf of ``params``, for the AdamW step that produced ``opt_state``.

    Args:
      params: the weights *before* this step's update.
      opt_state: the state ``optax.adamw(...).update`` returned for this step (any chain holding one
        ``ScaleByAdamState``, e.g. with gradient clipping in front).
      lr: the learning rate of this step (the schedule's value at the step's count − 1).
      weight_decay: λ_wd, a number or a tree like ``params`` (0 where the decay mask is off).
      b1, b2, eps: the Adam constants the optimizer was built with.

    Then ``‖params_after‖² − ‖params‖² == Forces.total()`` leaf by leaf, to float rounding. Pure and jit-able.
    """
    u = adam_direction(find_adam_state(opt_state), b1, b2, eps)
    return _map_leaves(lambda w, wd, d: forces_from_direction(w, d, lr, wd), params, weight_decay, u)
