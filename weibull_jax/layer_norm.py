r"""LayerNorms of one x sharing its statistics, with the backward written out (XLA, or two Pallas kernels).

For x (rows × d) and norms (γ_k, β_k), in float32 (or x's wider dtype) and rounded once to ``dtype``
(``nn.LayerNorm``'s numbers; Ba et al., 2016):

.. math:: \hat x = (x − μ)\,r,\quad μ = \overline{x},\quad r = \big(\overline{(x − μ)^2} + ε\big)^{−1/2},\qquad
   y_k = \hat x\,γ_k + β_k

(bars: means over the last axis). The parallel residual normalises one x twice, so its norms share μ and r.
The backward is linear in g = Σ_k dy_k·γ_k, since x̂ is shared:

.. math:: dx = r\,(g − \bar g − \hat x\,\overline{g\hat x}) \;[+\, dx_{\rm residual}],\qquad
   dγ_k = \textstyle\sum_{\rm rows} dy_k\,\hat x,\qquad dβ_k = \sum_{\rm rows} dy_k.

With ``residual``, :func:`layer_norms` also returns x itself first, so that the residual stream's cotangent
joins the norms' in the same pass. It keeps x, μ and r for the backward.

On a CUDA GPU (``path="kernel"``) a forward kernel reads each block of rows once and writes every y_k, μ and
r; a backward kernel reads x, the dy_k (and the residual's cotangent) once, writes dx and each block's partial
(dγ_k, dβ_k), which XLA sums. XLA's passes elsewhere (:func:`xla_forward`, :func:`xla_backward`), and
Pallas' interpreter for the tests. XLA does not partition the kernels: callers use them on one device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from weibull_jax import pallas_triton

# Elements a program holds per array (rows × d), and its warps.
BLOCK = 8192
NUM_WARPS = 4


def xla_forward(x, scales, biases, eps, dtype):
    """(y_k for each norm, μ, r) in XLA's passes over x (rows, d); μ and r (rows, 1)."""
    wide = x.astype(pallas_triton.wide(x.dtype))
    mean = jnp.mean(wide, axis=-1, keepdims=True)
    centred = wide - mean
    rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    return tuple((centred * (rstd * scale) + bias).astype(dtype) for scale, bias in zip(scales, biases)), mean, rstd


def xla_backward(x, mean, rstd, scales, grads, residual):
    """(dx, (dγ_k, dβ_k) for each norm) in XLA's passes; ``residual``: the cotangent added to dx, or None."""
    wide = x.astype(pallas_triton.wide(x.dtype))
    normalized = (wide - mean) * rstd
    grads = [grad.astype(wide.dtype) for grad in grads]
    g = sum(grad * scale for grad, scale in zip(grads, scales))
    dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True)
                 - normalized * jnp.mean(g * normalized, axis=-1, keepdims=True))
    if residual is not None:
        dx = dx + residual.astype(wide.dtype)
    sums = jnp.sum(jnp.stack([term for grad in grads for term in (grad * normalized, grad)]),
                   axis=tuple(range(1, x.ndim)))  # one reduction for every norm's (dγ, dβ)
    return dx.astype(x.dtype), tuple((sums[2 * k], sums[2 * k + 1]) for k in range(len(grads)))


def _forward_kernel(x_ref, *refs, count: int, eps: float):
    scales, biases, outs = refs[:count], refs[count:2 * count], refs[2 * count:3 * count]
    mean_ref, rstd_ref = refs[3 * count:]
    x = x_ref[...].astype(pallas_triton.wide(x_ref.dtype))
    d = x.shape[1]
    mean = jnp.sum(x, axis=1) / d
    centred = x - mean[:, None]
    rstd = jax.lax.rsqrt(jnp.sum(centred * centred, axis=1) / d + eps)
    for out, scale, bias in zip(outs, scales, biases):
        out[...] = (centred * (rstd[:, None] * scale[...][None, :]) + bias[...][None, :]).astype(out.dtype)
    mean_ref[...], rstd_ref[...] = mean, rstd


def _backward_kernel(x_ref, mean_ref, rstd_ref, *refs, count: int, with_residual: bool):
    scales, grad_refs = refs[:count], refs[count:2 * count]
    residual_ref = refs[2 * count] if with_residual else None
    dx_ref, sums_ref = refs[2 * count + with_residual:]
    x = x_ref[...].astype(pallas_triton.wide(x_ref.dtype))
    d = x.shape[1]
    rstd = rstd_ref[...]
    normalized = (x - mean_ref[...][:, None]) * rstd[:, None]
    grads = [ref[...].astype(x.dtype) for ref in grad_refs]
    g = sum(grad * scale[...][None, :] for grad, scale in zip(grads, scales))
    g_mean, projection = jnp.sum(g, axis=1) / d, jnp.sum(g * normalized, axis=1) / d
    dx = rstd[:, None] * (g - g_mean[:, None] - normalized * projection[:, None])
    if with_residual:
        dx = dx + residual_ref[...].astype(x.dtype)
    dx_ref[...] = dx.astype(dx_ref.dtype)
    for k, grad in enumerate(grads):
        sums_ref[2 * k, :] = jnp.sum(grad * normalized, axis=0)
        sums_ref[2 * k + 1, :] = jnp.sum(grad, axis=0)


