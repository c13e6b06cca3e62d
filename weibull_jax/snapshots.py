"""Weight snapshots: every parameter of a model at one step, as one flat float32 ``.npy`` file.

A snapshot series is a folder of ``{step:08d}.npy`` files and one ``index.json`` (leaf names, shapes and
offsets into the flat vector). It is what the series analyses read (arXiv 2606.19367 §5, App. A; the
trajectory PCA of the backbone paper): one file per checkpoint, memory-mapped, so that one matrix can be
read across all T checkpoints (a ``(T, n)`` slab) without loading any checkpoint whole.

Why not orbax for these: writing a snapshot is one device→host copy of one buffer and one file write, both
outside the GIL, so the training loop keeps dispatching steps while it happens (orbax's per-array Python
work in a worker thread starved the dispatch loop: 0.35 s per checkpoint). Full, resumable checkpoints
(optimizer state, data position) stay with orbax (``train/checkpoints.py``).
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from weibull_jax import tree as tree_lib

INDEX = "index.json"


class Layout(NamedTuple):
    """Where each leaf lies in the flat vector."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    offsets: list[int]

    @property
    def size(self) -> int:
        return self.offsets[-1] + math.prod(self.shapes[-1]) if self.names else 0

    def span(self, name: str) -> tuple[int, tuple[int, ...]]:
        if name not in self.names:
            raise ValueError(f"no leaf named {name!r} in the snapshot layout (leaves: {self.names[:4]} …)")
        i = self.names.index(name)
        return self.offsets[i], self.shapes[i]


def packed_layout(names: list[str], shapes: list[tuple[int, ...]]) -> Layout:
    """The leaves one after another, in the given order."""
    offsets = np.concatenate([[0], np.cumsum([math.prod(s) for s in shapes])[:-1]]).astype(int).tolist()
    return Layout(names, shapes, offsets)


def layout_of(params: Any) -> Layout:
    names, leaves, _, _ = tree_lib.named_leaves(params, lambda path, leaf: True)
    return packed_layout(names, [tuple(np.shape(x)) for x in leaves])


@jax.jit
def flatten(params: Any) -> jax.Array:
    """All leaves raveled into one float32 vector, in :func:`layout_of` order (one new device buffer)."""
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(params)])


def write_layout(directory: str, layout: Layout) -> None:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, INDEX)
    with open(path + ".tmp", "w") as f:
        json.dump(layout._asdict(), f)
    os.replace(path + ".tmp", path)


def write(directory: str, step: int, flat: Any) -> None:
    """Writes one snapshot (atomically: a reader never sees half a file)."""
    path = os.path.join(directory, f"{step:08d}.npy")
    with open(path + ".tmp", "wb") as f:
        np.save(f, np.asarray(flat, np.float32))
    os.replace(path + ".tmp", path)


def drop_after(directory: str, step: int) -> None:
    """Removes the snapshots of steps beyond ``step`` (a resumed run rewrites them) and the half-written
    ``.tmp`` files of a killed one."""
    for s, path in step_files(directory):
        if s > step:
            os.remove(path)
    for path in glob.glob(os.path.join(directory, "*.tmp")):
        os.remove(path)


