"""The run directory: the config, metrics (JSONL + TensorBoard), per-matrix forces, and the final summary.

``metrics.jsonl`` holds one line per ``log_every`` steps: loss and gradient norm averaged over the interval,
the last LR, tokens/s, and the forces (mean per step over the interval) and ‖w‖²/RMS (at the log step) per
functional class, kind and block. ``forces/{step:08d}.npz`` holds, for the steps since the previous
checkpoint, ``steps`` (n,), ``lr`` (n,), ``names`` (m,) and ``forces`` (n, m, 5: alignment, injection,
decay, cross, wd2), the budget of every matrix at every step. A restarted run drops what lies beyond its
checkpoint, so the files read as if the run had never stopped.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import re
import time

import numpy as np
from absl import logging

import weibull_jax
from weibull_jax import data, forces, models, taxonomy, tree

GROUPINGS = ("class", "kind", "block")
FORCES_FILE = re.compile(r"\d{8}\.npz")
TERMS = forces.Forces._fields


def _grouped(values: np.ndarray, names: list[str], by: str) -> dict[str, np.ndarray]:
    """Sums of ``values`` rows (one per matrix) within the groups of ``by``."""
    out: dict[str, np.ndarray] = {}
    for name, v in zip(names, values):
        key = forces.group_key(name, by)
        out[key] = out.get(key, 0.0) + v
    return out


class RunLock:
    """An exclusive ``flock`` on ``{workdir}/.lock``: a second process on the same run directory is refused.
    The kernel drops the lock when its holder exits, however it exits (a SIGKILL leaves no stale lock)."""

    def __init__(self, workdir: str):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, ".lock")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise ValueError(f"{workdir} is in use by a running training process (pid {holder}): wait for it to "
                             "finish, stop it, or give another --workdir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _same_entry(key: str, saved, ours) -> bool:
    """Whether a config entry is the saved run's: equal, or for ``model`` the same ModelConfig once the fields a
    later version added take their defaults (a run made before them resumes)."""
    if saved == ours:
        return True
    if key != "model" or not isinstance(saved, dict) or not isinstance(ours, dict):
        return False
    try:
        return models.config_from_fields(saved) == models.config_from_fields(ours)
    except (TypeError, ValueError):  # a field this version does not know, or one it needs missing
        return False


class RunRecords:
    def __init__(self, workdir: str, config, names: list[str]):
        """Writes ``config.json``, or refuses (overwriting nothing) if ``workdir`` holds another run's config."""
        self.workdir, self.names = workdir, names
        config_path = os.path.join(workdir, "config.json")
        config_json = config.to_json_best_effort(sort_keys=True, indent=2)
        if os.path.isfile(config_path):
            with open(config_path) as f:
                saved = json.load(f)
            ours = json.loads(config_json)
            changed = sorted(k for k in set(saved) | set(ours)  # a run may go on longer, or on other devices
                           if k not in ("steps", "mesh") and not _same_entry(k, saved.get(k), ours.get(k)))
            if changed:
                raise ValueError(f"{workdir} holds a run with a different config ({', '.join(changed)} differ); "
                                 "give a new --workdir (nothing was overwritten)")
        os.makedirs(os.path.join(workdir, "forces"), exist_ok=True)
        write_text(config_path, config_json)
        self.metrics_path = os.path.join(workdir, "metrics.jsonl")
        self._steps: list[np.ndarray] = []
        self._lr: list[np.ndarray] = []
        self._forces: list[np.ndarray] = []
        self._tensorboard = None
        self.last: dict = {}

    def start(self, resume_step: int) -> None:
        """Drops what was written after the checkpoint the run resumes from; opens TensorBoard."""
        from tensorboardX import SummaryWriter

        self._truncate(resume_step)
        self._tensorboard = SummaryWriter(os.path.join(self.workdir, "tensorboard"), purge_step=resume_step + 1)
        self._start = time.perf_counter()

    def _truncate(self, resume_step: int) -> None:
        if os.path.isfile(self.metrics_path):
            kept = [line for line in data.read_jsonl(self.metrics_path) if line["step"] <= resume_step]
            write_text(self.metrics_path, "".join(json.dumps(line) + "\n" for line in kept))
            self.last = kept[-1] if kept else {}  # a finished run restarted: its summary has its last line
        for path in glob.glob(os.path.join(self.workdir, "forces", "*.npz")):
            name = os.path.basename(path)  # beyond the checkpoint, or half-written when the run was killed
            if not FORCES_FILE.fullmatch(name) or int(name[:-4]) > resume_step:
                os.remove(path)

    def log(self, window: dict[str, np.ndarray], sq_norms: np.ndarray, sizes: np.ndarray, seconds_per_step: float,
            tokens_per_step: int, total_steps: int, evals: dict | None = None) -> None:
        """One metrics line: interval means of the scalar metrics (loss and, with the probe, lm_loss and
        probe_loss), the last LR, ``evals`` (p_in, p_ood at this step), forces and norms."""
        step = int(window["step"][-1])
        tokens_per_s = tokens_per_step / seconds_per_step if seconds_per_step > 0 else 0.0
        scalars = [k for k in window if k not in ("step", "lr", "forces")]
        line = {"step": step, **{k: float(np.mean(window[k])) for k in scalars}, "lr": float(window["lr"][-1]),
                "tokens_per_s": tokens_per_s, **{k: float(v) for k, v in (evals or {}).items()}}
        if "forces" in window:
            self._steps.append(window["step"])
            self._lr.append(window["lr"])
            self._forces.append(window["forces"])
            mean = window["forces"].mean(axis=0)
            line["forces"] = {by: {g: dict(zip(TERMS, map(float, v))) for g, v in _grouped(mean, self.names, by).items()}
                              for by in GROUPINGS}
        line["norms"] = {by: {g: {"sq_norm": float(v[0]), "rms": float(np.sqrt(v[0] / v[1]))}
                              for g, v in _grouped(np.stack([sq_norms, sizes], 1), self.names, by).items()}
                         for by in GROUPINGS}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(line) + "\n")
        for key, value in tree.flat_items(line, "/"):
            if key != "step":
                self._tensorboard.add_scalar(key, value, step)
        self.last = line
        probe = "".join(f"  {k} {line[k]:.3f}" for k in ("p_in", "p_ood") if k in line)
        logging.info("step %d/%d  loss %.4f  lr %.2e  |g| %.3f%s  %s tok/s  elapsed %s  ETA %s", step, total_steps,
                     line["loss"], line["lr"], line["grad_norm"], probe, f"{tokens_per_s:,.0f}",
                     _clock(time.perf_counter() - self._start), _clock((total_steps - step) * seconds_per_step))

    def flush_forces(self, step: int) -> None:
        """Writes the per-step, per-matrix budget since the previous checkpoint to ``forces/{step}.npz``."""
        if not self._forces:
            return
        path = os.path.join(self.workdir, "forces", f"{step:08d}.npz")
        np.savez(path + ".tmp.npz", steps=np.concatenate(self._steps), lr=np.concatenate(self._lr),
                 names=np.asarray(self.names), forces=np.concatenate(self._forces))
        os.replace(path + ".tmp.npz", path)
        self._steps, self._lr, self._forces = [], [], []

    def close(self, summary: dict) -> None:
        write_text(os.path.join(self.workdir, "summary.json"), json.dumps(summary, indent=2))
        self._tensorboard.close()


