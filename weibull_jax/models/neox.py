"""The GPT-NeoX (Pythia) block: LayerNorm with bias, fused per-head [q|k|v], partial rotary, GeLU MLP.

Parallel residual (Black et al., 2022): x + Attn(LN₁(x)) + MLP(LN₂(x)); sequential when the config says so.
The fused ``qkv`` kernel keeps HuggingFace's output layout (heads, 3, head_dim), so a converted matrix is
the same numbers, transposed, and its Weibull fit is the fit of the HF tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from weibull_jax.models import layers
from weibull_jax.models.presets import ModelConfig


def _layer_norm(config: ModelConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.norm_eps, use_fast_variance=False, dtype=layers.compute_dtype(config),
                        param_dtype=jnp.float32, scale_init=layers.named(nn.initializers.ones_init(), "embed"),
                        bias_init=layers.named(nn.initializers.zeros_init(), "embed"), name=name)


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

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        c = self.config
        attention = NeoXAttention(c, name="attention")(_layer_norm(c, "input_norm")(x), positions)
        if c.parallel_residual:
            return x + attention + NeoXMLP(c, name="mlp")(_layer_norm(c, "post_attention_norm")(x))
        x = x + attention
        return x + NeoXMLP(c, name="mlp")(_layer_norm(c, "post_attention_norm")(x))


def final_norm(config: ModelConfig) -> nn.Module:
    return _layer_norm(config, "final_norm")
