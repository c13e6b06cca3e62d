"""Whole-model Weibull fit: weibull-jax (one jitted call) vs npm-weibull-py 0.4 on the same arrays.

  PYTHONPATH=. python tests/benchmarks/bench_weibull.py [--preset=pythia-70m] [--repeats=50]

Fits the 24 transformer matrices of a freshly initialised Pythia-70M-shaped model (W_qkv, W_o, W_FFN_in,
W_FFN_out × 6 blocks; 18.9 M weights), times the warm jitted call on the default JAX device (median of
``repeats``), times npm-weibull-py (``extract_to_histogram`` + ``weibull_fit`` per matrix) on the host in
the same run, prints both, their ratio and the largest |Δk| and |Δλ|/λ between them, and where the call's
time goes: the host's work before and after the compiled program (the tree's leaves and the checks; the
transfer, the per-matrix split and the tree rebuilt) against the program itself, and the fit of the
histogram's counts by XLA's chain and, on a CUDA GPU, by the fit kernel (``weibull._binned_table_in_kernel``).
``--blocks=N`` times N consecutive blocks of calls (how the call's time drifts within one process).
``--profile=DIR`` writes a profiler trace of 5 calls of the program, its HLO and its kernels' table
(``kernel_table.py``). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np

from weibull_jax import bincount, models, taxonomy, tree, weibull

from timing import median_seconds  # tests/benchmarks/timing.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pythia-70m")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--reference_repeats", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=1,
                        help="time the warm call in this many consecutive blocks of --repeats calls (the drift "
                             "within one process); the first block's median is the one compared")
    parser.add_argument("--profile", default="", help="write a profiler trace of the fits' program here")
    args = parser.parse_args()
    import npm_weibull

    params = models.init_params(models.preset(args.preset), jax.random.key(0))
    names, leaves, _, _ = tree.named_leaves(params)
    host = {n: np.asarray(w) for n, w in zip(names, leaves) if taxonomy.block_of(n) >= 0}
    device = jax.device_put(host)
    n_weights = sum(w.size for w in host.values())

    fits = weibull.fit_weibull_tree(device)  # compile and check once
    blocks = [median_seconds(lambda: weibull.fit_weibull_tree(device), args.repeats, wait=False)  # numpy fits
              for _ in range(args.blocks)]
    ours = blocks[0]

    def reference():
        return {n: npm_weibull.weibull_fit(npm_weibull.extract_to_histogram(w)) for n, w in host.items()}

    ref = reference()
    theirs = median_seconds(reference, args.reference_repeats)
    dk = max(abs(float(fits[n].k) - ref[n]["k"]) for n in host)
    dl = max(abs(float(fits[n].scale) / ref[n]["lambda"] - 1) for n in host)
    single = {n: weibull.fit_weibull(w) for n, w in device.items()}
    identical = all(np.array_equal(np.asarray(a), np.asarray(b)) for n in host for a, b in zip(single[n], fits[n]))

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"model: {args.preset}, {len(host)} matrices, {n_weights / 1e6:.1f} M weights")
    print(f"weibull-jax fit_weibull_tree (warm, jitted, median of {args.repeats}): {ours * 1e3:8.3f} ms")
    print(f"npm-weibull-py 0.4 on the host (median of {args.reference_repeats}):       {theirs * 1e3:8.1f} ms")
    print(f"speed-up: {theirs / ours:.0f}x")
    if args.blocks > 1:
        print(f"medians of {args.blocks} consecutive blocks of {args.repeats} calls: "
              + ", ".join(f"{b * 1e3:.3f}" for b in blocks) + " ms")
    print(f"agreement: max |dk| = {dk:.2e}, max |dλ|/λ = {dl:.2e}; tree == single fits bit for bit: {identical}")
    print("where fit_weibull_tree's time goes (medians, µs): " + ", ".join(
        f"{k} {v * 1e6:.0f}" for k, v in breakdown(device, args.repeats).items()))
    if args.profile:
        import kernel_table  # tests/benchmarks/kernel_table.py

        program = _program(leaves := list(device.values()))
        hlo = jax.jit(program).lower(tuple(leaves)).compile().as_text()
        print("\n".join(kernel_table.profile(lambda: program(tuple(leaves)), hlo, args.profile)))


def breakdown(params, repeats: int) -> dict[str, float]:
    """Median seconds of each stage of ``weibull.fit_weibull_tree(params)``, timed apart."""
    names, leaves, treedef, positions = tree.named_leaves(params, tree.is_weight_matrix)
    arrays = tuple(leaves)
    program = _program(leaves)
    table = np.asarray(program(arrays))
    fits = weibull._split_rows(table, leaves)[0]
    kernel = weibull.counts_in_shared_memory(leaves)
    slots = jax.jit(weibull.log10_histogram, static_argnums=(1, 2))([weibull.as_rows(w) for w in leaves], False, kernel)
    fits_of_counts = {"fit of the counts, XLA": jax.jit(functools.partial(weibull._binned_table, trims=(0.1,)))}
    if bincount.available():
        fits_of_counts["fit of the counts, fit kernel"] = jax.jit(
            functools.partial(weibull._binned_table_in_kernel, trims=(0.1,)))
    return {
        "leaves": median_seconds(lambda: tree.named_leaves(params, tree.is_weight_matrix), repeats, wait=False),
        "checks": median_seconds(lambda: [weibull.check_array(n, w) for n, w in zip(names, leaves)], repeats,
                                 wait=False),
        "program (dispatch to ready)": median_seconds(lambda: program(arrays), repeats),
        "program and transfer": median_seconds(lambda: np.asarray(program(arrays)), repeats, wait=False),
        "status check": median_seconds(lambda: weibull.raise_on_bad(names, leaves, table[-1]), repeats, wait=False),
        "split": median_seconds(lambda: weibull._split_rows(table, leaves), repeats, wait=False),
        "tree": median_seconds(lambda: tree.unflatten_selected(treedef, positions, fits), repeats, wait=False),
        **{name: median_seconds(lambda fit=fit: fit(slots), repeats) for name, fit in fits_of_counts.items()},
    }


def _program(leaves):
    """The call's program: its kernels (a CUDA GPU) and its table's memory (a GPU's pinned host memory)."""
    return weibull._fit_program((0.1,), "histogram", False, *weibull._placement(leaves))


if __name__ == "__main__":
    main()
