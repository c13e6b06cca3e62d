r"""Two-parameter Weibull fits of weight magnitudes |w| (framework paper arXiv 2605.18898, §2.1, App. A.1–A.2).

The Weibull CDF :math:`F(x) = 1 - \exp(-(x/\lambda)^k)` is a straight line on the Weibull probability plot,

.. math:: \ln(-\ln(1 - F)) = k \ln x - k \ln \lambda ,

so ``k`` is the slope and ``λ = exp(-intercept / k)`` of a least-squares line through the empirical CDF,
restricted to the middle of the distribution (``trim = 0.1`` keeps ``F ∈ [0.1, 0.9]``: the paper's
middle-80 % protocol, App. A.2; ``0.05`` is mid-90, ``0`` the full range).

Two protocols give the empirical CDF:

``"histogram"`` (default; npm-weibull-py 0.4 ``weibull_fit`` ∘ ``extract_to_histogram``, the paper's database)
    log10|w| (float32) in 1024 equal bins on [-12, 2]; F at each bin is the midpoint of the CDF steps,
    ``(C_j - h_j / 2) / T``; x is the bin's log-domain midpoint; the line is weighted by the bin counts
    ``h_j``; R² is the weighted R² of that line and KS = max_j |C_j / T - F_fit(x_j)| over all bins.
``"exact"``
    the order statistics: sorted |w| with Hazen plotting positions ``F_i = (i - 1/2) / n``, unit weights,
    and the two-sided Kolmogorov–Smirnov distance of the sample to the fitted Weibull.

Everything is a pure function of arrays. :func:`fit_weibull_tree` fits every matrix of a model in one
compiled call (all histograms in one buffer, all lines in one batch); per-matrix results are bit-identical to
:func:`fit_weibull` on each matrix alone, because both reduce to the same row-wise fit of integer counts (on
a CUDA GPU counted in shared memory, :mod:`weibull_jax.bincount`, and fit one row a program,
:mod:`weibull_jax.rowwise`; the same formulas as XLA's path elsewhere, to float32 rounding).
Inputs are checked: non-finite values, fewer than 100 usable values, integer dtypes and degenerate
matrices raise a ``ValueError`` naming the matrix. Eager calls return numpy values (a scalar per matrix, an
array per stack; one transfer serves the checks and the reader); inside ``jax.jit`` the results stay traced,
the data checks cannot raise, and a bad matrix gives NaN.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from weibull_jax import bincount, pallas_triton, rowwise
from weibull_jax import tree as tree_lib

LOG10_RANGE = (-12.0, 2.0)
NUM_BINS = 1024
MIN_VALUES = 100  # fewer usable values than this give no fit (as in npm-weibull-py)
MIN_POINTS = 5  # fewer bins (or order statistics) than this inside the trim give no fit
PROTOCOLS = ("histogram", "exact")
_NAMED_TRIMS = {"mid_80": 0.1, "mid_90": 0.05, "full_range": 0.0}

# Bin edges as npm-weibull-py builds them (float64). Edge i is -12 + 14 i / 1024: a dyadic rational of at
# most 14 significant bits, so float32 holds every edge exactly and computes it exactly (``edge``) without
# a table (a kernel can bin without a gather); float32 comparisons with it reproduce numpy's searchsorted on
# the float64 edges bit for bit.
EDGES = np.linspace(LOG10_RANGE[0], LOG10_RANGE[1], NUM_BINS + 1)


def edge(i: jax.Array) -> jax.Array:
    """Bin edge ``i`` (int32) in float32, exactly ``EDGES[i]``: (14 i − 12 · 1024) / 1024."""
    width, start = LOG10_RANGE[1] - LOG10_RANGE[0], LOG10_RANGE[0]
    return (i * int(width) + int(start * NUM_BINS)).astype(jnp.float32) * np.float32(1.0 / NUM_BINS)


assert np.array_equal(np.asarray(edge(np.arange(NUM_BINS + 1, dtype=np.int32)), np.float64), EDGES)

# ln of each bin's log-domain midpoint: the x of the probability plot.
LN_CENTERS = (0.5 * (EDGES[:-1] + EDGES[1:]) * np.log(10.0)).astype(np.float32)

_ROW_BLOCK = 128

# Status codes of a fit, reported by the checked entry points as ValueErrors.
OK, NONFINITE, TOO_FEW_VALUES, DEGENERATE = 0, 1, 2, 3


class WeibullFit(NamedTuple):
    """A fit per matrix: shape ``k``, scale ``λ``, R² of the probability-plot line, KS distance."""

    k: jax.Array
    scale: jax.Array
    r2: jax.Array
    ks: jax.Array


class CheckedFit(NamedTuple):
    """A fit with its status, before the checks of :func:`fit_arrays` turn bad statuses into errors."""

    fit: WeibullFit
    status: jax.Array  # int32, one of OK / NONFINITE / TOO_FEW_VALUES / DEGENERATE


def trim_fraction(trim: float | str) -> float:
    """The per-side trim as a fraction; accepts npm-weibull-py's names ``mid_80``, ``mid_90``, ``full_range``."""
    t = _NAMED_TRIMS[trim] if isinstance(trim, str) else float(trim)
    if not 0.0 <= t < 0.5:
        raise ValueError(f"trim must be a per-side fraction in [0, 0.5) or one of {list(_NAMED_TRIMS)}; got {trim!r}")
    return t


