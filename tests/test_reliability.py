"""One message per bad input, nothing overwritten, a locked run directory, killed appends and fixed table shapes
(docs/reliability.md lists every case tried and what it said)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from analysis import sections
from train import records
from weibull_jax import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _program(module, *flags):
    return subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def _one_line_failure(out, message):
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert message in out.stderr, out.stderr[-2000:]


def test_train_main_on_a_missing_corpus_says_so_in_one_line(tmp_path):
    out = _program("train.main", f"--workdir={tmp_path / 'run'}", "--config=configs/default.py",
                   "--config.data.corpus=/nonexistent")
    _one_line_failure(out, "train.main: corpus '/nonexistent' names no files")


def test_diagnose_bad_weight_files(tmp_path):
    nan = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    nan[3, 4] = np.nan
    np.savez(tmp_path / "nan.npz", **{"layers_0.mlp.ffn_in.kernel": nan})
    (tmp_path / "garbage.npz").write_bytes(b"not a zip archive at all" * 10)
    np.save(tmp_path / "single.npy", nan)
    np.savez(tmp_path / "empty.npz")
    for path, message in ((tmp_path / "nan.npz", "NaN"), (tmp_path / "garbage.npz", "is not a readable .npz"),
                          (tmp_path / "single.npy", "a single .npy array"), (tmp_path / "empty.npz", "holds no arrays"),
                          (tmp_path / "missing.npz", "no such file")):
        out = _program("analysis.diagnose", "--config=configs/diagnose.py", f"--config.params={path}")
        _one_line_failure(out, "analysis.diagnose: ")
        assert message in out.stderr, (path, out.stderr[-1000:])
    out = _program("analysis.diagnose", "--config=configs/diagnose.py", "--config.protocol=magic")
    _one_line_failure(out, "--config.protocol must be 'histogram' or 'exact'")


def test_analysis_main_bad_flags_and_damaged_run_files(tmp_path):
    out = _program("analysis.main", f"--run_dir={tmp_path}", "--recovery_spacings=a,b")
    _one_line_failure(out, "--recovery_spacings takes a comma list of integers")
    (tmp_path / "config.json").write_text("{not json")
    out = _program("analysis.main", f"--run_dir={tmp_path}")
    _one_line_failure(out, "is not the config of a training run")


def test_a_second_process_on_one_run_directory_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    lock = records.RunLock(str(tmp_path))
    with pytest.raises(ValueError, match=f"in use by a running training process \\(pid {os.getpid()}\\)"):
        records.RunLock(str(tmp_path))
    lock.release()
    records.RunLock(str(tmp_path)).release()
    # a holder killed with SIGKILL: the kernel drops its lock
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                               "from train import records; records.RunLock(sys.argv[2]); print('held', flush=True);"
                               "import time; time.sleep(60)", ROOT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match="in use"):
        records.RunLock(str(tmp_path))
    holder.kill()
    holder.wait()
    records.RunLock(str(tmp_path)).release()


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_and_a_damaged_one_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 5}) + "\n" + json.dumps({"step": 10}) + "\n" + '{"step": 15, "lo')
    assert [x["step"] for x in data.read_jsonl(str(path))] == [5, 10]
    path.write_text(json.dumps({"step": 5}) + "\n" + "{garbage\n" + json.dumps({"step": 15}) + "\n")
    with pytest.raises(ValueError, match="line 2: not a JSON line"):
        data.read_jsonl(str(path))


def test_table_columns_are_declared_not_read_off_the_data():
    """The cause of a fresh machine's failure: ρ columns per group followed the drift's numerical rank."""
    rows = [{"group": "block_0", **sections.padded("rho", [0.7, 0.2, 0.1], 5)},
            {"group": "trunk", **sections.padded("rho", [0.9, 0.1], 5)}]
    table = sections.table(rows)
    assert table.columns == ("group", "rho_1", "rho_2", "rho_3", "rho_4", "rho_5")
    assert np.isnan(table.cells()[1][3]) and table.cells()[0][3] == 0.1
    with pytest.raises(AssertionError, match="not among the columns"):
        sections.table([{"a": 1}, {"a": 2, "b": 3}])
