"""Naming and selecting the leaves of a parameter tree.

Every per-matrix diagnostic reports its results by a readable name: the leaf's path in the tree joined
with '.', so a HuggingFace state dict keeps its own names (``gpt_neox.layers.0.attention.dense.weight``)
and a Flax tree reads ``params.layers_0.attention.qkv.kernel``.
"""

from __future__ import annotations

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
    tree of the input's structure with :func:`unflatten_selected`.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    positions = [i for i, (p, x) in enumerate(flat) if select(p, x)]
    names = [path_name(flat[i][0]) for i in positions]
    leaves = [flat[i][1] for i in positions]
    return names, leaves, treedef, positions


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
