"""The modded-nanoGPT-style GPT-2 block (Jordan et al., 2024): parameter-free RMSNorm, separate W_q/W_k/W_v/W_o
with full rotary embeddings, a ReLU² MLP, no biases; the head is untied (``CausalLM``).

x ← x + W_o Attn(RMSNorm(x)); x ← x + W_FFN_out relu(W_FFN_in RMSNorm(x))². The SoSD paper trains this
family (GPT-2 Small, 124M, on the modded-nanoGPT recipe, §3.1); the backbone paper's 51M GPT-2 (8 layers,
d 512, 16 heads, §2.1) is the ``gpt2-51m`` preset of the same block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from weibull_jax.models import layers
from weibull_jax.models.presets import ModelConfig


def rms_norm(x: jax.Array, eps: float) -> jax.Array:
    """x/√(mean(x²) + ε) over the last axis, in float32, without a learned gain."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


class GPT2Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        c = self.config
        s_in, s_out = layers.init_stddevs(c)
        heads = (*x.shape[:-1], c.n_heads, c.head_dim)
        q, k, v = (layers.projection(c, c.d_model, s_in, False, n, ("embed", "heads"))(x).reshape(heads)
                   for n in ("q", "k", "v"))
        out = layers.rotary_attention(c, q, k, v, positions)
        return layers.projection(c, c.d_model, s_out, False, "o", ("heads", "embed"))(out)


class GPT2MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        s_in, s_out = layers.init_stddevs(c)
        h = jax.nn.relu(layers.projection(c, c.d_ff, s_in, False, "ffn_in", ("embed", "mlp"))(x))
        return layers.projection(c, c.d_model, s_out, False, "ffn_out", ("mlp", "embed"))(h * h)


class GPT2Block(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        c = self.config
        x = x + GPT2Attention(c, name="attention")(rms_norm(x, c.norm_eps), positions)
        return x + GPT2MLP(c, name="mlp")(rms_norm(x, c.norm_eps))


def final_norm(config: ModelConfig):
    return lambda x: rms_norm(x, config.norm_eps)
