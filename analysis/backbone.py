"""The optimizer-induced backbone of a run (backbone paper §3–5, §7): trajectory geometry and gradient probes.

Geometry needs only the per-matrix drift Grams that ``series.measure`` already took: per block, the sum over
its trunk matrices (attention and MLP; no embeddings, norms or biases) is the block's T × T drift Gram, and
``weibull_jax.backbone`` turns it into ρ_k, k95/k99, a(t), ‖r(t)‖, f_b, C(t), the rolling-window PC1
alignment and the switching overlaps. A window [first, last] (the SGD controls, Table 9–10) is analysed
from its own first knot.

The gradient probes (§4.1, §4.4–4.5) also need the directions themselves and the model: v_b and v_PC2 of
each block are materialised from the series as Σ_t c_t (θ(t) − θ(0)) (one more read per trunk matrix), then
at each analysed knot M minibatch gradients of the run's loss (L_LM + λ_probe L_probe at that step) give,
per block: |cos(g, v_b)| (first ``cos_batches`` batches) against the random floor √(2/(πD)), the signed
projection b_ℓ = ⟨g_ℓ, v_b⟩ and its running sum B_ℓ, Rayleigh quotients q(v_b), q(v_PC2) and over K random
unit directions orthogonal to v_b, the anisotropy α and the overlap of v_b with the top Fisher eigenvector.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from analysis import figures, sections
from analysis import series as series_lib
from weibull_jax import backbone, data, fisher, models, probe, snapshots, spectra, taxonomy
from weibull_jax import tree as tree_lib

PHASES = (("early", 0.0, 0.2), ("mid", 0.2, 0.6), ("late", 0.6, 1.0))  # Table 3: t < 2000, ≤ 6000, > 6000 of 10k
SUMMARY_COMPONENTS = 5  # ρ_1 … ρ_5 in the summary (NaN where the drift has fewer components)


def trunk_blocks(names: list[str]) -> dict[int, list[int]]:
    """Block → the indices of its trunk matrices among ``names``."""
    blocks: dict[int, list[int]] = {}
    for m, name in enumerate(names):
        if spectra.is_trunk(name):
            blocks.setdefault(taxonomy.describe(name).block, []).append(m)
    return dict(sorted(blocks.items()))


def block_drift(measured: series_lib.Measured, columns: list[int], index: np.ndarray | None = None) -> np.ndarray:
    """The drift Gram H_ij = Σ_m ⟨x_m(i), x_m(j)⟩ (float64) of the ``columns`` matrices taken as one vector, over
    the knots ``index`` (default all), drifts measured from the first of them."""
    drift = np.sum([np.asarray(measured.grams[m].drift, np.float64) for m in columns], axis=0)
    if index is not None:
        drift = backbone.reanchor(drift[np.ix_(index, index)], 0)
    return drift


def window_indices(steps: np.ndarray, window: tuple[int, int] | None) -> np.ndarray:
    if window is None:
        return np.arange(len(steps))
    index = np.flatnonzero((steps >= window[0]) & (steps <= window[1]))
    if len(index) < 3:
        raise ValueError(f"the backbone window {window} holds {len(index)} knots; it needs at least 3")
    return index


def geometry(steps: np.ndarray, drift: np.ndarray, width: int = 10) -> tuple[dict, list[dict]]:
    """One block's (or the trunk's) trajectory geometry over the knots ``steps`` of its drift Gram."""
    pca = backbone.trajectory_pca(drift)
    a, residual, fraction = backbone.coordinates(drift, pca)
    alignment = backbone.update_alignment(drift, pca)
    rows = [{"step": int(s), "a": a[i], "residual": residual[i], "backbone_fraction": fraction[i],
             "update_alignment": float(alignment[i - 1]) if i else float("nan")} for i, s in enumerate(steps)]
    span = steps[-1] - steps[0]
    phases = {}
    for name, lo, hi in PHASES:
        inside = [abs(alignment[i - 1]) for i in range(1, len(steps))
                  if lo * span <= steps[i] - steps[0] <= hi * span]
        phases[name] = float(np.mean(inside)) if inside else float("nan")
    out = {"rho": pca.explained[:SUMMARY_COMPONENTS].tolist(), "k95": backbone.components_for(pca.explained, 0.95),
           "k99": backbone.components_for(pca.explained, 0.99), "drift_norm": float(np.sqrt(drift[-1, -1])),
           "final_backbone_fraction": float(fraction[-1]), "update_alignment_abs": phases,
           "update_alignment_first": float(alignment[0]), "update_alignment_last": float(alignment[-1]),
           "sign_flip_step": backbone.sign_flip(steps[1:], alignment)}
    if len(steps) > width:
        c = backbone.window_alignment(drift, pca, width)
        out["window_alignment"] = {"width": width, "mean": float(c.mean()), "min": float(c.min())}
    return out, rows


def probe_accuracy(run_dir: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, p_ood) from the run's metrics, where it evaluated the probe."""
    points = [(line["step"], line["p_ood"]) for line in series_lib.load_metrics(run_dir) if "p_ood" in line]
    return tuple(map(np.asarray, zip(*points))) if len(points) >= 3 else None


