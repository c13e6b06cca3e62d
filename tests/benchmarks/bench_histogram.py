"""The fit's slot histogram: scatter-adds, shared-memory counts, and counting on the tensor cores.

  PYTHONPATH=. python tests/benchmarks/bench_histogram.py [--preset=pythia-70m] [--repeats=20]

Counts the log10|w| slots of every block matrix of a freshly initialised model of the preset (float32, as
in bench_weibull.py) by the scatter-add (``weibull.count_rows``; its number of private copies in brackets;
the library's path on a CPU), by the same with other numbers of copies (--lanes), by the fits' path
(``weibull.log10_histogram`` as the fits call it: on a CUDA GPU the shared-memory kernel of
``weibull_jax.bincount``), by that kernel with each launch shape of --launches (block/span/warps) and with
one launch per array (as before arrays of one row length shared a launch), and by
the tensor-core kernel below in each configuration of --configs (split H×L, block, warps, one-hot dtype,
span), each jitted over all matrices;
prints the median of ``repeats`` warm calls, the ratio to the scatter-add measured in the same run, the
effective read bandwidth, and whether the counts are identical. On a CPU the kernels run in Pallas'
interpreter (correctness only). Not collected by pytest.

The tensor-core kernel, measured before the shared-memory one existed. Without shared memory to keep
private histograms in, counting is a matrix product: write a slot κ < H·L as κ = L·h + l, then over a block
of B values

    N[h, l] = Σ_b [h_b = h] [l_b = l] = (E_hᵀ E_l)[h, l],

with E_h (B × H) and E_l (B × L) the block's one-hot rows, built in registers (never in memory, unlike the
same product written in XLA). Each program streams a span of one row B values at a time, accumulates N on
the tensor cores (exact: at most 2²⁴ values a program, one-hots exact in bfloat16 or int8), writes it once;
the spans are summed in int32 afterwards. The slots beyond H·L (above range, non-finite) are counted by
sums. The values are read in their own dtype and binned in float32 by ``weibull.slot_index``, whose table-free
edges make it usable inside a kernel. On the H200 (2026-12-02) the best configuration was slower than the
scatter-add (0.64× for Pythia-70M, 0.68× for Pythia-1B; README, Speed).
"""

from __future__ import annotations

import argparse
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from weibull_jax import bincount, models, taxonomy, tree, weibull

from timing import median_seconds  # tests/benchmarks/timing.py

EXTRA = 4  # keys in [H·L, H·L + EXTRA) are counted by sums
MAX_SPAN = 1 << 20  # float32 counts are exact up to 2**24 values a program


