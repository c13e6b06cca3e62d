"""Meshes and shardings: one program from one device to several hosts, through ``jax.sharding`` alone.

A run's devices form a 3-axis mesh ``(data, fsdp, tensor)``. The models name every parameter axis where they
create it (``vocab``, ``embed``, ``mlp``, ``heads``, ``kv``: flax's ``nn.with_logical_partitioning``, read by
:func:`weibull_jax.models.logical_axes`); this module turns those names, a mesh and the logical-axis rules into
``NamedSharding``s, and nothing else in the toolkit builds one:

* a **batch** is split along its first axis over ``data × fsdp`` (each device its own rows);
* a **parameter** first takes the mesh axes its logical names map to under the rules (the default rules put
  ``vocab``, ``mlp``, ``heads`` and ``kv`` on ``tensor``: Megatron-style tensor parallelism), then its largest
  remaining axis divisible by the ``fsdp`` size goes over ``fsdp`` (fully sharded data parallelism, ZeRO-3:
  each device holds 1/fsdp of the weights, gradients and optimizer moments; XLA gathers a weight where a
  matmul needs it); an axis nothing divides stays whole (replicated);
* every **optimizer moment** shaped like a parameter is sharded like it; counts and scalars are replicated.

The jitted step, the forces, the fits and the spectra are unchanged: they are written as global sums, and
under ``jit`` with sharded inputs XLA inserts the collectives (all-gathers of weights, reduce-scatters of
gradients, all-reduces of the force sums). A mesh of one device (the default) is the single-device program.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# logical parameter axis → mesh axis (None: never split by name; FSDP is by size, see param_spec)
DEFAULT_RULES = (("vocab", "tensor"), ("mlp", "tensor"), ("heads", "tensor"), ("kv", "tensor"), ("embed", None))


def mesh_shape(data: int, fsdp: int, tensor: int, device_count: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes with a ``-1`` resolved to the rest of the devices; checked."""
    sizes = [data, fsdp, tensor]
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or (s < 1 and s != -1)]
    if bad or sizes.count(-1) > 1:
        raise ValueError(f"config.mesh sizes must be positive integers, one of them may be -1 (the rest of the "
                         f"devices); got data={data}, fsdp={fsdp}, tensor={tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if device_count % known:
            raise ValueError(f"config.mesh: {device_count} devices do not split into data={data}, fsdp={fsdp}, "
                             f"tensor={tensor}")
        sizes[sizes.index(-1)] = device_count // known
    if int(np.prod(sizes)) > device_count:
        raise ValueError(f"config.mesh data={sizes[0]} × fsdp={sizes[1]} × tensor={sizes[2]} needs "
                         f"{int(np.prod(sizes))} devices; there are {device_count}")
    return tuple(sizes)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over the first data·fsdp·tensor of ``devices`` (default: all, in
    process order, so that a host's devices hold a contiguous block of the batch's rows)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    return Mesh(np.asarray(devices[:int(np.prod(shape))], dtype=object).reshape(shape), AXES)


def mesh_of(mesh_config: Any) -> Mesh:
    """The mesh a run's ``config.mesh`` asks for."""
    return make_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.tensor)


def mesh_axes(target: Any) -> tuple[str, ...]:
    """The mesh axes a rule's target or a spec entry names: one name, several, or None (none)."""
    return (target,) if isinstance(target, str) else tuple(target or ())


def _size(mesh: Mesh, axes: Any) -> int:
    return int(np.prod([mesh.shape[a] for a in mesh_axes(axes)]))


