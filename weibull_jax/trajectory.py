r"""Series quantities of a weight trajectory from its Gram matrix: the alignment force from checkpoints alone.

**Trajectory Gram matrix.** For one matrix saved at knots s_0 < … < s_{T−1}, every series quantity below is
an inner product between checkpoints. With drifts d_i = w_i − w_0 we keep

.. math:: n_0 = \|w_0\|^2, \qquad c_i = \langle w_0, d_i\rangle, \qquad H_{ij} = \langle d_i, d_j\rangle,

so that G_ij = ⟨w_i, w_j⟩ = n_0 + c_i + c_j + H_ij. Splitting off w_0 keeps float32 honest: the estimates
below are combinations Σ_i b_i G_ij with Σ_i b_i = 0, in which n_0 (the large part) cancels exactly, and the
drifts are formed by subtraction before any product. H is also the trajectory-PCA Gram of the backbone
paper. The three parts add over column chunks (stream a matrix in pieces) and over matrices (a class).

**Displacement identity** (arXiv 2606.19367 App. A, exact). AdamW steps w_{t+1} = w_t − η_t(u_t + λ_wd w_t),
so u_t = −(w_{t+1} − (1 − η_t λ_wd) w_t)/η_t and the alignment force is

.. math:: F_{align}(t) = -2\eta_t\langle w_t, u_t\rangle
          = 2\langle w_t, w_{t+1} - w_t\rangle + 2\eta_t\lambda_{wd}\|w_t\|^2 .

**Sparse checkpoints** (§5.2, Eq. A.6). With knots Δ steps apart the unit-step displacement is estimated
(i) from the not-a-knot cubic spline S through the knots, per element: w_t ≈ S(t), w_{t+1} − w_t ≈
S(t+1) − S(t), at every step t; or (ii) by the naive two-point difference (w_{j+1} − w_j)/Δ_j with w_t ≈ w_j
on the interval; or (iii) by the two-point form of the authors' public code, which turns the interval's
displacement into an update with the mean of its endpoint rates, u = −(w_{j+1} − w_j)/(½(η_{s_j} + η_{s_{j+1}})
Δ_j) − λ_wd w_j, and takes F̂(t) = −2η_t⟨w_j, u⟩: (ii) with its displacement term scaled by η_t/η̄_j (the two
agree under a constant rate). All are linear in the knot values (S(t) = Σ_i a_i(t) w_i), so
F̂(t) = 2 a(t)ᵀ G b(t) + 2η_t λ_wd a(t)ᵀ G a(t), b = a(t+1) − a(t) (or its two-point forms): the estimate
needs only G.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class TrajectoryGram(NamedTuple):
    """(n_0, c, H) of one matrix, or stacked / summed over matrices (leading axes)."""

    ref_sq_norm: Any  # (...,) ‖w_0‖²
    ref_cross: Any  # (..., T) ⟨w_0, d_i⟩
    drift: Any  # (..., T, T) ⟨d_i, d_j⟩

    def __add__(self, other: "TrajectoryGram") -> "TrajectoryGram":  # accumulate column chunks
        return TrajectoryGram(*(a + b for a, b in zip(self, other)))

    def sum(self) -> "TrajectoryGram":
        """Summed over the leading (matrix) axis: the Gram of the matrices taken as one vector."""
        return TrajectoryGram(*(np.sum(np.asarray(x, np.float64), axis=0) for x in self))

    def take(self, indices: Any) -> "TrajectoryGram":
        """The Gram of a sub-series (e.g. every second knot). The reference stays w_0 of the full series."""
        idx = np.asarray(indices)
        return TrajectoryGram(self.ref_sq_norm, np.take(self.ref_cross, idx, -1),
                              np.take(np.take(self.drift, idx, -1), idx, -2))

    def full(self) -> np.ndarray:
        """G_ij = ⟨w_i, w_j⟩ (float64)."""
        n0, c, h = (np.asarray(x, np.float64) for x in self)
        return n0[..., None, None] + c[..., :, None] + c[..., None, :] + h

    def sq_norms(self) -> np.ndarray:
        """‖w_i‖² at every knot."""
        n0, c, h = (np.asarray(x, np.float64) for x in self)
        return n0[..., None] + 2.0 * c + np.diagonal(h, axis1=-2, axis2=-1)

    def bilinear(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise a_rᵀ G b_r for coefficient rows ``a``, ``b`` of shape (R, T) (one matrix or a sum)."""
        n0, c, h = (np.asarray(x, np.float64) for x in self)
        sa, sb = a.sum(-1), b.sum(-1)
        return n0 * sa * sb + sa * (b @ c) + sb * (a @ c) + np.einsum("ri,ij,rj->r", a, h, b)


