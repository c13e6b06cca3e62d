r"""Singular spectra of weight matrices and their stability (SoSD paper, §3.2, Definition 3.1).

Singular distribution: SD(W) = σ(W)/Σσ(W), the trace-normalised spectrum; SD variation between two
checkpoints ‖SD_t − SD_{t−Δ}‖₂; cosine similarity of a matrix, or of its SD, to a reference (the final
checkpoint).

Singular values come from the smaller Gram matrix in float64, batched over stacks of matrices: with W
(m × n), n ≤ m (else Wᵀ), cast exactly to float64, G = WᵀW = VΛVᵀ (``eigh``), then σ_i = ‖W v_i‖₂. Two
products and one symmetric eigensolve instead of an SVD (``jnp.linalg.svd``: 434 ms for 24 × 512 × 512 on an
H200). On a CUDA GPU ``eigh`` of a stack is cuSOLVER's batched solver (jax 0.11: the same bits and times as
``cusolverDnXsyevBatched`` called directly), whose time grows slowly from a floor per call (H200, float64,
with vectors: 35 ms for 6 or 24 Grams of 512 × 512, 48 ms for 96; 230 ms for 6 of 2048 × 2048, 1,075 ms for
96), so the Grams of one size, whatever the shapes of their matrices, are solved in one call. In float32
the small singular values were lost: G holds λ_i only to ε·σ_max², and the crowded small eigenvalues mix
their vectors, so σ_i carried errors of O(n·ε·σ_max) and more (SD errors of 2e-5 on
Student-t weights, SD variations 34× too large at 7e-8). In float64 (u = 2⁻⁵³) the same argument bounds
the error of σ_i by O(n·u·σ_max): the SD agrees with numpy's float64 SVD of the same float32 matrix to
1e-12 on matrices with σ from 1 to 1e-6 and on Student-t weights, and SD variations of 1e-7 keep all their
digits until the float32 result (rounding of 6e-8 relative per SD entry: at most ~3e-9 in a variation
over 512 values). Values below min(m, n)·u·σ_max are noise and are set to 0. The float64 arithmetic runs
under ``jax.enable_x64`` inside the function, whatever the caller's setting (also inside a caller's jit);
a backend without float64 (a TPU) gets the float32 path and its errors.

**Which matrices.** The trunk: every attention (W_q, W_k, W_v, W_o) and MLP matrix of the blocks, a fused
W_qkv split into its three (GPT-NeoX's per-head [q|k|v] output layout); embeddings, the head, norms and
biases are left out. :func:`trunk_distributions` takes all of them in one call, one eigensolve per Gram
size (all 36 of Pythia-70M's trunk are 512 × 512 Grams), and returns one (M, r) table (rows padded with
zeros to the longest spectrum: padding changes neither norms nor cosines).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from weibull_jax import taxonomy
from weibull_jax import tree as tree_lib

ATTENTION_KINDS = ("q", "k", "v", "o")
# float64 for the span of a ``with`` (jax.enable_x64; before jax 0.7 it lived in jax.experimental)
_enable_x64 = (jax.enable_x64 if hasattr(jax, "enable_x64")
               else importlib.import_module("jax.experimental.x64_context").enable_x64)


def _gram_singular_values(ws: Sequence[jax.Array]) -> list[jax.Array]:
    """σ_i = ‖W v_i‖ with v_i the eigenvectors of the smaller Gram matrix, for each stack of ``ws``, in its
    dtype, descending: the Grams of one size in one eigensolve (module docstring)."""
    ws = [jnp.swapaxes(w, -1, -2) if w.shape[-1] > w.shape[-2] else w for w in ws]
    hi = jax.lax.Precision.HIGHEST
    grams = [jnp.einsum("...ki,...kj->...ij", w, w, precision=hi) for w in ws]
    vectors: list[Any] = [None] * len(ws)
    by_size: dict[int, list[int]] = {}
    for i, g in enumerate(grams):
        by_size.setdefault(g.shape[-1], []).append(i)
    for n, members in by_size.items():
        _, v = jnp.linalg.eigh(jnp.concatenate([grams[i].reshape(-1, n, n) for i in members]))
        starts = np.cumsum([0] + [math.prod(grams[i].shape[:-2]) for i in members])
        for i, start, stop in zip(members, starts[:-1], starts[1:]):
            vectors[i] = v[start:stop].reshape(grams[i].shape)
    out = []
    for w, v in zip(ws, vectors):
        projected = jnp.einsum("...ij,...jk->...ik", w, v, precision=hi)
        s = -jnp.sort(-jnp.sqrt(jnp.sum(projected * projected, axis=-2)), axis=-1)
        out.append(jnp.where(s > w.shape[-1] * jnp.finfo(w.dtype).eps * s[..., :1], s, 0.0))
    return out


@functools.partial(jax.jit, static_argnames="normalise")
def _spectra(ws: tuple[jax.Array, ...], normalise: bool) -> tuple[jax.Array, ...]:
    """σ, or σ/Σσ, of each stack, computed in float64 where the backend has it (not a TPU), returned in
    float32: one program, called directly or inlined into a caller's jit alike."""
    if jax.default_backend() == "tpu":
        dtype, precision = jnp.float32, contextlib.nullcontext()
    else:
        dtype, precision = jnp.float64, _enable_x64(True)
    with precision:
        spectra = _gram_singular_values([w.astype(dtype) for w in ws])
        return tuple((s / jnp.sum(s, axis=-1, keepdims=True) if normalise else s).astype(jnp.float32)
                     for s in spectra)


