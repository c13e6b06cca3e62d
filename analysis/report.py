"""The report of a run or a checkpoint series, assembled from its sections (series, sosd, backbone).

``{out}/`` receives ``report.json`` (every section's numbers), ``tables/*.csv`` (fixed columns),
``figures/*.png`` and ``index.html``: one self-contained page (the figures embedded as data URIs, no server,
no network) with the headline numbers next to the papers', every figure, every table and the run's config.
Everything is first written to a staging folder beside ``{out}`` and moved into place only when the whole
report is done, so a failed analysis leaves an earlier report as it was.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import shutil
import time
from typing import Any, Iterable

import ml_collections
import numpy as np
from absl import logging

from analysis import backbone, figures, sections, series, sosd
from configs import default as default_config
from weibull_jax import snapshots, suites, tree

HTML_ROWS = 200  # rows of a table shown on the page; the CSV beside it has them all
REPORT_JSON = "report.json"  # a report's headline numbers, beside its index.html


class _Staging:
    """A folder beside ``out`` that replaces ``out``'s entries of the same names on :meth:`commit`."""

    def __init__(self, out: str):
        self.out = out
        self.path = os.path.join(out, f".staging-{os.getpid()}")
        shutil.rmtree(self.path, ignore_errors=True)
        for sub in ("tables", "figures"):
            os.makedirs(os.path.join(self.path, sub))

    def commit(self) -> None:
        for name in os.listdir(self.path):
            target, old = os.path.join(self.out, name), os.path.join(self.out, f".old-{name}")
            if os.path.exists(target):
                os.replace(target, old)
            os.replace(os.path.join(self.path, name), target)
            if os.path.isdir(old):
                shutil.rmtree(old)
            elif os.path.exists(old):
                os.remove(old)
        os.rmdir(self.path)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def analyze(series_data: snapshots.WeightSeries, out: str, config: ml_collections.ConfigDict | None = None,
            recorded: series.Recorded | None = None, closed_loop_spacings=(1, 50, 250, 500),
            recovery_spacings=(250, 500, 1000), recovery_every=series.POINT_EVERY, table_steps=series.TABLE_STEPS,
            n_heads: int | None = None,
            run_dir: str | None = None, backbone_window: tuple[int, int] | None = None, gradient_batches: int = 0,
            gradient_every: int = 1, devices: int = 1) -> dict:
    """Writes the report of one weight series (a run's snapshots or a suite's revisions, with the run's config
    and recorded forces where known) and returns its numbers. ``n_heads`` splits fused W_qkv for the spectra;
    ``run_dir`` adds the live spectra, the probe accuracy and (``gradient_batches`` > 0) the gradient probes
    of the backbone; ``devices`` > 1 spreads the reading of the weights over this host's devices
    (:func:`analysis.series.measure`)."""
    start = time.perf_counter()
    series_dir = series_data.directory
    if len(series_data.steps) < 2:
        raise ValueError(f"{series_dir} holds {len(series_data.steps)} snapshot(s); a series needs at least two")
    os.makedirs(out, exist_ok=True)
    staging = _Staging(out)
    try:
        figs = os.path.join(staging.path, "figures")
        data = series.measure(series_data, n_heads, devices=devices)
        measured_s = time.perf_counter() - start
        parts = [series.section(data, figs, config, recorded, closed_loop_spacings, recovery_spacings, table_steps,
                                recovery_every),
                 sosd.section(data, run_dir, figs, config),
                 backbone.section(data, series_data, run_dir, figs, backbone_window, gradient_batches,
                                  gradient_every)]
        report: dict = {"series": series_dir, "knots": len(data.steps), "matrices": len(data.names),
                        "first_step": int(data.steps[0]), "last_step": int(data.steps[-1])}
        for part in parts:
            report.update(part.numbers)
            for name, table in part.tables.items():
                table.write_csv(os.path.join(staging.path, "tables", f"{name}.csv"))
        report["seconds"] = {"read_fit_gram": measured_s, **data.seconds, "total": time.perf_counter() - start}
        with open(os.path.join(staging.path, REPORT_JSON), "w") as f:
            json.dump(report, f, indent=2, default=float)
        title = run_dir or series_dir
        write_page(os.path.join(staging.path, "index.html"), f"weibull-jax report: {title}", parts,
                   summary_lines(title, report), config)
        staging.commit()
    except BaseException:
        staging.discard()
        raise
    return report


