r"""Learning-rate schedules and optimizers, as optax transformations chosen by name.

Schedules (η_t for step t = 0, 1, …; peak η, warmup W, total T, floor f):

* ``cosine``: η t/W during warmup, then η[f + (1 − f)(1 + cos(π (t − W)/(T − W)))/2] (Pythia's recipe);
* ``wsd`` (warmup–stable–decay): warmup, η until the last ``decay_fraction`` of training, then linear to fη;
* ``step``: warmup, then η multiplied by ``gamma`` at each milestone fraction of T (0.5, 0.75: SoSD paper);
* ``constant``: warmup, then η.

Optimizers (w the weights, g the gradient, λ the weight decay, μ the momentum):

* ``adamw``: w ← w − η(m̂/(√v̂ + ε) + λw), PyTorch's decoupled convention (optax ``adamw``);
* ``sgd``: w ← w − η(g + λw) (L2 decay, no momentum);
* ``sgd_momentum``: b ← μb + (g + λw), w ← w − ηb (PyTorch SGD with L2 ``weight_decay``);
* ``sgdw_nesterov``: b ← μb + g, w ← w − η(g + μb) − ηλw (Nesterov momentum, decoupled decay);
* ``muon``: w ← w − η(NS₅(g + μb) + λw) with b ← μb + g for the hidden 2-D matrices, NS₅ the five-step
  Newton–Schulz orthogonalisation (optax ``contrib.scale_by_muon``: singular values pushed into ~[0.7, 1.1]);
  for embeddings, the head, norms and biases optax's ``contrib.muon`` runs AdamW with Nesterov momentum
  (its own choice, shared with the Muon part).

Each can sit behind gradient clipping by global norm; ``decay_mask`` (a tree of bools like the params)
switches weight decay off where it is False (by default: only matrices decay).
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from weibull_jax import taxonomy
from weibull_jax import tree as tree_lib

SCHEDULES = ("cosine", "wsd", "step", "constant")
OPTIMIZERS = ("adamw", "sgd", "sgd_momentum", "sgdw_nesterov", "muon")


def learning_rate_schedule(kind: str, peak: float, total_steps: int, warmup_steps: int = 0, floor: float = 0.1,
                           decay_fraction: float = 0.2, milestones: tuple[float, ...] = (0.5, 0.75),
                           gamma: float = 0.1) -> optax.Schedule:
    """η_t of the schedule ``kind`` (see the module docstring)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; known: {SCHEDULES}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps; got {warmup_steps} and {total_steps}")
    warmup = optax.linear_schedule(0.0, peak, warmup_steps) if warmup_steps else optax.constant_schedule(peak)
    rest = total_steps - warmup_steps
    if kind == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=floor)
    elif kind == "wsd":
        stable = int(round(rest * (1.0 - decay_fraction)))
        after = optax.join_schedules([optax.constant_schedule(peak),
                                      optax.linear_schedule(peak, floor * peak, rest - stable)], [stable])
    elif kind == "step":
        after = optax.piecewise_constant_schedule(
            peak, {int(round(m * total_steps)) - warmup_steps: gamma for m in milestones})
    else:
        after = optax.constant_schedule(peak)
    return optax.join_schedules([warmup, after], [warmup_steps])


def schedule_of(optimizer: Any, total_steps: int) -> optax.Schedule:
    """The schedule a run's optimizer settings name (``config.optimizer``: schedule, lr, warmup_steps,
    floor, decay_fraction, milestones, gamma), for the training loop and for the analyses of its series."""
    o = optimizer
    return learning_rate_schedule(o.schedule, o.lr, total_steps, o.warmup_steps, o.floor, o.decay_fraction,
                                  tuple(o.milestones), o.gamma)


def matrices_decay(params: Any) -> Any:
    """Default decay mask: weight decay on every array with two or more axes, none on vectors (norms, biases)."""
    return jax.tree.map(tree_lib.is_matrix, params)


def decay_per_leaf(params: Any, weight_decay: float) -> Any:
    """λ_wd per leaf, as the force budget and the fused AdamW read it: ``weight_decay`` where
    :func:`matrices_decay` puts the decay, 0 elsewhere (a tree like ``params``; shapes suffice)."""
    return jax.tree.map(lambda on: weight_decay if on else 0.0, matrices_decay(params))


def hidden_matrices(params: Any) -> Any:
    """Muon's domain: 2-D matrices inside the blocks (embeddings, the head, norms and biases are not)."""
    names, leaves, treedef, positions = tree_lib.named_leaves(params, lambda p, x: True)
    flags = [x.ndim == 2 and taxonomy.kind_of(n) not in ("embed", "unembed") for n, x in zip(names, leaves)]
    return tree_lib.unflatten_selected(treedef, positions, flags)


def make_optimizer(name: str, learning_rate: float | optax.Schedule, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, momentum: float = 0.9,
                   clip_norm: float | None = None, decay_mask: Any = matrices_decay,
                   muon_mask: Any = hidden_matrices,
                   adam_learning_rate: float | optax.Schedule | None = None) -> optax.GradientTransformation:
    """The optimizer ``name`` (see the module docstring), optionally behind global-norm clipping.
    ``adam_learning_rate``: Muon's AdamW part (embeddings, head, vectors) at its own rate (default: the same)."""
    if name == "adamw":
        opt = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    elif name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(weight_decay, decay_mask), optax.sgd(learning_rate))
    elif name == "sgd_momentum":
        opt = optax.chain(optax.add_decayed_weights(weight_decay, decay_mask), optax.sgd(learning_rate, momentum))
    elif name == "sgdw_nesterov":
        opt = optax.chain(optax.trace(momentum, nesterov=True), optax.add_decayed_weights(weight_decay, decay_mask),
                          optax.scale_by_learning_rate(learning_rate))
    elif name == "muon":
        def dimension_numbers(params):
            return jax.tree.map(lambda on: optax.contrib.MuonDimensionNumbers() if on else None, muon_mask(params))

        opt = optax.contrib.muon(learning_rate, beta=momentum, weight_decay=weight_decay, weight_decay_mask=decay_mask,
                                 adam_b1=b1, adam_b2=b2, adam_weight_decay=weight_decay,
                                 adam_learning_rate=adam_learning_rate, muon_weight_dimension_numbers=dimension_numbers)
    else:
        raise ValueError(f"unknown optimizer {name!r}; known: {OPTIMIZERS}")
    return optax.chain(optax.clip_by_global_norm(clip_norm), opt) if clip_norm else opt