GRAM_BLOCK = 1 << 16  # elements per partial product


@jax.jit
def trajectory_gram(slab: jax.Array) -> TrajectoryGram:
    """(n_0, c, H) of one matrix from its ``(T, n)`` slab (row i = the raveled matrix at knot i).

    One product: the rows A = [w_0; d_1 … d_{T−1}] cut into blocks of ``GRAM_BLOCK`` elements, Σ_b A_b A_bᵀ
    accumulated by a loop, in float32 at full precision (no TF32); zero padding adds nothing. Every matrix
    of every size then runs the same (T × GRAM_BLOCK)·(GRAM_BLOCK × T) GEMM, which XLA autotunes once per
    process: one GEMM per matrix shape cost ~10 s of autotuning each on an H100 (40 s of a 65 s analysis).
    """
    t, n = slab.shape
    blocks = -(-n // GRAM_BLOCK)
    slab = slab.astype(jnp.float32)
    rows = jnp.concatenate([slab[:1], slab[1:] - slab[0]])
    rows = jnp.pad(rows, ((0, 0), (0, blocks * GRAM_BLOCK - n))).reshape(t, blocks, GRAM_BLOCK).transpose(1, 0, 2)

    def add_block(gram, block):
        return gram + jnp.dot(block, block.T, precision=jax.lax.Precision.HIGHEST), None

    gram = jax.lax.scan(add_block, jnp.zeros((t, t), jnp.float32), rows)[0]
    drift = gram.at[0, :].set(0.0).at[:, 0].set(0.0)  # d_0 = 0
    return TrajectoryGram(gram[0, 0], gram[:, 0].at[0].set(0.0), drift)


def spline_slopes(knots: np.ndarray) -> np.ndarray:
    """The (T, T) matrix D with S'(s_i) = Σ_j D_ij y_j for the not-a-knot cubic spline through (s_j, y_j).

    Interior rows are C² continuity, h_i m_{i−1} + 2(h_{i−1} + h_i) m_i + h_{i−1} m_{i+1} =
    3(h_i δ_{i−1} + h_{i−1} δ_i) with δ_i = (y_{i+1} − y_i)/h_i; the end rows make S''' continuous at s_1 and
    s_{T−2} (scipy ``CubicSpline(bc_type="not-a-knot")``). Three knots give the parabola, two the line.
    """
    s = np.asarray(knots, np.float64)
    n = s.size
    if n < 2 or np.any(np.diff(s) <= 0):
        raise ValueError(f"spline knots must be at least two increasing steps; got {s.tolist()}")
    h = np.diff(s)
    delta = (np.eye(n)[1:] - np.eye(n)[:-1]) / h[:, None]  # δ_i as rows acting on y
    if n == 2:
        return np.repeat(delta, 2, axis=0)
    if n == 3:  # the parabola through three points
        a = np.array([[1.0, 1.0, 0.0], [h[1], 2.0 * (h[0] + h[1]), h[0]], [0.0, 1.0, 1.0]])
        rhs = np.stack([2.0 * delta[0], 3.0 * (h[1] * delta[0] + h[0] * delta[1]), 2.0 * delta[1]])
        return np.linalg.solve(a, rhs)
    a = np.zeros((n, n))
    rhs = np.zeros((n, n))
    for i in range(1, n - 1):
        a[i, i - 1:i + 2] = h[i], 2.0 * (h[i - 1] + h[i]), h[i - 1]
        rhs[i] = 3.0 * (h[i] * delta[i - 1] + h[i - 1] * delta[i])
    a[0, :2] = h[1], h[0] + h[1]
    rhs[0] = ((h[0] + 2.0 * (h[0] + h[1])) * h[1] * delta[0] + h[0] ** 2 * delta[1]) / (h[0] + h[1])
    a[-1, -2:] = h[-1] + h[-2], h[-2]
    rhs[-1] = (h[-1] ** 2 * delta[-2] + (2.0 * (h[-1] + h[-2]) + h[-1]) * h[-2] * delta[-1]) / (h[-1] + h[-2])
    return np.linalg.solve(a, rhs)


def spline_weights(knots: np.ndarray, x: np.ndarray, derivative: bool = False) -> np.ndarray:
    """(len(x), T): row r holds a(x_r) with S(x_r) = Σ_j a_j y_j (or S'(x_r) with ``derivative``), the
    cubic Hermite form of the not-a-knot spline; ``x`` must lie within the knots."""
    s = np.asarray(knots, np.float64)
    x = np.asarray(x, np.float64)
    if x.size and (x.min() < s[0] or x.max() > s[-1]):
        raise ValueError(f"spline evaluation points must lie in [{s[0]}, {s[-1]}]")
    slopes = spline_slopes(s)
    i = np.clip(np.searchsorted(s, x, side="right") - 1, 0, s.size - 2)
    h = s[i + 1] - s[i]
    t = (x - s[i]) / h
    if derivative:
        b00, b10, b01, b11 = (6 * t * t - 6 * t) / h, 3 * t * t - 4 * t + 1, (6 * t - 6 * t * t) / h, 3 * t * t - 2 * t
    else:
        b00, b10, b01, b11 = 2 * t**3 - 3 * t**2 + 1, h * (t**3 - 2 * t**2 + t), -2 * t**3 + 3 * t**2, h * (t**3 - t**2)
    eye = np.eye(s.size)
    return (b00[:, None] * eye[i] + b01[:, None] * eye[i + 1] + b10[:, None] * slopes[i] + b11[:, None] * slopes[i + 1])


METHODS = ("spline", "two_point", "two_point_mean_lr")


def alignment_estimate(gram: TrajectoryGram, knots: np.ndarray, lr: Any, weight_decay: float,
                       method: str = "spline") -> tuple[np.ndarray, np.ndarray]:
    """(steps, F̂): the alignment force estimated at every step t in [s_0, s_{T−1}) from the knots alone.

    Args:
      gram: the Gram of the knot series (one matrix, or summed over a class).
      knots: the steps s_j of the checkpoints (weights after s_j optimizer steps).
      lr: η_t for t = 0, 1, …, s_{T−1} − 1 (the rate of the step from w_t to w_{t+1}; ``two_point_mean_lr``
        also reads η at s_{T−1}), an array or a callable.
      weight_decay: λ_wd of the matrices in ``gram``.
      method: ``"spline"`` (Eq. A.6), ``"two_point"`` (the naive baseline) or ``"two_point_mean_lr"`` (the
        public code's baseline, module docstring). With consecutive knots (Δ = 1) the first two are the
        exact identity.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    s = np.asarray(knots, np.int64)
    steps = np.arange(s[0], s[-1])
    eta = np.asarray(lr(steps) if callable(lr) else np.asarray(lr)[steps], np.float64)
    if method == "spline":
        a = spline_weights(s, steps)
        b = spline_weights(s, steps + 1) - a
    else:
        j = np.searchsorted(s, steps, side="right") - 1
        eye = np.eye(s.size)
        a = eye[j]
        b = (eye[j + 1] - eye[j]) / (s[j + 1] - s[j])[:, None]
        if method == "two_point_mean_lr":
            ends = np.asarray(lr(s) if callable(lr) else np.asarray(lr)[s], np.float64)
            b = b * (eta / (0.5 * (ends[j] + ends[j + 1])))[:, None]
    return steps, 2.0 * gram.bilinear(a, b) + 2.0 * eta * weight_decay * gram.bilinear(a, a)


def pointwise_ratios(steps: np.ndarray, estimate: np.ndarray, truth: np.ndarray, every: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(points, estimate/true) at the steps t ≡ 0 (mod ``every``) among ``steps``: the authors' recovery
    estimand is the median of these ratios (forces paper §5.2, every recorded step inside the knot range).
    ``truth`` is indexed by step (row t: the step from w_t to w_{t+1}); a step whose true alignment is 0 (no
    step taken: η_t = 0 at the start of a warmup) has no ratio and is left out."""
    points = steps[steps % every == 0]
    points = points[np.asarray(truth)[points] != 0]
    return points, estimate[points - steps[0]] / truth[points]


def interval_sums(steps: np.ndarray, values: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Σ of ``values`` over each knot interval [s_j, s_{j+1}) (steps outside the knots are ignored)."""
    s = np.asarray(knots)
    j = np.searchsorted(s, steps, side="right") - 1
    inside = (j >= 0) & (j < s.size - 1)
    return np.bincount(j[inside], weights=np.asarray(values, np.float64)[inside], minlength=s.size - 1)


def update_from_displacement(w_t: Any, w_next: Any, lr: float, weight_decay: float) -> Any:
    """The exact identity (A.2): u_t = −(w_{t+1} − (1 − η_t λ_wd) w_t)/η_t."""
    return -(w_next - (1.0 - lr * weight_decay) * w_t) / lr