def analyze_run(run_dir: str, out: str, **options) -> dict:
    """The report of a run directory of ``python -m train.main``."""
    config = series.load_config(run_dir)
    recorded = series.load_forces(run_dir) if config.get("record_forces") else None
    return analyze(snapshots.Series(os.path.join(run_dir, "snapshots")), out, config, recorded,
                   n_heads=config.model.n_heads, run_dir=run_dir, **options)


def analyze_hf_series(root: str, out: str, schedule_config: ml_collections.ConfigDict | None, **options) -> dict:
    """The weights-only report of a model suite's ``step{N}`` revisions (a folder of checkpoint folders or a
    hub cache ``models--ORG--NAME``), read in place; ``schedule_config`` (the run's training config) adds the
    recovered alignment."""
    suite = suites.Suite(root)
    logging.info("%s: %d revisions (steps %d … %d), %.2f GB of weights", root, len(suite.steps), suite.steps[0],
                 suite.steps[-1], suite.stored_bytes() / 1e9)
    return analyze(suite, out, schedule_config, None, n_heads=suite.config.n_heads, **options)


def run_name(path: str) -> str:
    """A run's (or a series') name in reports and tables: its folder's name."""
    return os.path.basename(os.path.normpath(path))


def report_dir(run_dir: str, out_root: str) -> str:
    """Where a run's report goes: ``{out_root}/{run name}``, or ``{run_dir}/report`` without ``out_root``."""
    return os.path.join(out_root, run_name(run_dir)) if out_root else os.path.join(run_dir, "report")


def run(run_dirs: list[str], hf_series: str, out_root: str, schedule_config=None, gradient_batches: int = 0,
        gradient_every: int = 1, compare_only: bool = False, **options) -> dict[str, dict]:
    """The reports of ``run_dirs`` (each in :func:`report_dir`) or of a HuggingFace series, and with several
    runs their comparison page in ``out_root``; prints each summary. ``compare_only``: the runs' reports are
    there already (each analysed on its own, e.g. where its snapshots were); only the comparison is made."""
    reports = {}
    if hf_series:
        out = out_root or os.path.join("reports", run_name(hf_series))
        reports[out] = analyze_hf_series(hf_series, out, schedule_config, **options)
    outs = [report_dir(r, out_root) for r in run_dirs]
    for run_dir, out in zip(run_dirs, outs):
        if compare_only:
            reports[run_dir] = load_report(out)
        else:
            reports[run_dir] = analyze_run(run_dir, out, gradient_batches=gradient_batches,
                                           gradient_every=gradient_every, **options)
    if len(run_dirs) > 1:
        compare_runs(run_dirs, outs, [reports[r] for r in run_dirs], out_root or ".")
    if not compare_only:
        for name, report in reports.items():
            print("\n".join(summary_lines(name, report)))
    logging.info("reports written")
    return reports


def load_report(out: str) -> dict:
    """The numbers of the report in ``out``; ``{}``, with a warning, where there is none (a run whose snapshots
    are gone compares on what its run directory holds: config, forces, live spectra, final loss)."""
    path = os.path.join(out, REPORT_JSON)
    if not os.path.isfile(path):
        logging.warning("%s holds no report.json (analyse the run first: python -m analysis.main --run_dir=RUN "
                        "--out=OUT); its row has only what its run directory holds", out)
        return {}
    with open(path) as f:
        return json.load(f)


