"""Whole-program overhead of shipped configs: ``train.main``'s throughput against its own bare step.

  python tests/benchmarks/bench_program.py --steps 1000 configs/pythia70m_v1b.py configs/sosd_gpt2.py:muon_wsd …

For each config (run for ``--steps`` steps, every cadence kept: snapshots, live spectra, probe evaluations,
checkpoints, logging; the schedule is the config's own over its own length, only cut short):

* ``bare``: the config's jitted step (model, optimizer, forces as recorded, probe loss where enabled) from
  :func:`train.train.setup`, on batches of the config's own pipeline already on the device, timed over
  ``--bare_steps`` steps after a warmup: what the hardware gives the step alone; the same step fed by the
  pipeline with one synchronous host→device copy per step (``fed_direct``) and as the program feeds it, two
  batches transferred ahead (``fed_prefetched``);
* ``program``: ``train.train.train_and_evaluate`` in a fresh run directory; its summary's throughput is
  timed from the end of the first step to the last write (the step's compilation excluded, everything else
  included); ``steady``: the same program over the log intervals of the run's second half, without what a
  short run pays once and a long one amortizes (the first use of the metrics fetch, snapshot and norms).

With ``--ablate``, the program again with one cadence off at a time (snapshots, live spectra, probe
evaluations; checkpoints only at the end): what each costs. Each program line also gives the seconds the
loop waited for the writer thread and spent in the data feed.

Prints one line per config and a JSON line per config with the overhead 1 − program/bare.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def load_config(spec: str):
    path, _, argument = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("bench_config", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(argument) if argument else module.get_config()


def bare_tokens_per_s(config, steps: int) -> dict[str, float]:
    """The config's step alone: on 4 batches already on the device (``bare``), fed by its pipeline one
    synchronous transfer a step (``fed_direct``), and fed as the program feeds it (``fed_prefetched``)."""
    import jax

    from train import train
    from weibull_jax import data, sharding

    run = train.setup(config)
    state, step_fn, iterator = run.state, run.step_fn, iter(run.batches)

    def put(rows):
        return sharding.global_batch(rows, run.batch_sharding)

    on_device = [put(next(iterator)) for _ in range(4)]
    feed = data.prefetch_to_device(iterator, sharding=run.batch_sharding)
    sources = {"bare": lambda i: on_device[i % 4], "fed_direct": lambda i: put(next(iterator)),
               "fed_prefetched": lambda i: next(feed)[0]}
    out = {}
    for name, source in sources.items():
        for i in range(10):
            state, metrics = step_fn(state, source(i))
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for i in range(steps):
            state, metrics = step_fn(state, source(i))
        jax.block_until_ready((state, metrics))
        out[name] = steps * config.batch_size * config.data.seq_len / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="config files, each optionally with :ARGUMENT")
    parser.add_argument("--steps", type=int, default=1000, help="program steps per config (at most its own)")
    parser.add_argument("--bare_steps", type=int, default=200)
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE overrides for every config "
                        "(e.g. data.corpus=…, data.cache_dir=…)")
    parser.add_argument("--ablate", action="store_true", help="also run each config with one cadence off at a time")
    args = parser.parse_args()

    from absl import logging

    logging.set_verbosity(logging.WARNING)
    for spec in args.configs:
        config = load_config(spec)
        for item in args.set:
            field, value = item.split("=", 1)
            node = config
            *parents, last = field.split(".")
            for p in parents:
                node = node[p]
            node[last] = type(node[last])(value)
        if config.init_from:
            print(f"{spec}: skipped (starts from {config.init_from}, which this benchmark does not make)")
            continue
        config.steps = min(config.steps, args.steps)
        config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, config.steps // 10)
        config.ckpt_every = min(config.ckpt_every, config.steps)
        step_alone = bare_tokens_per_s(config, args.bare_steps)
        bare = step_alone["bare"]
        throughput = program_throughput(config)
        cadence = {k: config[k] for k in ("log_every", "ckpt_every", "snapshot_every", "spectra_every")}
        if config.probe.enabled:
            cadence["probe_eval_every"] = config.probe.eval_every
        result = {"config": spec, "steps": config.steps, **{f"{k}_tokens_per_s": v for k, v in step_alone.items()},
                  **against(throughput, bare), **cadence}
        print(f"{spec:<36} bare {bare:>10,.0f}  fed: direct {step_alone['fed_direct']:>10,.0f}, prefetched "
              f"{step_alone['fed_prefetched']:>10,.0f}   {_line(result)}   {cadence}", flush=True)
        if args.ablate:
            result["ablations"] = {}
            for change, off in ablations(config):
                result["ablations"][change] = against(program_throughput(off), bare)
                print(f"  {change:<34} {_line(result['ablations'][change])}", flush=True)
        print(json.dumps(result), flush=True)


def against(throughput: dict, bare: float) -> dict:
    """A program's throughput (whole run and steady), its overheads 1 − program/bare and its wait counters."""
    return {"program_tokens_per_s": throughput["tokens_per_s"], "overhead": 1 - throughput["tokens_per_s"] / bare,
            "steady_tokens_per_s": throughput["steady_tokens_per_s"],
            "steady_overhead": 1 - throughput["steady_tokens_per_s"] / bare,
            "waited_on_writes_s": throughput["waited_on_writes_s"], "waited_on_data_s": throughput["waited_on_data_s"]}


def _line(r: dict) -> str:
    return (f"program {r['program_tokens_per_s']:>10,.0f} tok/s   overhead {r['overhead']:6.1%} (steady "
            f"{r['steady_overhead']:6.1%})   waited {r['waited_on_writes_s']:.2f} s on writes, "
            f"{r['waited_on_data_s']:.2f} s on data")


def program_throughput(config) -> dict:
    """``train_and_evaluate`` in a fresh run directory: its summary's throughput, and ``steady_tokens_per_s``
    over the log intervals of the second half of the run (their own timings in ``metrics.jsonl``), which
    leaves out what a short run pays once (the first compilation of the metrics fetch, the snapshot and
    the norms, at their first use inside the loop) and a long run amortizes."""
    from train import train
    from weibull_jax import data

    with tempfile.TemporaryDirectory() as workdir:
        throughput = train.train_and_evaluate(config, workdir)["throughput"]
        lines = [m for m in data.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if m["step"] > config.steps // 2]
    tokens = config.log_every * config.batch_size * config.data.seq_len
    return {**throughput, "steady_tokens_per_s": tokens * len(lines) / sum(tokens / m["tokens_per_s"] for m in lines)}


def ablations(config):
    """(what changed, config) with one cadence of ``config`` off at a time."""
    if config.snapshot_every:
        yield "snapshot_every=0", _with(config, snapshot_every=0)
    if config.spectra_every:
        yield "spectra_every=0", _with(config, spectra_every=0)
    if config.probe.enabled:
        yield "probe evaluation at the end only", _with(config, **{"probe.eval_every": config.steps})
    if config.ckpt_every < config.steps:
        yield "checkpoint at the end only", _with(config, ckpt_every=config.steps)


def _with(config, **fields):
    variant = config.copy_and_resolve_references()
    variant.update_from_flattened_dict(fields)
    return variant


if __name__ == "__main__":
    main()
