"""The series analysis program on a real (tiny) run, its chunked reads, and its messages on bad inputs."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from analysis import series
from analysis.report import HTML_ROWS
from weibull_jax import data, snapshots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_CORPUS = os.path.join(data.DEFAULT_CORPUS, "library", "a*.rst.txt")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """60 steps of a tiny Pythia, weights every 5 steps."""
    workdir = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    out = subprocess.run([sys.executable, "-m", "train.main", f"--config={ROOT}/configs/default.py",
                          f"--workdir={workdir}", f"--config.data.cache_dir={cache}",
                          f"--config.data.corpus={SMALL_CORPUS}", "--config.steps=60", "--config.log_every=10",
                          "--config.ckpt_every=30", "--config.snapshot_every=5", "--config.data.vocab_size=512",
                          "--config.model.vocab_size=512", "--config.model.d_model=64", "--config.model.d_ff=128",
                          "--config.model.n_layers=2", "--config.batch_size=8", "--config.data.seq_len=64"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return str(workdir)


def _analyse(*args):
    return subprocess.run([sys.executable, "-m", "analysis.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def report_dir(run_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("report")
    out = _analyse(f"--run_dir={run_dir}", f"--out={out_dir}", "--recovery_spacings=2,5,10,20", "--recovery_every=1",
                   "--closed_loop_spacings=1,5,10", "--table_steps=10,30,60", "--gradient_batches=4",
                   "--gradient_every=4")
    assert out.returncode == 0, out.stderr[-3000:]
    return out_dir / os.path.basename(run_dir)


def test_report_of_a_run(run_dir, report_dir):
    with open(report_dir / "report.json") as f:
        report = json.load(f)
    assert report["knots"] == 13 and report["matrices"] == 10
    assert sorted(os.listdir(report_dir / "figures")) == sorted(
        ["closed_loop.png", "force_shares.png", "k_trajectory.png", "lambda_by_kind.png", "lambda_heatmap.png",
         "recovery_scatter.png", "recovery_points.png", "sd_variation.png", "backbone_decomposition.png", "update_alignment.png",
         "anisotropy.png"])
    # the page: every figure embedded, every table present, the papers' numbers, the config
    page = (report_dir / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(os.listdir(report_dir / "figures"))
    for table in os.listdir(report_dir / "tables"):
        assert f"tables/{table}" in page, table
    assert "Headline numbers next to the papers" in page and "0.92–0.94" in page and "&quot;optimizer&quot;" in page
    assert not [n for n in os.listdir(report_dir) if n.startswith(".")]  # the staging folder is gone
    # the snapshot norms agree with the norms the training loop logged at the same steps
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        logged = {m["step"]: m["norms"]["class"]["transmission"]["sq_norm"] for m in map(json.loads, f)}
    rows = [r for r in series.matrix_rows(series.measure(snapshots.Series(os.path.join(run_dir, "snapshots"))))
            if r["cls"] == "transmission"]
    for step, value in logged.items():
        assert abs(sum(r["sq_norm"] for r in rows if r["step"] == step) - value) < 1e-5 * value
    # with knots one step apart the recovery would be exact; at Δ = 5 the spline is within 2 %, two-point not
    recovery = {(r["spacing"], r["method"]): r["rate"] for r in report["recovery"]}
    assert abs(recovery[(5, "spline")] - 1) < 0.02 and recovery[(20, "two_point")] < 0.8
    # the authors' estimand, the median over steps of estimate/true: every step but the first (η_0 = 0 in the
    # warmup: no ratio), the spline again within 2 %, the public code's two-point form far off at Δ = 20
    pointwise = {(r["spacing"], r["method"]): r for r in report["recovery"]}
    assert {r["points"] for r in report["recovery"]} == {59}
    assert {r["spacing"] for r in report["recovery"]} == {5, 10, 20}  # Δ = 2 is finer than the snapshots (5)
    assert abs(pointwise[(5, "spline")]["median_pointwise_rate"] - 1) < 0.02
    assert pointwise[(20, "two_point_mean_lr")]["median_pointwise_rate"] < 0.5
    # the public code's truth at t, the alignment term at the weights after the step t−1 → t, is that step's
    # alignment + cross + 2 injection (read here from the forces files themselves); it is the larger by the
    # injection, so the spline's median ratio against it is the smaller
    files = sorted(os.listdir(os.path.join(run_dir, "forces")))
    recorded = [np.load(os.path.join(run_dir, "forces", n)) for n in files]
    names = list(recorded[0]["names"])
    transmission = [i for i, n in enumerate(names) if n.endswith(("attention.o.kernel", "ffn_in.kernel",
                                                                  "ffn_out.kernel"))]
    terms = np.concatenate([f["forces"] for f in recorded]).astype(np.float64)[:, transmission].sum(1)  # i → i + 1
    post = terms[:, 0] + terms[:, 3] + 2 * terms[:, 1]
    with open(report_dir / "tables" / "recovery_points.csv") as f:
        header = f.readline().strip().split(",")
        points = [dict(zip(header, line.strip().split(","))) for line in f]
    assert len(transmission) == 6 and len(points) == 9 * 59
    for p in points:
        assert abs(float(p["true_post_update"]) - post[int(p["step"]) - 1]) <= 1e-12 * np.abs(post).max(), p
    spline = pointwise[(5, "spline")]
    assert spline["median_pointwise_rate_post_update"] < spline["median_pointwise_rate"]
    # integration at Δ = 1 adds only the dropped higher-order terms: the logRMSE is the bridge error alone;
    # in RMS units every class's forces integrate to its snapshots' norms
    loop = report["closed_loop"][0]
    assert loop["spacing"] == 1 and loop["integration_error"] < 1e-4
    rms_loops = {r["class"]: r["rms_log_rmse"] for r in report["rms_closed_loop"] if r["spacing"] == 1}
    assert set(rms_loops) == {"transmission", "selection", "other"} and max(rms_loops.values()) < 1e-4
    assert abs(loop["log_rmse"] - loop["bridge_error"]) < 1e-4


def test_runs_compared_from_their_reports(run_dir, report_dir, tmp_path):
    """``--compare_only``: the page of runs analysed one by one, read from their reports: the config fields they
    differ in (here only the seed: a field one config lacks, from before it existed, reads as its default),
    each run's headline numbers as its own report has them, the figures."""
    out, dirs = tmp_path / "out", []
    for seed in (7, 8):
        copy = tmp_path / f"run_seed{seed}"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("snapshots", "checkpoints"))
        config = json.loads((copy / "config.json").read_text())
        if seed == 8:
            assert config["data"].pop("shuffle_tokens") is False
        (copy / "config.json").write_text(json.dumps({**config, "seed": seed}))
        shutil.copytree(report_dir, out / copy.name)
        dirs.append(str(copy))
    result = _analyse(f"--run_dir={','.join(dirs)}", f"--out={out}", "--compare_only")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "tables" / "runs.csv") as f:
        header = f.readline().strip().split(",")
        rows = [dict(zip(header, line.strip().split(","))) for line in f]
    report = json.loads((report_dir / "report.json").read_text())
    assert header[:3] == ["run", "seed", "lambda_peak"] and [r["seed"] for r in rows] == ["7", "8"]
    assert float(rows[1]["lambda_peak"]) == report["lambda_transmission"]["peak_scale"]
    assert float(rows[1]["k_lock"]) == report["k_lock"]["median_over_blocks_and_knots"]
    assert {"alignment_share_runs.png", "lambda_runs.png", "index.html"} <= set(os.listdir(out))
    none = tmp_path / "none"  # no report of either run there: rows of what the run directories hold, a warning
    result = _analyse(f"--run_dir={dirs[0]},{run_dir}", f"--out={none}", "--compare_only")
    assert result.returncode == 0 and "analyse the run first" in result.stderr
    with open(none / "tables" / "runs.csv") as f:
        header = f.readline().strip().split(",")
        rows = [dict(zip(header, line.strip().split(","))) for line in f]
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert rows[1]["lambda_peak"] == "nan" and float(rows[1]["final_loss"]) == json.load(f)["loss"]