def switching_rows(steps: np.ndarray, drift: np.ndarray, accuracy: tuple[np.ndarray, np.ndarray],
                   min_drop: float = 0.05) -> list[dict]:
    """For each p_ood peak and the trough after it (both at knots) at least ``min_drop`` lower: the switching
    direction's overlaps (§7). Smaller wiggles are evaluation noise (2000 sequences: ±0.01), not switches."""
    acc_steps, p_ood = accuracy
    on_knots = np.isin(acc_steps, steps)
    acc_steps, p_ood = acc_steps[on_knots], p_ood[on_knots]
    pca = backbone.trajectory_pca(drift)
    peaks, troughs = backbone.extrema(p_ood)
    rows = []
    for peak in peaks:
        after = troughs[troughs > peak]
        if not after.size or p_ood[peak] - p_ood[after[0]] < min_drop:
            continue
        p, q = (int(np.flatnonzero(steps == acc_steps[i])[0]) for i in (peak, after[0]))
        s = backbone.switching(drift, pca, p, q)
        rows.append({"peak_step": int(acc_steps[peak]), "trough_step": int(acc_steps[after[0]]),
                     "p_ood_peak": float(p_ood[peak]), "p_ood_trough": float(p_ood[after[0]]), **s._asdict()})
    return rows


# ---------------------------------------------------------------------------------------------------------
# Gradient probes
# ---------------------------------------------------------------------------------------------------------


def materialise(series: snapshots.WeightSeries, names: list[str], weights: np.ndarray) -> jax.Array:
    """Σ_t weights[j, t] (θ(t) − θ(0)) over the named leaves, raveled (in the model's orientation, as the
    gradients are) and concatenated: (J, D) on device."""
    parts = []
    for name in names:
        slab = jnp.asarray(series.unravel(name, series.slab(name)).reshape(len(series.steps), -1))
        w = jnp.asarray(weights, jnp.float32)
        parts.append(w @ slab - jnp.sum(w, axis=1, keepdims=True) * slab[:1])
    return jnp.concatenate(parts, axis=1)


def block_gradients(grad_fn, params, batches, step: int, blocks: dict[int, list[str]]) -> dict[int, jax.Array]:
    """(M, D_ℓ) per block: each minibatch's gradient restricted to the block's trunk matrices, raveled."""
    rows: dict[int, list] = {b: [] for b in blocks}
    for batch in batches:
        grads = dict(zip(*tree_lib.named_leaves(grad_fn(params, batch, step), lambda p, x: True)[:2]))
        for b, names in blocks.items():
            rows[b].append(jnp.concatenate([jnp.ravel(grads[n]) for n in names]))
    return {b: jnp.stack(r) for b, r in rows.items()}


@jax.jit
def _probe_block(grads: jax.Array, directions: jax.Array):
    hi = jax.lax.Precision.HIGHEST
    return (jnp.matmul(grads, directions.T, precision=hi), jnp.linalg.norm(grads, axis=1),
            jnp.matmul(grads, grads.T, precision=hi))