# --------------------------------------------------------------------------------------------------
# Histograms
# --------------------------------------------------------------------------------------------------


def pairwise_sum(v: jax.Array) -> jax.Array:
    """Sum over the last axis by a fixed binary tree of elementwise adds (zero-padded to a power of two).

    XLA may vectorise an ordinary reduction differently for different batch sizes, which changes the
    rounding; elementwise adds are never reassociated, so each row's sum is the same bits in any batch.
    """
    n = v.shape[-1]
    width = 1 << max(n - 1, 0).bit_length()
    if width != n:
        v = jnp.concatenate([v, jnp.zeros(v.shape[:-1] + (width - n,), v.dtype)], axis=-1)
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v = v[..., :half] + v[..., half:]
    return v[..., 0]


def row_means(w: jax.Array) -> jax.Array:
    """The mean over the last axis in float32, by :func:`pairwise_sum` (the same bits in any batch)."""
    return pairwise_sum(w.astype(jnp.float32)) / w.shape[-1]


def magnitudes(w: jax.Array, center: bool = False) -> jax.Array:
    """|w| in float32 over the last axis (rows are matrices), optionally after subtracting each row's mean
    (the paper's pipeline does, App. A.1)."""
    w = w.astype(jnp.float32)
    if center:
        w = w - row_means(w)[..., None]
    return jnp.abs(w)


BELOW, ABOVE, NONFINITE_SLOT = 0, NUM_BINS + 1, NUM_BINS + 2  # slots around the 1024 bins
NUM_SLOTS = NUM_BINS + 3


def slot_index(a: jax.Array) -> jax.Array:
    """The histogram slot of each magnitude: ``BELOW`` (< 1e-12, zeros included), bins 1…NUM_BINS,
    ``ABOVE`` (> 100) and ``NONFINITE_SLOT`` (NaN, inf).

    Bin ``i + 1`` is exactly numpy's ``searchsorted(edges, log10(max(a, 1e-13)), 'right') - 1 == i`` on the
    float64 edges (npm-weibull-py's binning): an arithmetic guess corrected by one comparison with each
    neighbouring edge. The finite slots are ordered like the magnitudes, so they also locate order statistics.
    """
    lg = jnp.log10(jnp.maximum(a, 1e-13))
    scale = NUM_BINS / (LOG10_RANGE[1] - LOG10_RANGE[0])
    i = jnp.clip(jnp.floor((lg - LOG10_RANGE[0]) * scale), 0, NUM_BINS - 1).astype(jnp.int32)
    i = jnp.maximum(i - (lg < edge(i)), 0)
    i = i + ((i < NUM_BINS - 1) & (lg >= edge(i + 1)))
    slot = jnp.where(lg < LOG10_RANGE[0], BELOW, jnp.where(lg > LOG10_RANGE[1], ABOVE, i + 1))
    return jnp.where(jnp.isfinite(a), slot, NONFINITE_SLOT)


def lanes_for(row_length: int) -> int:
    """Private copies of each histogram for the scatter-add of rows up to ``row_length`` elements.

    On a GPU neighbouring elements of a matrix fall mostly in the same few hundred bins, and copies
    (element i adds to copy i mod L) turn contended atomics into parallel ones: 256 made Pythia-70M's
    histogram 7× faster on an H100. Longer rows want more: about one copy per 4,096 elements, between 256
    and 1,024 (H200, 2026-12-03, ``bench_histogram.py``: Pythia-1B's 16.8 M-element rows 16.0 ms with 256,
    13.1 ms with 1,024, 12.6 ms with 4,096, whose counters would be 16 MB a row; Pythia-70M's ≤ 1 M-element
    rows the same with 256 or more, slower with 64). A CPU needs none.
    """
    if jax.default_backend() != "gpu":
        return 1
    return int(np.clip(2 ** round(np.log2(max(row_length, 1) / 4096)), 256, 1024))


