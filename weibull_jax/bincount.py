r"""Per-row counts of integer keys in shared memory: a Pallas (Triton) kernel around Triton's histogram.

The fit's histogram counts 1,027 slots of log10|w| per matrix (``weibull.log10_histogram``). As an XLA
scatter-add every value is an atomic add to global memory, and the atomics, not the read, set its pace: 12.8
ms for Pythia-1B's 805 M weights on an H200 (252 GB/s of its ~4.8 TB/s), even with private copies of the
counts. Triton's ``tt.histogram`` counts a block of keys in the program's shared memory, but Pallas' Triton
backend has no primitive for it and refuses scratch memory, so this module adds one, ``block_bincount_p``:

    block_bincount(k, m)[j] = Σ_b [k_b = j] [m_b],   j < L,

for a block of int32 keys ``k`` with a mask ``m``, L a power of two. Inside a Pallas kernel on a GPU it
lowers to ``tt.histogram``; everywhere else (Pallas' interpreter, which tests use on a CPU) to a scatter-add,
the reference.

:func:`row_counts` is the kernel. Each program of a (rows, spans) grid reads ``span`` values of one row
(the rows of all the arrays whose rows have that length: one launch for them all), ``block`` at a time and
in their own dtype, maps them to keys with ``key_fn`` (float32 in, int32 in
[0, num_keys) out), counts them, and writes its L counts once; XLA sums the spans. Counts are exact int32
sums. H200, 2026-12-03 (``tests/benchmarks/bench_histogram.py``, three runs): Pythia-1B's slot histogram
2.78-2.94 ms against the scatter-add's 12.74-12.96 ms, Pythia-70M's 0.25-0.40 against 0.60-0.65 ms, the
same counts. It uses Pallas' Triton backend, which jax 0.11 deprecates; where that is gone,
:func:`available` is False and the fits scatter-add as before.
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax._src import core as jax_core
from jax._src.interpreters import mlir
from jax.experimental import pallas as pl

from weibull_jax import pallas_triton
from weibull_jax.pallas_triton import plt

try:  # the Triton backend's lowering table and Triton's MLIR dialect, for the histogram primitive
    from jax._src.lib.mlir import ir
    from jax._src.lib.triton import dialect as tt_dialect
    from jax._src.pallas.triton import lowering as triton_lowering
except ImportError:  # a jax without them: no kernel, and the callers keep their scatter-add
    triton_lowering = None


def _bincount_reference(keys, mask, *, length):
    return jnp.zeros(length, jnp.int32).at[jnp.where(mask, keys, length)].add(1, mode="drop")


block_bincount_p = jax_core.Primitive("block_bincount")
block_bincount_p.def_abstract_eval(lambda keys, mask, *, length: jax_core.ShapedArray((length,), jnp.int32))
mlir.register_lowering(block_bincount_p, mlir.lower_fun(_bincount_reference, multiple_results=False))

if triton_lowering is not None:
    @triton_lowering.register_lowering(block_bincount_p)
    def _triton_bincount(ctx, keys, mask, *, length):
        del ctx
        return tt_dialect.histogram(ir.RankedTensorType.get([length], ir.IntegerType.get_signless(32)), keys,
                                    mask=mask)


def block_bincount(keys: jax.Array, mask: jax.Array, length: int) -> jax.Array:
    """Counts of each key in [0, ``length``) among the 1-D block ``keys`` where ``mask``; ``length`` a power
    of two, keys where ``mask`` is set in range (Triton does not check)."""
    return block_bincount_p.bind(keys, mask, length=length)


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether :func:`row_counts` compiles here: Pallas' Triton backend on a CUDA GPU (asked once)."""
    if triton_lowering is None or plt is None or jax.default_backend() != "gpu":
        return False
    return "cuda" in jax.devices()[0].client.platform_version.lower()


# (block, span, warps, pipeline stages): one block of 8,192 values a program, 16 warps. Measured on an H200
# (2026-12-03, block 1,024-32,768, span 1-8 blocks, 4-32 warps, 1-4 stages): a program that loops over
# several blocks is slower (inferred cause: the barriers of each block's count stop its next load), and
# the best shapes fall within 2-5 % of each other: Pythia-70M's slot histogram 0.25-0.37 ms, Pythia-1B's
# 2.78-2.85 ms (1.13-1.16 TB/s) in three runs, against 0.27-0.42 and 2.82-3.50 ms for the neighbouring shapes.
LAUNCH = (8192, 8192, 16, 1)


