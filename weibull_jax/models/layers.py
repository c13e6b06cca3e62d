r"""The pieces both model families share: rotary embeddings, causal attention, projections, the LM loss.

Mixed precision follows ``torch.autocast``: parameters and the residual stream stay float32; projections
and attention run in the config's compute dtype; norms and softmax statistics are computed in float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from weibull_jax import anchor, cross_entropy, pallas_triton, tree
from weibull_jax.models.presets import ModelConfig


def compute_dtype(config: ModelConfig) -> jnp.dtype:
    return jnp.dtype(config.dtype)


def init_stddevs(config: ModelConfig) -> tuple[float, float]:
    """(σ_in, σ_out): the initial standard deviations of input- and output-side matrices (App. A.3)."""
    return (anchor.init_sigma(config.init_in, config.d_model, config.n_layers),
            anchor.init_sigma(config.init_out, config.d_model, config.n_layers))


def named(init, *axes: str):
    """An initialiser whose parameter carries logical axis names (``embed``, ``mlp``, ``heads``, ``kv``,
    ``vocab``), which :mod:`weibull_jax.sharding` maps onto a device mesh; the values are ``init``'s."""
    return nn.with_logical_partitioning(init, axes)


def projection(config: ModelConfig, features: int, stddev: float, use_bias: bool, name: str,
               axes: tuple[str, str]) -> nn.Dense:
    """A linear map ``x @ kernel (+ bias)``, kernel (in, out) drawn from N(0, stddev²), bias from 0; ``axes``
    names the kernel's (in, out) axes (the bias has the out axis)."""
    return nn.Dense(features, use_bias=use_bias, dtype=compute_dtype(config), param_dtype=jnp.float32,
                    kernel_init=named(nn.initializers.normal(stddev), *axes),
                    bias_init=named(nn.initializers.zeros_init(), axes[1]), name=name)


def cast_kernels(params: dict, config: ModelConfig) -> dict:
    """The projections' kernels (every leaf named ``kernel``) in the compute dtype; the other leaves as they are.

    ``nn.Dense`` casts its float32 kernel to the compute dtype before the product, so casting first gives
    the same forward bits. The gradient then stays in the compute dtype: each kernel enters one product,
    whose output is its gradient, and autodiff no longer converts it to float32 in a pass of its own (the
    transpose of the cast). Converted, it is the same float32 number, so a consumer that converts it while
    reading (``weibull_jax.fused_adamw``) gets optax's inputs and reads half the bytes.
    """
    dtype = compute_dtype(config)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.astype(dtype) if tree.key_name(path[-1]) == "kernel" else x, params)


def rotary(x: jax.Array, positions: jax.Array, rotary_dim: int, base: float) -> jax.Array:
    r"""Rotary position embedding on the first ``rotary_dim`` dimensions of each head (GPT-NeoX layout).

    With θ_j = base^{−2j/r} and x = [x₁ | x₂] the two halves of the rotated part,
    x ↦ x·cos(pθ) + [−x₂ | x₁]·sin(pθ); the remaining dimensions pass through. x: (batch, seq, heads, dim).
    The map is a rotation R(pθ) of each pair, so its backward is the rotation by −pθ, written as such
    (autodiff's transpose of the slices and the concatenation is a sum of zero-padded arrays, which XLA fuses
    into the q|k|v gradient's assembly at a quarter of the memory's bandwidth; README, Speed).
    """
    if rotary_dim == 0:
        return x
    return _rotate(x, positions, rotary_dim, base)