def singular_values(w: jax.Array) -> jax.Array:
    """Singular values (descending, float32) of a matrix or a stack ``(..., m, n)``, computed in float64
    (module docstring)."""
    return _spectra((w,), normalise=False)[0]


def singular_distribution(w: jax.Array) -> jax.Array:
    """SD = σ/Σσ (Definition 3.1), per matrix of a stack (the sum taken in float64 too)."""
    return _spectra((w,), normalise=True)[0]


def singular_distributions(ws: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    """:func:`singular_distribution` of several stacks (any shapes) in one program: one eigensolve for all
    the Grams of one size."""
    return _spectra(tuple(ws), normalise=True)


def compile_singular_distributions(specs: Sequence[jax.ShapeDtypeStruct]
                                   ) -> Callable[[Sequence[jax.Array]], tuple[jax.Array, ...]]:
    """:func:`singular_distributions`' own program for stacks shaped like ``specs`` (float32), compiled now,
    so that a caller can compile it ahead, in a thread, of the loop that needs it (``analysis.series``):
    the same bits as :func:`singular_distributions`."""
    compiled = _spectra.lower(tuple(specs), normalise=True).compile()
    return lambda ws: compiled(tuple(ws))


def sd_variation(sd_now: jax.Array, sd_before: jax.Array) -> jax.Array:
    """‖SD_t − SD_{t−Δ}‖₂ per matrix (§3.2)."""
    return jnp.linalg.norm(sd_now - sd_before, axis=-1)


def cosine_similarity(a: jax.Array, b: jax.Array, axes: tuple[int, ...] = (-2, -1)) -> jax.Array:
    """⟨a, b⟩/(‖a‖‖b‖) over ``axes``: the last two for matrices (default), ``(-1,)`` for spectra."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.sum(a * b, axis=axes) / jnp.sqrt(jnp.sum(a * a, axis=axes) * jnp.sum(b * b, axis=axes))


def split_qkv(kernel: jax.Array, n_heads: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """W_q, W_k, W_v of a fused (d, 3d) kernel whose outputs are laid out (heads, 3, head_dim) (GPT-NeoX)."""
    d_in, d_out = kernel.shape[-2:]
    per_head = kernel.reshape(*kernel.shape[:-1], n_heads, 3, d_out // (3 * n_heads))
    return tuple(per_head[..., i, :].reshape(*kernel.shape[:-1], d_out // 3) for i in range(3))


def is_trunk(name: str) -> bool:
    """An attention or MLP matrix inside a block (backbone paper §3.1: no embeddings, norms or biases)."""
    info = taxonomy.describe(name)
    return info.block >= 0 and info.cls != taxonomy.OTHER


def trunk_matrices(named: dict[str, Any], n_heads: int) -> dict[str, Any]:
    """The trunk matrices of a name → array map (matrices, or stacks (…, m, n) of one matrix over time),
    fused W_qkv split into ``….q``, ``….k``, ``….v``."""
    out = {}
    for name, w in named.items():
        info = taxonomy.describe(name)
        if getattr(w, "ndim", 0) < 2 or not is_trunk(name):
            continue
        if info.kind == "qkv":
            out.update(zip((f"{name}.q", f"{name}.k", f"{name}.v"), split_qkv(w, n_heads)))
        else:
            out[name] = w
    return out


def group_of(name: str) -> str:
    """``attention`` or ``mlp``: the module a trunk matrix (or a split part of W_qkv) belongs to."""
    kind = "q" if name.endswith((".q", ".k", ".v")) else taxonomy.kind_of(name)
    return "attention" if kind in ATTENTION_KINDS + ("qkv",) else "mlp"


def distributions_of(matrices: dict[str, jax.Array]) -> jax.Array:
    """SD of every matrix (in the map's order) as one zero-padded (M, r) table, from one batched eigensolve
    per Gram size (stacks (T, m, n) give (M, T, r))."""
    names = list(matrices)
    width = max(min(w.shape[-2:]) for w in matrices.values())
    by_shape: dict[tuple, list[int]] = {}
    for i, n in enumerate(names):
        by_shape.setdefault(tuple(matrices[n].shape), []).append(i)
    groups = list(by_shape.values())
    sds = singular_distributions([jnp.stack([matrices[names[i]] for i in members]) for members in groups])
    rows: list[Any] = [None] * len(names)
    for members, sd in zip(groups, sds):
        sd = jnp.pad(sd, [(0, 0)] * (sd.ndim - 1) + [(0, width - sd.shape[-1])])
        for j, i in enumerate(members):
            rows[i] = sd[j]
    return jnp.stack(rows)


def trunk_names(params: Any, n_heads: int) -> list[str]:
    """The row names of :func:`trunk_distributions` for a parameter tree."""
    names, leaves, _, _ = tree_lib.named_leaves(params)
    return list(trunk_matrices(dict(zip(names, leaves)), n_heads))


def trunk_distributions(params: Any, n_heads: int) -> jax.Array:
    """SD table (M, r) of the trunk of a parameter tree, rows in :func:`trunk_names` order (jit-able)."""
    names, leaves, _, _ = tree_lib.named_leaves(params)
    return distributions_of(trunk_matrices(dict(zip(names, leaves)), n_heads))


def group_means(values: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Means over the attention and over the MLP rows of ``values`` (first axis: the trunk matrices)."""
    groups = np.asarray([group_of(n) for n in names])
    return {g: np.mean(np.asarray(values)[groups == g], axis=0) for g in ("attention", "mlp") if np.any(groups == g)}