def count_rows(keys: Sequence[jax.Array], num_keys: int, lanes: int | None = None) -> jax.Array:
    """Per-row ``bincount`` of several key arrays into one buffer, by chained scatter-adds.

    ``keys[i]`` has shape ``(r_i, n_i)`` with values in [0, num_keys); the result is ``(Σ r_i, num_keys)``
    int32 counts, the rows of all arrays in order. ``lanes``: private copies of each row's counts (default
    :func:`lanes_for` the longest row), summed at the end.
    """
    lanes = lanes or lanes_for(max(k.shape[1] for k in keys))
    total_rows = sum(k.shape[0] for k in keys)
    counts = jnp.zeros(total_rows * num_keys * lanes, jnp.int32)
    first = 0
    for k in keys:
        rows, n = k.shape
        idx = (first + jnp.arange(rows, dtype=jnp.int32)[:, None]) * num_keys + k
        if lanes > 1:
            idx = idx * lanes + jnp.arange(n, dtype=jnp.int32)[None, :] % lanes
        counts = counts.at[idx.reshape(-1)].add(1, mode="promise_in_bounds")
        first += rows
    return counts.reshape(total_rows, num_keys, lanes).sum(axis=-1)


def _slot_of_value(v: jax.Array) -> jax.Array:
    return slot_index(jnp.abs(v))


def log10_histogram(rows: Sequence[jax.Array], center: bool = False, kernel: bool = False) -> jax.Array:
    """Slot counts of log10|w| for every row of every array in ``rows``, |w| as :func:`magnitudes` takes it.

    ``rows[i]`` has shape ``(r_i, n_i)``, any float dtype; the result is ``(Σ r_i, NUM_SLOTS)`` int32, with
    the 1024 bins in columns ``1 … NUM_BINS`` (see :func:`slot_index`). Scatter-added (:func:`count_rows`),
    or with ``kernel`` counted in shared memory by :func:`weibull_jax.bincount.row_counts`, which reads
    each array once in its own dtype (4.3× faster for Pythia-1B on an H200; a CUDA GPU only, see
    :func:`counts_in_shared_memory`; a program lowered for another platform, say for arrays on the CPU of a
    GPU host, scatter-adds). The two give the same counts.
    """
    def scatter_add(rows):
        return count_rows([slot_index(magnitudes(r, center)) for r in rows], NUM_SLOTS)

    def in_shared_memory(rows):
        offsets = [row_means(r) for r in rows] if center else None
        return bincount.row_counts(rows, _slot_of_value, NUM_SLOTS, offsets=offsets)

    return jax.lax.platform_dependent(rows, cuda=in_shared_memory, default=scatter_add) if kernel else scatter_add(rows)


def bins_of(slot_counts: jax.Array) -> jax.Array:
    """The 1024 bin counts of a slot histogram (npm-weibull-py's ``hist``)."""
    return slot_counts[..., 1 : NUM_BINS + 1]


# --------------------------------------------------------------------------------------------------
# The line on the probability plot
# --------------------------------------------------------------------------------------------------


def _weighted_line(x: jax.Array, y: jax.Array, wts: jax.Array, row_sum: Callable = pairwise_sum):
    """Weighted least squares y ≈ k x + b along the last axis: returns (k, λ = exp(-b/k), weighted R²).

    Centred two-pass sums keep float32 accurate (the fits match npm-weibull-py's float64 to ~1e-7).
    ``row_sum`` sums over the last axis (in a kernel, the program's own reduction)."""
    sw = row_sum(wts)[..., None]
    xbar = row_sum(wts * x)[..., None] / sw
    ybar = row_sum(wts * y)[..., None] / sw
    dx, dy = x - xbar, y - ybar
    k = row_sum(wts * dx * dy) / row_sum(wts * dx * dx)
    ss_res = row_sum(wts * (dy - k[..., None] * dx) ** 2)
    ss_tot = row_sum(wts * dy * dy)
    r2 = 1.0 - ss_res / jnp.maximum(ss_tot, 1e-12)
    scale = jnp.exp(xbar[..., 0] - ybar[..., 0] / k)
    return k, scale, r2


def _weibull_cdf_ln(ln_x: jax.Array, k: jax.Array, scale: jax.Array) -> jax.Array:
    """F(x) = 1 - exp(-(x/λ)^k) evaluated from ln x."""
    return -jnp.expm1(-jnp.exp(k[..., None] * (ln_x - jnp.log(scale)[..., None])))


def _status(nonfinite, usable, used, k, scale) -> jax.Array:
    ok_fit = (used >= MIN_POINTS) & jnp.isfinite(k) & (k > 0) & jnp.isfinite(scale) & (scale > 0)
    return jnp.where(nonfinite > 0, NONFINITE,
                     jnp.where(usable < MIN_VALUES, TOO_FEW_VALUES, jnp.where(ok_fit, OK, DEGENERATE)))


