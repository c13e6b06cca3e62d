"""The series analysis of one run: λ trajectories, k-lock, force budget, closed loop and spline recovery.

Reproduces the tables of arXiv 2606.19367 (§4–6, App. A–B) from a run directory of ``python -m train.main``
(``snapshots/``, ``forces/``, ``config.json``), or the weight-only parts from a converted HuggingFace series.
Every checkpoint is read once per matrix: a matrix's ``(T, n)`` slab gives its T Weibull fits (one
compiled call) and its trajectory Gram matrix (``weibull_jax.trajectory``); everything after that is small
host arithmetic on (T, M) tables and T×T Grams.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import glob
import json
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from analysis import figures, sections
from weibull_jax import (anchor, closed_loop, forces, models, optim, snapshots, spectra, taxonomy,
                         trajectory, weibull)
from weibull_jax import data as data_lib
from weibull_jax import sharding as sharding_lib

TRANSMISSION = taxonomy.TRANSMISSION
TABLE_STEPS = (250, 1250, 2500, 5000, 10000, 20000)
RISE_PHASE = 5000  # the forces paper's rise phase: steps 1 … 5000 (§4.1)
POINT_WINDOW = 50  # a table step's shares are those of the 50 steps ending at it
POINT_EVERY = 50  # the pointwise recovery's steps: the forces paper's recorded-step cadence
# Slabs read (eight files at a time each) and copied to the device while the device works: enough to go on
# reading while a block's spectra are solved (a 16-revision Pythia-1B suite on an H200, cold: 41.4 s with 2,
# 29.5 s with 4, 31.7 s with 8; `dd` 21-23 s)
READ_AHEAD = 4


@dataclasses.dataclass
class Measured:
    """Per knot and matrix: Weibull fits and squared norms; per matrix: the trajectory Gram."""

    steps: np.ndarray  # (T,) knots
    names: list[str]  # (M,) matrices
    sizes: np.ndarray  # (M,) elements per matrix
    k: np.ndarray  # (T, M)
    scale: np.ndarray  # (T, M)
    sq_norm: np.ndarray  # (T, M)
    grams: list[trajectory.TrajectoryGram]  # M Grams (numpy)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # where the time went
    sd: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # trunk matrix (W_qkv split) → (T, r) SD

    @property
    def rms(self) -> np.ndarray:
        """(T, M) the RMS of every matrix at every knot."""
        return closed_loop.rms(self.sq_norm, self.sizes)

    def select(self, cls: str) -> list[int]:
        return [i for i, n in enumerate(self.names) if taxonomy.describe(n).cls == cls]

    def gram_of(self, columns: list[int]) -> trajectory.TrajectoryGram:
        return trajectory.TrajectoryGram(*(np.sum([np.asarray(self.grams[i][f], np.float64) for i in columns], 0)
                                           for f in range(3)))


class _Read(NamedTuple):
    knots: range
    elements: slice
    whole_rows: bool  # every element of these knots: the fits can be taken
    shape: tuple[int, int]  # padded to this: the chunks of one matrix share one compiled program


def _reads(t: int, n: int, max_bytes: int) -> list[_Read]:
    """How one (T, n) float32 slab is read: at once if it fits in ``max_bytes``; else in equal element chunks
    for the Gram (which adds over them; zero padding adds nothing) and equal knot chunks for the fits (which
    need whole rows; padded rows repeat the last one and are dropped)."""
    if 4 * t * n <= max_bytes:
        return [_Read(range(t), slice(0, n), True, (t, n))]
    width = -(-n // -(-4 * t * n // max_bytes))
    rows = max(1, max_bytes // (4 * n))
    return ([_Read(range(t), slice(lo, lo + width), False, (t, width)) for lo in range(0, n, width)]
            + [_Read(range(i, min(t, i + rows)), slice(0, n), True, (rows, n)) for i in range(0, t, rows)])


def slab_sharding(devices: int) -> jax.sharding.NamedSharding | None:
    """How :func:`measure` places a (knots, elements) slab over ``devices`` local devices (-1: all): its
    elements split evenly (zero-padded: zeros change neither the Gram, the norms nor the fits, whose
    histogram leaves |w| < 1e-12 out), every knot on every device. None for one device."""
    count = jax.local_device_count() if devices == -1 else devices
    if not 1 <= count <= jax.local_device_count():
        raise ValueError(f"--devices={devices}: this host has {jax.local_device_count()} device(s)")
    if count == 1:
        return None
    mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()[:count]), ("elements",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "elements"))


def _padded(read: _Read, shards: int) -> tuple[int, int]:
    """A read's slab on the device: its knots padded to ``read.shape``'s, its elements to a multiple of the
    devices it is split over."""
    rows, cols = read.shape
    return rows, -(-cols // shards) * shards


@jax.jit
def _finite_rows_and_squares(slab: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row: all values finite, and Σ w² (float32)."""
    return jnp.all(jnp.isfinite(slab), axis=1), jnp.sum(slab * slab, axis=1)


# The Gram's one GEMM shape without XLA's autotuning: on an H200 its first compile for 81 knots took 8.7 s
# of autotuning (0.5 s for 16), while the loop waited with its reads stopped; its runtime is ~1 % of a series'.
GRAM_COMPILER_OPTIONS = {"xla_gpu_autotune_level": 0}


