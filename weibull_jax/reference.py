"""The paper's published cohort numbers, typed in with their source (framework paper arXiv 2605.18898).

Per entry: the training recipe and terminal mean λ of the Transmission kinds (Table 4), T/τ and λ_O
(Table 3, §4.2), super-weight signatures (Table 2, §3.3), and the expected per-kind median k ranges of the
companion database DATABASE_v9_1 (App. B.2; §4.3 gives the family ranges: MHA q/k ∈ [0.76, 0.99], GQA
[1.10, 1.16], Pythia merged qkv [1.05, 1.18]).
"""

from __future__ import annotations

import dataclasses

# §3.1: median terminal k of the FFN modules across the 12-entry cohort (CV 0.51 %).
TRANSMISSION_BAND = (1.186, 1.204)
# §3.2, Table 1: body–tail gap k80 − k100 across the cohort.
BODY_TAIL_GAP = (0.0519, 0.0017)
# §5.4: terminal mean λ = 0.087 · √(η/λ_wd) within Pythia, Pearson r = 0.94 (n = 5).
PYTHIA_LAMBDA_SLOPE, PYTHIA_LAMBDA_R = 0.087, 0.94


@dataclasses.dataclass(frozen=True)
class ReferenceEntry:
    """One cohort entry. ``k_ranges``: (kind, low, high) of the expected median k per kind; kind ``v_o``
    applies to both W_v and W_o. Table 2 fields are None where the paper has no per-block extraction."""

    model: str
    arch: str
    n_q: int
    n_kv: int
    eta_peak: float
    weight_decay: float
    terminal_mean_scale: float
    k_ranges: tuple[tuple[str, float, float], ...]
    qk_norm: bool = False
    t_over_tau: float | None = None
    max_q99_median: float | None = None
    max_q99_extreme: float | None = None
    kurtosis_extreme: float | None = None

    @property
    def scale_slope(self) -> float:
        """λ / √(η/λ_wd), Table 4's last column."""
        return self.terminal_mean_scale / (self.eta_peak / self.weight_decay) ** 0.5


_OLMO_Q = (("q", 0.76, 0.85), ("k", 0.70, 0.80), ("v_o", 1.04, 1.06))

REFERENCE: tuple[ReferenceEntry, ...] = (
    ReferenceEntry("pythia-70m", "MHA", 8, 8, 1.0e-3, 0.01, 0.0224, (("qkv", 1.04, 1.10),),
                   t_over_tau=1.43, max_q99_median=7.2, max_q99_extreme=15.7, kurtosis_extreme=196.9),
    ReferenceEntry("pythia-160m", "MHA", 12, 12, 6.0e-4, 0.01, 0.0200, (("qkv", 1.08, 1.12),),
                   t_over_tau=0.86, max_q99_median=6.6, max_q99_extreme=13.4, kurtosis_extreme=104.2),
    ReferenceEntry("pythia-410m", "MHA", 16, 16, 3.0e-4, 0.01, 0.0190, (("qkv", 1.13, 1.17),),
                   t_over_tau=0.43, max_q99_median=8.0, max_q99_extreme=19.6, kurtosis_extreme=257.1),
    ReferenceEntry("pythia-1b", "MHA", 8, 8, 3.0e-4, 0.01, 0.0191, (("qkv", 1.15, 1.19),),
                   t_over_tau=0.43, max_q99_median=11.3, max_q99_extreme=21.5, kurtosis_extreme=21.8),
    ReferenceEntry("pythia-6.9b", "MHA", 32, 32, 1.2e-4, 0.01, 0.0149, (("qkv", 1.15, 1.19),),
                   t_over_tau=0.17, max_q99_median=8.6, max_q99_extreme=31.4, kurtosis_extreme=27.7),
    ReferenceEntry("olmo-1-7b", "MHA", 32, 32, 3.0e-4, 0.10, 0.0032, _OLMO_Q,
                   max_q99_median=27.7, max_q99_extreme=107.2, kurtosis_extreme=445.9),
    ReferenceEntry("olmo-2-7b", "MHA", 32, 32, 3.0e-4, 0.10, 0.0167,
                   (("q", 0.95, 1.05), ("k", 0.92, 1.00), ("v_o", 1.18, 1.20)), qk_norm=True),
    ReferenceEntry("llama-3-8b", "GQA", 32, 8, 3.0e-4, 0.10, 0.0097,
                   (("q", 1.13, 1.16), ("k", 1.13, 1.17), ("v_o", 1.17, 1.19))),
    ReferenceEntry("mistral-7b", "GQA", 32, 8, 3.0e-4, 0.10, 0.0026,
                   (("q", 1.14, 1.16), ("k", 1.12, 1.14), ("v_o", 1.17, 1.19))),
    ReferenceEntry("qwen2.5-7b", "GQA", 28, 4, 3.0e-4, 0.10, 0.0138,
                   (("q", 1.13, 1.16), ("k", 1.10, 1.14), ("v_o", 1.16, 1.20))),
    ReferenceEntry("qwen2.5-14b", "GQA", 40, 8, 3.0e-4, 0.10, 0.0158,
                   (("q", 1.15, 1.17), ("k", 1.12, 1.15), ("v_o", 1.16, 1.19)),
                   max_q99_median=18.4, max_q99_extreme=22.9, kurtosis_extreme=46.9),
    ReferenceEntry("qwen3-8b", "GQA", 32, 8, 5.0e-4, 0.10, 0.0225,
                   (("q", 1.15, 1.18), ("k", 1.14, 1.17), ("v_o", 1.16, 1.19)), qk_norm=True,
                   max_q99_median=17.3, max_q99_extreme=40.4, kurtosis_extreme=14.5),
)


