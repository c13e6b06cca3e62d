"""Train-step throughput: our jitted Pythia step (with and without the forces) vs HuggingFace PyTorch.

  python tests/benchmarks/bench_train_step.py [--preset pythia-70m --batch 24 --seq 512 --steps 50]

Forward + backward + AdamW (lr 1e-3, β = (0.9, 0.95), ε = 1e-8, weight decay 0.01, cosine schedule) on
random tokens, bf16 compute with float32 weights on both sides:

* ``jax``: :func:`train.train.make_train_step` without forces, as the training program steps: on a GPU and
  one device the loss and its gradient in one kernel (``weibull_jax.cross_entropy``);
* ``jax+forces``: the same step returning the five-term budget of every matrix, there with AdamW and the
  budget's sums in one kernel per matrix (``weibull_jax.fused_adamw``);
* ``jax-xla``, ``jax+forces-xla``: the same without the kernels: XLA's passes for the loss, optax's update,
  the budget read from the new moments in a second pass;
* ``torch``: ``GPTNeoXForCausalLM`` (SDPA attention) under ``torch.autocast(bfloat16)`` with fused
  ``torch.optim.AdamW``, eager; ``torch.compile``: the model compiled; ``torch+forces``: eager, reading
  ``exp_avg``/``exp_avg_sq`` after each step to form the same budget (the peer's way to get the forces).

Each variant runs in its own process (so that peak memory is its own); the table gives tokens/s, peak GPU
memory and the ratio to the torch.compile figure, and a line each run's first step: compiled and run, or
loaded from a cache (torch's inductor caches as the host has them; the jax variants' with
``--compilation_cache=DIR``: a second run, ``--runs 2``, loads what the first compiled). With ``--runs K``
every variant runs K times, the variants' order reversed every other round (so that a drift of the host's
speed reaches them alike); the table gives each variant's median run, and every run's time is listed under
it (torch.compile's time falls in two groups from one process to the next on some hosts; README, Speed).

``--batch`` is the global batch: with ``--mesh data|fsdp`` and ``--devices N`` the jax variants shard it
(and the weights, for fsdp) over N devices, and with ``--peer ddp|fsdp`` a torch variant started by
``torchrun`` takes its rank's rows under DDP or FSDP2 (``tests/benchmarks/bench_scaling.py`` runs these side
by side).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

VARIANTS = ("jax", "jax-xla", "jax+forces", "jax+forces-xla", "torch", "torch.compile", "torch+forces")
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense tensor-core FLOP/s (SXM data sheets)
LR, B1, B2, EPS, WD, WARMUP, TOTAL = 1e-3, 0.9, 0.95, 1e-8, 0.01, 200, 20_000


def _tokens(args, n):
    import numpy as np

    return np.random.default_rng(0).integers(0, 50_000, (n, args.batch, args.seq), dtype=np.int32)


def run_jax(args, forces: bool, fused: bool) -> dict:
    import jax

    from train import train
    from weibull_jax import compilation_cache, models, optim, sharding

    compilation_cache.use(args.compilation_cache)
    config = models.preset(args.preset, dtype="bfloat16", max_seq_len=args.seq,
                           embedding_gradient=args.embedding_gradient)
    schedule = optim.learning_rate_schedule("cosine", LR, TOTAL, WARMUP)
    optimizer = optim.make_optimizer("adamw", schedule, WD, B1, B2, EPS)
    devices = jax.devices()[:args.devices]
    mesh = None if args.mesh == "none" else sharding.make_mesh(
        *((len(devices), 1) if args.mesh == "data" else (1, len(devices))), devices=devices)
    shardings = None if mesh is None else train.state_shardings(config, optimizer, mesh)
    rows = None if mesh is None else sharding.batch_sharding(mesh)
    state = train.create_train_state(config, optimizer, jax.random.key(0), shardings=shardings)
    wd = optim.decay_per_leaf(state.params, WD)
    fused = fused and jax.default_backend() == "gpu"  # elsewhere the kernel would run in Pallas' interpreter
    step = train.make_train_step(config, optimizer, schedule, wd, dict(b1=B1, b2=B2, eps=EPS), forces,
                                 shardings=shardings, batch_sharding=rows, fused=fused)
    batches = [jax.device_put(t) if mesh is None else sharding.global_batch(t, rows) for t in _tokens(args, 4)]
    start = time.perf_counter()
    for i in range(max(args.warmup, 1)):
        state, metrics = step(state, batches[i % 4])
        if i == 0:  # compiled (or loaded from --compilation_cache) and run
            jax.block_until_ready(metrics)
            first_step = time.perf_counter() - start
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(args.steps):
        state, metrics = step(state, batches[i % 4])
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    if args.profile:  # a trace of 5 steps, the step's optimized HLO, and the kernel table of both
        import kernel_table  # tests/benchmarks/kernel_table.py
        hlo = step.lower(state, batches[0]).compile().as_text()
        carried = [state]

        def one_step():
            carried[0], step_metrics = step(carried[0], batches[0])
            return step_metrics

        kernel_table.profile(one_step, hlo, args.profile)
    peak = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in devices)
    return {"seconds_per_step": seconds / args.steps, "peak_bytes": peak, "loss": float(metrics["loss"]),
            "first_step": first_step, "device": jax.devices()[0].device_kind, "version": f"jax {jax.__version__}"}


def _cosine_factor(t: int) -> float:
    """η_t/η of ``learning_rate_schedule("cosine", η, TOTAL, WARMUP)`` in plain Python (no JAX in torch runs)."""
    if t < WARMUP:
        return t / WARMUP
    return 0.1 + 0.9 * (1 + math.cos(math.pi * min(t - WARMUP, TOTAL - WARMUP) / (TOTAL - WARMUP))) / 2


def run_torch(args, compiled: bool, forces: bool) -> dict:
    import torch
    import transformers

    from weibull_jax import convert, models

    hf = convert.config_to_hf(models.preset(args.preset, max_seq_len=args.seq))
    rank, world, device = 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.peer:  # a torchrun worker: NCCL between GPUs, gloo between CPU processes
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**hf)).to(device).train()
    if args.peer == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.index is not None
                                                          else None)
    elif args.peer == "fsdp":  # FSDP2: each layer's parameters sharded over the ranks, then the rest
        from torch.distributed.fsdp import fully_shard

        for layer in model.gpt_neox.layers:
            fully_shard(layer)
        fully_shard(model)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, betas=(B1, B2), eps=EPS, fused=device.type == "cuda")
    lr_of_step = torch.optim.lr_scheduler.LambdaLR(opt, _cosine_factor)
    forward = torch.compile(model) if compiled else model
    rows = args.batch // world  # this rank's block of the global batch
    batches = torch.as_tensor(_tokens(args, 4)[:, rank * rows:(rank + 1) * rows], device=device, dtype=torch.long)

    def step(tokens):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(input_ids=tokens, labels=tokens).loss
        loss.backward()
        before = [p.detach().clone() for p in decay] if forces else None
        lr = opt.param_groups[0]["lr"]
        opt.step()
        lr_of_step.step()
        opt.zero_grad(set_to_none=True)
        if forces:  # alignment, injection, decay per matrix from the moments, as a tensor (no host sync)
            terms = []
            for w, p in zip(before, decay):
                s = opt.state[p]
                t = float(s["step"])
                u = (s["exp_avg"] / (1 - B1 ** t)) / ((s["exp_avg_sq"] / (1 - B2 ** t)).sqrt() + EPS)
                terms.append(torch.stack([-2 * lr * (w * u).sum(), lr * lr * (u * u).sum(),
                                          -2 * lr * WD * (w * w).sum()]))
            return loss, torch.stack(terms)
        return loss, None

    def settle():
        if device.type == "cuda":
            torch.cuda.synchronize()
        if args.peer:
            torch.distributed.barrier()

    start = time.perf_counter()
    for i in range(max(args.warmup, 1)):
        step(batches[i % 4])
        if i == 0:  # compiled (torch.compile; inductor's caches as the host has them) and run
            settle()
            first_step = time.perf_counter() - start
    settle()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(args.steps):
        loss, _ = step(batches[i % 4])
    settle()
    seconds = time.perf_counter() - start
    peak = torch.tensor(torch.cuda.max_memory_allocated() if device.type == "cuda" else 0, device=device)
    if args.peer:  # the largest over the ranks
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
        loss = loss.detach().clone()
        torch.distributed.all_reduce(loss)  # the global batch's mean loss
        loss /= world
        torch.distributed.destroy_process_group()
    return {"seconds_per_step": seconds / args.steps, "peak_bytes": int(peak), "loss": float(loss), "rank": rank,
            "first_step": first_step,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "version": f"torch {torch.__version__}, transformers {transformers.__version__}"}


def run_variant(args) -> dict:
    if args.variant.startswith("jax"):
        return run_jax(args, forces="forces" in args.variant, fused=not args.variant.endswith("-xla"))
    return run_torch(args, compiled=args.variant == "torch.compile", forces=args.variant == "torch+forces")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pythia-70m")
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--profile", default="", help="jax variants: write a profiler trace of 5 steps and the "
                        "step's HLO here, and print where the device time went (kernel_table.py)")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant and print its JSON (internal)")
    parser.add_argument("--mesh", choices=("none", "data", "fsdp"), default="none",
                        help="jax variants: shard the global batch over --devices (data), and the weights (fsdp)")
    parser.add_argument("--devices", type=int, default=1, help="jax variants with --mesh: how many devices")
    parser.add_argument("--peer", choices=("", "ddp", "fsdp"), default="",
                        help="torch variants under torchrun: DistributedDataParallel or FSDP2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=1, help="run each variant this many times, alternating; "
                        "report the median run")
    parser.add_argument("--compilation_cache", default="", help="jax variants: keep and load their compiled "
                        "programs here (weibull_jax.compilation_cache; with --runs 2 the second run's first step "
                        "loads them); empty: compile every time")
    parser.add_argument("--embedding_gradient", choices=("scatter", "sorted"), default="scatter",
                        help="jax variants: how the embedding table's gradient is summed (weibull_jax.embedding)")
    args = parser.parse_args()
    if args.variant:
        result = run_variant(args)
        if result.get("rank", 0) == 0:
            print(json.dumps(result))
        return
    runs: dict[str, list[dict]] = {}
    order = args.variants.split(",")
    for round_ in range(args.runs):
        for variant in order if round_ % 2 == 0 else order[::-1]:
            profile = args.profile and round_ == 0
            cmd = [sys.executable, __file__, "--variant", variant] + [
                f"--{k}={getattr(args, k)}" for k in ("preset", "batch", "seq", "steps", "warmup",
                                                      "compilation_cache", "embedding_gradient")] + (
                [f"--profile={args.profile}/{variant}"] if profile else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"{variant}: failed\n{done.stderr[-3000:]}")
                continue
            runs.setdefault(variant, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
            if profile and os.path.exists(f"{args.profile}/{variant}/kernels.txt"):
                with open(f"{args.profile}/{variant}/kernels.txt") as f:
                    print(f"{variant}, where the device time went:\n{f.read()}")
    results = {variant: sorted(rs, key=lambda r: r["seconds_per_step"])[len(rs) // 2] for variant, rs in runs.items()}
    from weibull_jax.models import flops, preset

    tokens = args.batch * args.seq
    reference = results.get("torch.compile", {}).get("seconds_per_step")
    device = next(iter(results.values()))["device"] if results else ""
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
    per_token = flops.training_flops_per_token(preset(args.preset), args.seq)
    print(f"{args.preset}, batch {args.batch} × seq {args.seq}, bf16, AdamW; {device}")
    print(f"{'variant':<15}{'ms/step':>10}{'tokens/s':>12}{'peak GiB':>10}{'vs torch.compile':>18}{'MFU':>7}  loss")
    for variant, r in results.items():
        ratio = f"{reference / r['seconds_per_step']:.2f}×" if reference else "-"
        mfu = f"{per_token * tokens / r['seconds_per_step'] / peak:.1%}" if peak else "-"
        print(f"{variant:<15}{1e3 * r['seconds_per_step']:>10.2f}{tokens / r['seconds_per_step']:>12,.0f}"
              f"{r['peak_bytes'] / 2**30:>10.2f}{ratio:>18}{mfu:>7}  {r['loss']:.3f}   ({r['version']})")
    if args.runs > 1:
        print("ms/step of each run (the table: the median run): " + "; ".join(
            variant + "".join(f" {1e3 * r['seconds_per_step']:.2f}" for r in rs) for variant, rs in runs.items()))
    print("first step of each run, s (compiled or loaded from a cache, and run): " + "; ".join(
        variant + "".join(f" {r['first_step']:.1f}" for r in rs) for variant, rs in runs.items()))
    if peak:
        causal = flops.training_flops_per_token(preset(args.preset), args.seq, causal=True)
        print(f"MFU: {per_token / 1e9:.3f} GFLOP a token (6N + 12·L·T·d_attn, PaLM's count; {causal / 1e9:.3f} with "
              f"the causal half of the attention) over {peak / 1e12:.1f} TFLOP/s dense bf16")
    for variant, without in (("jax+forces", "jax"), ("jax+forces-xla", "jax-xla")):
        if without in results and variant in results:
            cost = results[variant]["seconds_per_step"] / results[without]["seconds_per_step"] - 1
            print(f"cost of the forces in the jitted step ({variant} over {without}): {100 * cost:+.1f} %")


if __name__ == "__main__":
    main()