def _finish(k, scale, r2, ks, status) -> CheckedFit:
    bad = status != OK
    nan = jnp.float32(jnp.nan)
    fit = WeibullFit(*(jnp.where(bad, nan, v) for v in (k, scale, r2, ks)))
    return CheckedFit(fit, status.astype(jnp.int32))


def fit_counts(counts: jax.Array, trim: float | str = 0.1, nonfinite: jax.Array | int = 0) -> CheckedFit:
    """The histogram protocol from bin counts ``(..., NUM_BINS)`` (npm-weibull-py ``weibull_fit``)."""
    return fit_binned(counts, jnp.asarray(LN_CENTERS), trim_fraction(trim), jnp.asarray(nonfinite))


def fit_binned(counts: jax.Array, ln_x: jax.Array, trim: float, nonfinite: jax.Array,
               row_sum: Callable = pairwise_sum) -> CheckedFit:
    """:func:`fit_counts` of int32 ``counts`` at log-domain bin midpoints ``ln_x`` along the last axis, the
    trim a fraction, each sum over bins by ``row_sum``: the one body of the XLA path and of the fit kernel
    (:func:`weibull_jax.rowwise.map_rows`, which sums with its program's reduction and reads ``ln_x``)."""
    cum = jnp.cumsum(counts, axis=-1)
    total = row_sum(counts).astype(jnp.float32)[..., None]
    hf = counts.astype(jnp.float32)
    upper = cum.astype(jnp.float32) / total
    mid = (cum.astype(jnp.float32) - 0.5 * hf) / total
    if trim > 0:
        mask = (mid >= np.float32(trim)) & (mid <= np.float32(1.0 - trim)) & (counts > 0)
    else:
        mask = (counts > 0) & (mid > 0) & (mid < 1)
    y = jnp.log(-jnp.log1p(-jnp.where(mask, mid, 0.5)))
    k, scale, r2 = _weighted_line(ln_x, y, jnp.where(mask, hf, 0.0), row_sum)
    ks = jnp.max(jnp.abs(upper - _weibull_cdf_ln(ln_x, k, scale)), axis=-1)
    status = _status(nonfinite, total[..., 0], row_sum(mask.astype(jnp.int32)), k, scale)
    return _finish(k, scale, r2, ks, status)


def fit_sorted(a_sorted: jax.Array, trim: float | str = 0.1, nonfinite: jax.Array | int = 0) -> CheckedFit:
    """The exact protocol from ascending magnitudes ``(..., n)``: Hazen positions, unit weights."""
    t = trim_fraction(trim)
    n = a_sorted.shape[-1]
    i = jnp.arange(n, dtype=jnp.int32).astype(jnp.float32)
    pos = (i + 0.5) / n
    positive = a_sorted > 0
    mask = positive & ((pos >= np.float32(t)) & (pos <= np.float32(1.0 - t)) if t > 0 else True)
    x = jnp.log(jnp.where(positive, a_sorted, 1.0))
    y = jnp.log(-jnp.log1p(-jnp.where(mask, pos, 0.5)))  # float32 positions can round to 1 for n > 2^23
    k, scale, r2 = _weighted_line(x, y, mask.astype(jnp.float32))
    fitted = jnp.where(positive, _weibull_cdf_ln(x, k, scale), 0.0)
    ks = jnp.max(jnp.maximum((i + 1) / n - fitted, fitted - i / n), axis=-1)
    usable = jnp.sum(positive & (a_sorted <= 100.0), axis=-1)
    status = _status(jnp.asarray(nonfinite), usable, jnp.sum(mask, axis=-1), k, scale)
    return _finish(k, scale, r2, ks, status)


# --------------------------------------------------------------------------------------------------
# One compiled call for any number of arrays of any shapes
# --------------------------------------------------------------------------------------------------


def _placement(arrays: Sequence[Any]) -> tuple[bool, jax.sharding.Sharding | None]:
    """Both choices the fits of ``arrays`` make from where they live, in one pass over their device sets:
    (:func:`counts_in_shared_memory`, :func:`host_memory`). An array without a sharding (numpy, a bare
    ShapeDtypeStruct) goes where the program runs; a traced one hides its sharding (a caller's jit)."""
    if _is_traced(arrays):
        return False, None
    device_sets = [getattr(getattr(a, "sharding", None), "device_set", None) for a in arrays]
    kernel = bincount.available() and all(d is None or len(d) == 1 for d in device_sets)
    if None in device_sets:
        return kernel, None
    devices = set().union(*device_sets)
    return kernel, (_pinned_host(devices.pop()) if len(devices) == 1 else None)


