"""Stability of the singular distribution (SoSD paper §3.2–3.3, §5) of a run or a checkpoint series.

Two sources of SD tables (steps × trunk matrices × r): the live ``spectra/`` of a run (every
``spectra_every`` steps, written by the training loop) and the snapshots (every knot, computed by
``series.measure``). From either: SD variation ‖SD_t − SD_{t−Δ}‖₂ and the cosine of each SD to the final
one, as means over the attention and over the MLP matrices; from the snapshots' Gram matrices also the
cosine of each weight matrix to its final state, cos(W_t, W_T) = G_tT/√(G_tt G_TT). The summary gives the
SD-variation peak, its step, and the floor: the median over the later half of the stable phase, where η_t is
within 10 % of its peak (the paper's metastable floor, §3.3; WSD's plateau, the step schedule's first stage),
or over the last quarter of the steps where the schedule is unknown.

The floor depends on the interval Δ it is read at: a spectrum that drifts moves ∝ Δ, one that jitters about a
fixed shape does not grow with Δ at all. :func:`floors_by_interval` reads the floor at Δ = 1, 2, 4, 8, 16
table spacings, so that two optimizers' floors can be compared at any interval (the SoSD paper's Muon is
"about one order" below AdamW at an interval its text does not give, §5.3).
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from analysis import figures, sections
from analysis import series as series_lib
from weibull_jax import snapshots, spectra


class Spectra:
    """An SD table: ``steps`` (T,), ``names`` (M,), ``sd`` (T, M, r); ``source``: ``live`` or ``snapshots``."""

    def __init__(self, steps: np.ndarray, names: list[str], sd: np.ndarray, source: str):
        self.steps, self.names, self.sd, self.source = np.asarray(steps), list(names), np.asarray(sd), source


def live_spectra(run_dir: str) -> Spectra | None:
    """The SD tables the training loop wrote to ``{run_dir}/spectra`` (None if it wrote none)."""
    directory = os.path.join(run_dir, "spectra")
    files = snapshots.step_files(directory) if os.path.isdir(directory) else []
    if len(files) < 2:
        return None
    with open(os.path.join(directory, "names.json")) as f:
        names = json.load(f)
    return Spectra(np.asarray([s for s, _ in files]), names, np.stack([np.load(p) for _, p in files]), "live")


def snapshot_spectra(data: series_lib.Measured) -> Spectra | None:
    """The SD tables ``series.measure`` computed at every knot (None if it computed none)."""
    if not data.sd:
        return None
    width = max(v.shape[-1] for v in data.sd.values())
    sd = np.stack([np.pad(v, ((0, 0), (0, width - v.shape[-1]))) for v in data.sd.values()], axis=1)
    return Spectra(data.steps, list(data.sd), sd, "snapshots")


LAGS = (1, 2, 4, 8, 16)  # the intervals of floors_by_interval, in rows of the SD table
STABLE_SHARE = 0.9  # the stable phase: η_t ≥ this share of the peak rate, after warmup


def variation(table: Spectra, lag: int = 1) -> np.ndarray:
    """(T−lag, M): ‖SD_t − SD_{t−lag}‖₂ of every matrix, ``lag`` rows of the table apart."""
    return np.linalg.norm(table.sd[lag:] - table.sd[:-lag], axis=-1)


def stable_window(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
    """(first, last) step of the later half of the stable phase of a run's schedule, the steps after warmup
    with η_t ≥ 90 % of the peak rate; None if the phase has fewer than two steps."""
    eta = series_lib.learning_rates(config, config.steps)
    stable = np.flatnonzero(eta >= STABLE_SHARE * eta.max())
    stable = stable[stable >= config.optimizer.warmup_steps]
    if len(stable) < 2:
        return None
    return int((stable[0] + stable[-1]) // 2), int(stable[-1])


def floors_by_interval(table: Spectra, window: tuple[int, int]) -> list[dict]:
    """Per lag of ``LAGS``: the interval Δ in steps, the number of pairs, and the median over the pairs of
    steps (t − Δ, t) inside ``window`` of ‖SD_t − SD_{t−Δ}‖₂, as the mean over all trunk matrices and over
    the attention and the MLP matrices. Lags with no pair inside the window are left out."""
    rows = []
    for lag in (lag for lag in LAGS if lag < len(table.steps)):
        changes = variation(table, lag)
        inside = (table.steps[:-lag] >= window[0]) & (table.steps[lag:] <= window[1])
        if not inside.any():
            continue
        row = {"interval": int(np.median(table.steps[lag:] - table.steps[:-lag])), "pairs": int(inside.sum()),
               "sd_variation_trunk": float(np.median(changes.mean(1)[inside]))}
        row.update({f"sd_variation_{g}": float(np.median(v[inside]))
                    for g, v in spectra.group_means(changes.T, table.names).items()})
        rows.append(row)
    return rows


def schedule_phases(config: ml_collections.ConfigDict) -> list[tuple[int, int]]:
    """The run cut at the end of warmup and at the fractions ``config.optimizer.milestones`` of its steps (the
    step schedule's ×γ cuts, 0.5 and 0.75 by default; runs under other schedules are cut at the same steps,
    so that they compare), each phase as (first, last) step of its later half, past the transient of a cut."""
    warmup, steps = config.optimizer.warmup_steps, config.steps
    cuts = [c for c in (round(m * steps) for m in config.optimizer.milestones) if warmup < c < steps]
    bounds = [warmup, *cuts, steps]
    return [((a + b) // 2, b) for a, b in zip(bounds[:-1], bounds[1:])]


def variation_by_phase(table: Spectra, config: ml_collections.ConfigDict) -> list[dict]:
    """The SD variation through the schedule (SoSD §5.1, Fig. 4: it follows η). Per phase of
    :func:`schedule_phases`: its median η_t/η_peak, the trunk's :func:`floors_by_interval` F(Δ) at one table
    spacing Δ, and its growth F(4Δ)/F(Δ): 4 for a spectrum that drifts along a fixed direction, 2 for a
    random walk, 1 for a jitter about a fixed shape. Phases too short for a pair 4Δ apart are left out."""
    eta = series_lib.learning_rates(config, config.steps)
    rows = []
    for first, last in schedule_phases(config):
        floors = floors_by_interval(table, (first, last))  # one row per lag of LAGS that has a pair
        if len(floors) <= LAGS.index(4):
            continue
        short, long = floors[0], floors[LAGS.index(4)]
        rows.append({"first_step": first, "last_step": last,
                     "eta_share": float(np.median(eta[first:last]) / eta.max()), "interval": short["interval"],
                     "sd_variation": short["sd_variation_trunk"],
                     "growth_4x": long["sd_variation_trunk"] / short["sd_variation_trunk"]})
    return rows


def drift_walk_jitter(intervals: np.ndarray, floors: np.ndarray) -> dict:
    """The floors F(Δ) of :func:`floors_by_interval` as a drift, a random walk and a jitter,
    F(Δ)² = v²Δ² + cΔ + b, by least squares in F² relative to each F² (three or more intervals): ``drift``
    v (SD change per step along a fixed direction), ``walk`` c, ``jitter`` b, and the largest relative
    residual of F. At long intervals two runs' floors stand in the ratio of their drifts."""
    d, f = np.asarray(intervals, np.float64), np.asarray(floors, np.float64)
    design = np.stack([d ** 2, d, np.ones_like(d)], 1) / f[:, None] ** 2
    (v2, c, b), *_ = np.linalg.lstsq(design, np.ones_like(d), rcond=None)
    fitted = np.sqrt(np.maximum(v2 * d ** 2 + c * d + b, 0.0))
    return {"drift": float(np.sqrt(max(v2, 0.0))), "walk": float(c), "jitter": float(b),
            "max_relative_residual": float(np.max(np.abs(fitted / f - 1)))}


