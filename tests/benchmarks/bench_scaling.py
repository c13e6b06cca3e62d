"""Scaling over the devices of one host: our sharded step with the forces against PyTorch DDP and FSDP2.

  python tests/benchmarks/bench_scaling.py --preset pythia-410m --per_device_batch 8 --seq 2048 --devices 1,2

For each device count N, at the same per-device batch (so the global batch is N × per_device_batch):

* ``jax+forces data`` / ``jax+forces fsdp``: :func:`train.train.make_train_step` with the five-term budget
  of every matrix, the batch over N devices (``config.mesh.data = N``), and for fsdp also every weight and
  moment (``config.mesh.fsdp = N``);
* ``torch.compile ddp`` / ``torch.compile fsdp``: HF ``GPTNeoXForCausalLM`` under ``torchrun`` with
  DistributedDataParallel or FSDP2 (``fully_shard`` per layer), bf16 autocast, fused AdamW, compiled.

Each row runs in its own processes (``bench_train_step.py --variant``). The table gives tokens/s, the largest
peak memory of one device, the scaling efficiency tokens/s(N) / (N · tokens/s(1)) of the same row, and our
rate per device over the peer's. On a machine without GPUs the same runs go over N simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count``) and N gloo processes: a check that the programs run,
not a measurement (``--steps 2 --warmup 1 --no_compile``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STEP = os.path.join(HERE, "bench_train_step.py")
ROWS = ("jax+forces data", "jax+forces fsdp", "torch.compile ddp", "torch.compile fsdp")


def _has_gpus() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def command(row: str, n: int, args) -> tuple[list[str], dict]:
    """The processes' command line and environment of one row on ``n`` devices."""
    variant, layout = row.split()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(HERE)),
                                                        os.environ.get("PYTHONPATH", "")]))
    common = [f"--preset={args.preset}", f"--batch={n * args.per_device_batch}", f"--seq={args.seq}",
              f"--steps={args.steps}", f"--warmup={args.warmup}"]
    if variant.startswith("jax"):
        if not args.gpus:
            env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        return [sys.executable, STEP, f"--variant={variant}", f"--mesh={layout}", f"--devices={n}", *common], env
    env.setdefault("OMP_NUM_THREADS", "1")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", STEP,
            f"--variant={variant}", f"--peer={layout}", *common], env


def measure(rows, counts, args) -> dict:
    results = {}
    for row in rows:
        for n in counts:
            cmd, env = command(row, n, args)
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                print(f"{row} on {n}: failed\n{done.stderr[-3000:]}", flush=True)
                continue
            results[row, n] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{row} on {n}: {1e3 * results[row, n]['seconds_per_step']:.2f} ms/step", flush=True)
    return results


def table(results: dict, args) -> list[str]:
    lines = [f"{args.preset}, {args.per_device_batch} × {args.seq} tokens per device, bf16, AdamW",
             f"{'row':<20}{'devices':>8}{'ms/step':>10}{'tokens/s':>13}{'per device':>12}{'peak GiB':>10}"
             f"{'efficiency':>12}{'vs peer':>9}  loss"]
    peers = {"data": "ddp", "fsdp": "fsdp"}
    for (row, n), r in results.items():
        rate = n * args.per_device_batch * args.seq / r["seconds_per_step"]
        one = results.get((row, 1))
        efficiency = rate / (n * args.per_device_batch * args.seq / one["seconds_per_step"]) if one else None
        variant, layout = row.split()
        peer = next((p for (other, m), p in results.items() if m == n and variant.startswith("jax")
                     and other.startswith("torch") and other.split()[1] == peers[layout]), None)
        versus = peer["seconds_per_step"] / r["seconds_per_step"] if peer else None
        lines.append(f"{row:<20}{n:>8}{1e3 * r['seconds_per_step']:>10.2f}{rate:>13,.0f}{rate / n:>12,.0f}"
                     f"{r['peak_bytes'] / 2**30:>10.2f}{'' if efficiency is None else f'{efficiency:.1%}':>12}"
                     f"{'' if versus is None else f'{versus:.2f}×':>9}  {r['loss']:.3f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pythia-410m")
    parser.add_argument("--per_device_batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--devices", default="1,2", help="device counts, e.g. 1,2,4,8")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no_compile", action="store_true", help="the torch rows eager (a CPU check)")
    args = parser.parse_args()
    args.gpus = _has_gpus()
    rows = [r.replace("torch.compile", "torch") if args.no_compile else r for r in args.rows.split(",")]
    results = measure(rows, [int(n) for n in args.devices.split(",")], args)
    print("\n".join(table(results, args)))


if __name__ == "__main__":
    main()
