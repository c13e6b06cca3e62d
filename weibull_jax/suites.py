"""A model suite's revision series, read where it lies: no converted second copy on disk.

A suite (Pythia's 154 ``step{N}`` revisions of each model) comes in one of two layouts:

* a folder of ``step{N}`` checkpoint folders (what ``save_pretrained`` or ``git clone --branch`` gives);
* the HuggingFace hub cache of one repository, ``models--ORG--NAME``, where ``refs/step{N}`` holds the commit
  hash of revision ``step{N}`` and ``snapshots/<hash>/`` its files (what ``from_pretrained(...,
  revision="step{N}")`` leaves in ``~/.cache/huggingface/hub``; the files are links into ``blobs/``).

Each checkpoint holds ``model.safetensors`` (or sharded ``model-*.safetensors`` with their index) or
``pytorch_model.bin``, in float16, bfloat16 or float32. :class:`Suite` reads one tensor across all
revisions as a ``(T, n)`` float32 slab, as :class:`weibull_jax.snapshots.Series` reads a training run:

* safetensors: the header gives each tensor's byte range, so a slab row is one positional read of exactly
  those bytes (of an element range of them, for chunked reads), widened to float32 in memory;
* ``pytorch_model.bin``: ``torch.load(mmap=True)`` maps the file; slicing a tensor reads only its pages.

The rows are in the stored order: HF's ``(out, in)`` for a linear layer, whose Flax kernel is the
transpose. Element-wise measures (Weibull fits, norms, trajectory Grams) do not depend on the order;
:meth:`Suite.unravel` turns rows into matrices in the model's orientation for what does (spectra, W_qkv
splits, parameter trees).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from weibull_jax import convert, snapshots
from weibull_jax.models.presets import ModelConfig

_SAFETENSORS_DTYPES = {"F16": np.dtype(np.float16), "BF16": np.dtype(jnp.bfloat16), "F32": np.dtype(np.float32),
                       "F64": np.dtype(np.float64)}
_STEP = re.compile(r"step(\d+)")


def _is_hub_cache(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "refs")) and os.path.isdir(os.path.join(root, "snapshots"))


def revisions(root: str) -> list[tuple[int, str]]:
    """``(step, checkpoint folder)`` of every ``step{N}`` revision under ``root``, by step: a folder of
    ``step{N}`` folders, or a hub cache ``models--ORG--NAME`` (``refs/step{N}`` → ``snapshots/<hash>``)."""
    found = []
    if _is_hub_cache(root):
        for name in os.listdir(os.path.join(root, "refs")):
            m = _STEP.fullmatch(name)
            if m:
                with open(os.path.join(root, "refs", name)) as f:
                    folder = os.path.join(root, "snapshots", f.read().strip())
                if not os.path.isfile(os.path.join(folder, "config.json")):
                    raise FileNotFoundError(f"{root}: refs/{name} points to {folder}, which holds no config.json "
                                            "(a revision whose download did not finish)")
                found.append((int(m.group(1)), folder))
    elif os.path.isdir(root):
        for name in os.listdir(root):
            m = _STEP.fullmatch(name)
            if m and os.path.isfile(os.path.join(root, name, "config.json")):
                found.append((int(m.group(1)), os.path.join(root, name)))
    if not found:
        raise FileNotFoundError(f"no step{{N}} revisions under {root!r}: neither step{{N}} folders with a "
                                "config.json nor a hub cache models--ORG--NAME with refs/step{N}")
    return sorted(found)


class Stored(NamedTuple):
    """Where one tensor of one checkpoint lies: a file and the byte offset of its first element (safetensors),
    or a memory-mapped torch tensor (``pytorch_model.bin``)."""

    path: str
    offset: int
    dtype: np.dtype  # as stored (bfloat16 as ml_dtypes' numpy type)
    shape: tuple[int, ...]
    mapped: Any = None


def _safetensors_index(path: str) -> dict[str, Stored]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    needed = 8 + length + max((e["data_offsets"][1] for e in entries.values()), default=0)
    if os.path.getsize(path) < needed:
        raise ValueError(f"{path} holds {os.path.getsize(path)} bytes, its header describes {needed}: a truncated "
                         "file (an interrupted download or copy)")
    out = {}
    for name, entry in entries.items():
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} is {entry['dtype']}; weights must be F16, BF16, F32 or F64")
        out[name] = Stored(path, 8 + length + entry["data_offsets"][0], _SAFETENSORS_DTYPES[entry["dtype"]],
                           tuple(entry["shape"]))
    return out


def stored_tensors(folder: str) -> dict[str, Stored]:
    """Every tensor of a checkpoint folder, located but not read."""
    single, index = os.path.join(folder, "model.safetensors"), os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(single):
        return _safetensors_index(single)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return {k: v for shard in shards for k, v in _safetensors_index(os.path.join(folder, shard)).items()}
    if os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
        import torch

        state = torch.load(os.path.join(folder, "pytorch_model.bin"), map_location="cpu", mmap=True,
                           weights_only=True)
        dtypes = {torch.float16: np.float16, torch.bfloat16: jnp.bfloat16, torch.float32: np.float32,
                  torch.float64: np.float64}
        return {k: Stored(os.path.join(folder, "pytorch_model.bin"), 0, np.dtype(dtypes.get(v.dtype, np.float32)),
                          tuple(v.shape), v) for k, v in state.items()}
    raise FileNotFoundError(f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {folder!r}")


def read_elements(stored: Stored, lo: int, hi: int, out: np.ndarray) -> None:
    """Elements ``lo … hi`` of a stored tensor (raveled as stored) into the row ``out``, cast to its dtype."""
    if stored.mapped is not None:
        import torch

        flat = stored.mapped.reshape(-1)[lo:hi]
        out[:] = flat.view(torch.int16).numpy().view(jnp.bfloat16) if flat.dtype == torch.bfloat16 else flat.numpy()
        return
    raw = out if out.dtype == stored.dtype else np.empty(hi - lo, stored.dtype)
    snapshots.read_at(stored.path, stored.offset + stored.dtype.itemsize * lo, raw)
    if raw is not out:
        out[:] = raw


class Suite(snapshots.WeightSeries):
    """The revisions of one model under ``root`` (see :func:`revisions`), read in place.

    ``config`` is the first revision's model; ``layout`` names each tensor by its Flax path (as a converted
    checkpoint's parameter tree would) with the model's shapes. Every revision's tensors are located when
    the suite is opened (headers only) and must match the first's names and shapes.
    """

    def __init__(self, root: str):
        found = revisions(root)
        self.directory = root
        self.steps = np.asarray([s for s, _ in found])
        self.folders = [folder for _, folder in found]
        self.config: ModelConfig = convert.config_from_hf(convert.read_hf_config(self.folders[0]))
        maps = sorted(convert.tensor_map(self.config), key=lambda t: t.path)
        names = [".".join(t.path) for t in maps]
        self._maps = dict(zip(names, maps))
        self._stored: list[dict[str, Stored]] = []
        for folder in self.folders:
            tensors = stored_tensors(folder)
            try:
                source = convert.match_tensors({k: v.shape for k, v in tensors.items()}, self.config)
            except ValueError as e:
                raise ValueError(f"{folder}: {e}") from None
            self._stored.append({n: tensors[source[t.hf]] for n, t in self._maps.items()})
        self.layout = snapshots.packed_layout(names, [self._model_shape(n) for n in names])

    def _model_shape(self, name: str) -> tuple[int, ...]:
        shape = self._stored[0][name].shape
        return tuple(reversed(shape)) if self._maps[name].transpose else shape

    def slab(self, name: str, indices: Any = None, elements: slice = slice(None), dtype: Any = np.float32
             ) -> np.ndarray:
        """``(T, n)``: the tensor as stored, raveled, one row per revision (``indices`` selects revisions,
        ``elements`` a range of the raveled tensor); reads only those bytes of each file. ``dtype=None`` keeps
        the stored dtype (float16 or bfloat16 travel to a device at half the bytes; float32 if the revisions
        differ in it)."""
        lo, hi, _ = elements.indices(math.prod(self.layout.span(name)[1]))
        indices = list(range(len(self.steps)) if indices is None else indices)
        if dtype is None:
            stored = {self._stored[i][name].dtype for i in indices}
            dtype = stored.pop() if len(stored) == 1 else np.float32
        out = np.empty((len(indices), hi - lo), dtype)
        snapshots.read_rows(lambda row: read_elements(self._stored[indices[row]][name], lo, hi, out[row]),
                            len(indices))
        return out

    def storage_key(self, name: str) -> tuple[str, int]:
        """(file, byte offset) of the tensor in the first revision: safetensors stores its tensors by HF name,
        an order unlike the Flax paths of the layout (``dense_4h_to_h`` before ``dense_h_to_4h``); a
        ``pytorch_model.bin`` keeps the layout's order."""
        stored = self._stored[0][name]
        return stored.path, stored.offset

    def unravel(self, name: str, rows: Any) -> Any:
        """``(T, n)`` rows of a whole tensor as ``(T, *shape)`` in the model's orientation (HF's ``(out, in)``
        linear weights transposed to Flax kernels)."""
        stored = rows.reshape(len(rows), *self._stored[0][name].shape)
        return stored.swapaxes(-1, -2) if self._maps[name].transpose else stored

    def stored_bytes(self) -> int:
        """Bytes of the weights the analysis reads, all revisions (for a bandwidth figure)."""
        return sum(math.prod(s.shape) * s.dtype.itemsize for tensors in self._stored for s in tensors.values())
