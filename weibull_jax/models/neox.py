"""The GPT-NeoX (Pythia) block: LayerNorm with bias, fused per-head [q|k|v], partial rotary, GeLU MLP.

Parallel residual (Black et al., 2022): x + Attn(LN₁(x)) + MLP(LN₂(x)); sequential when the config says so.
The fused ``qkv`` kernel keeps HuggingFace's output layout (heads, 3, head_dim), so a converted matrix is
the same numbers, transposed, and its Weibull fit is the fit of the HF tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from weibull_jax import layer_norm, pallas_triton
from weibull_jax.models import layers
from weibull_jax.models.presets import ModelConfig


def _norms(config: ModelConfig, x: jax.Array, names: tuple[str, ...], fused: bool, residual: bool = False):
    """x under the LayerNorms ``names`` (their statistics shared), in the compute dtype; with ``residual``, x
    first (:func:`weibull_jax.layer_norm.layer_norms`). ``fused``: the kernels on a GPU, for one device."""
    norms = tuple(layers.NormParams(config.d_model, name=name)() for name in names)
    return layer_norm.layer_norms(x, norms, config.norm_eps, layers.compute_dtype(config),
                                  pallas_triton.path_for(fused), residual)


class NeoXAttention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        c = self.config
        s_in, s_out = layers.init_stddevs(c)
        qkv = layers.projection(c, 3 * c.d_model, s_in, True, "qkv", ("embed", "heads"))(x)
        qkv = qkv.reshape(*x.shape[:-1], c.n_heads, 3, c.head_dim)
        q, k, v = (part[..., 0, :] for part in jnp.split(qkv, 3, axis=-2))  # whose transpose is a concatenation
        out = layers.rotary_attention(c, q, k, v, positions)
        return layers.projection(c, c.d_model, s_out, True, "o", ("heads", "embed"))(out)


class NeoXMLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        s_in, s_out = layers.init_stddevs(c)
        h = layers.gelu(layers.projection(c, c.d_ff, s_in, True, "ffn_in", ("embed", "mlp"))(x))
        return layers.projection(c, c.d_model, s_out, True, "ffn_out", ("mlp", "embed"))(h)


class NeoXBlock(nn.Module):
    config: ModelConfig
    fused: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        c = self.config
        if c.parallel_residual:
            x, normed, mlp_normed = _norms(c, x, ("input_norm", "post_attention_norm"), self.fused, residual=True)
            return x + NeoXAttention(c, name="attention")(normed, positions) + NeoXMLP(c, name="mlp")(mlp_normed)
        x = x + NeoXAttention(c, name="attention")(_norms(c, x, ("input_norm",), self.fused)[0], positions)
        return x + NeoXMLP(c, name="mlp")(_norms(c, x, ("post_attention_norm",), self.fused)[0])


def final_norm(config: ModelConfig, fused: bool = False):
    return lambda x: _norms(config, x, ("final_norm",), fused)[0]
