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

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from weibull_jax import taxonomy
from weibull_jax import tree as tree_lib


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

    def post_update_alignment(self) -> jax.Array:
        r"""The alignment term at the weights *after* the step, :math:`-2\eta\langle w_{t+1}, u_t\rangle`:
        what the forces paper's public code records as the true alignment (it reads the weights after
        ``optimizer.step()`` with the moments that made that step). From :math:`w_{t+1} = (1-\eta\lambda_{wd})
        w_t - \eta u_t` it is exactly alignment + cross + 2 · injection: it exceeds the alignment at the weights
        the step started from by twice the step's injection."""
        return self.alignment + self.cross + 2.0 * self.injection


def _matrix_sum(x: jax.Array) -> jax.Array:
    """Sum over each matrix: the last two axes (all axes of a vector or scalar); leading axes are a stack."""
    return jnp.sum(x, axis=tuple(range(max(x.ndim - 2, 0), x.ndim)))


def _inner_products(w: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(⟨w,u⟩, ‖u‖², ‖w‖²) per matrix: one variadic reduction along each row (w and u are read once, in one
    kernel), then a sum of the row sums. In two stages because one pass over a whole matrix accumulates
    sequentially on a CPU: ‖w‖² of a 4096 × 128 embedding came out 2.0e-4 low against float64 (8e-9 in two
    stages), and a mesh that splits the matrix over 8 devices changed that error 20-fold."""
    if w.ndim == 0:
        return w * u, u * u, w * w
    zero = jnp.zeros((), jnp.float32)
    rows = jax.lax.reduce((w * u, u * u, w * w), (zero, zero, zero),
                          lambda a, b: (a[0] + b[0], a[1] + b[1], a[2] + b[2]), (w.ndim - 1,))
    return rows if w.ndim == 1 else tuple(jnp.sum(r, axis=-1) for r in rows)


def forces_from_sums(wu: jax.Array, uu: jax.Array, ww: jax.Array, lr: Any, weight_decay: Any) -> Forces:
    """The five terms from the step's three inner products ⟨w,u⟩, ‖u‖², ‖w‖² (float32)."""
    lr = jnp.asarray(lr, jnp.float32)
    wd = jnp.asarray(weight_decay, jnp.float32)
    return Forces(-2.0 * lr * wu, lr * lr * uu, -2.0 * lr * wd * ww, 2.0 * lr * lr * wd * wu, (lr * wd) ** 2 * ww)


def forces_from_direction(w: jax.Array, u: jax.Array, lr: Any, weight_decay: Any) -> Forces:
    """The five terms for a step ``w ← w − η(u + λ_wd w)`` with update direction ``u`` (float32 sums)."""
    return forces_from_sums(*_inner_products(w.astype(jnp.float32), u.astype(jnp.float32)), lr, weight_decay)


def per_leaf(value: Any, params: Any) -> Any:
    """``value`` (λ_wd, η: a number or a tree like ``params``) as a tree like ``params``."""
    if jax.tree.structure(value) == jax.tree.structure(params):
        return value
    return jax.tree.map(lambda _: value, params)


def _map_leaves(fn, params: Any, weight_decay: Any, select, *trees: Any) -> Any:
    """``fn(w, wd, *rest)`` on the leaves ``select`` keeps (None on the others), λ_wd a number or a tree."""
    return jax.tree.map(lambda w, *rest: fn(w, *rest) if select is None or select(w) else None,
                        params, per_leaf(weight_decay, params), *trees)


def forces_from_update(params: Any, updates: Any, lr: Any, weight_decay: Any = 0.0,
                       select: Callable[[jax.Array], bool] | None = None) -> Any:
    """A tree of :class:`Forces` for any optimizer's step ``updates`` = w_{t+1} − w_t (what optax returned).

    The direction is u = −Δ/η − λ_wd w (the step beyond the instantaneous decay), so ``total()`` equals
    ‖w + Δ‖² − ‖w‖² for every optimizer; for AdamW it is the same u that :func:`adamw_forces` reads from the
    moments, up to the rounding of Δ. ``lr``: η, a number or a tree like the params (Muon's AdamW part at
    its own rate).
    """
    def one(w, wd, delta, eta):
        eta = jnp.asarray(eta, jnp.float32)
        inverse_lr = jnp.where(eta > 0, 1.0 / jnp.where(eta > 0, eta, 1.0), 0.0)  # a step at η = 0: no budget
        w = w.astype(jnp.float32)
        u = -delta.astype(jnp.float32) * inverse_lr - jnp.asarray(wd, jnp.float32) * w
        return forces_from_direction(w, u, eta, wd)

    return _map_leaves(one, params, weight_decay, select, updates, per_leaf(lr, params))


def _is_adam_state(x: Any) -> bool:
    return isinstance(x, optax.ScaleByAdamState)


def find_adam_state(opt_state: Any) -> optax.ScaleByAdamState:
    """The (single) ``ScaleByAdamState`` inside an optax state, however the transformations are chained."""
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_adam_state) if _is_adam_state(s)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one optax ScaleByAdamState in the optimizer state, found {len(found)}")
    return found[0]