def step_files(directory: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``{step:08d}.npy`` in a folder, by step."""
    paths = glob.glob(os.path.join(directory, "[0-9]" * 8 + ".npy"))
    return sorted((int(os.path.basename(p)[:-4]), p) for p in paths)


def read_at(path: str, offset: int, buffer: Any) -> None:
    """Fills ``buffer`` (a writable numpy array) with the bytes of ``path`` from ``offset``: positional reads
    straight into it, outside the GIL (so several threads read in parallel)."""
    view, done = memoryview(buffer.view(np.uint8)), 0
    with open(path, "rb", buffering=0) as f:
        while done < len(view):
            got = os.preadv(f.fileno(), [view[done:]], offset + done)
            if got == 0:
                raise ValueError(f"{path} ends before byte {offset + len(view)}: a truncated file")
            done += got


READ_THREADS = 8  # reads of one slab in flight at once (one file each)


def read_rows(copy, rows: int) -> None:
    """``copy(row)`` for every row, ``READ_THREADS`` at a time (reads of several files in flight at once); one
    row (a leaf of one step) is read in the calling thread."""
    if rows == 1:
        copy(0)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        list(pool.map(copy, range(rows)))


class WeightSeries:
    """What the series analyses read: ``steps``, a :class:`Layout` (names and shapes in the model's
    orientation), ``directory``, and per-leaf reads across steps. Subclasses give :meth:`slab` (a leaf's
    elements in the order they are stored, as float32 or, ``dtype=None``, as stored) and :meth:`unravel`
    (those rows back into matrices)."""

    steps: np.ndarray
    layout: Layout
    directory: str

    def slab(self, name: str, indices: Any = None, elements: slice = slice(None), dtype: Any = np.float32
             ) -> np.ndarray:
        raise NotImplementedError

    def unravel(self, name: str, rows: Any) -> Any:
        raise NotImplementedError

    @property
    def names(self) -> list[str]:
        return self.layout.names

    def matrices(self) -> list[str]:
        return [n for n, s in zip(self.layout.names, self.layout.shapes) if len(s) >= 2]

    def storage_key(self, name: str) -> Any:
        """Where a leaf's bytes lie in a step's file (its offset): reading leaves by this key reads each
        file front to back, as the disk and the kernel's read-ahead serve best."""
        return self.layout.span(name)[0]

    def leaf(self, name: str, index: int) -> np.ndarray:
        """One leaf at the ``index``-th step (a read of only its bytes)."""
        return self.unravel(name, self.slab(name, [index]))[0]

    def params(self, index: int) -> dict[str, np.ndarray]:
        """All leaves at one step, by name."""
        return {n: self.leaf(n, index) for n in self.layout.names}

    def tree(self, index: int) -> dict:
        """All leaves at one step as the nested parameter tree they were flattened from."""
        out: dict = {}
        for name in self.layout.names:
            *path, last = name.split(".")
            node = out
            for key in path:
                node = node.setdefault(key, {})
            node[last] = self.leaf(name, index)
        return out

    def index_of(self, step: int) -> int:
        """The position of ``step`` in the series (a clear error if it was not saved)."""
        hits = np.flatnonzero(self.steps == step)
        if not hits.size:
            raise ValueError(f"{self.directory} has no snapshot at step {step} (steps {self.steps[0]} … "
                             f"{self.steps[-1]}, {len(self.steps)} in all)")
        return int(hits[0])


class Series(WeightSeries):
    """A snapshot series on disk (``{step:08d}.npy`` files, stored in the model's orientation)."""

    def __init__(self, directory: str):
        index = os.path.join(directory, INDEX)
        if not os.path.isfile(index):
            raise ValueError(f"{directory} is not a snapshot series: no {INDEX} (train with "
                             "config.snapshot_every > 0; a HuggingFace revision series is read by weibull_jax.suites)")
        try:
            with open(index) as f:
                raw = json.load(f)
            self.layout = Layout(list(raw["names"]), [tuple(int(d) for d in s) for s in raw["shapes"]],
                                 [int(o) for o in raw["offsets"]])
            if not len(self.layout.names) == len(self.layout.shapes) == len(self.layout.offsets):
                raise ValueError("names, shapes and offsets differ in length")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{index} is damaged ({type(e).__name__}: {e}): it is not the index of a snapshot "
                             "series") from None
        self.directory = directory
        files = step_files(directory)
        if not files:
            raise ValueError(f"{directory} holds no snapshots")
        self.steps = np.asarray([s for s, _ in files])
        self._arrays = []
        for step, path in files:
            try:
                a = np.load(path, mmap_mode="r")
            except (ValueError, OSError, EOFError) as e:  # cut short, or not a .npy file at all
                raise ValueError(f"snapshot {path} cannot be read ({type(e).__name__}: {e}): a damaged or "
                                 "half-copied file; remove it (the series then skips that step)") from None
            if a.shape != (self.layout.size,) or a.dtype != np.float32:
                raise ValueError(f"snapshot {path} holds {a.shape} {a.dtype} values; the layout needs "
                                 f"({self.layout.size},) float32: mismatched checkpoint shapes in one series")
            self._arrays.append(a)

    def slab(self, name: str, indices: Any = None, elements: slice = slice(None), dtype: Any = np.float32
             ) -> np.ndarray:
        """``(T, n)`` float32: the leaf raveled, one row per step (``indices`` selects steps, ``elements`` a
        range of the raveled leaf; default all): reads only those bytes of each file. Snapshots are stored in
        float32, so ``dtype`` (``None``: as stored) changes nothing."""
        start, shape = self.layout.span(name)
        lo, hi, _ = elements.indices(math.prod(shape))
        indices = list(range(len(self.steps)) if indices is None else indices)
        out = np.empty((len(indices), hi - lo), np.float32)

        def copy(row: int) -> None:
            array = self._arrays[indices[row]]
            read_at(array.filename, array.offset + 4 * (start + lo), out[row])

        read_rows(copy, len(indices))
        return out

    def unravel(self, name: str, rows: Any) -> Any:
        """``(T, n)`` rows of a whole leaf as ``(T, *shape)``."""
        return rows.reshape(len(rows), *self.layout.span(name)[1])