def _kernel(*refs, key_fn, n, span, block, length, first_rows, shifted):
    """One program: ``span`` values of one row, that row found among the inputs by its index in the grid."""
    x_refs, out_ref = refs[: len(first_rows)], refs[-1]
    which = sum((pl.program_id(0) >= first).astype(jnp.int32) for first in first_rows[1:])
    start = pl.program_id(1) * span

    def count_block(s, counts):
        mask = start + s * block + jnp.arange(block, dtype=jnp.int32) < n

        def load(ref):
            return plt.load(ref.at[pl.ds(s * block, block)], mask=mask, other=0).astype(jnp.float32)

        if len(x_refs) == 1:
            x = load(x_refs[0])
        else:
            x = jax.lax.switch(which, [functools.partial(load, ref) for ref in x_refs])
        if shifted:
            x = x - refs[len(x_refs)][...]
        return counts + block_bincount(jnp.where(mask, key_fn(x), 0), mask, length)

    counts = jax.lax.fori_loop(0, span // block, count_block, jnp.zeros(length, jnp.int32))
    out_ref[...] = counts.astype(out_ref.dtype)


def row_counts(xs: Sequence[jax.Array], key_fn: Callable[[jax.Array], jax.Array], num_keys: int, *,
               offsets: Sequence[jax.Array] | None = None, launch: tuple[int, int, int, int | None] = LAUNCH,
               interpret: bool = False) -> jax.Array:
    """``(Σ rows_i, num_keys)`` int32: the rows of every array in ``xs``, in order; row r of ``xs[i]``
    counts ``key_fn(xs[i][r] − offsets[i][r])``.

    ``xs[i]`` is ``(rows_i, n_i)`` of any float dtype, cast to float32 in the kernel; ``key_fn`` maps a
    float32 block to int32 keys, all in [0, num_keys); ``offsets[i]`` (rows_i,), default none. Arrays of
    one row length share one launch (:func:`_same_length_counts`). ``launch`` = (block, span, warps,
    pipeline stages), the first three powers of two (:data:`LAUNCH`). ``interpret`` runs the kernel in
    Pallas' interpreter (any backend; for tests)."""
    by_length: dict[int, list[int]] = {}
    for i, x in enumerate(xs):
        by_length.setdefault(x.shape[1], []).append(i)
    counts: list[jax.Array] = [None] * len(xs)  # type: ignore[list-item]
    for members in by_length.values():
        got = _same_length_counts([xs[i] for i in members], key_fn, num_keys,
                                  None if offsets is None else [offsets[i] for i in members], launch, interpret)
        for i, array_counts in zip(members, got):
            counts[i] = array_counts
    return jnp.concatenate(counts)


def _same_length_counts(xs, key_fn, num_keys, offsets, launch, interpret) -> list[jax.Array]:
    """:func:`row_counts` of arrays whose rows have one length ``n``, one ``(rows_i, num_keys)`` array each:
    one launch whose (rows, spans) grid runs over the rows of all of them (the kernel picks a row's array by
    the row's index, a ``lax.switch`` of loads). H200, 2026-12-03: Pythia-70M's 24 matrices in three
    launches took 0.18-0.22 instead of 0.28 ms; Pythia-1B's 64 the same 2.8 ms as in 64 launches, against
    2.2 ms for the same three launches over operands stacked beforehand (one array per length, no switch),
    so the switch of loads, or reading many arrays, costs what fewer launches save there (not profiled). A
    program's counts (at most ``span``) are written as uint16 when they fit, and summed in int32."""
    n = xs[0].shape[1]
    firsts = list(itertools.accumulate((x.shape[0] for x in xs), initial=0))
    length = 1 << max(num_keys - 1, 1).bit_length()
    block, span, warps, stages = launch
    span = min(span, max(block, 1 << (n - 1).bit_length()))
    block = min(block, span)

    def row_of(first, rows):
        return lambda r, c: (jnp.minimum(jnp.maximum(r - first, 0), rows - 1), c)

    in_specs = [pl.BlockSpec((None, span), row_of(first, x.shape[0])) for x, first in zip(xs, firsts)]
    operands = list(xs)
    if offsets is not None:
        operands.append(jnp.concatenate([o.astype(jnp.float32) for o in offsets]).reshape(-1, 1))
        in_specs.append(pl.BlockSpec((None, 1), lambda r, c: (r, 0)))
    kernel = functools.partial(_kernel, key_fn=key_fn, n=n, span=span, block=block, length=length,
                               first_rows=tuple(firsts[:-1]), shifted=offsets is not None)
    spans = -(-n // span)
    counts = pl.pallas_call(
        kernel,
        grid=(firsts[-1], spans),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, None, length), lambda r, c: (r, c, 0)),
        out_shape=jax.ShapeDtypeStruct((firsts[-1], spans, length), jnp.uint16 if span < 1 << 16 else jnp.int32),
        compiler_params=pallas_triton.compiler_params(interpret, warps, stages),
        interpret=interpret,
    )(*operands)
    counts = counts.sum(axis=1, dtype=jnp.int32)[:, :num_keys]
    return [counts[first:last] for first, last in zip(firsts, firsts[1:])]