def replace_adam_state(opt_state: Any, adam_state: optax.ScaleByAdamState) -> Any:
    """``opt_state`` with its (single) ``ScaleByAdamState`` replaced by ``adam_state``."""
    return jax.tree.map(lambda x: adam_state if _is_adam_state(x) else x, opt_state, is_leaf=_is_adam_state)


def adam_direction(state: optax.ScaleByAdamState, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Any:
    """u = m̂/(√v̂ + ε) per leaf from the state an ``update`` returned (its count is this step's t)."""
    t = state.count
    c1 = 1.0 - jnp.asarray(b1, jnp.float32) ** t
    c2 = 1.0 - jnp.asarray(b2, jnp.float32) ** t
    return jax.tree.map(lambda m, v: (m / c1.astype(m.dtype)) / (jnp.sqrt(v / c2.astype(v.dtype)) + eps),
                        state.mu, state.nu)


def adamw_forces(params: Any, opt_state: Any, lr: Any, weight_decay: Any, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8, select: Callable[[jax.Array], bool] | None = None) -> Any:
    """A tree of :class:`Forces`, one per leaf of ``params``, for the AdamW step that produced ``opt_state``.

    Args:
      params: the weights *before* this step's update.
      opt_state: the state ``optax.adamw(...).update`` returned for this step (any chain holding one
        ``ScaleByAdamState``, e.g. with gradient clipping in front).
      lr: the learning rate of this step (the schedule's value at the step's count − 1).
      weight_decay: λ_wd, a number or a tree like ``params`` (0 where the decay mask is off).
      b1, b2, eps: the Adam constants the optimizer was built with.
      select: which leaves to budget (e.g. :func:`weibull_jax.tree.is_matrix`); None on the others. Default: all.

    Then ``‖params_after‖² − ‖params‖² == Forces.total()`` leaf by leaf, to float rounding. Pure and jit-able.
    """
    u = adam_direction(find_adam_state(opt_state), b1, b2, eps)
    return _map_leaves(lambda w, wd, d: forces_from_direction(w, d, lr, wd), params, weight_decay, select, u)


class NormStats(NamedTuple):
    """‖w‖² and the number of weights of a matrix (or of a group of them, summed)."""

    sq_norm: jax.Array
    size: jax.Array

    def rms(self) -> jax.Array:
        """RMS = √(‖w‖²/n), the quantity the Weibull bridge maps to λ (App. A.2)."""
        return jnp.sqrt(self.sq_norm / self.size)


def norm_stats(params: Any) -> Any:
    """A tree of :class:`NormStats`, one per leaf (per matrix of a stack), float32 sums."""
    def one(w):
        sq_norm = _matrix_sum(jnp.square(w.astype(jnp.float32)))
        return NormStats(sq_norm, jnp.full(sq_norm.shape, w.size // sq_norm.size, jnp.float32))

    return jax.tree.map(one, params)


GROUPINGS = ("all", "class", "kind", "block", "matrix")


def group_key(name: str, by: str) -> str:
    """The group of a parameter name: its functional class, kind, block (``block_3``; ``outside``) or itself."""
    if by == "all":
        return "all"
    if by == "matrix":
        return name
    info = taxonomy.describe(name)
    if by == "class":
        return info.cls
    if by == "kind":
        return info.kind
    if by == "block":
        return f"block_{info.block}" if info.block >= 0 else "outside"
    raise ValueError(f"unknown grouping {by!r}; known: {GROUPINGS}")


def group_sums(records: Any, by: str) -> dict[str, Any]:
    """Sums of per-leaf records (:class:`Forces` or :class:`NormStats`) within each group of ``by``.

    Stacks of matrices are summed over their stack axes too. Jit-able: the grouping is read from the
    names, so the result is a dict of fixed keys.
    """
    def is_record(x):
        return isinstance(x, (Forces, NormStats))

    flat, _ = jax.tree_util.tree_flatten_with_path(records, is_leaf=is_record)
    groups: dict[str, Any] = {}
    for path, record in flat:
        key = group_key(tree_lib.path_name(path), by)
        summed = type(record)(*(jnp.sum(x) for x in record))
        groups[key] = summed if key not in groups else jax.tree.map(jnp.add, groups[key], summed)
    return groups