def test_the_report_page_opens_in_a_headless_chromium(report_dir):
    """Debian's ``chromium`` (driven through ``chromium-driver``) opens ``index.html`` from the disk: every
    figure decodes to an image of its PNG's size, every table is there with its rows, the page fetched nothing
    over a network, and its screenshot is not blank."""
    from matplotlib import image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    assert driver_path, "no chromedriver: install Debian's chromium and chromium-driver (the README's first command)"
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1400,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get((report_dir / "index.html").as_uri())
        assert browser.execute_script("return document.readyState") == "complete"
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        tables = browser.execute_script(
            "return Array.from(document.querySelectorAll('details table')).map(t => t.rows.length)")
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        viewport = browser.execute_script("return [window.innerHeight, window.innerWidth]")
        shot = browser.get_screenshot_as_png()
    finally:
        browser.quit()
    figures = sorted(os.listdir(report_dir / "figures"))
    sizes = [image.imread(report_dir / "figures" / name).shape[1::-1] for name in figures]
    assert len(images) == len(figures)
    assert sorted(tuple(i[1:]) for i in images if i[0]) == sorted(sizes)  # every one decoded, at its size
    csv_rows = [min(len((report_dir / "tables" / t).read_text().splitlines()) - 1, HTML_ROWS)
                for t in sorted(os.listdir(report_dir / "tables"))]
    assert sorted(r - 1 for r in tables) == sorted(csv_rows)  # a header row and the CSV's rows (the first 200)
    assert not [name for name in fetched if not name.startswith(("data:", "file:"))], fetched
    pixels = image.imread(io.BytesIO(shot))
    assert list(pixels.shape[:2]) == viewport
    assert pixels[..., :3].std() > 0.05  # text and a figure, not an empty page