class _SlabPrograms:
    """The Gram, the row checks, the fits and the spectra of every slab shape of a plan, compiled ahead of
    time in threads while the first slabs are read: compiled on first use, the compiler held the loop while
    the reads stopped at ``READ_AHEAD`` slabs (4.1 of 21.8 s for a 16-revision Pythia-1B suite on an H200,
    2026-12-03; its spectra another 12.7 s). The row checks, fits and spectra are the library functions' own
    programs, so the same bits; the Gram's is compiled without autotuning (``GRAM_COMPILER_OPTIONS``), the
    same sums up to float32 reordering. ``spectra_shapes``: per group of slabs (:func:`_spectra_groups`), the
    (knots, m, n) shapes of their trunk matrices (one program a group: one batched eigensolve a Gram size)."""

    def __init__(self, reads: list[_Read], t: int, shards: int, sharding, compiler: concurrent.futures.Executor,
                 spectra_shapes: set[tuple[int, ...]]):
        def spec(shape):
            return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)

        self._gram, self._rows, self._fits = {}, {}, {}
        self._spectra = {shapes: compiler.submit(spectra.compile_singular_distributions,
                                                 [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes])
                         for shapes in sorted(spectra_shapes)}
        self.waited = 0.0  # seconds the loop waited for the compiler
        for read in reads:
            shape = _padded(read, shards)
            if len(read.knots) == t and shape not in self._gram:
                self._gram[shape] = compiler.submit(lambda s: trajectory.trajectory_gram.lower(spec(s)).compile(
                    compiler_options=GRAM_COMPILER_OPTIONS), shape)
            if read.whole_rows and shape not in self._rows:
                self._rows[shape] = compiler.submit(lambda s: _finite_rows_and_squares.lower(spec(s)).compile(),
                                                    shape)
                fits_spec = jax.ShapeDtypeStruct((shape[0], 1, shape[1]), jnp.float32, sharding=(
                    None if sharding is None else jax.sharding.NamedSharding(
                        sharding.mesh, jax.sharding.PartitionSpec(None, None, "elements"))))
                self._fits[shape] = compiler.submit(weibull.compile_fits, [fits_spec])

    def gram(self, shape):
        return self._ready(self._gram[shape])

    def rows(self, shape):
        return self._ready(self._rows[shape])

    def fits(self, shape):
        return self._ready(self._fits[shape])

    def spectra(self, shapes):
        return self._ready(self._spectra[shapes])

    def _ready(self, program: concurrent.futures.Future):
        start = time.perf_counter()
        out = program.result()
        self.waited += time.perf_counter() - start
        return out


def _spectra_groups(names: list[str], part_shapes: list[dict[str, tuple[int, ...]]], max_bytes: int
                    ) -> list[list[int]]:
    """The reads (indices into the plan, whose matrices are ``names``) whose trunk matrices (``part_shapes``)
    have their spectra taken together: those of one block, up to ``max_bytes`` of float32 matrices. On a GPU
    the eigensolver's time grows slowly from a floor per call (cuSOLVER's batched solver on an H200, float64
    2048 × 2048 Grams: 260 ms for 16, 1,075 ms for 96), so a block of a 16-revision Pythia-1B series (its six
    trunk matrices, W_qkv split: 96 Grams) costs one call of 96 instead of six of 16 (~1,560 ms)."""
    groups: list[list[int]] = []
    block, size = None, 0
    for i, (name, shapes) in enumerate(zip(names, part_shapes)):
        if not shapes:
            continue
        here = taxonomy.describe(name).block
        nbytes = sum(4 * math.prod(shape) for shape in shapes.values())
        if here == block and size + nbytes <= max_bytes:  # block is None before the first group
            groups[-1].append(i)
            size += nbytes
        else:
            groups.append([i])
            block, size = here, nbytes
    return groups


