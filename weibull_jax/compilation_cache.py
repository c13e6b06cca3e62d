"""XLA's compiled programs kept on disk across processes (JAX's persistent compilation cache), for the programs.

A process that restarts a run (after a kill, a preemption notice, or to train for more steps), or trains or
analyses another run of the same shapes, loads its step and its diagnostics from the folder instead of
compiling them again (on a GPU JAX keeps XLA's autotuning results there too). The key of an entry is the
program's HLO, the compiler's options, the devices and the jax and jaxlib versions, so an entry only serves
the program it was compiled from. ``train.main``, ``analysis.main`` and ``analysis.diagnose`` call
:func:`use` with their ``--compilation_cache``; the kill campaign's small run restarts in 6.7-6.8 s
instead of 10.4-11.1 s on a 2-core CPU (docs/reliability.md).

JAX writes an entry in place (no temporary file and rename): a process killed inside that write leaves the
entry short, and every later process warns that it cannot read it and compiles that program again. Deleting
the folder clears it.
"""

from __future__ import annotations

import os

import jax

DEFAULT_FOLDER = os.environ.get("JAX_COMPILATION_CACHE_DIR") or "~/.cache/weibull_jax/xla"


def use(folder: str) -> None:
    """Keeps every program this process compiles in ``folder`` (``~`` expanded) and loads it from there when a
    later process compiles it again; an empty ``folder`` turns the cache off. Call it before the first
    compilation. Every program is kept, however fast it compiled: JAX's default keeps only those that took
    over 1 s, and the small run above then restarts in 8.5-8.6 s (most of a run's diagnostics compile in
    less)."""
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(folder) if folder else None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
