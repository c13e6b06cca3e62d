"""The series analysis against the disk: reading a checkpoint series versus ``dd`` reading the same files.

  PYTHONPATH=. python tests/benchmarks/bench_series_io.py --format=suite --preset=pythia-1b --revisions=16 \
      --dir=/tmp/suite
  PYTHONPATH=. python tests/benchmarks/bench_series_io.py --format=snapshots --preset=pythia-70m \
      --revisions=81 --dir=/tmp/series

1. Writes a series of ``--revisions`` checkpoints of a ``--preset`` model with our own save paths: a model
   suite of ``step{N}`` HuggingFace folders in float16 (``convert.save_hf_checkpoint``, what Pythia's
   revisions are), or a training run's float32 snapshots (``snapshots.write``). Revision r is the initial
   weights plus r times one random drift, so every matrix changes along the series.
2. Evicts the files from the page cache (``posix_fadvise(DONTNEED)`` after a sync: no root needed) and times
   ``dd`` reading all of them (1 MiB blocks): the disk's read bandwidth in this session.
3. With ``--read_orders=N``: N cold reads of every matrix's slab alone (no device), in the files' order
   (what ``series.measure`` does) and in the layout's order, alternating.
4. Evicts them again and times ``analysis.series.measure`` over the series (with and, ``--spectra``, without
   the spectra of the trunk; with them at each ``--read_ahead`` depth, without them at each depth and
   ``--read_threads`` count), printing its progress line with the ETA and where its time went. Compiling is
   a fixed cost, not one per checkpoint: what the loop waited for of it (the main thread's compiles, from
   JAX's monitoring events, and its waits for the slab programs compiled ahead in threads) is set apart.

Prints the seconds of each and their ratio, the seconds per checkpoint (compiling, paid once, apart) and the
extrapolation to ``--extrapolate`` checkpoints (Pythia's 154 revisions). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from analysis import series  # noqa: E402
from weibull_jax import convert, models, snapshots, suites  # noqa: E402


def write_series(kind: str, preset: str, revisions: int, directory: str, every: int) -> None:
    config = models.preset(preset)
    base = models.init_params(config, jax.random.key(0))
    drift = jax.tree.map(lambda w: 1e-3 * jax.random.normal(jax.random.key(1), w.shape, w.dtype), base)
    if kind == "snapshots":
        snapshots.write_layout(directory, snapshots.layout_of(base))
    for r in range(revisions):
        params = jax.tree.map(lambda w, d: w + r * d, base, drift)
        if kind == "suite":
            half = jax.device_get(jax.tree.map(lambda w: w.astype(jnp.float16), params))
            convert.save_hf_checkpoint(os.path.join(directory, f"step{r * every}"), half, config, dtype="float16")
        else:
            snapshots.write(directory, r * every, np.asarray(snapshots.flatten(params)))


def weight_files(directory: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, "**", "*.safetensors"), recursive=True)
                  + glob.glob(os.path.join(directory, "*.npy")))


def evict(paths: list[str]) -> None:
    """Drops the files' pages from the page cache, so that the next read comes from the disk."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def dd_seconds(paths: list[str]) -> float:
    evict(paths)
    start = time.perf_counter()
    for path in paths:
        subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)
    return time.perf_counter() - start


def time_read_orders(opened: snapshots.WeightSeries, paths: list[str], repeats: int) -> dict[str, list[float]]:
    """Seconds of cold reads of every matrix's slab as stored, in the order ``series.measure`` reads them
    (``storage_key``: each file front to back) and in the layout's order (by Flax path), alternating which
    goes first."""
    names = opened.matrices()
    orders = {"storage": sorted(names, key=opened.storage_key), "layout": names}
    seconds: dict[str, list[float]] = {k: [] for k in orders}
    for r in range(repeats):
        for key in (("storage", "layout") if r % 2 == 0 else ("layout", "storage")):
            evict(paths)
            start = time.perf_counter()
            for name in orders[key]:
                opened.slab(name, dtype=None)
            seconds[key].append(time.perf_counter() - start)
    wins = sum(s < lay for s, lay in zip(seconds["storage"], seconds["layout"]))
    print("reads alone, cold: " + ", ".join(f"{k} order median {np.median(v):.2f} s" for k, v in seconds.items())
          + f"; file order faster in {wins} of {repeats}", flush=True)
    return seconds