def param_spec(shape: tuple[int, ...], logical: Sequence[str | None] | None, mesh: Mesh,
               rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> PartitionSpec:
    """Where one parameter's axes go: named axes by ``rules`` (when the mesh axis has more than one device and
    divides the axis), then ``fsdp`` on the largest remaining divisible axis (the first of equals)."""
    mapping = dict(rules)
    logical = tuple(logical) if logical is not None else (None,) * len(shape)
    spec: list[Any] = [None] * len(shape)
    for i, name in enumerate(logical):
        target = mapping.get(name)
        if target is not None and _size(mesh, target) > 1 and shape[i] % _size(mesh, target) == 0:
            spec[i] = target
    fsdp = mesh.shape["fsdp"]
    used = {a for s in spec for a in mesh_axes(s)}
    if fsdp > 1 and "fsdp" not in used:
        free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % fsdp == 0]
        if free:
            spec[max(free, key=lambda i: (shape[i], -i))] = "fsdp"
    return PartitionSpec(*spec)


def param_shardings(abstract_params: Any, logical_axes: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
    """A ``NamedSharding`` per parameter: ``logical_axes`` is a tree like the parameters of tuples of
    logical names (:func:`weibull_jax.models.logical_axes`), or None for unnamed (size-only) placement."""
    if logical_axes is None:
        logical_axes = jax.tree.map(lambda _: None, abstract_params)
    return jax.tree.map(lambda x, names: NamedSharding(mesh, param_spec(np.shape(x), names, mesh, rules)),
                        abstract_params, logical_axes)


def optimizer_shardings(optimizer: optax.GradientTransformation, abstract_params: Any,
                        params_shardings: Any, mesh: Mesh) -> Any:
    """The optimizer state's shardings: every moment shaped like a parameter as that parameter, the rest
    (step counts, scalars) replicated; read from the optimizer's own ``init`` (optax.tree_map_params). A
    partitioned optimizer (Muon: its own rule for the hidden matrices, AdamW for the rest) holds a copy of the
    parameter tree per part with ``optax.MaskedNode`` where a parameter is the other part's: it stays one."""
    def place(moment, sharding):
        return moment if isinstance(moment, optax.MaskedNode) else sharding

    abstract_state = jax.eval_shape(optimizer.init, abstract_params)
    return optax.tree_map_params(optimizer, place, abstract_state, params_shardings,
                                 transform_non_params=lambda _: replicated(mesh),
                                 is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device: what a host reads (metrics, force tables, snapshots)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows over ``data × fsdp``; the sequence axis whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def cpu_mesh(mesh: Mesh) -> bool:
    """A mesh of several CPU devices, where XLA's CPU client has two deadlocks (jax 0.10.2, measured on 2
    cores): two programs with collectives in flight at once (two consecutive steps hang in their all-reduce),
    and LAPACK's eigensolver running on several devices at once. Accelerators order programs on streams."""
    return mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"


def on_one_device(tree: Any) -> Any:
    """A (sharded, possibly multi-host) tree whole on this host's first device: where a CPU mesh computes
    eigensolves (:func:`cpu_mesh`). Every process must call it (it gathers across hosts); a single process
    holds every shard and copies them device to device, not through the host."""
    if jax.process_count() == 1:
        return jax.device_put(tree, jax.local_devices()[0])
    from jax.experimental import multihost_utils

    return jax.device_put(multihost_utils.process_allgather(tree, tiled=True), jax.local_devices()[0])


def wait_for_every_process(name: str, timeout_s: int = 24 * 3600) -> None:
    """Returns once every process of the run has called this with ``name``: a barrier of the coordination
    service that ``jax.distributed`` starts (no collective; one process: returns at once).

    A collective's first use sets up its communicator, and a process that gets there first waits only 30 s
    for the others (gloo on CPU: ``GetKeyValue() timed out … 30 s``). Host-local work of uneven length, such
    as tokenizing a corpus one host has cached and another has not, must therefore end at this barrier before
    the first collective. The long default only bounds a live but stuck process; one that ends sooner fails
    the wait sooner (measured on 2026-12-03 with two CPU processes: a killed one after ~100 s, the heartbeat
    timeout; one that exits with an error after 5 min, its shutdown barrier's)."""
    if jax.process_count() > 1:
        from orbax.checkpoint import multihost

        multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def global_batch(local_rows: Any, sharding: NamedSharding) -> Any:
    """One global batch from each host's block of rows (``jax.make_array_from_process_local_data``)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_rows)