# Headline numbers of the three training-dynamics papers, as their text gives them, for reports to print next
# to ours: key → (the paper's number, where it stands). Forces: arXiv 2606.19367 (V1b, Pythia-70M; Llama-style
# where two values are given); backbone: "Optimizer-Induced Low-Dimensional Drift and Transverse Dynamics"
# (GPT-2 family, 8 × 512); SoSD: "The Stability of Singular Distribution" (GPT-2 Small).
PAPER_HEADLINES: dict[str, tuple[str, str]] = {
    "alignment_share_rise": ("88–94 %", "forces §4.1, Transmission, steps ≤ 5000"),
    "injection_share_rise": ("~4 %", "forces §4.1"),
    "decay_share_end": ("48.6 % at step 20000", "forces §4.1, Table 2"),
    "alignment_share_table": ("93.1 / 93.1 / 92.1 / 88.7 / 78.9 / 49.9 % at steps 250 / 1250 / 2500 / 5000 / 10000 / "
                              "20000", "forces §4.1, the table"),
    "k_lock": ("1.200 (Pythia), 1.203 (Llama)", "forces §4.3"),
    "lambda_peak": ("0.076 (8 M tokens), 0.069 (118 M tokens)", "forces §4.2"),
    "closed_loop_log_rmse": ("0.053 (Pythia), 0.056 (Llama)", "forces §5.1, Δ = 1"),
    "spline_recovery": ("0.92–0.94", "forces §5.2, App. A: median over recorded steps of estimate/true"),
    "two_point_recovery": ("0.41–0.51", "forces §5.2: the same median, the mean-rate two-point form"),
    "recovery_interval_sums": ("not given (the paper reports the pointwise median)", "forces §5.2"),
    "sd_variation_shape": ("an early peak, then a metastable floor; Muon's floor ~10× below AdamW's",
                           "SoSD §5.1–5.3, Fig. 5b"),
    "rho1_per_block": ("77.9–81.2 %", "backbone Table 2"),
    "window_alignment": ("0.997–0.998", "backbone Eq. 5"),
    "final_backbone_fraction": ("68–72 %", "backbone Eq. 9"),
    "early_update_alignment": ("0.20–0.34", "backbone Table 3, t < 2000"),
    "sign_flip_step": ("~5000–5200", "backbone Table 4"),
    "grad_abs_cos": ("0.008–0.012 (random floor 4.5e-4)", "backbone Eq. 10"),
    "top_fisher_overlap": ("≈ 0.001", "backbone Eq. 29"),
    "anisotropy": ("1.3 → 12.4 / 1.6 → 40.8", "backbone Tables 6–7"),
}