def floor_models(floors: dict[str, list[dict]]) -> list[dict]:
    """:func:`drift_walk_jitter` of each run's :func:`floors_by_interval` (those with three or more
    intervals), for the trunk and for the attention and the MLP matrices: one row per run and group."""
    return [{"run": name, "group": group, **drift_walk_jitter([r["interval"] for r in rows],
                                                              [r[f"sd_variation_{group}"] for r in rows])}
            for name, rows in floors.items() if len(rows) >= 3
            for group in ("trunk", "attention", "mlp") if f"sd_variation_{group}" in rows[0]]


def sd_rows(table: Spectra) -> list[dict]:
    """Per step t ≥ the second: group means of the SD variation since the previous step and of cos(SD_t, SD_T)."""
    changes = variation(table)
    final = table.sd[-1]
    cosine = np.sum(table.sd * final, -1) / np.sqrt(np.sum(table.sd ** 2, -1) * np.sum(final ** 2, -1))
    var_groups = spectra.group_means(changes.T, table.names)
    cos_groups = spectra.group_means(cosine.T, table.names)
    rows = []
    for i, step in enumerate(table.steps[1:]):
        row = {"step": int(step), "interval": int(step - table.steps[i])}
        row.update({f"sd_variation_{g}": float(v[i]) for g, v in var_groups.items()})
        row.update({f"sd_cosine_final_{g}": float(v[i + 1]) for g, v in cos_groups.items()})
        rows.append(row)
    return rows


