"""``python -m train.main``: the default run, resume after a hard kill, SIGTERM, and one message per bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import default
from train import train
from weibull_jax import data, forces

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_CORPUS = os.path.join(data.DEFAULT_CORPUS, "library", "a*.rst.txt")  # 29 files, 0.5 MB


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _command(workdir, cache, *flags):
    return [sys.executable, "-m", "train.main", f"--config={ROOT}/configs/default.py", f"--workdir={workdir}",
            f"--config.data.cache_dir={cache}", *flags]


def _small(workdir, cache, steps=40):
    return _command(workdir, cache, f"--config.data.corpus={SMALL_CORPUS}", f"--config.steps={steps}",
                    "--config.log_every=5", "--config.ckpt_every=10", "--config.data.vocab_size=512",
                    "--config.model.vocab_size=512", "--config.model.d_model=64", "--config.model.d_ff=128",
                    "--config.model.n_layers=2", "--config.batch_size=8", "--config.data.seq_len=64")


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_default_config_runs_50_steps_and_its_budget_closes(tmp_path, cache):
    out = subprocess.run(_command(tmp_path, cache, "--config.steps=50"), cwd=ROOT, capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = _metrics(tmp_path)
    assert [m["step"] for m in lines] == [10, 20, 30, 40, 50]
    assert lines[-1]["loss"] < lines[0]["loss"] - 0.5
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["50"]
    with np.load(tmp_path / "forces" / "00000050.npz") as f:
        assert f["forces"].shape == (50, 18, 5) and list(f["steps"]) == list(range(1, 51))
        budget, names = f["forces"].astype(np.float64), list(f["names"])
    # the recorded budget of steps 41–50 adds up to the change of ‖w‖² measured from the weights themselves
    for cls in ("transmission", "selection"):
        rows = [i for i, n in enumerate(names) if forces.group_key(n, "class") == cls]
        recorded = budget[40:, rows, :].sum()
        measured = lines[4]["norms"]["class"][cls]["sq_norm"] - lines[3]["norms"]["class"][cls]["sq_norm"]
        assert abs(recorded - measured) <= 1e-4 * lines[4]["norms"]["class"][cls]["sq_norm"], cls
    assert "forces transmission" in out.stdout and "Weibull transmission" in out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0.5 < summary["force_shares"]["all"]["alignment"] < 1.0


CAMPAIGN_STEPS = 60
CAMPAIGN_EVERY = {"snapshot": 5, "spectra": 10, "forces": 10, "checkpoint": 10}  # forces files: at checkpoints
CAMPAIGN_FLAGS = (f"--config.snapshot_every={CAMPAIGN_EVERY['snapshot']}",
                  f"--config.spectra_every={CAMPAIGN_EVERY['spectra']}",
                  f"--config.ckpt_every={CAMPAIGN_EVERY['checkpoint']}")
KILL_POINTS = ("snapshot", "spectra", "forces", "checkpoint", "first step", "last step", "a random step")


def _moments(kind, resumed):
    """How many moments of ``kind`` a process that resumes from checkpoint ``resumed`` meets (step 0's
    snapshot and spectra in a fresh run besides the cadence)."""
    left = CAMPAIGN_STEPS - resumed
    if kind == "step":
        return left
    return left // CAMPAIGN_EVERY[kind] + (resumed == 0 and kind in ("snapshot", "spectra"))


def _budget(metrics):
    """What two runs must share bit for bit: each metrics line's step, loss, gradient norm, forces and norms."""
    return [(m["step"], m["loss"], m["grad_norm"], m["forces"], m["norms"]) for m in metrics]


def _latest_checkpoint(workdir):
    folder = workdir / "checkpoints"
    return max((int(n) for n in os.listdir(folder) if n.isdigit()), default=0) if folder.exists() else 0