def counts_in_shared_memory(arrays: Sequence[Any]) -> bool:
    """Whether the fits of ``arrays`` count their histogram with :mod:`weibull_jax.bincount`'s kernel: on a
    CUDA GPU, when every array lives on one device. XLA does not partition a kernel (it would gather a
    sharded operand onto every device), and the shardings of arrays traced by a caller's jit are not known
    here, so those keep the scatter-add."""
    return _placement(arrays)[0]


def host_memory(arrays: Sequence[Any]) -> jax.sharding.Sharding | None:
    """Where the fits of concrete ``arrays`` write their table: the pinned host memory of the GPU they all
    live on (None elsewhere: a CPU, several devices, numpy or traced inputs). Read back from there,
    Pythia-70M's 5 × 24 table took 0.44-0.55 instead of 0.83 ms from dispatch, Pythia-1B's 3.09-3.15 instead
    of 3.47-3.50 (H200, 2026-12-03): the copy of a small result out of device memory costs more than its
    program's tail."""
    return _placement(arrays)[1]


@functools.lru_cache(maxsize=None)
def _pinned_host(device) -> jax.sharding.Sharding | None:
    if device.platform != "gpu" or "pinned_host" not in {m.kind for m in device.addressable_memories()}:
        return None
    return jax.sharding.SingleDeviceSharding(device, memory_kind="pinned_host")


def as_rows(w: jax.Array) -> jax.Array:
    """Leading axes (all but the last two; none for a vector) are batch; each matrix becomes one row."""
    return w.reshape((-1, w.shape[-2] * w.shape[-1])) if w.ndim >= 2 else w.reshape(1, -1)


def batch_shape(w: Any) -> tuple[int, ...]:
    """The batch axes of an array under the convention of :func:`fit_weibull`."""
    shape = w.shape
    return tuple(shape[:-2]) if len(shape) >= 2 else ()


@functools.partial(jax.jit, static_argnames=("trims", "protocol", "center", "kernel"))
def _fit_arrays(arrays: tuple[jax.Array, ...], trims: tuple[float, ...], protocol: str, center: bool,
                kernel: bool = False) -> jax.Array:
    """Fits of every matrix (the rows of all arrays, concatenated) as one ``(4·trims + 1, rows)`` float32
    table: (k, λ, R², KS) of each trim, then the status code of every matrix (small integers, exact in
    float32), so that reading it all is one transfer.

    The histogram protocol fits all rows of all arrays as one ``(rows, NUM_BINS)`` batch (on a CUDA GPU in
    the fit kernel, :func:`_binned_table_in_kernel`, chosen as the program lowers; elsewhere XLA's chain,
    :func:`_binned_table`); the exact protocol sorts the rows of each array (one sort per array).
    ``kernel``: the histogram's counts in shared memory (:func:`counts_in_shared_memory`)."""
    rows = [as_rows(jnp.asarray(w)) for w in arrays]
    if protocol == "histogram":
        slots = log10_histogram(rows, center, kernel)
        xla = functools.partial(_binned_table, trims=trims)
        if not pallas_triton.AVAILABLE:
            return xla(slots)
        return jax.lax.platform_dependent(slots, cuda=functools.partial(_binned_table_in_kernel, trims=trims),
                                          default=xla)
    bad = [jnp.sum(~jnp.isfinite(r), axis=-1) for r in rows]
    srt = [jnp.sort(magnitudes(r, center), axis=-1) for r in rows]
    return _table([jax.tree.map(lambda *v: jnp.concatenate(v), *[fit_sorted(s, t, b) for s, b in zip(srt, bad)])
                   for t in trims])


def _table(fits: Sequence[CheckedFit]) -> jax.Array:
    """The ``(4·trims + 1, rows)`` table of :func:`_fit_arrays` from each trim's fits."""
    return jnp.stack([v for f in fits for v in f.fit] + [fits[0].status.astype(jnp.float32)])


def _binned_table(slots: jax.Array, trims: tuple[float, ...]) -> jax.Array:
    """:func:`_fit_arrays`' table from the slot counts of every row, by XLA (:func:`fit_counts`)."""
    # Rows padded to a multiple of _ROW_BLOCK: every row then takes the same (vector) code path of the
    # elementwise exp/log on CPU, so a matrix's fit is the same bits alone or in any tree.
    pad = -slots.shape[0] % _ROW_BLOCK
    slots = jnp.pad(slots, ((0, pad), (0, 0)))
    fits = [fit_counts(bins_of(slots), t, slots[:, NONFINITE_SLOT]) for t in trims]
    return _table([jax.tree.map(lambda v: v[: v.shape[0] - pad], fit) for fit in fits])