def weight_cosines(data: series_lib.Measured) -> dict[str, np.ndarray]:
    """cos(W_t, W_T) per knot, averaged over the attention and over the MLP trunk matrices (from the Grams)."""
    trunk = [m for m, n in enumerate(data.names) if spectra.is_trunk(n)]
    if not trunk:
        return {}
    cos = []
    for m in trunk:
        g = data.grams[m].full()
        cos.append(g[:, -1] / np.sqrt(np.diagonal(g) * g[-1, -1]))
    return spectra.group_means(np.stack(cos), [data.names[m] for m in trunk])


def summary(rows: list[dict], window: tuple[int, int] | None = None) -> dict:
    """Per group: the SD-variation peak and its step, the floor (the median over the rows whose step lies in
    ``window``; without one, or with no row in it, over the last quarter) and their ratio."""
    out = {}
    steps = np.asarray([r["step"] for r in rows])
    in_window = (steps >= window[0]) & (steps <= window[1]) if window else np.zeros(len(rows), bool)
    if not in_window.any():
        in_window = np.arange(len(rows)) >= len(rows) - max(1, len(rows) // 4)
    for key in (k for k in rows[0] if k.startswith("sd_variation_")):
        values = np.asarray([r[key] for r in rows])
        peak = int(np.argmax(values))
        floor = float(np.median(values[in_window]))
        out[key.removeprefix("sd_variation_")] = {"peak": float(values[peak]), "peak_step": int(steps[peak]),
                                                  "floor": floor, "peak_over_floor": float(values[peak] / floor)
                                                  if floor > 0 else float("inf"),
                                                  "interval": int(rows[-1]["interval"]),
                                                  "floor_steps": [int(steps[in_window][0]), int(steps[in_window][-1])]}
    return out


def training_loss(run_dir: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, LM loss) from a run's metrics lines, or None."""
    lines = series_lib.load_metrics(run_dir)
    if not lines:
        return None
    return np.asarray([x["step"] for x in lines]), np.asarray([x.get("lm_loss", x["loss"]) for x in lines])


def section(data: series_lib.Measured, run_dir: str | None, figs: str,
            config: ml_collections.ConfigDict | None = None) -> sections.Section:
    """SoSD tables and figure: from the live spectra of a run where it wrote them, and from the snapshots; with
    the training config, the floors in the stable phase and their growth with the interval, and the variation
    through the schedule's phases."""
    out = sections.Section("Stability of the singular distribution (SoSD)")
    first_rows = None
    window = stable_window(config) if config else None
    for table in (t for t in (live_spectra(run_dir) if run_dir else None, snapshot_spectra(data)) if t):
        rows = sd_rows(table)
        first_rows = first_rows or rows
        if table.source == "snapshots":
            cosines = weight_cosines(data)
            for i, row in enumerate(rows):
                row.update({f"weight_cosine_final_{g}": float(v[i + 1]) for g, v in cosines.items()})
        out.tables[f"sosd_{table.source}"] = sections.table(rows)
        out.numbers[f"sosd_{table.source}"] = summary(rows, window)
        floors = floors_by_interval(table, window) if window else []
        if floors:
            out.tables[f"sosd_{table.source}_floor_by_interval"] = sections.table(floors)
        phases = variation_by_phase(table, config) if config else []
        if phases:
            out.tables[f"sosd_{table.source}_by_phase"] = sections.table(phases)
    if first_rows:
        out.figures.append(figures.sd_variation(first_rows, training_loss(run_dir) if run_dir else None, figs))
        source = next(k for k in ("sosd_live", "sosd_snapshots") if k in out.numbers)
        ours = "; ".join(f"{g}: peak {v['peak']:.2e} at step {v['peak_step']}, floor {v['floor']:.2e}"
                         for g, v in out.numbers[source].items())
        out.compare(f"SD variation ({source.removeprefix('sosd_')})", ours, "sd_variation_shape")
    return out