def gradient_probes(run_dir: str, series: snapshots.Series, measured: series_lib.Measured, knots: np.ndarray,
                    batches_per_knot: int = 32, cos_batches: int = 16, random_directions: int = 10,
                    seed: int = 0) -> list[dict]:
    """Per analysed knot and block: gradient alignment, signed projection and Fisher curvature (§4.1–4.5)."""
    config = series_lib.load_config(run_dir)
    model_config = models.config_from_fields(config.model.to_dict())
    probe_config = config.get("probe")  # runs from before the probe existed have none
    corpus = data.prepare(config.data, probe_config)
    task = corpus.task
    loss = probe.make_loss(models.CausalLM(model_config), probe.weight_schedule(probe_config.weights) if task else None)
    grad_fn = jax.jit(jax.grad(lambda p, b, s: loss(p, b, s)[0]))
    other_seed = config.seed + 7919  # minibatches in another order than training's
    batches = iter(data.training_batches(corpus.tokens, config.data.seq_len, config.batch_size, other_seed, task,
                                         probe_config.rate if task else 0.0,
                                         sampling=config.data.get("sampling", "epochs")))
    block_columns = trunk_blocks(measured.names)
    blocks = {b: [measured.names[m] for m in cols] for b, cols in block_columns.items()}
    directions = {}
    key = jax.random.key(seed)
    for b, cols in block_columns.items():
        pca = backbone.trajectory_pca(block_drift(measured, cols))
        pcs = materialise(series, blocks[b], np.stack([backbone.direction_weights(pca, k) for k in (0, 1)]))
        key, sub = jax.random.split(key)
        directions[b] = jnp.concatenate([pcs, fisher.orthonormal_complement(sub, pcs[0], random_directions)])
    rows, cumulative = [], dict.fromkeys(blocks, 0.0)
    progress = sections.Progress("gradient probes: knot", len(knots))
    for done, i in enumerate(knots):
        step = int(series.steps[i])
        progress.update(done, f"step {step}, {batches_per_knot} minibatch gradients")
        params = jax.tree.map(jnp.asarray, series.tree(i))
        sample = [jax.tree.map(jnp.asarray, next(batches)) for _ in range(batches_per_knot)]
        for b, grads in block_gradients(grad_fn, params, sample, step, blocks).items():
            proj, norms, gram = map(np.asarray, jax.device_get(_probe_block(grads, directions[b])))
            proj, norms, gram = proj.astype(np.float64), norms.astype(np.float64), gram.astype(np.float64)
            q = fisher.rayleigh_quotients(proj)
            signed = float(np.mean(proj[:cos_batches, 0]))
            cumulative[b] += signed
            rows.append({"step": step, "block": b, "dimension": int(grads.shape[1]),
                         "grad_abs_cos": float(np.mean(np.abs(proj[:cos_batches, 0]) / norms[:cos_batches])),
                         "random_floor": float(np.sqrt(2.0 / (np.pi * grads.shape[1]))),
                         "projection": signed, "cumulative_projection": cumulative[b],
                         "q_backbone": q[0], "q_pc2": q[1], "q_random": float(np.mean(q[2:])),
                         "anisotropy": fisher.anisotropy(q[0], q[2:]),
                         "top_fisher_overlap": fisher.top_eigenvector_overlap(gram, proj[:, 0])})
    progress.update(len(knots))
    return rows


def gradient_summary(gradients: list[dict]) -> dict:
    """Medians over knots and blocks of the gradient |cos| and its floor; α per block at each knot's max."""
    out = {k: float(np.median([g[k] for g in gradients])) for k in ("grad_abs_cos", "random_floor",
                                                                     "top_fisher_overlap")}
    for b in sorted({g["block"] for g in gradients}):
        rows = [g for g in gradients if g["block"] == b]
        peak = max(rows, key=lambda g: g["anisotropy"])
        out[f"block_{b}"] = {"anisotropy_first": rows[0]["anisotropy"], "anisotropy_last": rows[-1]["anisotropy"],
                             "anisotropy_peak": peak["anisotropy"], "anisotropy_peak_step": peak["step"],
                             "q_backbone_first": rows[0]["q_backbone"], "q_backbone_last": rows[-1]["q_backbone"],
                             "cumulative_projection": rows[-1]["cumulative_projection"]}
    return out


def _summary_row(group: str, s: dict) -> dict:
    return {"group": group, **sections.padded("rho", s["rho"], SUMMARY_COMPONENTS), "k95": s["k95"], "k99": s["k99"],
            "final_backbone_fraction": s["final_backbone_fraction"], "drift_norm": s["drift_norm"],
            "window_alignment_mean": s.get("window_alignment", {}).get("mean", float("nan")),
            "sign_flip_step": s["sign_flip_step"] if s["sign_flip_step"] is not None else float("nan")}