def _binned_table_in_kernel(slots: jax.Array, trims: tuple[float, ...], interpret: bool = False) -> jax.Array:
    """:func:`_binned_table` with each row's fit in one program (:func:`weibull_jax.rowwise.map_rows`): the
    same formulas, its sums in the program's reduction tree, so equal to XLA's to float32 rounding. Pythia-70M's
    fits program, histogram included, took 0.17-0.31 ms from dispatch to ready with it, against 0.46-0.56 ms
    with XLA's chain (H200, jax 0.11.2, ``bench_weibull.py``, 2026-12-04 and 2026-12-03)."""
    operands = [bins_of(slots), jnp.asarray(LN_CENTERS)[None], slots[:, NONFINITE_SLOT : NONFINITE_SLOT + 1]]
    return rowwise.map_rows(functools.partial(_fit_row, trims=trims), operands, interpret=interpret).T


def _fit_row(counts: jax.Array, ln_x: jax.Array, nonfinite: jax.Array, trims: tuple[float, ...]) -> list[jax.Array]:
    """One matrix's column of :func:`_fit_arrays`' table from its ``(1, NUM_BINS)`` bin counts, in a program
    of the fit kernel."""
    fits = [fit_binned(counts, ln_x, t, nonfinite[:, 0], lambda v: jnp.sum(v, axis=-1)) for t in trims]
    return [v for f in fits for v in f.fit] + [fits[0].status]