def measure(series: snapshots.WeightSeries, n_heads: int | None = None, max_bytes: int = 12 << 30,
            devices: int = 1) -> Measured:
    """Reads each matrix across all knots (once, or twice for slabs over ``max_bytes``), in the order the
    matrices lie in the files (``series.storage_key``), and returns the fits, norms and Grams, and with
    ``n_heads`` (to split a fused W_qkv) the singular distributions of the trunk matrices. The next reads are
    prefetched (threads) while the device works on the current one.

    ``devices`` > 1 (-1: all of this host's) splits every slab's elements over that many devices
    (:func:`slab_sharding`), so a slab may be ``devices`` times larger (``max_bytes`` is per device) and
    its work is spread: the fits are the same bits as on one device (integer counts), the norms and Grams
    the same sums in another order (float32 rounding), the spectra are computed from the whole matrix on
    one device."""
    sharding = slab_sharding(devices)
    shards = 1 if sharding is None else sharding.mesh.size
    max_bytes *= shards
    names = series.matrices()
    t = len(series.steps)
    sizes = np.asarray([math.prod(series.layout.span(n)[1]) for n in names])
    k, scale, sq_norm = (np.zeros((t, len(names))) for _ in range(3))
    in_storage_order = sorted(range(len(names)), key=lambda m: series.storage_key(names[m]))
    plan = [(m, read) for m in in_storage_order for read in _reads(t, int(sizes[m]), max_bytes)]
    grams: list[Any] = [None] * len(names)

    def trunk(m: int, slab: jax.Array) -> dict[str, jax.Array]:
        """The trunk matrices in slab ``m``'s rows, stacks (knots, m, n) (a fused W_qkv split in three); none
        without ``n_heads`` or for another matrix."""
        if not (n_heads and len(series.layout.span(names[m])[1]) == 2 and spectra.is_trunk(names[m])):
            return {}
        return spectra.trunk_matrices({names[m]: series.unravel(names[m], slab[:, : sizes[m]])}, n_heads)

    def load(m: int, read: _Read) -> jax.Array:
        """A slab on the device in float32 (read and copied as stored: float16 is half the bytes; padded,
        which copies it, only where a chunk or the devices need it)."""
        x = series.slab(names[m], read.knots, read.elements, dtype=None)
        rows, cols = _padded(read, shards)
        if x.shape[1] < cols:
            x = np.pad(x, ((0, 0), (0, cols - x.shape[1])))
        if x.shape[0] < rows:
            x = np.pad(x, ((0, rows - x.shape[0]), (0, 0)), mode="edge")
        return jax.block_until_ready(jax.device_put(x, sharding).astype(jnp.float32))

    # wait_for_reads: the reads and host→device copies (in the prefetch threads) that the device waited for
    seconds = dict.fromkeys(("wait_for_reads", "wait_for_compiler", "gram", "norms", "fits", "spectra"), 0.0)
    sd: dict[str, np.ndarray] = {}

    def timed(key: str, fn, *args):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        seconds[key] += time.perf_counter() - start
        return out

    progress = sections.Progress("measured", len(plan))
    with concurrent.futures.ThreadPoolExecutor(max_workers=READ_AHEAD) as pool, \
            concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as compiler:
        pending = [pool.submit(load, *p) for p in plan[:READ_AHEAD]]
        part_shapes = [{name: part.shape for name, part in jax.eval_shape(functools.partial(trunk, m), (
            jax.ShapeDtypeStruct(_padded(read, shards), jnp.float32))).items()} if read.whole_rows else {}
            for m, read in plan]
        groups = _spectra_groups([names[m] for m, _ in plan], part_shapes, max_bytes // shards)
        group_shapes = {group[-1]: tuple(shape for i in group for shape in part_shapes[i].values())
                        for group in groups}
        spectra_shapes = set(group_shapes.values())
        unsolved: dict[tuple[str, range], jax.Array] = {}  # the trunk matrices of the group read so far
        programs = _SlabPrograms([read for _, read in plan], t, shards, sharding, compiler, spectra_shapes)
        for i, (m, read) in enumerate(plan):
            progress.update(i, f"reading {names[m]}, {t} knots")
            slab = timed("wait_for_reads", pending.pop(0).result)
            if i + READ_AHEAD < len(plan):
                pending.append(pool.submit(load, *plan[i + READ_AHEAD]))
            if len(read.knots) == t:  # the Gram: every knot, all or some elements
                gram = programs.gram(slab.shape)
                piece = timed("gram", gram, slab)
                grams[m] = piece if grams[m] is None else grams[m] + piece
            if read.whole_rows:
                row_checks = programs.rows(slab.shape)
                finite, squares = map(np.asarray, timed("norms", row_checks, slab))
                if not finite[: len(read.knots)].all():
                    step = series.steps[read.knots.start + int(np.argmin(finite))]
                    raise ValueError(f"{names[m]} holds NaN or inf in the snapshot of step {step} in "
                                     f"{series.directory}: a diverged run; analyse the knots before it")
                fits = programs.fits(slab.shape)
                fit = timed("fits", lambda x: fits([names[m]], [x[:, None, :]])[0][0], slab)
                k[read.knots.start:read.knots.stop, m] = fit.k[: len(read.knots)]
                scale[read.knots.start:read.knots.stop, m] = fit.scale[: len(read.knots)]
                # from the rows, not the Gram: n_0 + 2c_i + H_ii cancels to noise when a matrix decays by 1e4
                sq_norm[read.knots.start:read.knots.stop, m] = squares[: len(read.knots)]
                parts = timed("spectra", trunk, m, slab if sharding is None else sharding_lib.on_one_device(slab))
                unsolved.update({(name, read.knots): part for name, part in parts.items()})
                if i in group_shapes:  # the group's last slab: its spectra in one program
                    program = programs.spectra(group_shapes[i])
                    for (name, knots), rows in zip(unsolved, timed("spectra", program, list(unsolved.values()))):
                        rows = np.asarray(rows)[: len(knots)]
                        sd.setdefault(name, np.zeros((t, rows.shape[-1])))[knots.start:knots.stop] = rows
                    unsolved.clear()
            del slab
        seconds["wait_for_compiler"] = programs.waited
    progress.update(len(plan))
    grams = [jax.device_get(g) for g in grams]
    return Measured(series.steps, names, sizes, k, scale, sq_norm, grams, seconds, sd)


# ---------------------------------------------------------------------------------------------------------
# Run directory inputs
# ---------------------------------------------------------------------------------------------------------


def load_config(run_dir: str) -> ml_collections.ConfigDict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{run_dir} is not a run directory: no config.json (give the --workdir of a "
                         "python -m train.main run)")
    try:
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} is not the config of a training run ({type(e).__name__}: {e})") from None
    missing = [k for k in ("model", "optimizer", "data", "steps") if k not in config]
    if missing:
        raise ValueError(f"{path} is not the config of a training run: it has no {', '.join(missing)}")
    return config


