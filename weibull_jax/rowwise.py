r"""A function of one row applied to every row of its operands in one kernel: one Triton program per row.

XLA compiles a chain of row-wise reductions over a small batch (the histogram fit's cumulative sum, two
passes of weighted sums, the KS maximum, over 1,024 bins per matrix) as a chain of small kernels, whose
launches and round trips through memory, not their arithmetic, set its time. :func:`map_rows` runs the
whole chain for one row in one program, its values in registers:

.. math:: \mathrm{out}[r, j] = f_j(x_1[r], \dots, x_m[r]),

where ``f`` is written in jax.numpy over ``(1, width)`` blocks, reducing along the last axis. The kernel is
Pallas' Triton backend, for a GPU (deprecated in jax 0.11: where it is gone,
:data:`weibull_jax.pallas_triton.AVAILABLE` is False; callers choose it as their program lowers,
``jax.lax.platform_dependent``); with ``interpret`` Pallas' interpreter runs it on any backend (the tests'
path). A program's sums are the Triton reduction's tree, fixed for the row, so a row's result does not
depend on the batch it is in. XLA does not partition the kernel: in a program over several devices it
gathers the operands onto each (meant for small ones, like the fits' counts; not measured on several GPUs).

The fits use it (``weibull._binned_table_in_kernel``): on an H200 (2026-12-04, jax 0.11.2,
``tests/benchmarks/bench_weibull.py``) the fit of Pythia-70M's 24 × 1,024 counts took 116-145 µs against
XLA's chain's 132-208 µs from dispatch to ready, and 3.7 µs of device time of the fits' 73 µs; Pythia-1B's
64 rows 103 against 204 µs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from weibull_jax import pallas_triton


NUM_WARPS = 4  # Pythia-70M's 24 fits: 0.078 ms, against 0.113, 0.090, 0.075 with 1, 2, 8 (H200, 2026-12-04)


def map_rows(fn: Callable[..., Sequence[jax.Array]], operands: Sequence[jax.Array], *,
             num_warps: int = NUM_WARPS, interpret: bool = False) -> jax.Array:
    """``(rows, outputs)`` float32: ``fn``'s outputs for every row of ``operands``.

    ``operands[i]`` is ``(rows, w_i)`` or, to give every row the same values, ``(1, w_i)``; each ``w_i`` a power
    of two. ``fn`` gets one ``(1, w_i)`` block of each and returns a sequence of ``(1,)`` values, the row's
    outputs (cast to float32). ``interpret`` runs the kernel in Pallas' interpreter (any backend)."""
    rows = max(x.shape[0] for x in operands)
    in_specs = [pl.BlockSpec((1, x.shape[1]), (lambda r: (r, 0)) if x.shape[0] == rows else (lambda r: (0, 0)))
                for x in operands]
    outputs = jax.eval_shape(fn, *(jax.ShapeDtypeStruct((1, x.shape[1]), x.dtype) for x in operands))
    width = 1 << max(len(outputs) - 1, 0).bit_length()

    def kernel(*refs):
        values = fn(*(ref[...] for ref in refs[:-1]))
        column = jax.lax.broadcasted_iota(jnp.int32, (1, width), 1)
        out = jnp.zeros((1, width), jnp.float32)
        for j, v in enumerate(values):
            out = jnp.where(column == j, v.astype(jnp.float32)[:, None], out)
        refs[-1][...] = out

    table = pl.pallas_call(
        kernel,
        grid=(rows,),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((1, width), lambda r: (r, 0)),
        out_shape=jax.ShapeDtypeStruct((rows, width), jnp.float32),
        compiler_params=pallas_triton.compiler_params(interpret, num_warps),
        interpret=interpret,
    )(*operands)
    return table[:, : len(outputs)]