COMPILING: list[float] = []


def _count_compilation(event: str, duration: float, **_) -> None:
    """Compiles on the main thread; those of the programs compiled ahead in threads overlap the reads."""
    if event.startswith("/jax/core/compile/") and threading.current_thread() is threading.main_thread():
        COMPILING.append(duration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=("suite", "snapshots"), default="suite")
    parser.add_argument("--preset", default="pythia-1b")
    parser.add_argument("--revisions", type=int, default=16)
    parser.add_argument("--every", type=int, default=1000, help="steps between revisions")
    parser.add_argument("--dir", required=True, help="where the series is written (and left)")
    parser.add_argument("--spectra", choices=("with", "without", "both"), default="both")
    parser.add_argument("--extrapolate", type=int, default=154)
    parser.add_argument("--devices", type=int, default=1, help="series.measure's devices (-1: all)")
    parser.add_argument("--read_ahead", default=str(series.READ_AHEAD), help="comma list: slabs in flight "
                        "(series.READ_AHEAD)")
    parser.add_argument("--read_threads", default="8", help="comma list: files read at once per slab")
    parser.add_argument("--read_orders", type=int, default=0, help="also time N cold reads of every matrix's "
                        "slab (no device work) in the files' order and in the layout's, alternating")
    args = parser.parse_args()
    logging.set_verbosity(logging.INFO)
    start = time.perf_counter()
    if not weight_files(args.dir):
        write_series(args.format, args.preset, args.revisions, args.dir, args.every)
    written = time.perf_counter() - start
    paths = weight_files(args.dir)
    size = sum(os.path.getsize(p) for p in paths)
    opened = suites.Suite(args.dir) if args.format == "suite" else snapshots.Series(args.dir)
    t = len(opened.steps)
    n_heads = models.preset(args.preset).n_heads
    print(f"{jax.devices()[0].device_kind}: {args.format} of {t} x {args.preset}, {size / 1e9:.1f} GB "
          f"(written in {written:.0f} s)", flush=True)
    dd = dd_seconds(paths)
    print(f"dd, cold: {dd:.1f} s = {size / dd / 1e9:.2f} GB/s, {dd / t:.2f} s per checkpoint", flush=True)
    results = {"device": jax.devices()[0].device_kind, "devices": args.devices, "format": args.format,
               "preset": args.preset, "checkpoints": t, "bytes": size, "dd_s": dd}
    if args.read_orders:
        results["read_orders_s"] = time_read_orders(opened, paths, args.read_orders)
    jax.monitoring.register_event_duration_secs_listener(_count_compilation)
    depths = [int(d) for d in args.read_ahead.split(",")]
    threads = [int(d) for d in args.read_threads.split(",")]
    variants = [("with", d, threads[0]) for d in depths] if args.spectra != "without" else []
    variants += [("without", d, n) for d in depths for n in threads] if args.spectra != "with" else []
    for spectra, depth, n in variants:
        series.READ_AHEAD, snapshots.READ_THREADS = depth, n
        evict(paths)
        COMPILING.clear()
        begin = time.perf_counter()
        data = series.measure(opened, n_heads if spectra == "with" else None, devices=args.devices)
        took = time.perf_counter() - begin
        compiling = sum(COMPILING) + data.seconds["wait_for_compiler"]
        key = f"{spectra}_spectra_read_ahead_{depth}_threads_{n}"
        results[f"measure_{key}_s"] = took
        results[f"seconds_{key}"] = {**data.seconds, "compiling on the main thread (inside the above)":
                                     sum(COMPILING)}
        per = (took - compiling) / t  # compiling is paid once, whatever the series' length
        print(f"measure, {spectra} spectra, {depth} slabs read ahead, {n} threads each, cold: {took:.1f} s, "
              f"{took / dd:.2f}x dd; {per:.2f} s per checkpoint + {compiling:.0f} s compiling once; "
              f"{args.extrapolate} checkpoints: {(per * args.extrapolate + compiling) / 60:.1f} min "
              f"(dd {dd / t * args.extrapolate / 60:.1f} min)", flush=True)
        print("  where the time went: " + ", ".join(f"{k} {v:.1f} s" for k, v in results[f"seconds_{key}"].items()),
              flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