def test_chunked_reads_give_the_same_fits_and_grams(run_dir):
    path = os.path.join(run_dir, "snapshots")
    whole = series.measure(snapshots.Series(path))
    chunked = series.measure(snapshots.Series(path), max_bytes=13 * 4 * 1000)  # ~1000 elements per read
    np.testing.assert_array_equal(whole.k, chunked.k)
    np.testing.assert_array_equal(whole.scale, chunked.scale)
    np.testing.assert_allclose(whole.sq_norm, chunked.sq_norm, rtol=1e-5)


@pytest.mark.eight_cpu_devices
@pytest.mark.parametrize("max_bytes", [12 << 30, 13 * 4 * 1000])  # whole slabs; ~1000 elements per read and device
def test_slabs_split_over_eight_devices_give_the_fits_to_the_bit_and_the_sums_to_float32_rounding(run_dir, max_bytes):
    """``measure(devices=8)`` against one device. Both sum the same n products in different orders: each
    sum is within λ√m·u·Σ|x_i y_i| of the exact one for m terms in sequence (Higham & Mary's probabilistic
    bound, λ = 6), here m = n on one device and n/8 then 8 on eight, and Σ|x_i y_i| ≤ ‖x‖‖y‖ bounds the
    Gram's entries by its diagonal."""
    path = os.path.join(run_dir, "snapshots")
    one = series.measure(snapshots.Series(path), n_heads=4, max_bytes=max_bytes)
    eight = series.measure(snapshots.Series(path), n_heads=4, max_bytes=max_bytes, devices=8)
    np.testing.assert_array_equal(one.k, eight.k)
    np.testing.assert_array_equal(one.scale, eight.scale)
    assert sorted(one.sd) == sorted(eight.sd) and one.sd
    for name in one.sd:  # computed from the whole matrix on one device: the same program on the same values
        np.testing.assert_array_equal(one.sd[name], eight.sd[name])
    bound = 6 * (np.sqrt(one.sizes) + np.sqrt(one.sizes / 8) + np.sqrt(8)) * np.finfo(np.float32).eps / 2
    assert np.all(np.abs(one.sq_norm - eight.sq_norm) <= bound * one.sq_norm)
    for m, (a, b) in enumerate(zip(one.grams, eight.grams)):
        for x, y in zip(a, b):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            ref = np.sqrt(np.abs(np.asarray(a.ref_sq_norm, np.float64)))
            diag = np.sqrt(np.abs(np.diagonal(np.asarray(a.drift, np.float64))))
            scale = {0: ref ** 2, 1: ref * diag, 2: np.outer(diag, diag)}[x.ndim]
            assert np.all(np.abs(x - y) <= bound[m] * scale + 1e-30)
    with pytest.raises(ValueError, match="--devices=9: this host has 8"):
        series.measure(snapshots.Series(path), devices=9)


