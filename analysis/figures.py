"""The series report's figures (matplotlib, Agg): one function per PNG, each from the tables of ``series``."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from analysis import sections  # noqa: E402

from weibull_jax import reference  # noqa: E402

TERM_COLORS = {"alignment": "tab:blue", "injection": "tab:orange", "decay": "tab:green"}


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def lambda_by_kind(steps, by_kind: dict, by_class: dict, out_dir: str) -> str:
    """λ(t) per kind (median over blocks), the Transmission class bold with its peak marked."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for kind, v in sorted(by_kind.items()):
        ax.plot(steps, v["scale"], lw=1, label=kind)
    t = by_class["transmission"]["scale"]
    ax.plot(steps, t, "k", lw=2.5, label="transmission (median)")
    peak = int(np.argmax(t))
    ax.plot(steps[peak], t[peak], "r*", ms=14, label=f"peak λ {t[peak]:.4f} at step {steps[peak]}")
    ax.set(xlabel="training step", ylabel="Weibull scale λ (median over blocks)", title="λ(t) per kind", yscale="log")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out_dir, "lambda_by_kind.png")


def force_shares(steps: np.ndarray, share: np.ndarray, out_dir: str) -> str:
    """Stacked shares of |alignment|, |injection|, |decay| for the Transmission class, per step bin."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.stackplot(steps, share.T, labels=list(TERM_COLORS), colors=list(TERM_COLORS.values()), alpha=0.85)
    ax.set(xlabel="training step", ylabel="share of |force| budget", ylim=(0, 1),
           title=f"Transmission force budget ({steps[0]}-step bins)")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, out_dir, "force_shares.png")


def alignment_share_runs(curves: dict[str, tuple[np.ndarray, np.ndarray]], out_dir: str) -> str:
    """Transmission alignment share over time, one line per run (seeds, architectures)."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, (x, share) in curves.items():
        ax.plot(x, share, lw=1.2, label=name)
    ax.axhspan(0.88, 0.94, color="0.85", label="paper, rise phase 88–94 %")
    ax.set(xlabel="training step", ylabel="alignment share", ylim=(0, 1), title="Alignment share per run")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "alignment_share_runs.png")


