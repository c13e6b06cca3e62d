"""Trains a Pythia- or LLaMA-style model and records the AdamW force budget of every matrix at every step.

  python -m train.main --config=configs/default.py [--workdir=runs/default] [--config.steps=500 ...]

Rerunning the same command in the same ``--workdir`` resumes from the latest checkpoint (on any number of
devices: ``--config.mesh.*``), with the programs the first process compiled (``--compilation_cache``).

Several hosts: run the same command once per host, all on one shared ``--workdir``, with ``--distributed``
under SLURM, Open MPI or on a TPU pod (``jax.distributed`` finds the processes itself), or anywhere else
with ``--coordinator_address=HOST0:PORT --num_processes=N --process_id=I`` (or ``JAX_COORDINATOR_ADDRESS``
in the environment and the other two flags).
"""

from __future__ import annotations

import logging as python_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from train import train
from weibull_jax import compilation_cache

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Training configuration.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config file name>).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Start jax.distributed, the processes found from the "
                                 "cluster (SLURM, Open MPI, TPU pods, Kubernetes) or the three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (implies --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes the run has.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 … num_processes − 1.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", compilation_cache.DEFAULT_FOLDER, "Folder of the compiled programs, kept for the next "
    "process: a restart loads its step instead of compiling it again (weibull_jax.compilation_cache); empty: off.")


class _Quiet(python_logging.Filter):
    """Keeps orbax's and grain's per-save chatter out of the progress log (warnings still show)."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        chatty = "/orbax/" in record.pathname or "/grain/" in record.pathname
        return record.levelno >= python_logging.WARNING or not chatty


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_Quiet())
    compilation_cache.use(_COMPILATION_CACHE.value)
    if _DISTRIBUTED.value or _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("runs", os.path.splitext(os.path.basename(
        flags.FLAGS["config"].config_filename))[0])
    logging.info("JAX %s, process %d of %d, on %s; run directory %s", jax.__version__, jax.process_index(),
                 jax.process_count(), jax.devices(), workdir)
    try:
        train.train_and_evaluate(config, workdir)
    except (ValueError, OSError, train.NonFiniteError) as e:  # bad inputs, full disks, diverged runs: one line
        sys.exit(f"train.main: {e}")


if __name__ == "__main__":
    app.run(main)