def test_bad_run_directories_get_one_clear_message(run_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _analyse(f"--run_dir={empty}")
    assert out.returncode != 0 and "not a run directory: no config.json" in out.stderr
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    os.remove(partial / "forces" / "00000030.npz")
    out = _analyse(f"--run_dir={partial}")
    assert "does not cover steps 1" in out.stderr
    mismatched = tmp_path / "mismatched"
    shutil.copytree(run_dir, mismatched)
    np.save(mismatched / "snapshots" / "00000010.npy", np.zeros(7, np.float32))
    out = _analyse(f"--run_dir={mismatched}")
    assert "mismatched checkpoint shapes" in out.stderr
    no_snapshots = tmp_path / "no_snapshots"
    shutil.copytree(run_dir, no_snapshots)
    shutil.rmtree(no_snapshots / "snapshots")
    out = _analyse(f"--run_dir={no_snapshots}")
    assert "is not a snapshot series" in out.stderr


def test_hf_series_is_analysed_in_place(tmp_path):
    """A step{N} series of HuggingFace checkpoints (float16, as Pythia's): the weights-only report, with the
    schedule from a config, read where it lies (no converted copy is written)."""
    import jax

    from weibull_jax import convert, models

    config = models.preset("pythia-14m", d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=512)
    params = models.init_params(config, jax.random.key(0))
    for step in (0, 10, 20, 30):
        grown = jax.tree.map(lambda w: w * (1 + step / 100), params)
        convert.save_hf_checkpoint(str(tmp_path / "hf" / f"step{step}"), grown, config, dtype="float16")
    out = _analyse(f"--hf_series={tmp_path / 'hf'}", f"--out={tmp_path / 'report'}",
                   f"--schedule_config={ROOT}/configs/default.py", "--recovery_spacings=10")
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "report" / "report.json") as f:
        report = json.load(f)
    assert report["knots"] == 4 and report["last_step"] == 30
    assert sorted(os.listdir(tmp_path / "report")) == ["figures", "index.html", "report.json", "tables"]
    # every weight scaled by 1.3: the Transmission λ grows by exactly that factor
    lam = report["lambda_transmission"]
    assert abs(lam["final_scale"] / lam["scale_init"] - 1.3) < 1e-3
    assert [r["method"] for r in report["recovery"]] == ["spline", "two_point", "two_point_mean_lr"]


def test_squared_norms_survive_a_matrix_that_decays_ten_thousandfold(tmp_path):
    """‖w_t‖² from the rows themselves: the Gram's n_0 + 2c_t + H_tt cancels to float32 noise (or below 0)
    once the weights shrink by 1e4 (SGD with L2 decay, configs/backbone.py:sgd_momentum)."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(32, 48)).astype(np.float32)
    params = {"layers_0": {"mlp": {"ffn_in": {"kernel": w0}}}}
    snapshots.write_layout(str(tmp_path), snapshots.layout_of(params))
    scales = np.logspace(0, -5, 6)
    for i, scale in enumerate(scales):
        snapshots.write(str(tmp_path), 10 * i, (w0 * scale + 1e-7 * rng.normal(size=w0.shape)).ravel())
    data = series.measure(snapshots.Series(str(tmp_path)))
    rows = snapshots.Series(str(tmp_path)).slab("layers_0.mlp.ffn_in.kernel").astype(np.float64)
    np.testing.assert_allclose(data.sq_norm[:, 0], np.sum(rows ** 2, 1), rtol=1e-5)
    assert np.all(data.sq_norm > 0)


def test_the_floor_coefficient_is_given_for_adamw_only():
    """λ_final/√(η_final/λ_wd) (forces paper §6.2) is the equilibrium of AdamW's unit-RMS update: 0.055/√(1e-4/0.01)
    = 0.55 here; Muon's and the SGD family's updates have other sizes, so their λ phases carry no coefficient."""
    steps, scale = np.arange(5) * 100, np.asarray([0.02, 0.05, 0.07, 0.06, 0.055])
    adamw = series.lambda_phases(steps, scale, 1e-4, 0.01)
    assert adamw["floor_coefficient"] == pytest.approx(0.55, rel=1e-12)
    assert adamw["peak_step"] == 200 and adamw["rise"] == pytest.approx(3.5, rel=1e-12)
    for name in ("muon", "sgd_momentum", "sgdw_nesterov"):
        assert "floor_coefficient" not in series.lambda_phases(steps, scale, 1e-4, 0.01, name)


def test_spectra_are_taken_a_block_at_a_time_within_the_byte_budget():
    """The reads whose trunk matrices share a block form one group (reads without trunk matrices between
    them do not split it); a group closes at a new block or where its float32 matrices would pass the budget."""
    q, mlp = {"x.q": (4, 8, 8), "x.k": (4, 8, 8)}, {"x": (4, 8, 32)}  # 2048 and 4096 bytes
    names = ["gpt_neox.layers.0.attention.query_key_value.weight", "gpt_neox.layers.0.input_layernorm.weight",
             "gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "gpt_neox.layers.1.attention.dense.weight",
             "gpt_neox.layers.1.mlp.dense_h_to_4h.weight", "gpt_neox.layers.1.mlp.dense_4h_to_h.weight"]
    shapes = [q, {}, mlp, q, mlp, mlp]
    assert series._spectra_groups(names, shapes, 1 << 20) == [[0, 2], [3, 4, 5]]
    assert series._spectra_groups(names, shapes, 2048 + 4096) == [[0, 2], [3, 4], [5]]
    assert series._spectra_groups(names, shapes, 1000) == [[0], [2], [3], [4], [5]]
