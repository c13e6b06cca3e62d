"""Stability of the singular distribution (SoSD paper §3.2–3.3, §5) of a run or a checkpoint series.

Two sources of SD tables (steps × trunk matrices × r): the live ``spectra/`` of a run (every
``spectra_every`` steps, written by the training loop) and the snapshots (every knot, computed by
``series.measure``). From either: SD variation ‖SD_t − SD_{t−Δ}‖₂ and the cosine of each SD to the final
one, as means over the attention and over the MLP matrices; from the snapshots' Gram matrices also the
cosine of each weight matrix to its final state, cos(W_t, W_T) = G_tT/√(G_tt G_TT). The summary gives the
SD-variation peak, its step, and the floor (the median over the last quarter of the steps).
"""

from __future__ import annotations

import json
import os

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


def variation(table: Spectra) -> np.ndarray:
    """(T−1, M): ‖SD_t − SD_{t−1}‖₂ of every matrix between consecutive steps of the table."""
    return np.linalg.norm(np.diff(table.sd, axis=0), axis=-1)


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


def summary(rows: list[dict]) -> dict:
    """Per group: the SD-variation peak and its step, the floor (median of the last quarter) and their ratio."""
    out = {}
    for key in (k for k in rows[0] if k.startswith("sd_variation_")):
        values = np.asarray([r[key] for r in rows])
        steps = np.asarray([r["step"] for r in rows])
        peak = int(np.argmax(values))
        floor = float(np.median(values[-max(1, len(values) // 4):]))
        out[key.removeprefix("sd_variation_")] = {"peak": float(values[peak]), "peak_step": int(steps[peak]),
                                                  "floor": floor, "peak_over_floor": float(values[peak] / floor)
                                                  if floor > 0 else float("inf"),
                                                  "interval": int(rows[-1]["interval"])}
    return out


def training_loss(run_dir: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, LM loss) from a run's metrics lines, or None."""
    lines = series_lib.load_metrics(run_dir)
    if not lines:
        return None
    return np.asarray([x["step"] for x in lines]), np.asarray([x.get("lm_loss", x["loss"]) for x in lines])


def section(data: series_lib.Measured, run_dir: str | None, figs: str) -> sections.Section:
    """SoSD tables and figure: from the live spectra of a run where it wrote them, and from the snapshots."""
    out = sections.Section("Stability of the singular distribution (SoSD)")
    first_rows = None
    for table in (t for t in (live_spectra(run_dir) if run_dir else None, snapshot_spectra(data)) if t):
        rows = sd_rows(table)
        first_rows = first_rows or rows
        if table.source == "snapshots":
            cosines = weight_cosines(data)
            for i, row in enumerate(rows):
                row.update({f"weight_cosine_final_{g}": float(v[i + 1]) for g, v in cosines.items()})
        out.tables[f"sosd_{table.source}"] = sections.table(rows)
        out.numbers[f"sosd_{table.source}"] = summary(rows)
    if first_rows:
        out.figures.append(figures.sd_variation(first_rows, training_loss(run_dir) if run_dir else None, figs))
        source = next(k for k in ("sosd_live", "sosd_snapshots") if k in out.numbers)
        ours = "; ".join(f"{g}: peak {v['peak']:.2e} at step {v['peak_step']}, floor {v['floor']:.2e}"
                         for g, v in out.numbers[source].items())
        out.compare(f"SD variation ({source.removeprefix('sosd_')})", ours, "sd_variation_shape")
    return out
