"""Naming and selecting the leaves of a parameter tree.

Every per-matrix diagnostic reports its results by a readable name: the leaf's path in the tree joined
with '.', so a HuggingFace state dict keeps its own names (``gpt_neox.layers.0.attention.dense.weight``)
and a Flax tree reads ``params.layers_0.attention.qkv.kernel``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax

Path = tuple[Any, ...]


def key_name(key: Any) -> str:
    """One path entry as text: a dict key, an attribute name or a sequence index."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_name(path: Path) -> str:
    """A leaf's path as one dotted name."""
    return ".".join(key_name(k) for k in path)


def is_matrix(leaf: Any) -> bool:
    """An array with two or more axes: a matrix, or a stack of matrices (what the papers diagnose)."""
    return getattr(leaf, "ndim", 0) >= 2


def is_weight_matrix(path: Path, leaf: Any) -> bool:
    """Default selection of :func:`named_leaves`: :func:`is_matrix`, whatever the path."""
    del path
    return is_matrix(leaf)


def named_leaves(params: Any, select: Callable[[Path, Any], bool] = is_weight_matrix):
    """The selected leaves as ``(names, leaves, treedef, positions)``.

    ``positions`` indexes the selected leaves among all leaves, so that results can be put back into a
    tree of the input's structure with :func:`unflatten_selected`. The paths and names of a structure are
    made once (:func:`_paths_and_names`): a whole-model fit then spends on them a dictionary look-up
    instead of about 1 µs a leaf.
    """
    flat, treedef = jax.tree_util.tree_flatten(params)
    try:
        paths, all_names = _paths_and_names(treedef)
    except (TypeError, ValueError):  # a node whose metadata cannot be hashed or compared: no cache
        paths, all_names = _paths_and_names.__wrapped__(treedef)
    positions = [i for i, (p, x) in enumerate(zip(paths, flat)) if select(p, x)]
    return [all_names[i] for i in positions], [flat[i] for i in positions], treedef, positions


@functools.lru_cache(maxsize=64)
def _paths_and_names(treedef) -> tuple[list[Path], list[str]]:
    """Every leaf's path in a tree of structure ``treedef``, and its :func:`path_name`."""
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(jax.tree_util.tree_unflatten(
        treedef, range(treedef.num_leaves)))[0]]
    return paths, [path_name(p) for p in paths]


def unflatten_selected(treedef, positions: list[int], values: list[Any]) -> Any:
    """A tree of ``treedef``'s structure with ``values`` at the selected positions and None elsewhere."""
    out: list[Any] = [None] * treedef.num_leaves
    for i, v in zip(positions, values):
        out[i] = v
    return jax.tree_util.tree_unflatten(treedef, out)


def flat_items(nested: dict, sep: str = ".", prefix: str = ""):
    """The ``(joined keys, value)`` pairs of a nested dict's non-dict values, depth first (a config, a line of
    metrics)."""
    for key, value in nested.items():
        if isinstance(value, dict):
            yield from flat_items(value, sep, f"{prefix}{key}{sep}")
        else:
            yield f"{prefix}{key}", value