def runs_table(run_dirs: list[str], reports: list[dict]) -> sections.Table:
    """One row per run: the config fields in which the runs differ, then the force paper's headline numbers
    (λ peak and its step, the floor coefficient, the k-lock, the Transmission alignment share over the rise
    phase and the decay share over the last 10 %, the spline's recovery, the final loss). A field a run's
    config lacks (the run predates it) reads as its default, the behaviour that run had."""
    defaults = dict(tree.flat_items(default_config.get_config().to_dict()))
    configs = [{**defaults, **dict(tree.flat_items(series.load_config(r).to_dict()))} for r in run_dirs]
    differing = sorted({k for c in configs for k in c if len({repr(c2.get(k)) for c2 in configs}) > 1})
    rows = []
    for run_dir, config, rep in zip(run_dirs, configs, reports):
        row = {"run": run_name(run_dir), **{k: config.get(k) for k in differing}}
        lam = rep.get("lambda_transmission", {})
        row.update(lambda_peak=lam.get("peak_scale"), lambda_peak_step=lam.get("peak_step"),
                   floor_coefficient=lam.get("floor_coefficient"),
                   k_lock=rep.get("k_lock", {}).get("median_over_blocks_and_knots"))
        windows = rep.get("force_shares", {}).get("windows", {})
        if windows:
            row.update(rise_alignment=windows[series.rise_window(windows)]["alignment"],
                       end_decay=windows[list(windows)[-1]]["decay"])
        spline = [r for r in rep.get("recovery", []) if r["method"] == "spline" and "rate" in r]
        row["spline_recovery"] = spline[0].get("median_pointwise_rate_post_update") if spline else None
        summary = os.path.join(run_dir, "summary.json")
        if os.path.isfile(summary):
            with open(summary) as f:
                row["final_loss"] = json.load(f).get("loss")
        rows.append(row)
    columns = ["run", *differing, "lambda_peak", "lambda_peak_step", "floor_coefficient", "k_lock",
               "rise_alignment", "end_decay", "spline_recovery", "final_loss"]
    return sections.table([{c: r[c] for c in columns if r.get(c) is not None} for r in rows], columns)


def compare_runs(run_dirs: list[str], report_dirs: list[str], reports: list[dict], out: str) -> None:
    """The runs side by side (``{out}/index.html``, ``{out}/tables/runs.csv``): :func:`runs_table`; the
    Transmission alignment share over time; λ over time and λ's peak against the rise-phase alignment share
    (the learning-rate and data-coherence axes of the forces paper, §6.2 and §7); the SD variation, its
    floor in the stable phase against the interval it is read at (``sd_floor_by_interval``), and its level and
    growth with the interval in each phase of the schedule (``sd_variation_by_phase``)."""
    shares, variation, lam, floors, phases = {}, {}, {}, {}, {}
    for run_dir, report_path in zip(run_dirs, report_dirs):
        name, config = run_name(run_dir), series.load_config(run_dir)
        if config.get("record_forces"):
            recorded = series.load_forces(run_dir)
            x, share = series.binned_shares(recorded.forces, recorded.transmission_columns())
            shares[name] = (x, share[:, 0])
        live = sosd.live_spectra(run_dir)
        if live is not None:
            variation[name] = (live.steps[1:], sosd.variation(live).mean(1))
            window = sosd.stable_window(config)
            rows = sosd.floors_by_interval(live, window) if window else []
            if rows:
                floors[name] = rows
            phases[name] = sosd.variation_by_phase(live, config)
        scale = os.path.join(report_path, "tables", "scale_by_class.csv")
        if os.path.isfile(scale):
            table = np.genfromtxt(scale, delimiter=",", names=True)
            if "transmission" in table.dtype.names:
                lam[name] = (table["step"], table["transmission"])
    os.makedirs(os.path.join(out, "tables"), exist_ok=True)
    part = sections.Section("Runs side by side")
    part.tables["runs"] = runs_table(run_dirs, reports)
    if shares:
        part.figures.append(figures.alignment_share_runs(shares, out))
    if lam:
        part.figures.append(figures.lambda_runs(lam, part.tables["runs"], out))
    if variation:
        part.figures.append(figures.sd_variation_runs(variation, out))
    if floors:
        part.tables["sd_floor_by_interval"] = sections.table([{"run": n, **r} for n, rows in floors.items()
                                                              for r in rows])
        part.tables["sd_floor_model"] = sections.table(sosd.floor_models(floors))
        part.figures.append(figures.sd_floor_by_interval(floors, out))
    phases = {name: rows for name, rows in phases.items() if rows}
    if phases:
        part.tables["sd_variation_by_phase"] = sections.table([{"run": n, **r} for n, rows in phases.items()
                                                               for r in rows])
        part.figures.append(figures.sd_variation_by_phase(phases, out))
    for name, table in part.tables.items():
        table.write_csv(os.path.join(out, "tables", f"{name}.csv"))
    write_page(os.path.join(out, "index.html"), "weibull-jax: runs compared", [part],
               [f"{len(run_dirs)} runs: " + ", ".join(run_dirs)], None)


