"""Pallas' Triton backend, where this JAX has it: the one import of the GPU kernels' modules.

jax 0.11 deprecates the backend in favour of Mosaic GPU. Where it is gone, ``plt`` is None and
:data:`AVAILABLE` is False, and the kernels' callers keep their XLA paths (:mod:`weibull_jax.bincount`,
:mod:`weibull_jax.rowwise`, :mod:`weibull_jax.fused_adamw`, :mod:`weibull_jax.cross_entropy`,
:mod:`weibull_jax.layer_norm`).
"""

import jax
import jax.numpy as jnp

try:
    from jax.experimental.pallas import triton as plt
except ImportError:
    plt = None

AVAILABLE = plt is not None and hasattr(plt, "load") and hasattr(plt, "store")


def path_for(fused: bool) -> str:
    """The ``path`` of a caller's ``fused`` flag: the kernel on a CUDA GPU, or XLA's passes everywhere."""
    return "kernel" if fused else "xla"


def dispatch(path: str, fits: bool, kernel, xla, *args):
    """A kernel module's ``path``: ``"interpret"``, ``kernel(*args, interpret=True)`` (Pallas' interpreter, for
    the tests); ``"kernel"``, where the operands ``fits`` and the backend is here, the kernel as the caller's
    program lowers for a CUDA GPU and ``xla`` on any other platform (``jax.lax.platform_dependent``);
    otherwise ``xla(*args)``."""
    if path == "interpret":
        return kernel(*args, interpret=True)
    if path == "kernel" and fits and AVAILABLE:
        return jax.lax.platform_dependent(*args, cuda=kernel, default=xla)
    return xla(*args)


def compiler_params(interpret: bool, num_warps: int, num_stages: int | None = 1):
    """Triton's launch settings for ``pl.pallas_call``, or None under Pallas' interpreter."""
    if interpret:
        return None
    return plt.CompilerParams(num_warps=num_warps, **({} if num_stages is None else {"num_stages": num_stages}))


def rows_per_program(width: int, block: int, divides: int) -> int:
    """A power of two that divides ``divides``, as near ``block`` / ``width`` (elements a program holds over
    rows of ``width``) as that allows."""
    r = max(1, block // width)
    while divides % r:
        r //= 2
    return r


def wide(dtype) -> jnp.dtype:
    """The kernels' arithmetic dtype for operands of ``dtype``: float32, or ``dtype`` if wider."""
    return jnp.promote_types(dtype, jnp.float32)

