r"""Closed-loop check of the force budget (arXiv 2606.19367 §5.1, App. B).

Integrate the leading-order recurrence forward from the initial squared norm with the recorded forces
sub-sampled every Δ steps (forward Euler),

.. math:: \|w\|^2_{t+\Delta} = \|w\|^2_t + \Delta\,(F_{align} + F_{inj} + F_{decay})(t),

map the squared norm of an n-element matrix to the Weibull scale through the RMS bridge
λ = RMS/√Γ(1 + 2/k), RMS = √(‖w‖²/n), and compare with the independently fitted λ:
logRMSE = √mean (ln λ_pred − ln λ_fit)². The offset splits into the bridge error (λ from the true RMS vs
the fit) and the integration error (integrated vs true RMS). Forward Euler with sparse samples of a noisy
force can step ‖w‖² below zero (a sampled step's force, held for Δ steps, overshoots); there λ and the
logRMSE are undefined (NaN) and :func:`first_nonpositive` says from which grid point.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special


def integrate_sq_norm(sq_norm0: Any, leading: np.ndarray, spacing: int) -> np.ndarray:
    """‖w‖² at steps 0, Δ, 2Δ, … (as many as ``leading`` covers).

    Args:
      sq_norm0: ‖w_0‖², a number or one per matrix (M,).
      leading: (S, M) or (S,): the leading-order change of step t → t+1 in row t, t = 0 … S−1.
      spacing: Δ; row t·Δ stands for the Δ steps that follow it.
    """
    leading = np.asarray(leading, np.float64)
    sampled = leading[::spacing][: leading.shape[0] // spacing]
    return np.concatenate([np.asarray(sq_norm0, np.float64)[None],
                           np.asarray(sq_norm0, np.float64) + spacing * np.cumsum(sampled, axis=0)])


def first_nonpositive(sq_norm: Any) -> int | None:
    """The first row (grid point) of an (S, …) array of squared norms where any entry is ≤ 0, or None."""
    rows = np.flatnonzero(np.any(np.asarray(sq_norm).reshape(len(sq_norm), -1) <= 0, axis=1))
    return int(rows[0]) if rows.size else None


def _sqrt(x: Any) -> np.ndarray:
    """√x in float64, NaN where x ≤ 0 (an overshot integration), without a warning."""
    x = np.asarray(x, np.float64)
    return np.sqrt(np.where(x > 0, x, np.nan))


def rms(sq_norm: Any, size: Any) -> np.ndarray:
    """RMS = √(‖w‖²/n); NaN where ‖w‖² ≤ 0."""
    return _sqrt(np.asarray(sq_norm, np.float64) / size)


def bridge_scale(sq_norm: Any, size: Any, k: Any) -> np.ndarray:
    """λ = RMS/√Γ(1 + 2/k) with RMS = √(‖w‖²/n): the Weibull scale a squared norm implies at shape k."""
    return rms(sq_norm, size) / np.sqrt(special.gamma(1.0 + 2.0 / np.asarray(k, np.float64)))


def log_rmse(predicted: Any, reference: Any) -> float:
    """√mean (ln predicted − ln reference)² over all entries (natural log); NaN if any entry is NaN."""
    diff = np.log(np.asarray(predicted, np.float64)) - np.log(np.asarray(reference, np.float64))
    return float(np.sqrt(np.mean(diff**2)))