def lambda_runs(curves: dict[str, tuple[np.ndarray, np.ndarray]], runs: sections.Table,
                out_dir: str) -> str:
    """Transmission λ over time, one line per run, and each run's λ peak against its rise-phase alignment share
    (the forces paper's §6.2 learning-rate and §7 data-coherence axes in one figure); ``runs``:
    ``report.runs_table``."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = {}  # a run keeps its colour in both panels (runs of one setting overlap on the right)
    for name, (steps, scale) in curves.items():
        colours[name] = left.plot(steps, scale, lw=1.2, label=name)[0].get_color()
    left.set(xlabel="training step", ylabel="λ (Transmission median)", title="Weibull scale per run")
    left.legend(fontsize=7)
    for row in runs.rows:
        if "lambda_peak" in row and "rise_alignment" in row:
            right.plot(row["rise_alignment"], row["lambda_peak"], "o", color=colours.get(row["run"]), alpha=0.8,
                       label=row["run"])
    right.set(xlabel="alignment share, steps 1–5000", ylabel="λ peak", title="λ peak against the alignment share")
    right.legend(fontsize=7)
    return _save(fig, out_dir, "lambda_runs.png")


def closed_loop(curve: dict, log_rmse: float, out_dir: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(curve["steps"], curve["fitted"], "k.", label="fitted λ (median, Transmission)")
    ax.plot(curve["steps"], curve["predicted"], "r-", label=f"closed loop, Δ = 1 (logRMSE {log_rmse:.3f})")
    ax.set(xlabel="training step", ylabel="Weibull scale λ", title="Closed loop: integrated forces → RMS → λ")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "closed_loop.png")


def _recovered_vs_true(scatter: list[dict], out_dir: str, what: str, name: str,
                       truths=(("true", ""),)) -> str:
    """Recovered against true alignment, a panel per Δ, and a row of panels per truth in ``truths``
    ((key, label) pairs)."""
    spacings = sorted({r["spacing"] for r in scatter})
    fig, axes = plt.subplots(len(truths), len(spacings), figsize=(4 * len(spacings), 3.8 * len(truths)),
                             squeeze=False)
    for row, (key, label) in zip(axes, truths):
        for ax, spacing in zip(row, spacings):
            for method, marker in (("spline", "o"), ("two_point", "x"), ("two_point_mean_lr", "+")):
                rows = [r for r in scatter if r["spacing"] == spacing and r["method"] == method]
                ax.plot([r[key] for r in rows], [r["recovered"] for r in rows], marker, ms=4, ls="", label=method)
            here = [r[key] for r in scatter if r["spacing"] == spacing]
            lim = [min(0.0, *here), max(here)]
            ax.plot(lim, lim, "k--", lw=0.8, label="identity")
            ax.set(xlabel=f"true alignment {what}{label}", ylabel="recovered", title=f"Δ = {spacing}")
            ax.legend(fontsize=7)
    return _save(fig, out_dir, name)


def recovery_scatter(intervals: list[dict], out_dir: str) -> str:
    """Recovered vs true alignment summed per knot interval, by each method, per Δ (our estimand)."""
    return _recovered_vs_true(intervals, out_dir, "Σ per interval", "recovery_scatter.png")


def recovery_points(points: list[dict], out_dir: str) -> str:
    """Recovered vs true alignment at each recorded step, by each method, per Δ (the authors' estimand): above
    with the step's own alignment term as the truth, below with the public code's (read after the step)."""
    return _recovered_vs_true(points, out_dir, "at a step", "recovery_points.png",
                              (("true", ""), ("true_post_update", ", read after the step")))


def lambda_heatmap(steps, per_block: np.ndarray, out_dir: str) -> str:
    """Transmission λ per block (rows) and knot (columns)."""
    fig, ax = plt.subplots(figsize=(8, 0.4 * per_block.shape[1] + 1.8))
    image = ax.imshow(per_block.T, aspect="auto", origin="lower", cmap="viridis",
                      extent=(steps[0], steps[-1], -0.5, per_block.shape[1] - 0.5))
    fig.colorbar(image, ax=ax, label="λ (median of the block's Transmission matrices)")
    ax.set(xlabel="training step", ylabel="block", title="Per-block λ(t)")
    return _save(fig, out_dir, "lambda_heatmap.png")


def k_trajectory(steps, by_kind: dict, lock: dict, out_dir: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.axhspan(*reference.TRANSMISSION_BAND, color="0.85", label="Transmission band")
    for kind, v in sorted(by_kind.items()):
        ax.plot(steps, v["k"], lw=1, label=kind)
    ax.fill_between(steps, lock["min"], lock["max"], color="k", alpha=0.15)
    ax.plot(steps, lock["median"], "k", lw=2, label="Transmission per-block median (range shaded)")
    ax.set(xlabel="training step", ylabel="Weibull shape k", title="k(t) and the k-lock")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out_dir, "k_trajectory.png")


def sd_variation(rows: list[dict], loss: tuple[np.ndarray, np.ndarray] | None, out_dir: str,
                 name: str = "sd_variation.png") -> str:
    """SD variation ‖SD_t − SD_{t−Δ}‖₂ (attention and MLP means, log scale) with the training loss (SoSD Fig. 3)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    for group, color in (("attention", "tab:red"), ("mlp", "tab:blue")):
        key = f"sd_variation_{group}"
        if key in rows[0]:
            ax.plot(steps, [r[key] for r in rows], color=color, lw=1.5, label=f"SD variation, {group}")
    ax.set(xlabel="training step", ylabel=f"‖SD_t − SD_(t−{rows[-1]['interval']})‖₂", yscale="log",
           title="Stability of the singular distribution")
    if loss is not None:
        twin = ax.twinx()
        twin.plot(*loss, color="0.4", lw=1, ls="--", label="training loss")
        twin.set_ylabel("training loss")
        twin.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, out_dir, name)


def sd_variation_runs(curves: dict[str, tuple[np.ndarray, np.ndarray]], out_dir: str) -> str:
    """SD variation (attention + MLP mean) of several runs on one axis (AdamW vs Muon, schedules)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in curves.items():
        ax.plot(steps, values, lw=1.5, label=name)
    ax.set(xlabel="training step", ylabel="SD variation (mean over trunk matrices)", yscale="log",
           title="SD variation per run")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "sd_variation_runs.png")


def sd_floor_by_interval(floors: dict[str, list[dict]], out_dir: str) -> str:
    """The SD-variation floor (trunk mean, stable phase) against the interval Δ it is read at, per run, on
    log–log axes with a line ∝ Δ: a drifting spectrum follows it, a jittering one stays flat."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in floors.items():
        ax.plot([r["interval"] for r in rows], [r["sd_variation_trunk"] for r in rows], "o-", lw=1.5, label=name)
    first = min(floors.values(), key=lambda rows: rows[0]["sd_variation_trunk"])
    x = np.asarray([r["interval"] for r in first], float)
    ax.plot(x, first[0]["sd_variation_trunk"] * x / x[0], "k:", lw=1, label="∝ Δ")
    ax.set(xlabel="interval Δ (steps)", ylabel="SD variation ‖SD_t − SD_{t−Δ}‖, median", xscale="log",
           yscale="log", title="SD-variation floor (stable phase) vs interval")
    ax.set_xticks(x, [f"{v:g}" for v in x])  # the intervals themselves, not log-scale minor labels
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "sd_floor_by_interval.png")


