"""Where a jitted program's device time goes: its kernels in a profiler trace, named by the HLO they run.

  python tests/benchmarks/kernel_table.py TRACE_DIR PROGRAM.hlo.txt [--calls 5] [--top 25]

``TRACE_DIR`` is what ``jax.profiler.trace`` wrote over ``--calls`` calls of one program (:func:`profile` writes
both files: ``bench_train_step.py --profile``, ``bench_weibull.py --profile``); ``PROGRAM.hlo.txt`` that
program's optimized HLO (``compiled.as_text()``).
Each device kernel is grouped with the others of its HLO instruction; each line gives its microseconds per
call, its launches per call, the instruction's result shape and the operation of the source it came from
(the ``op_name`` of its metadata: the model's module path and the primitive). cuBLAS/cuDNN kernels carry no
fusion name and are grouped by kernel. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
from typing import Any, Callable


def device_kernels(trace_dir: str) -> list[dict]:
    """The complete ('X') events of the device lanes of the newest trace under ``trace_dir``."""
    path = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz")))[-1]
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    lanes = {e["pid"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name" and "/device:" in e["args"]["name"]}
    return [e for e in events if e.get("ph") == "X" and e["pid"] in lanes]


def instruction_info(hlo_text: str, kernel: str) -> tuple[str, str]:
    """(result shape, source op_name) of the HLO instruction a kernel is named after ('' if none): XLA names a
    fusion's kernel after the instruction with '.' as '_'."""
    dotted = re.sub(r"_(\d+)$", r".\1", kernel)
    found = re.search(r"\n\s*%?(?:" + re.escape(kernel) + "|" + re.escape(dotted) + r") = (.*)", hlo_text)
    if not found:
        return "", ""
    line = found.group(1)
    op = re.search(r'op_name="([^"]*)"', line)
    return line.split(" ")[0], op.group(1) if op else ""


def table(trace_dir: str, hlo_text: str, calls: int, top: int) -> list[str]:
    total: dict[str, float] = collections.defaultdict(float)
    launches: collections.Counter = collections.Counter()
    for event in device_kernels(trace_dir):
        total[event["name"]] += event["dur"]
        launches[event["name"]] += 1
    lines = [f"device kernel time per call: {sum(total.values()) / calls:,.0f} µs in "
             f"{sum(launches.values()) // calls} launches",
             f"{'µs':>8} {'×':>4}  {'kernel':<44} {'result':<34} source op"]
    for name, us in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        shape, op = instruction_info(hlo_text, name)
        lines.append(f"{us / calls:8.1f} {launches[name] // calls:4d}  {name[:44]:<44} {shape[:34]:<34} {op}")
    return lines


def profile(call: Callable[[], Any], hlo_text: str, directory: str, calls: int = 5, top: int = 30) -> list[str]:
    """Traces ``calls`` calls of ``call`` (a warm program) into ``directory``, writes there the program's
    optimized HLO (``program.hlo.txt``) and its :func:`table` (``kernels.txt``), and returns the table."""
    import jax

    with jax.profiler.trace(directory, create_perfetto_trace=True):
        jax.block_until_ready([call() for _ in range(calls)])
    lines = table(directory, hlo_text, calls=calls, top=top)
    for name, text in (("program.hlo.txt", hlo_text), ("kernels.txt", "\n".join(lines) + "\n")):
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace_dir")
    parser.add_argument("hlo")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    with open(args.hlo) as f:
        print("\n".join(table(args.trace_dir, f.read(), args.calls, args.top)))


if __name__ == "__main__":
    main()