# ---------------------------------------------------------------------------------------------------------
# Text and HTML
# ---------------------------------------------------------------------------------------------------------


def summary_lines(name: str, report: dict) -> list[str]:
    lam = report["lambda_transmission"]
    lines = [f"{name}: {report['knots']} knots × {report['matrices']} matrices, steps "
             f"{report['first_step']}–{report['last_step']}, analysed in {report['seconds']['total']:.1f} s "
             f"(read + fits + Grams {report['seconds']['read_fit_gram']:.1f} s: "
             + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in report["seconds"].items()
                         if k not in ("read_fit_gram", "total")) + ")",
             f"  Transmission λ: init {lam['scale_init']:.4f}, peak {lam['peak_scale']:.4f} at step "
             f"{lam['peak_step']}, final {lam['final_scale']:.4f}"
             + (f", floor coefficient {lam['floor_coefficient']:.3f}" if "floor_coefficient" in lam else ""),
             f"  k-lock (per-block median Transmission k): {report['k_lock']['median_over_blocks_and_knots']:.4f}"]
    for window, s in report.get("force_shares", {}).get("windows", {}).items():
        lines.append(f"  forces steps {window:>12}: alignment {s['alignment']:.1%}  injection {s['injection']:.1%}"
                     f"  decay {s['decay']:.1%}  higher-order {s['higher_order']:.1e}")
    for r in report.get("closed_loop", []):
        lines.append(f"  closed loop Δ={r['spacing']:<4} bridge {r['bridge']:<14} logRMSE {r['log_rmse']:.4f} "
                     f"(bridge {r['bridge_error']:.4f}, integration {r['integration_error']:.4f})"
                     + ("" if r.get("nonpositive_from_step") is None else
                        f": Euler ‖w‖² ≤ 0 from step {r['nonpositive_from_step']} (a sampled force held Δ steps "
                        "overshoots)"))
    loops = [r for r in report.get("rms_closed_loop", []) if r["spacing"] == 1]
    if loops:
        lines.append("  closed loop in RMS units, Δ=1: " + ", ".join(f"{r['class']} logRMSE {r['rms_log_rmse']:.4f}"
                                                                   for r in loops))
    for r in report.get("recovery", []):
        if "rate" in r:
            lines.append(f"  recovery Δ={r['spacing']:<5} {r['method']:<10} {r['rate']:.3f} "
                         f"(median per interval {r['median_interval_rate']:.3f}, median over {r['points']} "
                         f"steps {r['median_pointwise_rate']:.3f}, with the public code's truth "
                         f"{r['median_pointwise_rate_post_update']:.3f})")
    for source in ("live", "snapshots"):
        for group, v in report.get(f"sosd_{source}", {}).items():
            lines.append(f"  SD variation ({source}, Δ={v['interval']}) {group:<9}: peak {v['peak']:.3e} at step "
                         f"{v['peak_step']}, floor {v['floor']:.3e} (peak/floor {v['peak_over_floor']:.1f})")
    geometry = report.get("backbone", {})
    if geometry:
        blocks = {g: v for g, v in geometry.items() if g.startswith("block_")}
        rho = [v["rho"][0] for v in blocks.values()]
        trunk = geometry["trunk"]
        lines.append(f"  backbone ρ1 per block {min(rho):.1%}–{max(rho):.1%} (trunk {trunk['rho'][0]:.1%}, k95 "
                     f"{trunk['k95']}, k99 {trunk['k99']}), final f_b {trunk['final_backbone_fraction']:.1%}"
                     + (f", window PC1 alignment {trunk['window_alignment']['mean']:.3f}"
                        if "window_alignment" in trunk else ""))
        early = [v["update_alignment_abs"]["early"] for v in blocks.values()]
        flips = [v["sign_flip_step"] for v in blocks.values()]
        lines.append(f"  update alignment |C| early {min(early):.3f}–{max(early):.3f}; sign flip steps {flips}")
    probes = report.get("gradient_probes")
    if probes:
        lines.append(f"  gradient |cos(g, v_b)| median {probes['grad_abs_cos']:.4f} (random floor "
                     f"{probes['random_floor']:.5f}); top-Fisher overlap {probes['top_fisher_overlap']:.3f}; "
                     "anisotropy peak " + ", ".join(f"{g}: {v['anisotropy_peak']:.1f} at {v['anisotropy_peak_step']}"
                                                    for g, v in probes.items() if g.startswith("block_")))
    return lines


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; } th { background: #f4f4f4; }
td.text { text-align: left; } img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
pre { background: #f7f7f7; padding: 0.8em; font-size: 0.8em; overflow-x: auto; }
details { margin: 0.3em 0; } summary { cursor: pointer; }
"""


def _cell(value: Any) -> str:
    """A table cell: numbers right-aligned to 6 significant digits (NaN empty), text left-aligned."""
    if isinstance(value, str):
        return f'<td class="text">{html.escape(value)}</td>'
    if isinstance(value, (float, np.floating)):
        return f"<td>{'' if math.isnan(value) else f'{value:.6g}'}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _html_table(columns: Iterable[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(path: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    name = html.escape(os.path.basename(path))
    return f'<figure><img src="data:image/png;base64,{data}" alt="{name}"><figcaption>{name}</figcaption></figure>'


def write_page(path: str, title: str, parts: list[sections.Section], summary: list[str],
               config: ml_collections.ConfigDict | None) -> None:
    """One self-contained HTML page: the summary, the headline numbers next to the papers', then every section's
    figures and tables (each table's first :data:`HTML_ROWS` rows; the CSV has them all), then the config."""
    body = [f"<h1>{html.escape(title)}</h1>", f"<pre>{html.escape(chr(10).join(summary))}</pre>"]
    comparisons = [c for part in parts for c in part.comparisons]
    if comparisons:
        body += ["<h2>Headline numbers next to the papers'</h2>",
                 _html_table(("quantity", "ours", "paper", "where"),
                             [[c.quantity, c.ours, c.paper, c.source] for c in comparisons])]
    for part in parts:
        if not (part.figures or part.tables):
            continue
        body.append(f"<h2>{html.escape(part.title)}</h2>")
        body += [_image(p) for p in part.figures]
        for name, table in part.tables.items():
            cells = table.cells()
            more = f", first {HTML_ROWS} shown" if len(cells) > HTML_ROWS else ""
            body.append(f"<details open><summary>table <b>{html.escape(name)}</b> ({len(cells)} rows{more}; "
                        f"<code>tables/{html.escape(name)}.csv</code>)</summary>"
                        + _html_table(table.columns, cells[:HTML_ROWS]) + "</details>")
    if config is not None:
        body += ["<h2>The run's config</h2>",
                 f"<pre>{html.escape(config.to_json_best_effort(sort_keys=True, indent=2))}</pre>"]
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