def test_kill_campaign_every_restart_continues_bit_identically(tmp_path, cache):
    """24 SIGKILLs in one run directory, at moments drawn at random (seeded) from every kind
    (``tests/kill_point.py``): inside a snapshot, spectra, forces or summary write, inside orbax's checkpoint
    write, after the first, the last or a random step. After each, the same command continues; the finished
    run is bit-identical to one never killed (metrics, forces, snapshots, spectra, summary) and the analysis
    reads it."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    ran = subprocess.run(_small(straight, cache, CAMPAIGN_STEPS) + list(CAMPAIGN_FLAGS), cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": ROOT}
    command = _small("killed", cache, CAMPAIGN_STEPS) + list(CAMPAIGN_FLAGS)  # relative to its working directory
    rng = np.random.default_rng(2026)
    points = [KILL_POINTS[i % len(KILL_POINTS)] for i in range(23)]
    rng.shuffle(points)
    for point in points + ["summary"]:  # a summary write is the run's last moment: the last kill
        resumed = _latest_checkpoint(killed)
        kind, nth = {"first step": ("step", 1), "last step": ("step", CAMPAIGN_STEPS - resumed),
                     "a random step": ("step", int(rng.integers(1, CAMPAIGN_STEPS - resumed + 1))),
                     "summary": ("summary", 1)}.get(point) or (point, int(rng.integers(1, _moments(point, resumed) + 1)))
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "kill_point.py"), kind, str(nth), "--",
                               *command[3:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == -signal.SIGKILL, (point, nth, resumed, proc.stderr[-3000:])
        print(f"killed at {point} ({kind} #{nth} of a process resumed from step {resumed})")
    assert _latest_checkpoint(killed) == CAMPAIGN_STEPS
    out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = _metrics(straight), _metrics(killed)
    assert [m["step"] for m in b] == [m["step"] for m in a] == list(range(5, CAMPAIGN_STEPS + 1, 5))
    assert _budget(b) == _budget(a)
    for folder in ("forces", "snapshots", "spectra"):
        names = sorted(os.listdir(straight / folder))
        assert sorted(os.listdir(killed / folder)) == names, folder
        for name in names:
            if name.endswith(".npz"):  # a zip archive stamps its members with the time of writing
                with np.load(straight / folder / name) as f, np.load(killed / folder / name) as g:
                    assert sorted(f) == sorted(g) and all(np.array_equal(f[k], g[k]) for k in f), name
            else:
                assert (straight / folder / name).read_bytes() == (killed / folder / name).read_bytes(), name
    summaries = [json.loads((run / "summary.json").read_text()) for run in (straight, killed)]
    assert [(s["step"], s["loss"], s["weibull"]) for s in summaries] == [(CAMPAIGN_STEPS, a[-1]["loss"],
                                                                         summaries[0]["weibull"])] * 2
    report = subprocess.run([sys.executable, "-m", "analysis.main", f"--run_dir={killed}", "--gradient_batches=0",
                             "--recovery_spacings=10,20", "--closed_loop_spacings=1,10"], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (killed / "report" / "index.html").is_file()


def test_compiled_programs_are_loaded_by_the_next_process_and_an_entry_cut_short_is_compiled_again(tmp_path, cache):
    """``train.main`` and ``analysis.main`` keep their compiled programs in ``~/.cache/weibull_jax/xla``
    (``--compilation_cache``; empty: none kept). The same run again misses none of them (JAX's own account of
    its misses) and its metrics are the first's, bit for bit. Every entry cut to half its length, as a kill
    inside JAX's write of one leaves it: the next run compiles again, to the same metrics, as does a run that
    keeps nothing."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_EXPLAIN_CACHE_MISSES"] = "1"  # each miss of the persistent cache logged as a warning

    def train_in(name, home, *flags):
        out = subprocess.run(_small(tmp_path / name, cache) + list(flags), cwd=ROOT,
                             env={**env, "HOME": str(home)}, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        return _budget(_metrics(tmp_path / name)), out.stderr.count("PERSISTENT COMPILATION CACHE MISS")

    home = tmp_path / "home"
    kept = home / ".cache" / "weibull_jax" / "xla"
    first, compiled = train_in("first", home)
    entries = sorted(kept.iterdir())
    assert compiled > 0 and entries and all(e.stat().st_size > 0 for e in entries)
    assert train_in("loaded", home) == (first, 0)
    report = subprocess.run([sys.executable, "-m", "analysis.main", f"--run_dir={tmp_path / 'first'}",
                             "--gradient_batches=0", "--recovery_spacings=10", "--closed_loop_spacings=1,10",
                             "--table_steps=10,40"], cwd=ROOT, env={**env, "HOME": str(home)},
                            capture_output=True, text=True, timeout=900)
    assert report.returncode == 0, report.stderr[-3000:]
    assert len(list(kept.iterdir())) > len(entries)  # the analysis' own programs
    for e in kept.iterdir():
        os.truncate(e, e.stat().st_size // 2)
    assert train_in("cut_short", home)[0] == first
    nothing = tmp_path / "nothing"
    assert train_in("off", nothing, "--compilation_cache=")[0] == first
    assert not (nothing / ".cache").exists()


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, cache):
    log = tmp_path / "stderr.log"  # a file, not a pipe: a pipe nobody reads while polling fills up and blocks
    with open(log, "w") as stderr:
        proc = subprocess.Popen(_small(tmp_path / "run", cache, steps=100000), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=stderr)
        try:
            deadline = time.time() + 900
            while not (tmp_path / "run" / "checkpoints" / "10").is_dir():  # orbax's commit: the rename to the step
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
        finally:  # a failed wait leaves no run of 100,000 steps behind
            if proc.poll() is None:
                proc.kill()
    err = log.read_text()
    assert proc.returncode == 0, err[-3000:]
    saved = max(int(s) for s in os.listdir(tmp_path / "run" / "checkpoints"))
    assert f"SIGTERM: saved the checkpoint at step {saved}" in err
    assert _metrics(tmp_path / "run")[-1]["step"] == saved


def _config(tmp_path, cache, **changes):
    config = default.get_config()
    config.data.corpus = SMALL_CORPUS
    config.data.cache_dir = cache
    config.data.vocab_size = config.model.vocab_size = 512
    config.update(steps=20, log_every=5, ckpt_every=10)
    config.optimizer.warmup_steps = 5
    for key, value in changes.items():
        node = config
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return config


@pytest.mark.parametrize("changes,message", [
    ({"steps": 0}, "config.steps must be positive"),
    ({"ckpt_every": 7}, "must be a multiple of config.log_every"),
    ({"optimizer.weight_decay": -0.1}, "weight_decay must be >= 0"),
    ({"data.seq_len": 4096}, "exceeds config.model.max_seq_len"),
    ({"optimizer.name": "adagrad"}, "unknown optimizer 'adagrad'"),
    ({"optimizer.warmup_steps": 20}, r"warmup_steps \(20\) must lie in \[0, config.steps = 20\)"),
    ({"model.vocab_size": 100}, "the tokenizer has 512 tokens but the model's vocabulary is 100"),
    ({"data.corpus": "/nonexistent/*.txt"}, "names no files"),
    ({"data.tokenizer": "/nonexistent/tokenizer.json"}, "does not exist"),
    ({"init_from": "/nonexistent"}, "no config.json"),
    ({"init_from": "/nonexistent@100"}, "is not a snapshot series"),
    ({"spectra_every": -1}, "spectra_every must be >= 0"),
    ({"probe.enabled": True, "probe.eval_every": 7}, r"eval_every \(7\) must be a positive multiple"),
    ({"probe.enabled": True, "probe.rate": 1.5}, r"probe.rate must lie in \[0, 1\]"),
    ({"probe.enabled": True}, "the tokenizer has 1024 tokens but the model's vocabulary is 512"),
    ({"optimizer.b2": 1.0}, r"optimizer.b2 must lie in \[0, 1\)"),
    ({"optimizer.eps": 0.0}, "eps must be positive"),
    ({"model.n_heads": 0}, "n_heads must be a positive integer"),
    ({"model.dtype": "float8"}, "model dtype 'float8'"),
    ({"keep_checkpoints": -1}, "keep_checkpoints and config.seed must be >= 0"),
    ({"data.vocab_size": 100}, "must be at least 258"),
    ({"probe.enabled": True, "probe.gap": (30, 5)}, "must be increasing positive ranges"),
])
def test_bad_inputs_give_one_clear_message(tmp_path, cache, changes, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train.train_and_evaluate(_config(tmp_path, cache, **changes), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_empty_corpus(tmp_path, cache):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="holds no tokens"):
        train.train_and_evaluate(_config(tmp_path, cache, **{"data.corpus": str(tmp_path / "empty.txt"),
                                                             "data.tokenizer": _tokenizer(tmp_path, cache)}),
                                 str(tmp_path / "run"))


def _tokenizer(tmp_path, cache):
    tok = data.load_tokenizer("", data.corpus_files(SMALL_CORPUS), 512, cache)
    tok.save(str(tmp_path / "tokenizer.json"))
    return str(tmp_path / "tokenizer.json")


def test_non_finite_loss_stops_with_step_matrix_and_checkpoint(tmp_path, cache):
    config = _config(tmp_path, cache, **{"optimizer.name": "sgd", "optimizer.lr": 1e6, "optimizer.warmup_steps": 0,
                                         "optimizer.clip_norm": 0.0})
    with pytest.raises(train.NonFiniteError, match=r"non-finite values at step \d+ .*matrix \S+.*checkpoint: none"):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_a_corrupt_checkpoint_or_another_config_overwrites_nothing(tmp_path, cache):
    run = str(tmp_path / "run")
    train.train_and_evaluate(_config(tmp_path, cache, steps=10), run)
    with pytest.raises(ValueError, match="holds a run with a different config"):
        train.train_and_evaluate(_config(tmp_path, cache, steps=10, seed=5), run)
    for root, _, files in os.walk(os.path.join(run, "checkpoints", "10", "state")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(ValueError, match="checkpoint at step 10 .* cannot be read"):
        train.train_and_evaluate(_config(tmp_path, cache, steps=20), run)
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["10"]


def test_a_run_made_before_a_model_field_existed_resumes_and_another_model_is_refused(tmp_path):
    """A run directory whose ``config.model`` lacks a field added since (here ``embedding_gradient``) is the
    same model when that field takes its default; a changed field is still refused."""
    import json

    import ml_collections

    from configs import default
    from train import records

    config = ml_collections.ConfigDict({"steps": 10, "model": default.model("pythia-14m")})
    older = config.to_dict()
    del older["model"]["embedding_gradient"]
    (tmp_path / "config.json").write_text(json.dumps(older))
    records.RunRecords(str(tmp_path), config, ["w"])
    assert json.loads((tmp_path / "config.json").read_text())["model"]["embedding_gradient"] == "scatter"
    for change in ({"embedding_gradient": "sorted"}, {"d_model": 256}):
        other = ml_collections.ConfigDict({"steps": 10, "model": default.model("pythia-14m", **change)})
        with pytest.raises(ValueError, match=r"different config \(model differ\)"):
            records.RunRecords(str(tmp_path), other, ["w"])


def test_a_restart_drops_forces_beyond_the_checkpoint_and_half_written_files(tmp_path):
    """SIGKILL can land while ``forces/{step}.npz.tmp.npz`` is being written (seen in CI); the restart drops it."""
    import ml_collections

    from train import records

    run = records.RunRecords(str(tmp_path), ml_collections.ConfigDict({"steps": 40}), ["w"])
    for name in ("00000010.npz", "00000020.npz", "00000030.npz.tmp.npz", "00000040.npz"):
        (tmp_path / "forces" / name).write_bytes(b"")
    run._truncate(20)
    assert sorted(os.listdir(tmp_path / "forces")) == ["00000010.npz", "00000020.npz"]


def test_a_full_disk_stops_with_one_line_and_the_run_resumes_once_space_is_back(tmp_path, cache):
    """A run directory on a small tmpfs: filled up between two legs of a run, the second leg stops at its first
    write with one line naming the last complete checkpoint; with the space back, the same command resumes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        workdir = disk / "run"

        def leg(steps):  # the same run, 20 then 40 steps (the config's steps may change on a resume)
            return _small(workdir, cache, steps=steps) + ["--config.optimizer.warmup_steps=5"]

        first = subprocess.run(leg(20), cwd=ROOT, capture_output=True, text=True,
                               timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        filler = disk / "filler"
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with open(filler, "wb") as f:
            f.write(b"\0" * (free - 64 * 1024))
        full = subprocess.run(leg(40), cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert full.returncode != 0 and "Traceback" not in full.stderr, full.stderr[-3000:]
        assert "train.main: writing the run directory failed" in full.stderr
        assert "the last complete checkpoint is step 20" in full.stderr
        os.remove(filler)
        again = subprocess.run(leg(40), cwd=ROOT, capture_output=True, text=True,
                               timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert [m["step"] for m in _metrics(workdir)] == list(range(5, 41, 5))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
