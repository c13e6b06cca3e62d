"""The SoSD floor: the stable phase it is read in (closed form of the WSD schedule) and its growth with the
interval (closed form for a drifting spectrum; a jittering one does not grow)."""

import os

import numpy as np
import pytest

from analysis import figures, sosd
from configs import default

NAMES = ["layers_0.attention.q.kernel", "layers_0.mlp.ffn_in.kernel"]


def _table(sd: np.ndarray, every: int = 25) -> sosd.Spectra:
    return sosd.Spectra(np.arange(len(sd)) * every, NAMES, sd, "live")


def test_stable_window_of_wsd_is_the_later_half_of_the_plateau():
    config = default.get_config()
    config.steps = 2025
    config.optimizer.update(schedule="wsd", warmup_steps=100, decay_fraction=0.2, floor=0.0)
    rest = 2025 - 100
    plateau_end = 100 + round(rest * 0.8)  # η = peak up to here, then linear to 0 over the remaining L steps
    decay_steps = rest - round(rest * 0.8)  # L = 385: η ≥ 0.9·peak for 0.1·L = 38.5, so 38 more steps
    last = plateau_end + int(0.1 * decay_steps)
    assert sosd.stable_window(config) == ((100 + last) // 2, last)


def test_stable_window_of_a_cosine_is_its_first_stretch():
    """η_t = η·((1 − α)(1 + cos(πt/T))/2 + α) ≥ 0.9η while cos(πt/T) ≥ 2(0.9 − α)/(1 − α) − 1."""
    config = default.get_config()
    config.steps = 1000
    config.optimizer.update(schedule="cosine", warmup_steps=0, floor=0.1)
    last = int(np.floor(1000 * np.arccos(2 * 0.8 / 0.9 - 1) / np.pi))
    assert sosd.stable_window(config) == (last // 2, last)


def test_a_drifting_spectrum_moves_in_proportion_to_the_interval():
    """SD_t = SD_0 + t·d: ‖SD_t − SD_{t−Δ}‖ = Δ‖d‖ for every pair, so every lag's median is exact."""
    rng = np.random.default_rng(0)
    start, drift = rng.random((2, 64)), rng.normal(size=(2, 64)) * 1e-6
    sd = start + np.arange(81)[:, None, None] * drift
    rows = sosd.floors_by_interval(_table(sd), (500, 1500))
    assert [r["interval"] for r in rows] == [25, 50, 100, 200, 400]
    assert [r["pairs"] for r in rows] == [40 - lag + 1 for lag in sosd.LAGS]  # rows 20 … 60 lie in the window
    norms = np.linalg.norm(drift, axis=1)
    for r, lag in zip(rows, sosd.LAGS):
        np.testing.assert_allclose(r["sd_variation_attention"], lag * norms[0], rtol=1e-9)
        np.testing.assert_allclose(r["sd_variation_mlp"], lag * norms[1], rtol=1e-9)
        np.testing.assert_allclose(r["sd_variation_trunk"], lag * norms.mean(), rtol=1e-9)


def test_a_jittering_spectrum_does_not_grow_with_the_interval():
    """SD_t = SD_0 + ε_t with ε_t iid N(0, σ²I_r): ‖ε_t − ε_s‖ ≈ σ√(2r) at every lag. With r = 512 the norm's
    relative spread is 1/√(4r) ≈ 2.2 %, and the median of ≥ 25 pairs is tighter still: 10 % is > 4 spreads."""
    rng = np.random.default_rng(1)
    sigma, r = 1e-6, 512
    sd = 0.5 + sigma * rng.normal(size=(81, 2, r))
    for row in sosd.floors_by_interval(_table(sd), (0, 2000)):
        assert row["sd_variation_trunk"] == pytest.approx(sigma * np.sqrt(2 * r), rel=0.1)


def test_summary_reads_the_floor_in_the_window():
    rows = [{"step": s, "interval": 25, "sd_variation_mlp": v} for s, v in ((25, 5.0), (50, 1.0), (75, 2.0),
                                                                            (100, 3.0), (125, 0.1))]
    windowed = sosd.summary(rows, (50, 100))["mlp"]
    assert (windowed["floor"], windowed["floor_steps"], windowed["peak"]) == (2.0, [50, 100], 5.0)
    assert sosd.summary(rows)["mlp"]["floor"] == 0.1  # no window: the last quarter (here the last row)


def test_drift_walk_jitter_recovers_its_terms():
    """F(Δ)² = v²Δ² + cΔ + b exactly: the fit returns v, c and b to rounding, and a zero residual."""
    intervals = np.asarray([25, 50, 100, 200, 400])
    v, c, b = 3e-6, 4e-10, 2.5e-9
    fit = sosd.drift_walk_jitter(intervals, np.sqrt(v ** 2 * intervals ** 2 + c * intervals + b))
    np.testing.assert_allclose([fit["drift"], fit["walk"], fit["jitter"]], [v, c, b], rtol=1e-6)
    assert fit["max_relative_residual"] < 1e-9


def test_variation_by_phase_follows_a_drift_driven_by_the_step_schedule(tmp_path):
    """SD_t = SD_0 + d·Σ_{s<t} η_s (a drift whose speed is η): inside a phase of constant η,
    ‖SD_t − SD_{t−Δ}‖ = Δη‖d‖ exactly, so each phase reads 25·η·‖d‖ (mean over the two matrices) and
    grows 4× from Δ = 25 to 100. The step schedule's η is 6e-4, 6e-5, 6e-6 after warmup and each ×0.1 cut
    (float32 rounding of η: relative 1e-7)."""
    config = default.get_config()
    config.steps = 2000
    config.optimizer.update(schedule="step", lr=6e-4, warmup_steps=100, milestones=(0.5, 0.75), gamma=0.1)
    assert sosd.schedule_phases(config) == [(550, 1000), (1250, 1500), (1750, 2000)]
    eta = 6e-4 * np.where(np.arange(2000) < 100, np.arange(2000) / 100,
                          np.select([np.arange(2000) < 1000, np.arange(2000) < 1500], [1.0, 0.1], 0.01))
    direction = np.random.default_rng(2).normal(size=(2, 64))
    travelled = np.concatenate([[0.0], np.cumsum(eta)])[::25]  # Σ_{s<t} η_s at t = 0, 25, …, 2000
    rows = sosd.variation_by_phase(_table(0.5 + travelled[:, None, None] * direction), config)
    speed = np.linalg.norm(direction, axis=1).mean()
    assert [(r["first_step"], r["last_step"], r["interval"]) for r in rows] == [(550, 1000, 25), (1250, 1500, 25),
                                                                               (1750, 2000, 25)]
    np.testing.assert_allclose([r["eta_share"] for r in rows], [1.0, 0.1, 0.01], rtol=1e-6)
    np.testing.assert_allclose([r["sd_variation"] for r in rows], 25 * 6e-4 * speed * np.asarray([1.0, 0.1, 0.01]),
                               rtol=1e-6)
    np.testing.assert_allclose([r["growth_4x"] for r in rows], 4.0, rtol=1e-6)
    assert os.path.getsize(figures.sd_variation_by_phase({"drift": rows}, str(tmp_path))) > 0
    config.optimizer.warmup_steps = 1200  # a cut inside warmup does not make a phase
    assert sosd.schedule_phases(config) == [(1350, 1500), (1750, 2000)]
