"""weibull-jax: seeing inside transformer training with Weibull fits, force budgets, spectra and trajectories.

The library is pure functions over pytrees of arrays; it imports nothing from ``train/`` or ``analysis/``.
"""

from weibull_jax import closed_loop, forces, snapshots, spectra, trajectory
from weibull_jax.anchor import halfnormal_anchor
from weibull_jax.framework import (
    attention_architecture,
    classify_k,
    compare_to_benchmark,
    diagnose_model,
    k_drift,
    lambda_scaling,
    paired_lambda_correlation,
    training_budget,
)
from weibull_jax.tails import compare_distributions, heaviness, tail_signature
from weibull_jax.weibull import (
    WeibullFit,
    fit_weibull,
    fit_weibull_tree,
    gamma_closure,
    rms_from_scale,
    scale_from_rms,
    trim_ablation,
    weibull_moments,
    weibull_quantile,
)

__version__ = "0.1.0"

__all__ = [
    "WeibullFit",
    "closed_loop",
    "forces",
    "snapshots",
    "spectra",
    "trajectory",
    "attention_architecture",
    "classify_k",
    "compare_distributions",
    "compare_to_benchmark",
    "diagnose_model",
    "fit_weibull",
    "fit_weibull_tree",
    "gamma_closure",
    "halfnormal_anchor",
    "heaviness",
    "k_drift",
    "lambda_scaling",
    "paired_lambda_correlation",
    "rms_from_scale",
    "scale_from_rms",
    "tail_signature",
    "training_budget",
    "trim_ablation",
    "weibull_moments",
    "weibull_quantile",
]