def _rotation(x, positions, rotary_dim, base, sign):
    inv_freq = 1.0 / base ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]
    turned, passed = x[..., :rotary_dim].astype(jnp.float32), x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = jnp.concatenate([-turned[..., half:], turned[..., :half]], axis=-1)
    turned = turned * jnp.cos(angles) + rotated * (sign * jnp.sin(angles))
    return jnp.concatenate([turned.astype(x.dtype), passed], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _rotate(x, positions, rotary_dim, base):
    return _rotation(x, positions, rotary_dim, base, 1.0)


def _rotate_forward(x, positions, rotary_dim, base):
    return _rotate(x, positions, rotary_dim, base), positions


def _rotate_backward(rotary_dim, base, positions, grad):
    return _rotation(grad, positions, rotary_dim, base, -1.0), None


_rotate.defvjp(_rotate_forward, _rotate_backward)


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    r"""Exact GeLU, x·Φ(x) = ½x(1 + erf(x/√2)), computed in float32 (or x's wider dtype) and rounded to x's
    dtype: torch's GELU (``nn.functional.gelu``, which HF's Pythia uses) in the same form, also in float32
    under autocast.

    Its backward, dx = dy·(Φ(x) + x·φ(x)) with φ(x) = e^{−x²/2}/√(2π), is written out so that the forward
    keeps only x for it (autodiff of the formula would keep its float32 intermediates; README, Speed).
    """
    wide = _widened(x)
    return (wide * _gelu_cdf(wide)).astype(x.dtype)


def _widened(x: jax.Array) -> jax.Array:
    return x.astype(pallas_triton.wide(x.dtype))


def _gelu_cdf(x: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def _gelu_forward(x):
    return gelu(x), x


def _gelu_backward(x, grad):
    wide = _widened(x)
    slope = _gelu_cdf(wide) + wide * jnp.exp(-0.5 * wide * wide) * (1.0 / math.sqrt(2.0 * math.pi))
    return ((grad.astype(wide.dtype) * slope).astype(x.dtype),)


gelu.defvjp(_gelu_forward, _gelu_backward)


class NormParams(nn.Module):
    """A LayerNorm's float32 parameters over the residual axis, (γ, β) = (``scale``, ``bias``), initialised to 1
    and 0 and named as ``nn.LayerNorm`` names them; :func:`weibull_jax.layer_norm.layer_norms` applies them."""
    features: int

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        return (self.param("scale", named(nn.initializers.ones_init(), "embed"), (self.features,), jnp.float32),
                self.param("bias", named(nn.initializers.zeros_init(), "embed"), (self.features,), jnp.float32))


def causal_attention(config: ModelConfig, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q kᵀ/√d_head + causal mask) v, heads (B, T, N, H); k, v may have fewer heads (GQA/MQA)."""
    implementation = config.attention
    if implementation == "auto":
        half = compute_dtype(config) in (jnp.bfloat16, jnp.float16)
        implementation = "cudnn" if half and jax.default_backend() == "gpu" else "xla"
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)


def rotary_attention(config: ModelConfig, q: jax.Array, k: jax.Array, v: jax.Array,
                     positions: jax.Array) -> jax.Array:
    """Rotary embeddings on q and k, causal attention, heads merged: (B, T, N, H) → (B, T, N·H)."""
    q = rotary(q, positions, config.rotary_dim, config.rope_base)
    k = rotary(k, positions, config.rotary_dim, config.rope_base)
    out = causal_attention(config, q, k, v)
    return out.reshape(*out.shape[:-2], -1)


def next_token_targets(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(targets, scored): position t's target is ``tokens[:, t+1]``, scored for t < T − 1 (the last one's target
    is a dummy, ``tokens[:, 0]``).

    Losses are taken over all T positions and masked rather than over ``logits[:, :-1]``: the slice's gradient
    would be a padded copy of the whole (batch, T, vocab) gradient.
    """
    scored = jnp.broadcast_to(jnp.arange(tokens.shape[-1]) < tokens.shape[-1] - 1, tokens.shape)
    return jnp.roll(tokens, -1, axis=-1), scored


def next_token_loss(logits: jax.Array, tokens: jax.Array, fused: bool = False) -> jax.Array:
    """Mean cross-entropy of predicting ``tokens[:, t+1]`` from ``logits[:, t]``, t < T − 1.

    ``fused``: the loss and its gradient in one kernel on a CUDA GPU, for logits on one device
    (:func:`weibull_jax.cross_entropy.mean_cross_entropy`); else XLA's passes.
    """
    targets, scored = next_token_targets(tokens)
    return cross_entropy.mean_cross_entropy(logits, targets, scored, pallas_triton.path_for(fused))