def sd_variation_by_phase(phases: dict[str, list[dict]], out_dir: str) -> str:
    """The SD variation of each phase of the schedule against η_t/η_peak there, per run, on log–log axes with
    a line ∝ η (a drift whose speed is the rate) through the highest variation at the highest rate, and one
    ∝ √η through the lowest."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in phases.items():
        ax.plot([r["eta_share"] for r in rows], [r["sd_variation"] for r in rows], "o-", lw=1.5, label=name)
    every = [r for rows in phases.values() for r in rows]
    top_rate = max(r["eta_share"] for r in every)
    at_top = [r["sd_variation"] for r in every if r["eta_share"] == top_rate]
    eta = np.geomspace(min(r["eta_share"] for r in every), top_rate, 20)
    for power, start, style, label in ((1.0, max(at_top), "k:", "∝ η"), (0.5, min(at_top), "k--", "∝ √η")):
        ax.plot(eta, start * (eta / top_rate) ** power, style, lw=1, label=label)
    ax.set(xlabel="η_t / η_peak (median over the phase)", ylabel=f"SD variation at Δ = {every[0]['interval']} steps",
           xscale="log", yscale="log", title="SD variation through the schedule")
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "sd_variation_by_phase.png")


def backbone_decomposition(rows: list[dict], accuracy, block: str, out_dir: str) -> str:
    """Backbone coordinate a(t) and residual ‖r(t)‖ of one block, with p_ood where the probe ran (Fig. 1)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["a"] for r in rows], "tab:red", lw=2, label="backbone coordinate a(t)")
    ax.plot(steps, [r["residual"] for r in rows], "tab:blue", lw=1.5, label="residual ‖r(t)‖")
    ax.set(xlabel="training step", ylabel="drift from θ(0)", title=f"Backbone–residual decomposition ({block})")
    if accuracy is not None:
        twin = ax.twinx()
        twin.plot(*accuracy, color="0.5", lw=1, label="p_ood")
        twin.set(ylabel="p_ood", ylim=(0, 1))
        twin.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, out_dir, "backbone_decomposition.png")


def update_alignment(rows: list[dict], gradients: list[dict] | None, block: str, out_dir: str) -> str:
    """Signed and absolute update alignment C(t) with v_b, and the per-batch gradient |cos| (Fig. 2)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows[1:]]
    c = np.asarray([r["update_alignment"] for r in rows[1:]])
    ax.plot(steps, np.abs(c), "tab:red", lw=2, label="|C(t)|: update over one knot interval")
    ax.plot(steps, c, "tab:red", lw=1, ls="--", label="C(t), signed")
    if gradients:
        ax.plot([g["step"] for g in gradients], [g["grad_abs_cos"] for g in gradients], "o", color="tab:blue",
                ms=3, label="per-batch gradient |cos(g, v_b)|")
        ax.plot([g["step"] for g in gradients], [g["random_floor"] for g in gradients], ":", color="0.4",
                label="random floor √(2/πD)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="training step", ylabel="cosine with the backbone", title=f"Update vs gradient alignment ({block})")
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "update_alignment.png")


def anisotropy(gradients: list[dict], out_dir: str) -> str:
    """Rayleigh quotients along v_b, v_PC2 and random orthogonal directions, and α, per block (Fig. 3)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for block in sorted({g["block"] for g in gradients}):
        rows = [g for g in gradients if g["block"] == block]
        steps = [g["step"] for g in rows]
        left.plot(steps, [g["q_backbone"] for g in rows], lw=1.5, label=f"q(v_b), block {block}")
        right.plot(steps, [g["anisotropy"] for g in rows], lw=1.5, label=f"block {block}")
    first = [g for g in gradients if g["block"] == gradients[0]["block"]]
    left.plot([g["step"] for g in first], [g["q_random"] for g in first], color="0.5", ls=":",
              label=f"q(random ⊥ v_b), block {gradients[0]['block']}")
    left.set(xlabel="training step", ylabel="Rayleigh quotient q(v)", yscale="log", title="Empirical Fisher")
    right.set(xlabel="training step", ylabel="anisotropy α = q(v_b) / mean q(w_k)", yscale="log", title="Anisotropy")
    left.legend(fontsize=6)
    right.legend(fontsize=6)
    return _save(fig, out_dir, "anisotropy.png")
