r"""The half-normal initialisation anchor and the initialisation recipes that set σ_init.

Half-normal anchor (framework paper App. A.1). For w ~ N(0, σ²), |w| has CDF F(x) = erf(x / (σ√2)), so on
the Weibull probability plot X = ln σ + g(F) with g(F) = ln(√2 erfinv F) and Y(F) = ln(−ln(1 − F)).
Least squares of Y on X over the continuum of F ∈ [t, 1 − t] (the large-sample limit of the fit) gives

.. math:: k_0 = \frac{\mathrm{Cov}(g, Y)}{\mathrm{Var}(g)}, \qquad
          \frac{\lambda_0}{\sigma} = \exp\!\left(\bar g - \bar Y / k_0\right),

deterministic integrals that evaluate to k0 ≈ 1.2054 and λ0/σ ≈ 0.8875 for t = 0.1.

Initialisation recipes (App. A.3, GPT-NeoX source): small_init σ = √(2/(5d)) for input-side projections,
wang_init σ = 2/(L√d) for output-side ones (Pythia 70m–1B, "recipe A"); normal σ = 0.02 and scaled_normal
σ = 0.02/√(2L) (Pythia 6.9B, "recipe B"). The models (:mod:`weibull_jax.models`) draw their matrices with
these σ; input-side are the embedding, W_qkv (or W_q, W_k, W_v), W_FFN_in (or gate, up) and the head,
output-side W_o and W_FFN_out (or down).
"""

from __future__ import annotations

import math

from scipy import integrate, special

from weibull_jax.weibull import trim_fraction


def halfnormal_anchor(trim: float | str = 0.1) -> tuple[float, float]:
    """(k0, λ0/σ) of the probability-plot fit to a half-normal, from the integrals of App. A.1 (scipy quad)."""
    t = trim_fraction(trim)
    lo, hi = t, 1.0 - t

    def g(f):
        return math.log(math.sqrt(2.0) * special.erfinv(f))

    def y(f):
        return math.log(-math.log1p(-f))

    def mean(fn):
        return integrate.quad(fn, lo, hi, limit=200)[0] / (hi - lo)

    g_bar, y_bar = mean(g), mean(y)
    cov = mean(lambda f: (g(f) - g_bar) * (y(f) - y_bar))
    var = mean(lambda f: (g(f) - g_bar) ** 2)
    k0 = cov / var
    return k0, math.exp(g_bar - y_bar / k0)


INIT_RECIPES = ("small_init", "wang_init", "normal", "scaled_normal")


def init_sigma(recipe: str, d_model: int, n_layers: int) -> float:
    """σ_init of a GPT-NeoX initialiser (framework paper App. A.3, Eq. 4 and recipe B)."""
    if recipe == "small_init":
        return math.sqrt(2.0 / (5.0 * d_model))
    if recipe == "wang_init":
        return 2.0 / (n_layers * math.sqrt(d_model))
    if recipe == "normal":
        return 0.02
    if recipe == "scaled_normal":
        return 0.02 / math.sqrt(2.0 * n_layers)
    raise ValueError(f"unknown init recipe {recipe!r}; known: {INIT_RECIPES}")


PYTHIA_RECIPES = {"A": ("small_init", "wang_init"), "B": ("normal", "scaled_normal")}