def _specs(rows: int, d: int):
    """Rows a program takes, and the blocks of both kernels: (r, d) rows, the (d,) norm vectors, (r,) μ or r."""
    r = pallas_triton.rows_per_program(d, BLOCK, rows)
    return (r, pl.BlockSpec((r, d), lambda i: (i, 0)), pl.BlockSpec((d,), lambda i: (0,)),
            pl.BlockSpec((r,), lambda i: (i,)))


def kernel_forward(x, scales, biases, eps, dtype, *, interpret: bool = False):
    """:func:`xla_forward` in one kernel over x (rows, d), d a power of two; μ, r (rows, 1)."""
    rows, d = x.shape
    r, block, vector, stat = _specs(rows, d)
    count = len(scales)
    out = pl.pallas_call(
        functools.partial(_forward_kernel, count=count, eps=eps),
        grid=(rows // r,),
        in_specs=[block] + [vector] * (2 * count),
        out_specs=[block] * count + [stat, stat],
        out_shape=[jax.ShapeDtypeStruct((rows, d), dtype)] * count
        + [jax.ShapeDtypeStruct((rows,), pallas_triton.wide(x.dtype))] * 2,
        compiler_params=pallas_triton.compiler_params(interpret, NUM_WARPS),
        interpret=interpret,
    )(x, *scales, *biases)
    return tuple(out[:count]), out[count][:, None], out[count + 1][:, None]


def kernel_backward(x, mean, rstd, scales, grads, residual, *, interpret: bool = False):
    """:func:`xla_backward` in one kernel over x (rows, d), and XLA's sum of the programs' partial sums."""
    rows, d = x.shape
    r, block, vector, stat = _specs(rows, d)
    programs, count = rows // r, len(scales)
    partial = pl.BlockSpec((None, 2 * count, d), lambda i: (i, 0, 0))
    extra = [] if residual is None else [residual]
    out = pl.pallas_call(
        functools.partial(_backward_kernel, count=count, with_residual=residual is not None),
        grid=(programs,),
        in_specs=[block, stat, stat] + [vector] * count + [block] * (count + len(extra)),
        out_specs=[block, partial],
        out_shape=[jax.ShapeDtypeStruct((rows, d), x.dtype),
                   jax.ShapeDtypeStruct((programs, 2 * count, d), pallas_triton.wide(x.dtype))],
        compiler_params=pallas_triton.compiler_params(interpret, NUM_WARPS),
        interpret=interpret,
    )(x, mean[:, 0], rstd[:, 0], *scales, *grads, *extra)
    dx, partials = out
    sums = jnp.sum(partials, axis=0)  # one reduction for every norm's (dγ, dβ)
    return dx, tuple((sums[2 * k], sums[2 * k + 1]) for k in range(count))


def _fits_kernel(x) -> bool:
    d = x.shape[-1]
    return d & (d - 1) == 0 and x.size < 1 << 31


def _forward(x, scales, biases, eps, dtype, path):
    """Dispatch over the rows of (..., d) x; μ and r returned as (..., 1)."""
    ys, mean, rstd = pallas_triton.dispatch(
        path, _fits_kernel(x), functools.partial(kernel_forward, eps=eps, dtype=dtype),
        functools.partial(xla_forward, eps=eps, dtype=dtype), x.reshape(-1, x.shape[-1]), scales, biases)
    lead = x.shape[:-1]
    return tuple(y.reshape(x.shape) for y in ys), mean.reshape(*lead, 1), rstd.reshape(*lead, 1)


def _backward_rows(x, mean, rstd, scales, grads, residual, path):
    d = x.shape[-1]
    dx, dnorms = pallas_triton.dispatch(
        path, _fits_kernel(x), kernel_backward, xla_backward, x.reshape(-1, d), mean.reshape(-1, 1),
        rstd.reshape(-1, 1), scales, [a.reshape(-1, d) for a in grads],
        None if residual is None else residual.reshape(-1, d))
    return dx.reshape(x.shape), dnorms


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def layer_norms(x: jax.Array, norms: tuple, eps: float, dtype, path: str = "xla",
                residual: bool = False) -> tuple[jax.Array, ...]:
    """The LayerNorms of x, one for each (γ_k, β_k) in ``norms``, in ``dtype``; with ``residual``, x first.

    Args:
      x: (..., d), normalised over its last axis; norms: ((γ_k, β_k), ...), each (d,).
      path: ``"kernel"``: the kernels on a CUDA GPU (d a power of two), XLA elsewhere (one device only);
        ``"xla"``: XLA everywhere; ``"interpret"``: the kernels in Pallas' interpreter (tests).
    """
    ys = _forward(x, *zip(*norms), eps, dtype, path)[0]
    return (x, *ys) if residual else ys


def _layer_norms_forward(x, norms, eps, dtype, path, residual):
    scales, biases = zip(*norms)
    ys, mean, rstd = _forward(x, scales, biases, eps, dtype, path)
    return (x, *ys) if residual else ys, (x, scales, biases, mean, rstd)


def _layer_norms_backward(eps, dtype, path, residual, saved, cotangents):
    del eps, dtype
    x, scales, biases, mean, rstd = saved
    x_cotangent, grads = (cotangents[0], cotangents[1:]) if residual else (None, cotangents)
    dx, dnorms = _backward_rows(x, mean, rstd, scales, grads, x_cotangent, path)
    return dx, tuple((ds.astype(s.dtype), db.astype(b.dtype)) for (ds, db), s, b in zip(dnorms, scales, biases))


layer_norms.defvjp(_layer_norms_forward, _layer_norms_backward)