def _span(values) -> str:
    return f"{min(values):.3g}–{max(values):.3g}" if len(values) > 1 else f"{values[0]:.3g}"


def section(data: series_lib.Measured, series: snapshots.WeightSeries, run_dir: str | None, figs: str,
            window: tuple[int, int] | None = None, gradient_batches: int = 0, gradient_every: int = 1
            ) -> sections.Section:
    """The backbone paper's part of a report: per-block (and whole-trunk) geometry, switching overlaps,
    gradient probes; tables, figures, and the headline numbers next to the paper's."""
    out = sections.Section("The optimizer-induced backbone")
    blocks = trunk_blocks(data.names)
    if not blocks:
        return out
    index = window_indices(data.steps, window)
    steps = data.steps[index]
    summaries, trajectories, switching = {}, [], []
    accuracy = probe_accuracy(run_dir) if run_dir else None
    groups = {f"block_{b}": cols for b, cols in blocks.items()}
    groups["trunk"] = [m for cols in blocks.values() for m in cols]
    for name, cols in groups.items():
        drift = block_drift(data, cols, index)
        summaries[name], rows = geometry(steps, drift)
        trajectories += [{"group": name, **r} for r in rows]
        if accuracy is not None and window is None:
            switching += [{"group": name, **r} for r in switching_rows(steps, drift, accuracy)]
    out.tables["backbone_summary"] = sections.table([_summary_row(g, s) for g, s in summaries.items()])
    out.tables["backbone_trajectory"] = sections.table(trajectories)
    out.tables["switching"] = sections.table(switching, ("group", "peak_step", "trough_step", "p_ood_peak",
                                                         "p_ood_trough", *backbone.Switching._fields))
    first = next(iter(groups))
    label = first.replace("_", " ")
    first_rows = [r for r in trajectories if r["group"] == first]
    out.figures.append(figures.backbone_decomposition(first_rows, accuracy, label, figs))
    gradients = []
    if run_dir and gradient_batches and window is None:
        knots = np.arange(1, len(data.steps), gradient_every)
        gradients = gradient_probes(run_dir, series, data, knots, gradient_batches, min(16, gradient_batches))
        out.tables["gradient_probes"] = sections.table(gradients)
        out.figures.append(figures.anisotropy(gradients, figs))
    out.figures.append(figures.update_alignment(first_rows, [g for g in gradients if f"block_{g['block']}" == first],
                                                label, figs))
    out.numbers = {"backbone": summaries, "backbone_window": list(window) if window else None}
    if switching:
        out.numbers["switching"] = switching
    per_block = [v for g, v in summaries.items() if g.startswith("block_")]

    out.compare("ρ1 per block, uncentered trajectory PCA", _span([100 * v["rho"][0] for v in per_block]) + " %",
            "rho1_per_block")
    out.compare("backbone fraction f_b at the last knot", _span([100 * v["final_backbone_fraction"] for v in per_block])
            + " %", "final_backbone_fraction")
    if all("window_alignment" in v for v in per_block):
        out.compare("rolling-window PC1 alignment, mean", _span([v["window_alignment"]["mean"] for v in per_block]),
                "window_alignment")
    out.compare("|C(t)| early (first 20 % of the steps)", _span([v["update_alignment_abs"]["early"] for v in per_block]),
            "early_update_alignment")
    out.compare("sign flip of C(t)", ", ".join(str(v["sign_flip_step"]) for v in per_block), "sign_flip_step")
    if gradients:
        probes = out.numbers["gradient_probes"] = gradient_summary(gradients)
        out.compare("per-batch gradient |cos(g, v_b)|, median", f"{probes['grad_abs_cos']:.4f} (random floor "
                f"{probes['random_floor']:.1e})", "grad_abs_cos")
        out.compare("top-Fisher-eigenvector overlap, median", f"{probes['top_fisher_overlap']:.3f}", "top_fisher_overlap")
        out.compare("anisotropy α, first → last (per block)", ", ".join(
            f"{v['anisotropy_first']:.3g} → {v['anisotropy_last']:.3g}" for g, v in probes.items()
            if g.startswith("block_")), "anisotropy")
    return out