def ensure_space(directory: str, needed: int, what: str) -> None:
    """Raises ``OSError(ENOSPC)`` naming ``what`` before a write of ``needed`` bytes that the disk holding
    ``directory`` cannot take (a full disk met halfway through orbax's or TensorBoard's own threads leaves
    their tracebacks and half-written files; met here, it is one message)."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    if free < needed:
        raise OSError(errno.ENOSPC, f"{free / 2**20:.1f} MiB free on the disk of {directory}, {what} needs about "
                                    f"{needed / 2**20:.1f} MiB")


def write_text(path: str, text: str) -> None:
    """Writes a file atomically: a reader (or a restart after a kill) sees the old file or the new one."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_json(path: str, value) -> None:
    write_text(path, json.dumps(value))


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def force_shares(workdir: str, first: int = 1, last: int | None = None) -> dict[str, dict[str, float]]:
    """Per class (and ``all``): each term's share of Σ(|alignment| + |injection| + |decay|) over steps
    [first, last] (default: the whole run), from the per-matrix files; ``higher_order`` is (|cross| + |wd2|)
    on the same scale."""
    totals: dict[str, np.ndarray] = {}
    for path in sorted(glob.glob(os.path.join(workdir, "forces", "[0-9]" * 8 + ".npz"))):
        with np.load(path) as f:
            steps = f["steps"]
            window = (steps >= first) & (steps <= (last if last is not None else steps.max()))
            absolute = np.abs(f["forces"][window].astype(np.float64)).sum(axis=0)  # (m, 5)
            for key, v in {**_grouped(absolute, list(f["names"]), "class"), "all": absolute.sum(0)}.items():
                totals[key] = totals.get(key, 0.0) + v
    shares = {}
    for key, v in totals.items():
        leading = v[0] + v[1] + v[2]
        if leading > 0:
            shares[key] = {"alignment": v[0] / leading, "injection": v[1] / leading, "decay": v[2] / leading,
                           "higher_order": (v[3] + v[4]) / leading}
    return shares


def summarize(run: RunRecords, params, throughput: dict | None = None) -> dict:
    """Final loss, force shares per class, the Weibull k and λ per class (medians over matrices), and the
    whole-program throughput from the end of the first step to the last write (everything after compilation)."""
    names = run.names
    _, leaves, _, _ = tree.named_leaves(params)
    fits = weibull_jax.fit_weibull_tree(dict(zip(names, leaves)))
    weibull_by_class: dict[str, dict] = {}
    for cls in sorted({taxonomy.describe(n).cls for n in names}):
        members = [n for n in names if taxonomy.describe(n).cls == cls]
        weibull_by_class[cls] = {"matrices": len(members),
                                 "k_median": float(np.median([fits[n].k for n in members])),
                                 "scale_median": float(np.median([fits[n].scale for n in members]))}
    summary = {"step": run.last.get("step"), "loss": run.last.get("loss"),
               "force_shares": force_shares(run.workdir), "weibull": weibull_by_class, "throughput": throughput}
    lines = [f"run {run.workdir}: step {summary['step']}, loss {summary['loss']:.4f}"]
    if throughput:
        lines.append(f"  throughput {throughput['tokens_per_s']:,.0f} tokens/s over the last {throughput['steps']} "
                     f"steps ({throughput['seconds']:.1f} s, data, logging, snapshots and checkpoints included; "
                     f"the loop waited {throughput['waited_on_writes_s']:.1f} s for the writer thread and spent "
                     f"{throughput['waited_on_data_s']:.1f} s in the data feed)")
    for key, s in summary["force_shares"].items():
        lines.append(f"  forces {key:<13} alignment {s['alignment']:6.1%}  injection {s['injection']:6.1%}  "
                     f"decay {s['decay']:6.1%}  (higher-order {s['higher_order']:.1e})")
    for cls, w in weibull_by_class.items():
        lines.append(f"  Weibull {cls:<12} {w['matrices']:3d} matrices  median k {w['k_median']:.4f}  "
                     f"median λ {w['scale_median']:.4g}")
    print("\n".join(lines))
    return summary