def load_metrics(run_dir: str) -> list[dict]:
    """The lines of a run's ``metrics.jsonl`` (none if it has no such file)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    return data_lib.read_jsonl(path) if os.path.isfile(path) else []


def learning_rates(config: ml_collections.ConfigDict, last_step: int) -> np.ndarray:
    """η_t for t = 0 … last_step − 1, from the run's schedule."""
    schedule = optim.schedule_of(config.optimizer, config.steps)
    return np.asarray(jax.vmap(schedule)(jnp.arange(last_step)), np.float64)


@dataclasses.dataclass
class Recorded:
    """The per-step budget: row t is the step from w_t to w_{t+1} (t = 0 … S−1)."""

    names: list[str]
    lr: np.ndarray  # (S,)
    forces: np.ndarray  # (S, M, 5) alignment, injection, decay, cross, wd2

    def columns(self, names: list[str]) -> list[int]:
        return [self.names.index(n) for n in names]

    def transmission_columns(self) -> list[int]:
        return [i for i, n in enumerate(self.names) if taxonomy.describe(n).cls == TRANSMISSION]


def load_forces(run_dir: str) -> Recorded:
    paths = sorted(glob.glob(os.path.join(run_dir, "forces", "[0-9]" * 8 + ".npz")))  # not a killed run's .tmp
    if not paths:
        raise ValueError(f"{run_dir} has no recorded forces (forces/*.npz): train with config.record_forces")
    steps, lr, values, names = [], [], [], None
    for path in paths:
        try:
            with np.load(path) as f:
                steps.append(f["steps"])
                lr.append(f["lr"])
                values.append(f["forces"])
                these = list(f["names"])
        except Exception as e:  # zipfile, numpy and KeyError types for a damaged or foreign file
            raise ValueError(f"the forces file {path} cannot be read ({type(e).__name__}: {e}): a damaged file; "
                             "restore it, or analyse a copy of the run without forces/") from None
        names = names or these
        if these != names or values[-1].shape != (len(steps[-1]), len(names), 5):
            raise ValueError(f"{path} names other matrices, or holds another shape, than the run's first forces file")
    steps = np.concatenate(steps)
    if not np.array_equal(steps, np.arange(1, steps.size + 1)):
        raise ValueError(f"{run_dir}/forces does not cover steps 1 … {steps.max()} without gaps (a partial run?)")
    return Recorded(names, np.concatenate(lr).astype(np.float64), np.concatenate(values).astype(np.float64))


# ---------------------------------------------------------------------------------------------------------
# Weibull trajectories
# ---------------------------------------------------------------------------------------------------------


def matrix_rows(data: Measured) -> list[dict]:
    rows, rms = [], data.rms
    for i, step in enumerate(data.steps):
        for m, name in enumerate(data.names):
            info = taxonomy.describe(name)
            rows.append(dict(step=int(step), matrix=name, kind=info.kind, cls=info.cls, block=info.block,
                             k=data.k[i, m], scale=data.scale[i, m],
                             rms=float(rms[i, m]), sq_norm=data.sq_norm[i, m]))
    return rows


def group_medians(data: Measured, by: str) -> dict[str, dict[str, np.ndarray]]:
    """Per group (kind or class): the median over its matrices of k, λ and the RMS at every knot."""
    groups: dict[str, list[int]] = {}
    for m, name in enumerate(data.names):
        groups.setdefault(forces.group_key(name, by), []).append(m)
    return {g: {"k": np.median(data.k[:, cols], 1), "scale": np.median(data.scale[:, cols], 1),
                "rms": np.median(data.rms[:, cols], 1)} for g, cols in groups.items()}


def per_block(data: Measured, values: np.ndarray) -> np.ndarray:
    """(T, blocks): the median of ``values`` (T, M) over each block's Transmission matrices."""
    blocks: dict[int, list[int]] = {}
    for m in data.select(TRANSMISSION):
        blocks.setdefault(taxonomy.describe(data.names[m]).block, []).append(m)
    return np.stack([np.median(values[:, cols], 1) for b, cols in sorted(blocks.items()) if b >= 0], 1)


def k_lock(data: Measured) -> dict[str, np.ndarray]:
    """Per knot: the per-block medians of the Transmission k, summarised across blocks (median, min, max)."""
    blocks = per_block(data, data.k)
    return {"median": np.median(blocks, 1), "min": blocks.min(1), "max": blocks.max(1), "per_block": blocks}


