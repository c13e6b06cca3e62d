r"""The language-model loss and its gradient in one pass over the logits (a Pallas kernel).

For logits z (rows × V), targets t and weights w (a mean over N scored positions: w_r = [r scored]/N),

.. math:: L = \sum_r w_r \big(\log\textstyle\sum_v e^{z_{rv}} - z_{r t_r}\big),\qquad
   \frac{\partial L}{\partial z_{rv}} = w_r\big(\mathrm{softmax}(z_r)_v - [v = t_r]\big).

The gradient does not depend on anything the backward pass brings but the scalar cotangent ḡ, so
:func:`weighted_cross_entropy`'s forward rule computes it with the loss and keeps it in place of the logits; the
backward returns ḡ·∂L/∂z, which XLA reduces to the kept array itself when ḡ is the constant 1 that
``jax.grad`` of the loss seeds (the multiply and the two conversions fold away). Written the usual way (the
log-sum-exp in the forward pass, softmax − onehot in the backward) XLA reads the logits three times and writes
their gradient once, in three kernels. The kernel (:func:`kernel_rows`, one Triton program a row) reads each
row twice and writes its gradient: block by block it takes the block's maximum m_b, rescales the running sums
by e^{m − m_b} (the online softmax) and adds e^{z − m_b}; then it writes (e^{z − lse} − [v = t])·w. It works
in base 2 (the GPU's exponential), reads the target's logit alone, and masks only the last, partial block.

On an H200 (2026-12-04, jax 0.11.2; ``bench_train_step.py --variants jax,jax-xla --profile DIR``, Pythia-70M
at 24 × 512, logits 12,288 × 50,304 in bfloat16) the kernel took 944 µs of the step against XLA's 1,507 µs
(the maximum 331, Σ exp 432, the gradient 744), and the step 10.86 against 11.41 ms.

On a GPU the kernel is Pallas' Triton backend, chosen as the caller's program lowers
(``jax.lax.platform_dependent``); elsewhere the same function in XLA runs (:func:`xla_rows`), and Pallas'
interpreter runs the kernel for the tests. XLA does not partition the kernel, so callers use it on one device
(the training program's step on one GPU) and XLA's path on a mesh.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from weibull_jax import pallas_triton
from weibull_jax.pallas_triton import plt


# Logits a program holds at a time (a power of two), and its warps. H200, 2026-12-04, scratch sweeps of the
# standalone kernel on those logits (blocks 512-16,384, 2-32 warps, 1-2 pipeline stages): 1.15-1.27 ms here
# against 1.2-2.3 ms elsewhere and 1.78-1.96 ms for XLA's passes; base 2, the target read alone and the
# unmasked full blocks took it from 1.34-1.44 ms (the same shapes without them) to 1.15-1.27 ms.
BLOCK = 1024
NUM_WARPS = 4
LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453


def _kernel(logits_ref, targets_ref, weights_ref, loss_ref, *grad_ref, vocab: int, block: int):
    """One row: its loss into ``loss_ref`` and, given ``grad_ref``, its weighted gradient; y = z·log₂e."""
    columns = jnp.arange(block, dtype=jnp.int32)
    target = targets_ref[0]
    full, blocks = vocab // block, -(-vocab // block)

    def load(b, masked, other):
        if masked:
            z = plt.load(logits_ref.at[pl.ds(b * block, block)], mask=b * block + columns < vocab, other=other)
        else:
            z = logits_ref[pl.ds(b * block, block)]
        return z.astype(jnp.float32) * LOG2E

    def over_blocks(body, carry):
        carry = jax.lax.fori_loop(0, full, functools.partial(body, masked=False), carry)
        return jax.lax.fori_loop(full, blocks, functools.partial(body, masked=True), carry)

    def accumulate(b, carry, masked):  # the online softmax: the running maximum and the lanes' sums
        top, sums = carry
        y = load(b, masked, -jnp.inf)
        new_top = jnp.maximum(top, jnp.max(y))
        return new_top, sums * jnp.exp2(top - new_top) + jnp.exp2(y - new_top)

    top, sums = over_blocks(accumulate, (jnp.float32(-jnp.inf), jnp.zeros(block, jnp.float32)))
    log2_z = top + jnp.log2(jnp.sum(sums))
    picked = logits_ref[pl.ds(jnp.clip(target, 0, vocab - 1), 1)].astype(jnp.float32) * LOG2E
    loss_ref[...] = jnp.where((target >= 0) & (target < vocab), (log2_z - picked) * LN2, jnp.nan)
    if grad_ref:
        weight, out = weights_ref[...], grad_ref[0]

        def write(b, carry, masked):
            grad = (jnp.exp2(load(b, masked, 0.0) - log2_z) - (b * block + columns == target)) * weight
            grad = grad.astype(out.dtype)
            if masked:
                plt.store(out.at[pl.ds(b * block, block)], grad, mask=b * block + columns < vocab)
            else:
                out[pl.ds(b * block, block)] = grad
            return carry

        over_blocks(write, 0)


def kernel_rows(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None, *,
                block: int = BLOCK, num_warps: int = NUM_WARPS, interpret: bool = False):
    """:func:`xla_rows` in one kernel: one Triton program a row (``interpret``: Pallas' interpreter)."""
    rows, vocab = logits.shape
    span = 1 << (vocab - 1).bit_length()
    block = min(block, span)
    column = pl.BlockSpec((None, 1), lambda r: (r, 0))
    row = pl.BlockSpec((None, span), lambda r: (r, 0))
    with_grad = weights is not None
    weights = jnp.zeros(rows, jnp.float32) if weights is None else weights.astype(jnp.float32)
    out = pl.pallas_call(
        functools.partial(_kernel, vocab=vocab, block=block),
        grid=(rows,),
        in_specs=[row, column, column],
        out_specs=[column] + [row] * with_grad,
        out_shape=[jax.ShapeDtypeStruct((rows, 1), jnp.float32)]
        + [jax.ShapeDtypeStruct((rows, vocab), logits.dtype)] * with_grad,
        compiler_params=pallas_triton.compiler_params(interpret, num_warps),
        interpret=interpret,
    )(logits, targets.astype(jnp.int32).reshape(rows, 1), weights.reshape(rows, 1))
    return out[0][:, 0], (out[1] if with_grad else None)


def xla_rows(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None):
    """Per row of ``logits`` (rows, V), ``log Σ_v exp z_v − z_t`` in float32 (NaN where t is not in [0, V)) and,
    given ``weights`` (rows,), the gradient of Σ_r weights_r·loss_r in the logits' dtype (else None)."""
    z = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(z, axis=-1)
    vocab = logits.shape[-1]
    picked = jnp.take_along_axis(z, jnp.clip(targets, 0, vocab - 1)[:, None], axis=-1)[:, 0]
    losses = jnp.where((targets >= 0) & (targets < vocab), log_z - picked, jnp.nan)
    if weights is None:
        return losses, None
    onehot = jnp.arange(vocab) == targets[:, None]
    return losses, ((jnp.exp(z - log_z[:, None]) - onehot) * weights[:, None]).astype(logits.dtype)


def _rows(logits, targets, weights, path: str):
    """Dispatch to :func:`kernel_rows` or :func:`xla_rows` over the rows of (..., V) logits."""
    flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    flat_weights = None if weights is None else weights.reshape(-1)
    return pallas_triton.dispatch(path, flat.size < 1 << 31,  # the kernel's offsets are int32
                                  functools.partial(kernel_rows, weights=flat_weights),
                                  functools.partial(xla_rows, weights=flat_weights), flat, flat_targets)


def _weighted_sum(losses, weights):
    return jnp.sum(jnp.where(weights != 0, losses * weights, 0.0))


def mean_weights(mask: jax.Array) -> jax.Array:
    """[mask]/N, N = max(Σ mask, 1): the weights of a mean over the positions where ``mask`` holds."""
    return jnp.where(mask, 1.0 / jnp.maximum(jnp.sum(mask, dtype=jnp.float32), 1.0), 0.0)


def masked_mean(losses: jax.Array, mask: jax.Array) -> jax.Array:
    """The mean of ``losses`` where ``mask`` holds (0 if it holds nowhere); a NaN elsewhere does not count."""
    return _weighted_sum(losses, mean_weights(mask))


def _forward(logits, targets, weights, path):
    losses, grad = _rows(logits, targets, weights.astype(jnp.float32), path)
    losses = losses.reshape(targets.shape)
    return (_weighted_sum(losses, weights), losses), grad.reshape(logits.shape)


def _backward(path, grad, cotangents):
    del path
    g, _ = cotangents  # the losses are constants to autodiff: their cotangent is dropped
    return (grad.astype(jnp.float32) * g).astype(grad.dtype), None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                           path: str = "xla") -> tuple[jax.Array, jax.Array]:
    r"""(Σ_r w_r ℓ_r, ℓ): the weighted sum of the positions' losses ℓ_r = −log softmax(z_r)[t_r], and ℓ.

    Args:
      logits: (..., V) in any float dtype; targets: (...) int; weights: (...) float, 0 where a position does
        not count (its loss, even a NaN, is then left out of the sum).
      path: ``"kernel"``: the kernel on a CUDA GPU, XLA elsewhere (one device only); ``"xla"``: XLA
        everywhere; ``"interpret"``: the kernel in Pallas' interpreter (tests).

    Only the sum is differentiable: its gradient w_r·(softmax(z_r) − onehot(t_r)), in the logits' dtype, is
    formed in the forward pass; ℓ (float32) is a constant to autodiff (as under ``stop_gradient``). One pass
    serves several means over the same logits: a loss of two terms (:func:`weibull_jax.probe.objective`),
    each term then read from ℓ.
    """
    losses = _rows(logits, targets, None, path)[0].reshape(targets.shape)
    return _weighted_sum(losses, weights), losses


weighted_cross_entropy.defvjp(_forward, _backward)


def mean_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array, path: str = "xla") -> jax.Array:
    """The mean over the positions where ``mask`` holds of −log softmax(logits)[target], float32 (0 if none);
    arguments as :func:`weighted_cross_entropy`'s, with ``mask`` (...) bool the positions scored."""
    return weighted_cross_entropy(logits, targets, mean_weights(mask), path)[0]
