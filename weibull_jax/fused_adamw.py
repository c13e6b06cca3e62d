r"""AdamW's step and the three inner products of its forces in one pass over each matrix (a Pallas kernel).

The forces (:mod:`weibull_jax.forces`, arXiv 2606.19367 §2–3) need ⟨w,u⟩, ‖u‖² and ‖w‖² of every matrix at
every step, with u = m̂/(√v̂ + ε) the Adam direction. Read after optax's update they cost a second pass over
w, m and v (12 bytes a weight, after the update's 28: read g, m, v, w, write m, v, w): XLA fuses each leaf's
update into one kernel but not the sums with it, however they are written (from the new moments, from the
gradient and the old moments, or from the step Δ: +2.8 %, +4.4 %, +3.6 % of the Pythia-70M step against no
forces on an H200, 2026-12-03, a scratch probe of three timings each). Here one kernel per matrix does both.
Each program takes a block of the flattened matrix and computes, operation for operation as optax's
``adamw`` (behind its global-norm clip),

.. math:: \tilde g = s\,g,\quad m' = (1-\beta_1)\tilde g + \beta_1 m,\quad v' = (1-\beta_2)\tilde g^2 + \beta_2 v,
   \quad u = \frac{m'/c_1}{\sqrt{v'/c_2} + \epsilon},\quad w' = w + (-\eta)(u + \lambda w),

with c_i = 1 − β_i^t and s the clipping factor, stores m', v' and w' in place, and the block's Σwu, Σu², Σw²,
which are added afterwards. Vectors (biases, norm scales) and stacks of matrices take the same formula in XLA.
The results agree with optax's to float32 rounding, not bit for bit (a compiler may contract a·b + c into one
rounding or not).

On a GPU the kernel is Pallas' Triton backend; anywhere else it runs in Pallas' interpreter (the tests'
path). ``pallas_triton.AVAILABLE`` says whether this JAX has that backend; a mesh of several devices is not
supported. The training program steps this way on one GPU and keeps optax's update otherwise.

Measured on an H200 (2026-12-03, ``bench_train_step.py``, Pythia-70M, 24 × 512): the forces cost 2.1 % of
the step this way against 2.9 % read after optax's update (11.53 against 11.62 ms; the step without them
11.29 ms). The kernel steps the 26 matrices and sums their forces in 544 µs, less than XLA's update alone of
the same matrices (622 µs); what the forces still cost is around it: the gradients written out in float32
and row-major for the kernel (XLA's update fused their conversion and transposition), the 26 sums of the
blocks' sums, and the launches. Fewer launches are no cure: one kernel for all the matrices, each program
stepping a span of every matrix, was slower (1.235 against 1.024 ms for Pythia-70M's 26 matrices alone,
10.09 against 8.76 ms for Pythia-1B's 66; H200, 2026-12-03), its programs' blocks running one after another.
The kernel reads g in its own dtype: given the projections' gradients in bfloat16 (the training step's,
``models.cast_kernels``) the forces cost 1.3–1.9 % of the Pythia-70M step against 1.7–2.4 % with float32
gradients, and 0.75 % against 1.15 % of Pythia-1B's (H200, 2026-12-03, same calls; README, Speed).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import pallas as pl

from weibull_jax import forces, pallas_triton
from weibull_jax.pallas_triton import plt


BLOCK = 2048  # weights a program steps (a power of two)
NUM_WARPS = 4
_SCALARS = 16  # the kernel's scalars, padded to a power of two: b1, 1 − b1, b2, 1 − b2, eps, c1, c2, −η, λ, s


def _step(g, m, v, w, scalars):
    """The AdamW step of one leaf (or block): (m', v', w', u), float32, optax's operations in optax's order."""
    b1, one_minus_b1, b2, one_minus_b2, eps, c1, c2, minus_lr, wd, scale = scalars[:10]
    g = g * scale
    m = one_minus_b1 * g + b1 * m
    v = one_minus_b2 * (g * g) + b2 * v
    u = (m / c1) / (jnp.sqrt(v / c2) + eps)
    return m, v, w + minus_lr * (u + wd * w), u


def _kernel(scalars_ref, g_ref, m_ref, v_ref, w_ref, m_out, v_out, w_out, sums_out, *, n: int, block: int):
    mask = pl.program_id(0) * block + jnp.arange(block, dtype=jnp.int32) < n
    scalars = [scalars_ref[i] for i in range(10)]
    g = plt.load(g_ref, mask=mask, other=0.0).astype(jnp.float32)  # g in its own dtype; m, v, w are float32
    m, v, w = (plt.load(ref, mask=mask, other=0.0) for ref in (m_ref, v_ref, w_ref))
    m, v, new_w, u = _step(g, m, v, w, scalars)  # beyond n: g = m = v = w = 0, so u = 0 and nothing is added
    for ref, x in ((m_out, m), (v_out, v), (w_out, new_w)):
        plt.store(ref, x, mask=mask)
    lane = jnp.arange(4, dtype=jnp.int32)
    wu, uu, ww = jnp.sum(w * u), jnp.sum(u * u), jnp.sum(w * w)
    sums_out[...] = jnp.where(lane == 0, wu, jnp.where(lane == 1, uu, jnp.where(lane == 2, ww, 0.0)))


def step_matrix(g: jax.Array, m: jax.Array, v: jax.Array, w: jax.Array, scalars: jax.Array, *,
                block: int = BLOCK, num_warps: int = NUM_WARPS, interpret: bool | None = None):
    """One leaf through the kernel: (m', v', w', (Σwu, Σu², Σw²)), float32; ``scalars`` from :func:`scalars`.
    g is read in its own dtype and converted in the kernel (a bfloat16 gradient: half the bytes, see
    :func:`weibull_jax.models.layers.cast_kernels`); m, v and w are updated in place where the caller donates
    them. ``interpret``: run the kernel in Pallas' interpreter; None: on any backend but a GPU."""
    interpret = jax.default_backend() != "gpu" if interpret is None else interpret
    shape, n = w.shape, w.size
    programs = -(-n // block)
    flat = pl.BlockSpec((block,), lambda i: (i,))
    m, v, w, sums = pl.pallas_call(
        functools.partial(_kernel, n=n, block=block),
        grid=(programs,),
        in_specs=[pl.BlockSpec((_SCALARS,), lambda i: (0,))] + [flat] * 4,
        out_specs=[flat] * 3 + [pl.BlockSpec((None, 4), lambda i: (i, 0))],
        out_shape=[jax.ShapeDtypeStruct((n,), jnp.float32)] * 3 + [jax.ShapeDtypeStruct((programs, 4), jnp.float32)],
        input_output_aliases={2: 0, 3: 1, 4: 2},
        compiler_params=pallas_triton.compiler_params(interpret, num_warps, None),
        interpret=interpret,
    )(scalars, g.reshape(n), *(x.reshape(n).astype(jnp.float32) for x in (m, v, w)))
    totals = jnp.sum(sums, axis=0)
    return m.reshape(shape), v.reshape(shape), w.reshape(shape), (totals[0], totals[1], totals[2])


def scalars(b1: float, b2: float, eps: float, count: jax.Array, lr: Any, weight_decay: Any,
            grad_scale: Any = 1.0) -> jax.Array:
    """The kernel's scalars for step ``count`` (t ≥ 1): the constants as optax forms them (1 − β from the
    Python floats; c_i = 1 − β_i^t in float32), −η, λ and the clipping factor."""
    head = jnp.asarray(np.asarray([b1, 1 - b1, b2, 1 - b2, eps], np.float32))
    tail = jnp.stack([jnp.asarray(x, jnp.float32) for x in (1 - b1 ** count, 1 - b2 ** count, -jnp.asarray(lr),
                                                              weight_decay, grad_scale)])
    return jnp.concatenate([head, tail, jnp.zeros(_SCALARS - 10, jnp.float32)])


def adamw_step(params: Any, grads: Any, before: optax.ScaleByAdamState, count: jax.Array, lr: Any,
               weight_decay: Any, b1: float, b2: float, eps: float, grad_scale: Any = 1.0,
               select: Callable[[jax.Array], bool] | None = None, interpret: bool | None = None):
    """One AdamW step of every leaf and the forces of the leaves ``select`` keeps.

    Args:
      params, grads: the weights before the step and their gradients (trees alike; the gradients in any float
        dtype, taken to float32 as they are read).
      before: the optimizer's ``ScaleByAdamState`` before the step; ``count``: this step's t (optax's new count).
      lr: η of this step; weight_decay: λ, a number or a tree like ``params`` (0 where the decay mask is off).
      grad_scale: the global-norm clipping factor optax's ``clip_by_global_norm`` would apply (1: none).
      select: the leaves with forces (e.g. :func:`weibull_jax.tree.is_matrix`), stepped by the kernel where
        they are one matrix (a stack's forces are per matrix: in XLA); the others are stepped in XLA and get
        None. Default: all.
      interpret: as :func:`step_matrix`'s.

    Returns (params', ``ScaleByAdamState(count, m', v')``, a tree of :class:`~weibull_jax.forces.Forces`).
    """
    def one(w, g, m, v, wd):
        constants = scalars(b1, b2, eps, count, lr, wd, grad_scale)
        selected = select is None or select(w)
        if selected and w.ndim == 2:
            m, v, w_next, sums = step_matrix(g, m, v, w, constants, interpret=interpret)
            return w_next, m, v, forces.forces_from_sums(*sums, lr, wd)
        # a vector, or a stack of matrices (forces per matrix)
        m, v, w_next, u = _step(g.astype(jnp.float32), m, v, w, constants)
        return w_next, m, v, forces.forces_from_direction(w, u, lr, wd) if selected else None

    stepped = jax.tree.map(one, params, grads, before.mu, before.nu, forces.per_leaf(weight_decay, params))
    part = [jax.tree.map(lambda _, s: s[i], params, stepped) for i in range(4)]
    return part[0], optax.ScaleByAdamState(count, part[1], part[2]), part[3]
