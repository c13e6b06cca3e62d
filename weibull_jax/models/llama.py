"""The LLaMA block: RMSNorm, separate W_q/W_k/W_v/W_o with optional GQA, full rotary, SwiGLU, no biases.

x ← x + Attn(RMSNorm(x)); x ← x + W_down(SiLU(W_gate x) ⊙ W_up x) on RMSNorm(x) (Touvron et al., 2023).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from weibull_jax.models import layers
from weibull_jax.models.presets import ModelConfig


def _rms_norm(config: ModelConfig, name: str) -> nn.RMSNorm:
    return nn.RMSNorm(epsilon=config.norm_eps, dtype=layers.compute_dtype(config), param_dtype=jnp.float32,
                      scale_init=layers.named(nn.initializers.ones_init(), "embed"), name=name)


class LlamaAttention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        c = self.config
        s_in, s_out = layers.init_stddevs(c)
        def heads(name: str, count: int, axis: str) -> jax.Array:
            w = layers.projection(c, count * c.head_dim, s_in, False, name, ("embed", axis))
            return w(x).reshape(*x.shape[:-1], count, c.head_dim)

        q, k, v = heads("q", c.n_heads, "heads"), heads("k", c.kv_heads, "kv"), heads("v", c.kv_heads, "kv")
        out = layers.rotary_attention(c, q, k, v, positions)
        return layers.projection(c, c.d_model, s_out, False, "o", ("heads", "embed"))(out)


class LlamaMLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        s_in, s_out = layers.init_stddevs(c)
        gate = layers.projection(c, c.d_ff, s_in, False, "gate", ("embed", "mlp"))(x)
        up = layers.projection(c, c.d_ff, s_in, False, "up", ("embed", "mlp"))(x)
        return layers.projection(c, c.d_model, s_out, False, "down", ("mlp", "embed"))(jax.nn.silu(gate) * up)


class LlamaBlock(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        c = self.config
        x = x + LlamaAttention(c, name="attention")(_rms_norm(c, "attention_norm")(x), positions)
        return x + LlamaMLP(c, name="mlp")(_rms_norm(c, "mlp_norm")(x))


def final_norm(config: ModelConfig) -> nn.Module:
    return _rms_norm(config, "final_norm")
