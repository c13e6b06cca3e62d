"""Whole-model Weibull diagnosis from the command line.

  python -m analysis.diagnose --config=configs/diagnose.py [--config.preset=pythia-160m] [--config.params=w.npz]

Prints the per-matrix table (k, λ, R², KS, k90, k100, Γ closure, tail signatures), the per-kind, per-class
and per-block summaries, the architecture and training-budget readouts, and the nearest entry of the
paper's cohort; with ``--config.out_dir`` it also writes ``matrices.csv``.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from weibull_jax import anchor, compilation_cache, framework, models

_CONFIG = config_flags.DEFINE_config_file("config", "configs/diagnose.py", "Diagnosis configuration.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", compilation_cache.DEFAULT_FOLDER, "Folder of the compiled programs, kept for the next "
    "process: weights of the same shapes diagnosed again load them (weibull_jax.compilation_cache); empty: off.")


def load_params(config):
    """The weights to diagnose and a description of their model (head counts, training recipe)."""
    info = {"learning_rate": config.learning_rate, "weight_decay": config.weight_decay, "steps": config.steps}
    if config.params:
        return read_npz(config.params), info
    model = models.preset(config.preset)
    if config.init_recipe:
        if config.init_recipe not in anchor.PYTHIA_RECIPES:
            raise ValueError(f"unknown --config.init_recipe={config.init_recipe!r}; known: "
                             f"{sorted(anchor.PYTHIA_RECIPES)} (empty: the preset's own)")
        init_in, init_out = anchor.PYTHIA_RECIPES[config.init_recipe]
        model = model.replace(init_in=init_in, init_out=init_out)
    info.update(n_heads=model.n_heads, n_kv_heads=model.kv_heads)
    return models.init_params(model, jax.random.key(config.seed)), info


def read_npz(path: str) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz`` file (never pickled objects), with one message for anything else."""
    if not os.path.isfile(path):
        raise ValueError(f"--config.params={path!r}: no such file (give an .npz of named weight arrays)")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz of named arrays")
        with loaded as npz:
            params = {name: npz[name] for name in npz.files}
    except Exception as e:  # numpy, zipfile and OS errors for files that are not (whole) .npz archives
        reason = str(e) if isinstance(e, ValueError) and "pickled" not in str(e) else type(e).__name__
        raise ValueError(f"--config.params={path!r} is not a readable .npz of named arrays ({reason}): save the "
                         "weights with numpy.savez(path, **{name: array})") from None
    if not params:
        raise ValueError(f"--config.params={path!r} holds no arrays")
    return params


def check_config(config) -> None:
    if config.protocol not in ("histogram", "exact"):
        raise ValueError(f"--config.protocol must be 'histogram' or 'exact', got {config.protocol!r}")
    for name in ("learning_rate", "weight_decay", "steps"):
        if not config[name] >= 0:
            raise ValueError(f"--config.{name} must be >= 0 (0 disables the T/τ readout), got {config[name]!r}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    compilation_cache.use(_COMPILATION_CACHE.value)
    try:
        diagnose(_CONFIG.value)
    except (ValueError, OSError) as e:  # bad weights, bad config values, unwritable output: one message
        sys.exit(f"analysis.diagnose: {e}")


def diagnose(config) -> None:
    check_config(config)
    params, info = load_params(config)
    source = config.params or f"fresh {config.preset} init (seed {config.seed})"
    start = time.perf_counter()
    diagnosis = framework.diagnose_model(params, info, step=config.step, center=config.center,
                                         protocol=config.protocol)
    seconds = time.perf_counter() - start
    print(f"Weibull diagnosis of {source}: {len(diagnosis.matrices)} matrices in {seconds:.1f} s "
          f"on {jax.default_backend()} ({config.protocol} protocol, middle-80 % trim)\n")
    print(diagnosis.format())
    comparison = framework.compare_to_benchmark(diagnosis)
    print(f"nearest cohort entry: {comparison.nearest} (distance {comparison.distance:.3f}); {comparison.label}")
    for metric, ours, paper, where in comparison.rows:
        print(f"  {metric:<36} ours {ours:9.4f}   paper {paper:9.4f}   ({where})")
    for alert in comparison.alerts:
        print(f"alert: {alert}")
    k0, ratio = anchor.halfnormal_anchor()
    print(f"\nhalf-normal anchor (App. A.1): k0 = {k0:.4f}, λ0/σ = {ratio:.4f}")
    if config.out_dir:
        os.makedirs(config.out_dir, exist_ok=True)
        diagnosis.matrices.to_csv(os.path.join(config.out_dir, "matrices.csv"))
        print(f"wrote {os.path.join(config.out_dir, 'matrices.csv')}")


if __name__ == "__main__":
    app.run(main)
