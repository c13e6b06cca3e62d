"""Pallas' Triton backend, where this JAX has it: the one import of the GPU kernels' modules.

jax 0.11 deprecates the backend in favour of Mosaic GPU. Where it is gone, ``plt`` is None and
:data:`AVAILABLE` is False, and the kernels' callers keep their XLA paths (:mod:`weibull_jax.bincount`,
:mod:`weibull_jax.rowwise`, :mod:`weibull_jax.fused_adamw`, :mod:`weibull_jax.cross_entropy`).
"""

try:
    from jax.experimental.pallas import triton as plt
except ImportError:
    plt = None

AVAILABLE = plt is not None and hasattr(plt, "load") and hasattr(plt, "store")
