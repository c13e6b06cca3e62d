"""The README's main command, end to end: ``python -m analysis.diagnose`` on a fresh init and on an .npz."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

import weibull_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*flags):
    out = subprocess.run([sys.executable, "-m", "analysis.diagnose", "--config=configs/diagnose.py", *flags],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_diagnose_fresh_init_prints_the_table_and_writes_csv(tmp_path):
    stdout = _run("--config.preset=pythia-14m", f"--config.out_dir={tmp_path}")
    assert "layers_5.mlp.ffn_out.kernel" in stdout
    assert "attention architecture: MHA" in stdout and "T/τ = 1.430 (saturated)" in stdout
    assert "k0 = 1.2054, λ0/σ = 0.8875" in stdout
    with open(tmp_path / "matrices.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 26
    assert all(abs(float(r["k"]) - 1.2054) < 0.03 for r in rows)


def test_diagnose_reads_an_npz_of_named_arrays(tmp_path):
    rng = np.random.default_rng(0)
    weights = {"model.layers.0.self_attn.q_proj.weight": 0.02 * rng.standard_t(3, (256, 256)).astype(np.float32),
               "model.layers.0.mlp.down_proj.weight": rng.normal(0, 0.02, (256, 512)).astype(np.float32)}
    np.savez(tmp_path / "w.npz", **weights)
    stdout = _run(f"--config.params={tmp_path / 'w.npz'}", f"--config.out_dir={tmp_path}", "--config.step=-1")
    with open(tmp_path / "matrices.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    q = rows["model.layers.0.self_attn.q_proj.weight"]
    assert q["kind"] == "q" and q["cls"] == "selection"
    assert float(q["k"]) == pytest.approx(float(weibull_jax.fit_weibull(weights[q["name"]]).k), abs=1e-6)
    assert "nearest cohort entry" in stdout


def test_diagnose_bad_npz_fails_with_the_matrix_named(tmp_path):
    np.savez(tmp_path / "bad.npz", **{"model.layers.0.mlp.up_proj.weight": np.zeros((64, 64), np.float32)})
    out = subprocess.run([sys.executable, "-m", "analysis.diagnose", "--config=configs/diagnose.py",
                          f"--config.params={tmp_path / 'bad.npz'}"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    assert "model.layers.0.mlp.up_proj.weight" in out.stderr and "fewer than 100" in out.stderr