def lambda_phases(steps: np.ndarray, scale: np.ndarray, final_lr: float | None, weight_decay: float,
                  optimizer: str = "adamw") -> dict:
    """Rise, peak, relaxation and floor of a λ trajectory (§4.2, §6.2). The floor coefficient
    λ_final/√(η_final/λ_wd) is AdamW's: its √(η/λ_wd) is the equilibrium norm of an update of unit RMS per
    weight under decoupled decay, so it is given for AdamW runs only (Muon's update has RMS ~1/√fan, the SGD
    family's the gradient's)."""
    peak = int(np.argmax(scale))
    out = {"scale_init": float(scale[0]), "peak_scale": float(scale[peak]), "peak_step": int(steps[peak]),
           "final_scale": float(scale[-1]), "rise": float(scale[peak] / scale[0]),
           "relaxation": float(1.0 - scale[-1] / scale[peak])}
    if final_lr and weight_decay and optimizer == "adamw":
        out["floor_coefficient"] = float(scale[-1] / math.sqrt(final_lr / weight_decay))
    return out


def init_ratio(data: Measured, model: Any) -> dict:
    """λ_in/λ_out of the FFN per knot (median over blocks) against the recipes' σ_in/σ_out (framework App. A.3):
    at init the fit gives λ = 0.8875σ for both, so the ratio starts at σ_in/σ_out."""
    first, second = {}, {}
    for m, name in enumerate(data.names):
        info = taxonomy.describe(name)
        if info.kind in ("ffn_in", "up"):
            first[info.block] = m
        elif info.kind in ("ffn_out", "down"):
            second[info.block] = m
    blocks = sorted(set(first) & set(second))
    if not blocks:
        return {}
    ratio = np.median(np.stack([data.scale[:, first[b]] / data.scale[:, second[b]] for b in blocks], 1), 1)
    out = {"ratio": ratio}
    if model is not None:
        out["recipe"] = (anchor.init_sigma(model.init_in, model.d_model, model.n_layers)
                         / anchor.init_sigma(model.init_out, model.d_model, model.n_layers))
    return out


# ---------------------------------------------------------------------------------------------------------
# Force budget
# ---------------------------------------------------------------------------------------------------------