def default_span(num_values: int, block: int) -> int:
    """Values a program counts: about 2048 programs for the array, a power of two in [block, MAX_SPAN]."""
    target = max(1, num_values // 2048)
    return min(MAX_SPAN, max(block, 1 << (target - 1).bit_length()))


def _kernel(x_ref, grid_ref, extra_ref, *, key_fn, n, span, block, split, dot_dtype, late_extra):
    high, low = split
    start = pl.program_id(1) * span
    acc_type = jnp.int32 if jnp.issubdtype(dot_dtype, jnp.integer) else jnp.float32

    def count_block(s, carry):
        grid, extra = carry
        mask = start + s * block + jnp.arange(block, dtype=jnp.int32) < n
        x = plt.load(x_ref.at[pl.ds(s * block, block)], mask=mask, other=0)
        key = jnp.where(mask, key_fn(x.astype(jnp.float32)), -1)
        one_hot_high = (jnp.arange(high, dtype=jnp.int32)[:, None] == (key // low)[None, :]).astype(dot_dtype)
        one_hot_low = (jnp.arange(low, dtype=jnp.int32)[None, :] == (key % low)[:, None]).astype(dot_dtype)
        grid = grid + jnp.dot(one_hot_high, one_hot_low, preferred_element_type=acc_type)
        beyond = (jnp.arange(EXTRA, dtype=jnp.int32)[None, :] == (key - high * low)[:, None]).astype(jnp.float32)
        extra = extra + (beyond if late_extra else jnp.sum(beyond, axis=0))
        return grid, extra

    # late_extra: the extra keys counted per value position and summed once after the loop, not every block
    init = (jnp.zeros((high, low), acc_type), jnp.zeros((block, EXTRA) if late_extra else (EXTRA,), jnp.float32))
    grid, extra = jax.lax.fori_loop(0, span // block, count_block, init)
    grid_ref[...] = grid.astype(jnp.int32)
    extra_ref[...] = (jnp.sum(extra, axis=0) if late_extra else extra).astype(jnp.int32)


def tensor_core_counts(x: jax.Array, key_fn: Callable[[jax.Array], jax.Array], num_keys: int, *,
                       split: tuple[int, int] = (32, 32), block: int = 512, span: int | None = None,
                       num_warps: int = 4, dot_dtype=jnp.bfloat16, late_extra: bool = False,
                       interpret: bool = False) -> jax.Array:
    """``(rows, num_keys)`` int32: row r counts ``key_fn(x[r])`` (float32 in, int32 keys out).

    ``x`` is ``(rows, n)`` of a float dtype; keys outside [0, num_keys) are not counted, and num_keys may
    exceed H·L by at most ``EXTRA``. ``split`` = (H, L) and ``block`` are powers of two (H, L ≥ 16);
    ``span`` (values a program counts, a multiple of ``block``) defaults to :func:`default_span`;
    ``late_extra`` sums the extra keys' counts once per program instead of once per block.
    ``interpret`` runs the kernel in Pallas' interpreter (any backend; for tests)."""
    high, low = split
    if num_keys > high * low + EXTRA:
        raise ValueError(f"{num_keys} keys do not fit a {high} x {low} grid and {EXTRA} extra keys")
    rows, n = x.shape
    span = span or default_span(rows * n, block)
    programs = -(-n // span)
    kernel = functools.partial(_kernel, key_fn=key_fn, n=n, span=span, block=block, split=split,
                               dot_dtype=dot_dtype, late_extra=late_extra)
    grid, extra = pl.pallas_call(
        kernel,
        grid=(rows, programs),
        in_specs=[pl.BlockSpec((None, span), lambda r, c: (r, c))],
        out_specs=[pl.BlockSpec((None, None, high, low), lambda r, c: (r, c, 0, 0)),
                   pl.BlockSpec((None, None, EXTRA), lambda r, c: (r, c, 0))],
        out_shape=[jax.ShapeDtypeStruct((rows, programs, high, low), jnp.int32),
                   jax.ShapeDtypeStruct((rows, programs, EXTRA), jnp.int32)],
        compiler_params=None if interpret else plt.CompilerParams(num_warps=num_warps),
        interpret=interpret,
    )(x)
    counts = jnp.concatenate([grid.sum(1).reshape(rows, high * low), extra.sum(1)], axis=1)
    return counts[:, :num_keys]


DEFAULT_CONFIGS = ("32x32/512/4/bf16", "32x32/256/4/bf16", "32x32/1024/8/bf16", "64x16/512/4/bf16",
                   "32x32/512/4/int8", "32x32/512/4/fp8", "32x32/512/8/bf16", "32x32/512/4/bf16/4",
                   "32x32/512/4/bf16/4/late", "32x32/256/4/bf16/4/late")
DOT_DTYPES = {"bf16": jnp.bfloat16, "int8": jnp.int8, "fp8": jnp.float8_e4m3fn}


def parse_config(text: str) -> dict:
    """'HxL/block/warps/dtype[/span_factor[/late]]': span_factor multiplies the default span; 'late' sets
    late_extra."""
    parts = text.split("/")
    high, low = (int(v) for v in parts[0].split("x"))
    return dict(split=(high, low), block=int(parts[1]), num_warps=int(parts[2]), dot_dtype=DOT_DTYPES[parts[3]],
                span_factor=int(parts[4]) if len(parts) > 4 else 1, late_extra=parts[5:] == ["late"])


def kernel_histogram(rows, *, split, block, num_warps, dot_dtype, span_factor, late_extra, interpret):
    return jnp.concatenate([
        tensor_core_counts(
            r, weibull._slot_of_value, weibull.NUM_SLOTS, split=split, block=block, num_warps=num_warps,
            dot_dtype=dot_dtype, late_extra=late_extra, interpret=interpret,
            span=min(MAX_SPAN, default_span(r.size, block) * span_factor))
        for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pythia-70m")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
    parser.add_argument("--lanes", default="64,256,1024,4096", help="the scatter-add also with these numbers of "
                        "private copies (its default: 256 on a GPU)")
    parser.add_argument("--launches", default="8192/8192/16/1,4096/4096/8/1,16384/16384/16/1,4096/16384/8",
                        help="the shared-memory kernel with these block/span/warps[/pipeline stages]")
    args = parser.parse_args()

    params = models.init_params(models.preset(args.preset), jax.random.key(0))
    names, leaves, _, _ = tree.named_leaves(params)
    rows = [weibull.as_rows(w) for n, w in zip(names, leaves) if taxonomy.block_of(n) >= 0]
    n_bytes = sum(r.size * r.dtype.itemsize for r in rows)
    interpret = jax.default_backend() != "gpu"
    print(f"{args.preset}: {sum(r.shape[0] for r in rows)} matrices, {sum(r.size for r in rows) / 1e6:.1f} M "
          f"weights, {n_bytes / 1e9:.2f} GB; {jax.devices()[0].device_kind}"
          + (" (kernel in Pallas' interpreter)" if interpret else ""))

    def scatter_add(rs, lanes=None):
        return weibull.count_rows([weibull.slot_index(weibull.magnitudes(r)) for r in rs], weibull.NUM_SLOTS, lanes)

    scatter = jax.jit(scatter_add)
    reference = np.asarray(scatter(rows))
    base = median_seconds(lambda: scatter(rows), args.repeats)
    print(f"{'method':<28} {'ms':>9} {'vs scatter':>10} {'GB/s':>8}  identical")
    label = f"scatter-add ({weibull.lanes_for(max(r.shape[1] for r in rows))} copies)"
    print(f"{label:<28} {base * 1e3:9.3f} {1.0:10.2f} {n_bytes / base / 1e9:8.0f}  -")
    variants = [(f"scatter-add, {lanes} copies", functools.partial(scatter_add, lanes=lanes))
                for lanes in [int(v) for v in args.lanes.split(",") if v]]
    kernel = weibull.counts_in_shared_memory(rows)  # what the fits of these arrays take
    variants.append(("library (log10_histogram)", functools.partial(weibull.log10_histogram, kernel=kernel)))
    for text in [v for v in args.launches.split(",") if v]:
        launch = tuple(int(v) for v in text.split("/")) + (None,) * (4 - len(text.split("/")))
        variants.append((f"shared memory {text}", lambda rs, launch=launch: bincount.row_counts(
            rs, weibull._slot_of_value, weibull.NUM_SLOTS, launch=launch, interpret=interpret)))
    variants.append(("shared memory, launch/array", lambda rs: jnp.concatenate([  # before arrays shared launches
        bincount.row_counts([r], weibull._slot_of_value, weibull.NUM_SLOTS, interpret=interpret) for r in rs])))
    for label, fn in variants:
        fn = jax.jit(fn)
        same = np.array_equal(np.asarray(fn(rows)), reference)
        t = median_seconds(lambda: fn(rows), args.repeats)
        print(f"{label:<28} {t * 1e3:9.3f} {base / t:10.2f} {n_bytes / t / 1e9:8.0f}  {same}")
    for text in [v for v in args.configs.split(",") if v]:
        try:
            fn = jax.jit(functools.partial(kernel_histogram, interpret=interpret, **parse_config(text)))
            same = np.array_equal(np.asarray(fn(rows)), reference)
            t = median_seconds(lambda: fn(rows), args.repeats)
        except Exception as e:  # a configuration Triton rejects is reported, not fatal
            print(f"{text:<28} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        print(f"{text:<28} {t * 1e3:9.3f} {base / t:10.2f} {n_bytes / t / 1e9:8.0f}  {same}")


if __name__ == "__main__":
    main()
