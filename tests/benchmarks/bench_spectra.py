"""Singular spectra: the ways to compute them on one device, timed side by side and checked against
numpy's float64 SVD.

  PYTHONPATH=. python tests/benchmarks/bench_spectra.py [--run_dir=runs/sosd_gpt2] [--repeats=20]

Methods: ``float64_gram`` (weibull-jax: the float64 Gram's eigenvectors, σ_i = ‖W v_i‖, one eigensolve
for all Grams of a size), ``float32_gram`` (the same in float32: the earlier method, and the one a TPU
gets), ``float64_eigvals`` (σ_i = √λ_i of the float64 Gram, one eigensolve a stack) and ``jnp.linalg.svd``
(float32). Workloads: the stack the issue quotes (24 × 512 × 512, Gaussian; again with Student-t (2 degrees
of freedom) weights) and the whole trunk of a model (every attention and MLP matrix,
W_qkv split; a fresh Pythia-70M, or the last snapshot of ``--run_dir``), batched per shape in one call.
Prints the median warm time of each and the largest |ΔSD| against float64 on the host, then each method's
SD variation between two heavy-tailed matrices 1e-4 apart (SoSD's floor) against float64's. With ``--eigh``,
first the time of one eigensolve of float64 Gram stacks of the given sizes, by each of
``--eigh_implementations``. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from weibull_jax import models, snapshots, spectra, tree

from timing import median_seconds  # tests/benchmarks/timing.py


def _by_shape(matrices: dict[str, np.ndarray]) -> list[jax.Array]:
    shapes: dict[tuple, list] = {}
    for w in matrices.values():
        shapes.setdefault(w.shape, []).append(w)
    return [jnp.asarray(np.stack(ws), jnp.float32) for ws in shapes.values()]


def _float64(fn):
    def run(ws):
        with jax.enable_x64(True):
            return [s.astype(jnp.float32) for s in fn([w.astype(jnp.float64) for w in ws])]
    return run


def _eigvals(ws):
    """σ_i = √λ_i of the smaller Gram matrices (eigenvalues only; one eigensolve a stack)."""
    ws = [w if w.shape[-1] <= w.shape[-2] else jnp.swapaxes(w, -1, -2) for w in ws]
    grams = [jnp.einsum("...ki,...kj->...ij", w, w, precision=jax.lax.Precision.HIGHEST) for w in ws]
    return [-jnp.sort(-jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(g), 0)), -1) for g in grams]


def eigh_table(cases: list[tuple[int, int]], repeats: int, implementations: list[str]) -> None:
    """``jax.lax.linalg.eigh`` of float64 Gram stacks (batch, n, n), with vectors, by each of ``implementations``
    (``default``: what ``jnp.linalg.eigh`` gets, on a CUDA GPU cuSOLVER's batched solver, whose floor per
    call is why the library solves all Grams of one size in one call; ``qr``, ``jacobi``: the lowering's other
    choices; ``tridiagonal``: ``jax.lax.linalg.tridiagonal`` alone, cuSOLVER's reduction to tridiagonal form
    (sytrd), the first step of an eigenvalues-only solve; ``torch_eigvalsh``: the peer's eigenvalues-only
    solve, ``torch.linalg.eigvalsh`` on the same Grams (shared through DLPack; cuSOLVER without vectors on a
    GPU, which jax's lowering never asks for): what one call costs against the batch."""
    eigh = jax.lax.linalg.eigh
    solvers = {"default": jax.jit(eigh),
               "qr": jax.jit(functools.partial(eigh, implementation=jax.lax.linalg.EighImplementation.QR)),
               "jacobi": jax.jit(functools.partial(eigh, implementation=jax.lax.linalg.EighImplementation.JACOBI)),
               "tridiagonal": jax.jit(jax.lax.linalg.tridiagonal), "torch_eigvalsh": _torch_eigvalsh}
    print(f"eigh of float64 Grams on {jax.devices()[0].device_kind}: batch x n, ms a call "
          f"({', '.join(implementations)})", flush=True)
    with jax.enable_x64(True):
        for batch, n in cases:
            x = jax.random.normal(jax.random.key(batch * n), (batch, n, n), jnp.float64)
            gram = jnp.einsum("bki,bkj->bij", x, x) / n
            times = []
            for name in implementations:
                times.append(f"{median_seconds(lambda: solvers[name](gram), repeats) * 1e3:8.1f}")
            print(f"  {batch:3d} x {n:4d}  {'  '.join(times)} ms", flush=True)


def _torch_eigvalsh(gram: jax.Array):
    """``torch.linalg.eigvalsh`` of a stack of Grams, waited for (torch's queue is not jax's)."""
    import torch

    values = torch.linalg.eigvalsh(torch.from_dlpack(gram))
    if values.is_cuda:
        torch.cuda.synchronize()
    return values


def _library(ws):
    return list(spectra._spectra(tuple(ws), normalise=False))


METHODS = {
    "float64_gram": _library,
    "float32_gram": lambda ws: spectra._gram_singular_values([w.astype(jnp.float32) for w in ws]),
    "float64_eigvals": _float64(_eigvals),
    "jnp.linalg.svd": lambda ws: [jnp.linalg.svd(w, compute_uv=False) for w in ws],
}


def compare(name: str, stacks: list[jax.Array], repeats: int) -> None:
    refs = []
    for x in stacks:
        ref = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
        refs.append(ref / ref.sum(-1, keepdims=True))
    print(f"{name}: {sum(x.shape[0] for x in stacks)} matrices in {len(stacks)} shapes on "
          f"{jax.devices()[0].device_kind}", flush=True)
    for method, fn in METHODS.items():
        batched = jax.jit(fn)
        seconds = median_seconds(lambda: batched(stacks), repeats)
        error = 0.0
        for s, ref in zip(batched(stacks), refs):
            s = np.asarray(s, np.float64)
            error = max(error, float(np.abs(s / s.sum(-1, keepdims=True) - ref).max()))
        print(f"  {method:20s} {seconds * 1e3:8.2f} ms   max |ΔSD| vs float64 {error:.2e}", flush=True)


def variation_of_a_pair() -> None:
    """SoSD's floor: the SD variation between two Student-t 512 × 512 matrices 1e-4 apart, by each method,
    against float64."""
    rng = np.random.default_rng(2)
    a = rng.standard_t(2, size=(512, 512)) * 0.02
    pair = np.stack([a, a + 1e-4 * 0.02 * rng.normal(size=a.shape)]).astype(np.float32)
    ref = np.linalg.svd(pair.astype(np.float64), compute_uv=False)
    ref /= ref.sum(-1, keepdims=True)
    want = np.linalg.norm(ref[0] - ref[1])
    print(f"SD variation of two Student-t matrices 1e-4 apart: float64 {want:.3e}")
    for method, fn in METHODS.items():
        s = np.asarray(jax.jit(fn)([jnp.asarray(pair)])[0], np.float64)
        sd = s / s.sum(-1, keepdims=True)
        got = np.linalg.norm(sd[0] - sd[1])
        print(f"  {method:20s} {got:.3e} ({got / want:.2f}x float64)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", default="", help="use the trunk of this run's last snapshot")
    parser.add_argument("--n_heads", type=int, default=8, help="heads of a fused W_qkv (with --run_dir)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--eigh", default="",
                        help="also time eigensolves of float64 Grams of these stacks, e.g. 6x512,96x2048")
    parser.add_argument("--eigh_implementations", default="default",
                        help="with --eigh: which of cuSOLVER's eigensolvers, e.g. "
                             "default,qr,jacobi,tridiagonal,torch_eigvalsh")
    args = parser.parse_args()
    if args.eigh:
        eigh_table([tuple(map(int, case.split("x"))) for case in args.eigh.split(",")], args.repeats,
                   args.eigh_implementations.split(","))
    gaussian = np.random.default_rng(0).normal(size=(24, 512, 512)).astype(np.float32) * 0.02
    compare("24 x 512 x 512 Gaussian", [jnp.asarray(gaussian)], args.repeats)
    heavy = np.random.default_rng(1).standard_t(2, size=(24, 512, 512)).astype(np.float32) * 0.02
    compare("24 x 512 x 512 Student-t", [jnp.asarray(heavy)], args.repeats)
    if args.run_dir:
        series = snapshots.Series(os.path.join(args.run_dir, "snapshots"))
        named, heads = series.params(len(series.steps) - 1), args.n_heads
        label = f"{args.run_dir} step {series.steps[-1]}"
    else:
        params = models.init_params(models.preset("pythia-70m"), jax.random.key(0))
        named, heads, label = dict(zip(*tree.named_leaves(params)[:2])), 8, "fresh Pythia-70M"
    trunk = {n: np.asarray(w) for n, w in spectra.trunk_matrices(named, heads).items()}
    compare(f"trunk of {label}", _by_shape(trunk), args.repeats)
    variation_of_a_pair()


if __name__ == "__main__":
    main()
