"""Series analysis of training runs: ``python -m analysis.main --run_dir=runs/pythia70m_v1b [--out=…]``.

For each run directory (a comma list analyses several, e.g. the four V1b seeds, and adds a comparison
page) it writes ``{out}/{run name}/`` (default ``{run_dir}/report``): ``index.html`` (the whole report on one
self-contained page), ``report.json`` (the headline numbers), ``tables/*.csv`` and ``figures/*.png``
(``analysis.report``). ``--hf_series=DIR`` analyses the weights of a model suite's
``step{N}`` revisions instead, read in place (a folder of checkpoint folders, or a hub cache
``models--ORG--NAME``: ``weibull_jax.suites``); the recovered alignment then needs the schedule:
``--schedule_config=configs/….py``. ``--compare_only`` makes only the comparison page of runs analysed one by one
(``{out}/index.html``, ``{out}/tables/runs.csv``: the config fields they differ in, λ peak, k-lock, force
shares, recovery, final loss).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from analysis import report, series
from weibull_jax import compilation_cache

_RUN_DIR = flags.DEFINE_list("run_dir", [], "Run directories of python -m train.main (comma list).")
_HF_SERIES = flags.DEFINE_string("hf_series", "", "step{N} revisions of a model: a folder of HuggingFace "
                                  "checkpoint folders, or a hub cache models--ORG--NAME.")
_SCHEDULE_CONFIG = config_flags.DEFINE_config_file(
    "schedule_config", None, "With --hf_series: a training config whose steps and optimizer (schedule, weight "
    "decay) the series was trained with.")
_OUT = flags.DEFINE_string("out", "", "Report folder (default: {run_dir}/report, or reports/hf).")
_COMPARE_ONLY = flags.DEFINE_bool("compare_only", False, "Only the comparison page of several --run_dir whose "
                                  "reports are already in --out (each analysed where its snapshots were).")
_SPACINGS = flags.DEFINE_list("closed_loop_spacings", ["1", "50", "250", "500"], "Δ of the closed loop.")
_RECOVERY = flags.DEFINE_list("recovery_spacings", ["250", "500", "1000"], "Knot spacings of the recovery.")
_RECOVERY_EVERY = flags.DEFINE_integer("recovery_every", 50, "The pointwise recovery's steps: every N-th recorded "
                                       "step inside the knot range (the forces paper's cadence: 50).")
_TABLE_STEPS = flags.DEFINE_list("table_steps", [str(s) for s in series.TABLE_STEPS], "Steps of the share table.")
_WINDOW = flags.DEFINE_list("backbone_window", [], "FIRST,LAST: the trajectory geometry of the knots in [FIRST, "
                            "LAST] only, drifts from FIRST (the SGD controls' [600, 2000]); default: all knots.")
_GRADIENT_BATCHES = flags.DEFINE_integer("gradient_batches", 32, "Minibatch gradients per analysed knot for the "
                                         "gradient alignment and Fisher probes (M); 0: no gradient probes.")
_GRADIENT_EVERY = flags.DEFINE_integer("gradient_every", 1, "Probe the gradients at every N-th knot.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", compilation_cache.DEFAULT_FOLDER, "Folder of the compiled programs, kept for the next "
    "process: another run of the same shapes loads them (weibull_jax.compilation_cache); empty: off.")
_DEVICES = flags.DEFINE_integer("devices", 1, "Split every weight slab's elements over this many of the host's "
                                "devices (-1: all): larger slabs, the work spread; the fits unchanged to the bit.")


def _integers(flag) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in flag.value)
    except ValueError:
        raise ValueError(f"--{flag.name} takes a comma list of integers, got {','.join(flag.value)!r}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if bool(_RUN_DIR.value) == bool(_HF_SERIES.value):
        raise app.UsageError("give --run_dir (one or more run directories) or --hf_series")
    compilation_cache.use(_COMPILATION_CACHE.value)
    try:
        window = _integers(_WINDOW)
        for flag, lowest in ((_GRADIENT_BATCHES, 0), (_GRADIENT_EVERY, 1), (_RECOVERY_EVERY, 1)):
            if flag.value < lowest:
                raise ValueError(f"--{flag.name} must be >= {lowest}, got {flag.value}")
        for flag in (_SPACINGS, _RECOVERY, _TABLE_STEPS):
            if any(v <= 0 for v in _integers(flag)):
                raise ValueError(f"--{flag.name} takes positive integers, got {','.join(flag.value)}")
        if window and (len(window) != 2 or window[0] >= window[1]):
            raise ValueError(f"--backbone_window takes FIRST,LAST with FIRST < LAST, got {window}")
        if _COMPARE_ONLY.value and len(_RUN_DIR.value) < 2:
            raise ValueError("--compare_only compares several runs: give two or more --run_dir")
        report.run(_RUN_DIR.value, _HF_SERIES.value, _OUT.value, _SCHEDULE_CONFIG.value,
                   gradient_batches=_GRADIENT_BATCHES.value, gradient_every=_GRADIENT_EVERY.value,
                   compare_only=_COMPARE_ONLY.value,
                   closed_loop_spacings=_integers(_SPACINGS), recovery_spacings=_integers(_RECOVERY),
                   recovery_every=_RECOVERY_EVERY.value,
                   table_steps=_integers(_TABLE_STEPS), backbone_window=window or None, devices=_DEVICES.value)
    except (ValueError, OSError) as e:  # bad or unreadable inputs, a full disk: one message, no traceback
        sys.exit(f"analysis.main: {e}")


if __name__ == "__main__":
    app.run(main)