def _split_rows(table: Any, arrays: Sequence[Any]) -> list[list[WeibullFit]]:
    """Per-trim, per-array fits from the ``(4·trims [+ 1], rows)`` table of all rows (numpy or traced).

    A matrix's fit is its column's (k, λ, R², KS), all columns made in one pass (``map(WeibullFit, *fit)``:
    0.5 µs a matrix, where unpacking each column's view took 2 µs, made only where there is a matrix); a stack's
    fit is its block of columns.
    """
    shapes = [batch_shape(w) for w in arrays]
    starts = list(itertools.accumulate((math.prod(s) for s in shapes), initial=0))
    any_matrix = not all(shapes)

    def split(fit):
        columns = list(map(WeibullFit, *fit)) if any_matrix else []
        return [WeibullFit(*fit[:, first:last].reshape(4, *shape)) if shape else columns[first]
                for shape, first, last in zip(shapes, starts, starts[1:])]

    return [split(table[4 * t : 4 * t + 4]) for t in range(table.shape[0] // 4)]


def check_array(name: str, w: Any) -> None:
    """Checks that need no data: a floating dtype (float16/32/64, bfloat16, float8) and enough values."""
    if not (hasattr(w, "shape") and hasattr(w, "dtype")):
        w = np.asarray(w)
    problem = _shape_problem(tuple(w.shape), w.dtype)  # the dtype as it is: converted once, in the cache
    if problem:
        raise ValueError(f"{name}: {problem}")


@functools.lru_cache(maxsize=1024)
def _shape_problem(shape: tuple[int, ...], dtype: Any) -> str | None:
    """What :func:`check_array` finds wrong with arrays of this shape and dtype (None: nothing), once."""
    dtype = np.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        return f"dtype {dtype} is not floating point; the Weibull fit needs real weights"
    per_matrix = math.prod(shape[-2:] if len(shape) >= 2 else shape)
    if per_matrix == 0:
        return f"empty array of shape {shape}"
    if per_matrix < MIN_VALUES:
        return f"{per_matrix} values per matrix; the fit needs at least {MIN_VALUES}"
    return None


def raise_on_bad(names: Sequence[str], arrays: Sequence[Any], status: Any, protocol: str = "histogram") -> None:
    """Raises a ValueError naming the first matrix whose fit failed (host side: one transfer of ``status``,
    the concatenated per-matrix status codes of ``arrays``)."""
    status = np.asarray(status)
    bad = np.flatnonzero(status != OK)
    if bad.size == 0:
        return
    usable = ("values with 1e-12 <= |w| <= 100" if protocol == "histogram" else "non-zero values")
    why = {
        NONFINITE: "contains NaN or inf values",
        TOO_FEW_VALUES: f"has fewer than {MIN_VALUES} {usable} (all zeros, or nearly empty)",
        DEGENERATE: f"has fewer than {MIN_POINTS} distinct points inside the trimmed range "
                    "(constant or degenerate magnitudes): no Weibull line can be fit",
    }
    row = int(bad[0])
    for name, w in zip(names, arrays):
        shape = batch_shape(w)
        size = math.prod(shape)
        if row < size:
            index = f"[{', '.join(map(str, np.unravel_index(row, shape)))}]" if shape else ""
            raise ValueError(f"Weibull fit of '{name}{index}': the matrix {why[int(status[bad[0]])]}")
        row -= size


def _is_traced(arrays: Sequence[Any]) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def fit_arrays(names: Sequence[str], arrays: Sequence[Any], trims: Sequence[float | str] = (0.1,),
               protocol: str = "histogram", center: bool = False) -> list[list[WeibullFit]]:
    """Checked fits of several arrays (one compiled call): ``result[trim_index][array_index]``.

    Called on concrete arrays, the fits come back as numpy values (scalars, or arrays of a stack's batch
    shape) in one transfer (the checks need the statuses on the host anyway; arrays on one GPU have the
    program write them to pinned host memory, :func:`host_memory`); inside a ``jax.jit`` trace they stay
    traced arrays and nothing is checked.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")
    program = _fit_program(tuple(map(trim_fraction, trims)), protocol, center, *_placement(arrays))
    return _checked_fits(names, arrays, program, protocol)


@functools.lru_cache(maxsize=None)
def _fit_program(trims: tuple[float, ...], protocol: str, center: bool, kernel: bool,
                 table_in: jax.sharding.Sharding | None) -> Callable:
    """:func:`_fit_arrays` with its static arguments bound, writing its table to ``table_in`` (a
    :func:`host_memory`, or None: where XLA puts it)."""
    program = functools.partial(_fit_arrays, trims=trims, protocol=protocol, center=center, kernel=kernel)
    return program if table_in is None else jax.jit(program, out_shardings=table_in)


def _checked_fits(names, arrays, fit_table: Callable, protocol: str) -> list[list[WeibullFit]]:
    """Every array checked, then ``fit_table`` (the fits program, jitted or compiled) run on them all, then
    (on concrete arrays) the statuses checked, in the one transfer of the table, and the rows split."""
    for name, w in zip(names, arrays):
        check_array(name, w)
    table = fit_table(tuple(arrays))
    if not _is_traced(arrays):
        table = np.asarray(table)  # one transfer: the checks need it, and so do readers
        raise_on_bad(names, arrays, table[-1], protocol)
    return _split_rows(table, arrays)


def compile_fits(arrays: Sequence[jax.ShapeDtypeStruct], trims: Sequence[float | str] = (0.1,),
                 protocol: str = "histogram", center: bool = False
                 ) -> Callable[[Sequence[str], Sequence[jax.Array]], list[list[WeibullFit]]]:
    """:func:`fit_arrays` for arrays of these shapes, dtypes and shardings, compiled now (ahead of time).

    Returns ``fit(names, arrays)``, which checks and fits like :func:`fit_arrays` (the same program, so the
    same bits) without tracing or compiling: a program that reads arrays from disk can compile its fits in
    a thread while the first reads are in flight (``analysis.series.measure``).
    """
    trims = tuple(trim_fraction(t) for t in trims)
    compiled = _fit_arrays.lower(tuple(arrays), trims, protocol, center, counts_in_shared_memory(arrays)).compile()

    def fit(names: Sequence[str], concrete: Sequence[jax.Array]) -> list[list[WeibullFit]]:
        return _checked_fits(names, concrete, compiled, protocol)

    return fit


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def fit_weibull(w: Any, trim: float | str = 0.1, protocol: str = "histogram", center: bool = False,
                name: str = "array") -> WeibullFit:
    """Weibull (k, λ, R², KS) of |w| for one matrix or a stack of matrices.

    Args:
      w: one array (a vector or a matrix) or a stack of matrices ``(*batch, m, n)``: every axis but the
        last two is a batch axis, and the result has shape ``batch``.
      trim: fraction dropped from each end of the CDF (0.1: the paper's middle 80 %; 0.05; 0 = full).
      protocol: ``"histogram"`` (npm-weibull-py's binned fit, default) or ``"exact"`` (order statistics).
      center: subtract each matrix's mean first.
      name: how errors name the array.
    """
    return fit_arrays([name], [w], (trim,), protocol, center)[0][0]


def fit_weibull_tree(params: Any, trim: float | str = 0.1, protocol: str = "histogram", center: bool = False,
                     select: Callable[[tree_lib.Path, Any], bool] = tree_lib.is_weight_matrix) -> Any:
    """A tree of :class:`WeibullFit` for every selected leaf of ``params`` (None elsewhere), in one call.

    By default every leaf with two or more axes is fit (a stacked leaf of scanned layers gives one fit per
    layer). Matrices of different shapes share one compiled program.
    """
    names, leaves, treedef, positions = tree_lib.named_leaves(params, select)
    fits = fit_arrays(names, leaves, (trim,), protocol, center)[0]
    return tree_lib.unflatten_selected(treedef, positions, fits)


class TrimAblation(NamedTuple):
    """Body–tail ablation (§3.2): k of the middle 80 %, middle 90 % and full-range fits, and k80 − k100."""

    k80: jax.Array
    k90: jax.Array
    k100: jax.Array
    gap: jax.Array


def trim_ablation(w: Any, protocol: str = "histogram", center: bool = False, name: str = "array") -> TrimAblation:
    """k80 / k90 / k100 from one histogram (or one sort) of w; the paper's cohort gap is 0.0519 ± 0.0017."""
    f80, f90, f100 = (fits[0] for fits in fit_arrays([name], [w], (0.1, 0.05, 0.0), protocol, center))
    return TrimAblation(f80.k, f90.k, f100.k, f80.k - f100.k)


# --------------------------------------------------------------------------------------------------
# Closed forms of a Weibull(k, λ)
# --------------------------------------------------------------------------------------------------


def _gamma_ratio(k: jax.Array, order: float) -> jax.Array:
    """Γ(1 + order/k)."""
    return jnp.exp(gammaln(1.0 + order / jnp.asarray(k, jnp.float32)))


class WeibullMoments(NamedTuple):
    """Closed forms of |w| ~ Weibull(k, λ): mean λΓ(1+1/k), std λ√(Γ(1+2/k) − Γ²(1+1/k)),
    median λ(ln 2)^{1/k}, RMS λ√Γ(1+2/k), and the coefficient of variation std/mean."""

    mean: jax.Array
    std: jax.Array
    median: jax.Array
    rms: jax.Array
    cv: jax.Array


def weibull_moments(k: jax.Array, scale: jax.Array) -> WeibullMoments:
    """Moments of a Weibull(k, λ) (framework paper Fig. 1: σ = λ·C_k with C_k = √(Γ(1+2/k) − Γ²(1+1/k)))."""
    g1, g2 = _gamma_ratio(k, 1.0), _gamma_ratio(k, 2.0)
    c_k = jnp.sqrt(jnp.maximum(g2 - g1 * g1, 0.0))
    return WeibullMoments(scale * g1, scale * c_k, scale * jnp.log(2.0) ** (1.0 / k), scale * jnp.sqrt(g2), c_k / g1)


def weibull_quantile(k: jax.Array, scale: jax.Array, q: jax.Array) -> jax.Array:
    """Q(q) = λ (−ln(1 − q))^{1/k}."""
    return scale * (-jnp.log1p(-jnp.asarray(q, jnp.float32))) ** (1.0 / k)


def weibull_log10_sf(x: jax.Array, k: jax.Array, scale: jax.Array) -> jax.Array:
    """log10 P(|W| > x) = −(x/λ)^k / ln 10."""
    return -((x / scale) ** k) / jnp.log(10.0)


def scale_from_rms(rms: jax.Array, k: jax.Array) -> jax.Array:
    """The RMS ↔ λ bridge: E[W²] = λ²Γ(1+2/k), so λ = RMS / √Γ(1+2/k) (forces paper §5)."""
    return rms / jnp.sqrt(_gamma_ratio(k, 2.0))


def rms_from_scale(scale: jax.Array, k: jax.Array) -> jax.Array:
    """The inverse bridge: RMS = λ √Γ(1+2/k)."""
    return scale * jnp.sqrt(_gamma_ratio(k, 2.0))


class GammaClosure(NamedTuple):
    """Γ closure (App. A.1): the std of |w| measured vs predicted by the fit, and their relative error.

    The paper reports ``rel_error < 0.02`` for its 837 FFN fits. Read literally (σ̂ = std of |w|), the check
    does not hold for the half-normal itself: the anchor fit (1.2054, 0.8875σ) predicts std 0.6948σ against
    the true √(1 − 2/π)σ = 0.6028σ, a 15.3 % error, because the middle-80 % line ignores the tails that the
    second moment weighs. We report the number as defined and leave its reading to the user."""

    std_measured: jax.Array
    std_predicted: jax.Array
    rel_error: jax.Array


@functools.partial(jax.jit, static_argnames="center")
def matrix_rms(w: jax.Array, center: bool = False) -> jax.Array:
    """RMS = √mean(w²) of each matrix (batch axes as in fit_weibull): the RMS side of the bridge."""
    a = magnitudes(as_rows(jnp.asarray(w)), center)
    return jnp.sqrt(jnp.mean(a * a, axis=-1)).reshape(batch_shape(w))


@functools.partial(jax.jit, static_argnames="center")
def gamma_closure(w: jax.Array, fit: WeibullFit, center: bool = False) -> GammaClosure:
    """σ̂(|w|) against λ√(Γ(1+2/k) − Γ²(1+1/k)) for a matrix or a stack (batch axes as in fit_weibull)."""
    a = magnitudes(as_rows(jnp.asarray(w)), center)
    measured = jnp.std(a, axis=-1).reshape(batch_shape(w))
    predicted = weibull_moments(fit.k, fit.scale).std
    return GammaClosure(measured, predicted, jnp.abs(predicted - measured) / measured)