def binned_shares(recorded_forces: np.ndarray, columns: list[int], bin_steps: int = 50):
    """(bin end steps, (bins, 3) shares of |align|, |inj|, |decay|) of the ``columns`` matrices; runs shorter
    than ten bins get bins of a tenth of the run."""
    a = np.abs(recorded_forces[:, columns, :3]).sum(1)
    bin_steps = max(1, min(bin_steps, a.shape[0] // 10))
    bins = a.shape[0] // bin_steps
    a = a[: bins * bin_steps].reshape(bins, bin_steps, 3).sum(1)
    return (np.arange(bins) + 1) * bin_steps, a / a.sum(1, keepdims=True)


def shares(block: np.ndarray) -> dict[str, float]:
    """Shares of Σ(|align| + |inj| + |decay|) over a (steps, matrices, 5) block; higher-order on the same scale."""
    a = np.abs(block).sum(axis=(0, 1))
    leading = a[0] + a[1] + a[2]
    return {"alignment": a[0] / leading, "injection": a[1] / leading, "decay": a[2] / leading,
            "cross": a[3] / leading, "wd2": a[4] / leading, "higher_order": (a[3] + a[4]) / leading}


def public_code_shares(row: np.ndarray) -> dict[str, float]:
    """The forces paper's table (§4.1) as its public code computes it: the one step ending at the table step,
    the matrices' terms summed before the absolute value, the alignment at the weights after the step
    (``Forces.post_update_alignment``); shares of |align| + inj + |decay|. ``row``: (matrices, 5)."""
    f = forces.Forces(*row.sum(0))
    align = abs(f.post_update_alignment())
    leading = align + f.injection + abs(f.decay)
    return {"alignment_public_code": align / leading, "injection_public_code": f.injection / leading,
            "decay_public_code": abs(f.decay) / leading}


def rise_window(windows: dict[str, Any]) -> str:
    """The rise phase's key among a budget's windows (``"first-last"``, in :func:`budget_tables` order: the
    last is the run's end): steps 1 … min(5000, the run's length) (§4.1), or the first window where the run
    has no such one."""
    total = int(list(windows)[-1].split("-")[1])
    key = f"1-{min(RISE_PHASE, total)}"
    return key if key in windows else next(iter(windows))


def budget_tables(recorded: Recorded, table_steps=TABLE_STEPS) -> tuple[list[dict], list[dict]]:
    """(at steps, over windows): shares per class, at each table step (the 50 steps ending there; and the
    public code's one-step form, :func:`public_code_shares`) and over the windows 1…s (the paper's 'rise
    phase' is 1…5000) and the last 10 % of the run; per block for Transmission."""
    total = recorded.forces.shape[0]
    groups: dict[str, list[int]] = {"all": list(range(len(recorded.names)))}
    for m, name in enumerate(recorded.names):
        info = taxonomy.describe(name)
        groups.setdefault(info.cls, []).append(m)
        if info.cls == TRANSMISSION and info.block >= 0:
            groups.setdefault(f"transmission.block_{info.block}", []).append(m)
    marks = [s for s in table_steps if s <= total]
    at, over = [], []
    windows = [(1, s) for s in marks] + [(total - total // 10 + 1, total)]
    for g, cols in groups.items():
        for s in marks:
            at.append({"step": s, "group": g, **shares(recorded.forces[max(0, s - POINT_WINDOW):s][:, cols]),
                       **public_code_shares(recorded.forces[s - 1][cols])})
        for first, last in windows:
            over.append({"first": first, "last": last, "group": g,
                         **shares(recorded.forces[first - 1:last][:, cols])})
    return at, over


# ---------------------------------------------------------------------------------------------------------
# Closed loop and recovery
# ---------------------------------------------------------------------------------------------------------


def closed_loop_table(data: Measured, recorded: Recorded, spacings=(1, 50, 250, 500)) -> tuple[list[dict], dict]:
    """logRMSE of the integrated, bridged λ against the fitted λ over the Transmission matrices and the knots
    on each Δ grid; with the bridge at the lock (each matrix's median k) and at each knot's k. Also the
    bridge error (true RMS → λ) and the integration error (integrated vs true RMS). Returns the rows and the
    Δ = 1 lock-bridge trajectory for the figure."""
    cols = data.select(TRANSMISSION)
    lock_k = np.median(data.k[:, cols], 0)
    rows, curve = [], {}
    for spacing, predicted, knots, grid in _integrated(data, recorded, cols, spacings):
        fitted = data.scale[knots][:, cols]
        true_sq = data.sq_norm[knots][:, cols]
        size = data.sizes[cols]
        overshoot = closed_loop.first_nonpositive(predicted)
        integration = closed_loop.log_rmse(closed_loop.rms(predicted[grid], size), closed_loop.rms(true_sq, size))
        for bridge, k in (("lock", lock_k[None, :]), ("per_checkpoint", data.k[knots][:, cols])):
            pred = closed_loop.bridge_scale(predicted[grid], size, k)
            rows.append({"spacing": spacing, "bridge": bridge, "knots": len(knots),
                         "log_rmse": closed_loop.log_rmse(pred, fitted),
                         "bridge_error": closed_loop.log_rmse(closed_loop.bridge_scale(true_sq, size, k), fitted),
                         "integration_error": integration,
                         "nonpositive_from_step": None if overshoot is None else overshoot * spacing})
            if spacing == 1 and bridge == "lock":
                curve = {"steps": data.steps[knots], "predicted": np.median(pred, 1), "fitted": np.median(fitted, 1)}
    return rows, curve


def _integrated(data: Measured, recorded: Recorded, cols: list[int], spacings):
    """For each Δ: ‖w‖² of the ``cols`` matrices integrated from the knot at step 0 with their recorded
    leading forces (``closed_loop.integrate_sq_norm``), and the knots on its grid (knot index, grid index)."""
    leading = recorded.forces[:, recorded.columns([data.names[m] for m in cols]), :3].sum(-1)  # (S, C)
    for spacing in (s for s in spacings if s <= leading.shape[0]):
        predicted = closed_loop.integrate_sq_norm(data.sq_norm[0, cols], leading, spacing)
        on_grid = [(i, s // spacing) for i, s in enumerate(data.steps) if s % spacing == 0 and s // spacing
                   < predicted.shape[0]]
        knots, grid = map(np.asarray, zip(*on_grid))
        yield spacing, predicted, knots, grid


def rms_closed_loop_table(data: Measured, recorded: Recorded, spacings=(1, 50, 250, 500)) -> list[dict]:
    """The closed loop in RMS units for every class: logRMSE of the RMS its recorded leading forces integrate
    to against the snapshots' RMS, over its matrices and the knots on each Δ grid. For the Selection class,
    which has no k-lock to bridge to λ, this is the paper's check (App. C.2, Fig. 12: "RMS units")."""
    rows = []
    for cls in sorted({taxonomy.describe(n).cls for n in data.names}):
        cols = data.select(cls)
        for spacing, predicted, knots, grid in _integrated(data, recorded, cols, spacings):
            size = data.sizes[cols]
            rows.append({"class": cls, "spacing": spacing, "knots": len(knots), "rms_log_rmse": closed_loop.log_rmse(
                closed_loop.rms(predicted[grid], size), closed_loop.rms(data.sq_norm[knots][:, cols], size))})
    return rows


def recovery_table(data: Measured, recorded: Recorded | None, lr: np.ndarray, weight_decay: float,
                   spacings=(250, 500, 1000), every: int = POINT_EVERY) -> tuple[list[dict], list[dict], list[dict]]:
    """Recovery of the Transmission alignment force from knots Δ apart (§5.2, App. A), by the spline and the
    two two-point forms (``trajectory.METHODS``), as two estimands side by side:

    * the authors' pointwise one: at every step t ≡ 0 (mod ``every``) inside the knot range, the
      estimate at t over the true alignment at t, summed over all Transmission weights; the row's
      ``median_pointwise_rate`` is the median over t with the true alignment of the step t → t+1 (the
      identity's term, −2η_t⟨w_t, u_t⟩), ``median_pointwise_rate_post_update`` the same with the public
      code's truth, the alignment term at the weights after the step t−1 → t (−2η⟨w_t, u_{t−1}⟩: its
      moments read after ``optimizer.step()``; ``Forces.post_update_alignment``): the paper's 0.92–0.94
      and 0.41–0.51 are of that one;
    * ours: the recovered ÷ true alignment summed over the knots' window (``rate``) and the median over knot
      intervals of the per-interval ratio.

    Returns the rows, the per-interval sums and the per-step points (the scatters). Without recorded forces
    only the estimates are given."""
    cols = data.select(TRANSMISSION)
    gram = data.gram_of(cols)
    truth = post_update = None
    if recorded is not None:
        terms = forces.Forces(*np.moveaxis(recorded.forces[:, recorded.columns([data.names[m] for m in cols])]
                                           .sum(1), -1, 0))
        truth = terms.alignment
        post_update = np.concatenate([[0.0], terms.post_update_alignment()[:-1]])  # row t: the step t−1 → t
    rows, intervals, points = [], [], []
    for spacing in spacings:
        index = [i for i, s in enumerate(data.steps) if s % spacing == 0]
        knots = data.steps[index]
        if len(index) < 2 or np.any(np.diff(knots) != spacing):  # snapshots sparser than Δ: not this spacing
            logging.info("recovery at Δ = %d skipped: the snapshots at its multiples are not %d steps apart",
                         spacing, spacing)
            continue
        true_sums = trajectory.interval_sums(np.arange(knots[-1]), truth[: knots[-1]], knots) if truth is not None \
            else None
        for method in trajectory.METHODS:
            steps, estimate = trajectory.alignment_estimate(gram.take(index), knots, lr, weight_decay, method)
            sums = trajectory.interval_sums(steps, estimate, knots)
            row = {"spacing": spacing, "method": method, "knots": len(knots), "recovered": sums.sum()}
            if true_sums is not None:
                at, ratios = trajectory.pointwise_ratios(steps, estimate, truth, every)
                _, post_ratios = trajectory.pointwise_ratios(steps, estimate, post_update, every)
                row.update(true=true_sums.sum(), rate=sums.sum() / true_sums.sum(),
                           median_interval_rate=float(np.median(sums / true_sums)),
                           median_pointwise_rate=float(np.median(ratios)),
                           median_pointwise_rate_post_update=float(np.median(post_ratios)), points=len(at))
                points += [{"spacing": spacing, "method": method, "step": int(t), "recovered": estimate[t - steps[0]],
                            "true": truth[t], "true_post_update": post_update[t]} for t in at]
            rows.append(row)
            intervals += [{"spacing": spacing, "method": method, "first": int(a), "last": int(b), "recovered": r,
                           "true": (true_sums[j] if true_sums is not None else float("nan"))}
                          for j, (a, b, r) in enumerate(zip(knots[:-1], knots[1:], sums))]
    return rows, intervals, points


# ---------------------------------------------------------------------------------------------------------
# The section of the report
# ---------------------------------------------------------------------------------------------------------


def _per_knot(steps, groups: dict, key: str) -> sections.Table:
    names = sorted(groups)
    return sections.Table(("step", *names), [{"step": int(s), **{g: float(groups[g][key][i]) for g in names}}
                                             for i, s in enumerate(steps)])


def _share(value: float) -> str:
    return f"{value:.1%}"


def section(data: Measured, figs: str, config: ml_collections.ConfigDict | None = None,
            recorded: Recorded | None = None, closed_loop_spacings=(1, 50, 250, 500),
            recovery_spacings=(250, 500, 1000), table_steps=TABLE_STEPS, recovery_every=POINT_EVERY
            ) -> sections.Section:
    """The force-budget paper's part of a report (§4–6, App. A–B): Weibull trajectories, k-lock, λ phases,
    FFN init ratio; with the run's config and recorded forces, the budget tables, closed loop and recovery."""
    out = sections.Section("Weibull trajectories and the force budget (arXiv 2606.19367)")
    steps = data.steps
    numbers = out.numbers

    out.tables["matrices"] = sections.table(matrix_rows(data))
    by_kind, by_class = group_medians(data, "kind"), group_medians(data, "class")
    for key in ("scale", "k", "rms"):
        out.tables[f"{key}_by_kind"] = _per_knot(steps, by_kind, key)
        out.tables[f"{key}_by_class"] = _per_knot(steps, by_class, key)
    lock = k_lock(data)
    out.tables["k_lock"] = sections.table([{"step": int(s), "median": lock["median"][i], "min": lock["min"][i],
                                            "max": lock["max"][i]} for i, s in enumerate(steps)])
    numbers["k_lock"] = {"median_over_blocks_and_knots": float(np.median(lock["per_block"])),
                         "range_over_blocks_and_knots": [float(lock["per_block"].min()),
                                                         float(lock["per_block"].max())]}
    out.compare("k-lock (per-block Transmission k, median over blocks and knots)",
            f"{numbers['k_lock']['median_over_blocks_and_knots']:.4f}", "k_lock")
    lr = weight_decay = None
    optimizer = "adamw"
    if config is not None:
        lr = learning_rates(config, int(steps[-1]) + 1)
        weight_decay = float(config.optimizer.weight_decay)
        optimizer = config.optimizer.get("name", "adamw")
        if recorded is not None:
            n = min(len(recorded.lr), len(lr))
            if not np.allclose(recorded.lr[:n], lr[:n], rtol=1e-3, atol=1e-12):  # a mismatch, not float32 fusion order
                raise ValueError("the recorded learning rates differ from the config's schedule")
    lam = numbers["lambda_transmission"] = lambda_phases(
        steps, by_class[TRANSMISSION]["scale"], lr[-1] if lr is not None else None, weight_decay or 0.0, optimizer)
    out.compare("λ peak (Transmission median)", f"{lam['peak_scale']:.4f} at step {lam['peak_step']}", "lambda_peak")
    model = models.config_from_fields(config.model.to_dict()) if config is not None and "model" in config else None
    ratio = init_ratio(data, model)
    if ratio:
        numbers["ffn_in_out_ratio"] = {"init": float(ratio["ratio"][0]), "final": float(ratio["ratio"][-1]),
                                       "recipe_sigma_ratio": ratio.get("recipe")}
    out.figures += [figures.lambda_by_kind(steps, by_kind, by_class, figs),
                    figures.k_trajectory(steps, by_kind, lock, figs),
                    figures.lambda_heatmap(steps, per_block(data, data.scale), figs)]

    if recorded is not None:
        at, over = budget_tables(recorded, table_steps)
        out.tables["force_shares_at_steps"] = sections.table(at)
        out.tables["force_shares_windows"] = sections.table(over)
        terms = ("alignment", "injection", "decay", "higher_order")
        numbers["force_shares"] = {
            "at_steps": {r["step"]: {k: r[k] for k in terms} for r in at if r["group"] == TRANSMISSION},
            "windows": {f"{r['first']}-{r['last']}": {k: r[k] for k in terms}
                        for r in over if r["group"] == TRANSMISSION}}
        windows = numbers["force_shares"]["windows"]
        rise, end = rise_window(windows), list(windows)[-1]
        out.compare(f"alignment share, Transmission, steps {rise.replace('-', '–')}",
                    _share(windows[rise]["alignment"]), "alignment_share_rise")
        out.compare(f"injection share, steps {rise.replace('-', '–')}", _share(windows[rise]["injection"]),
                    "injection_share_rise")
        out.compare(f"decay share, steps {end.replace('-', '–')}", _share(windows[end]["decay"]), "decay_share_end")
        table = [r for r in at if r["group"] == TRANSMISSION]
        for key, label in (("alignment", "50 steps ending there"), ("alignment_public_code",
                                                                     "that step, the public code's form")):
            out.compare(f"alignment share at steps {' / '.join(str(r['step']) for r in table)}, Transmission, "
                        f"{label}", " / ".join(f"{100 * r[key]:.1f}" for r in table) + " %", "alignment_share_table")
        out.figures.append(figures.force_shares(*binned_shares(recorded.forces, recorded.transmission_columns()),
                                                figs))
        loop_rows, curve = closed_loop_table(data, recorded, closed_loop_spacings)
        out.tables["closed_loop"] = sections.table(loop_rows)
        numbers["closed_loop"] = loop_rows
        out.tables["rms_closed_loop"] = sections.table(rms_closed_loop_table(data, recorded, closed_loop_spacings))
        numbers["rms_closed_loop"] = out.tables["rms_closed_loop"].rows
        if loop_rows:
            out.compare(f"closed loop logRMSE, Δ = {loop_rows[0]['spacing']} ({loop_rows[0]['bridge']} bridge)",
                    f"{loop_rows[0]['log_rmse']:.4f}", "closed_loop_log_rmse")
            out.figures.append(figures.closed_loop(curve, loop_rows[0]["log_rmse"], figs))
    if lr is not None:
        rows, intervals, points = recovery_table(data, recorded, lr, weight_decay, recovery_spacings, recovery_every)
        out.tables["recovery"] = sections.table(rows)
        out.tables["recovery_intervals"] = sections.table(intervals)
        out.tables["recovery_points"] = sections.table(points)
        numbers["recovery"] = rows
        public = "median over steps of estimate/true, true at the weights after the step (the public code's)"
        pointwise, sums = "median over steps of estimate/true, true = the step's own term", "ratio of sums"
        for method, label, field, estimand, key in (
                ("spline", "spline", "median_pointwise_rate_post_update", public, "spline_recovery"),
                ("two_point_mean_lr", "two-point (the public code's form)", "median_pointwise_rate_post_update",
                 public, "two_point_recovery"),
                ("spline", "spline", "median_pointwise_rate", pointwise, "spline_recovery"),
                ("two_point_mean_lr", "two-point (the public code's form)", "median_pointwise_rate", pointwise,
                 "two_point_recovery"),
                ("spline", "spline", "rate", sums, "recovery_interval_sums"),
                ("two_point", "two-point", "rate", sums, "recovery_interval_sums")):
            rates = [f"{r[field]:.3f} (Δ = {r['spacing']})" for r in rows if r["method"] == method and "rate" in r]
            if rates:
                out.compare(f"{label} recovery, {estimand}", ", ".join(rates), key)
        if rows and recorded is not None:
            out.figures.append(figures.recovery_scatter(intervals, figs))
            out.figures.append(figures.recovery_points(points, figs))
    return out
