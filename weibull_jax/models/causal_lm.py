"""The decoder-only language model around a family's block: embed → L blocks → final norm → untied head.

``CausalLM(config).apply({"params": params}, tokens)`` is a pure function of the parameter tree, which
reads (GPT-NeoX)::

    embed.embedding (V, d)
    layers_{i}.input_norm.{scale,bias}   layers_{i}.post_attention_norm.{scale,bias}
    layers_{i}.attention.qkv.{kernel (d, 3d), bias}   layers_{i}.attention.o.{kernel, bias}
    layers_{i}.mlp.ffn_in.{kernel, bias}   layers_{i}.mlp.ffn_out.{kernel, bias}
    final_norm.{scale,bias}   unembed.kernel (d, V)

for LLaMA ``attention_norm``/``mlp_norm`` (scale only), ``attention.{q,k,v,o}``, ``mlp.{gate,up,down}``,
all without biases; for GPT-2 (modded-nanoGPT) ``attention.{q,k,v,o}`` and ``mlp.{ffn_in,ffn_out}``, without
biases or norm gains. Blocks are separate subtrees (not a scanned stack) so that every matrix keeps the name
and the block index that :mod:`weibull_jax.taxonomy` reads.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from weibull_jax import embedding
from weibull_jax.models import gpt2, layers, llama, neox
from weibull_jax.models.presets import ModelConfig

_FAMILY = {"gpt_neox": (neox.NeoXBlock, neox.final_norm), "llama": (llama.LlamaBlock, llama.final_norm),
           "gpt2": (gpt2.GPT2Block, gpt2.final_norm)}


class CausalLM(nn.Module):
    """``fused``: GPT-NeoX's LayerNorms in their kernels on a GPU (:mod:`weibull_jax.layer_norm`), for one
    device."""
    config: ModelConfig
    fused: bool = False

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Logits (batch, seq, vocab) in the compute dtype for int tokens (batch, seq)."""
        c = self.config
        block, final_norm = _FAMILY[c.family]
        s_in, _ = layers.init_stddevs(c)
        embed = nn.Embed(c.vocab_size, c.d_model, param_dtype=jnp.float32,
                         embedding_init=layers.named(nn.initializers.normal(s_in), "vocab", "embed"), name="embed")
        x = embedding.lookup(embed.embedding, tokens) if c.embedding_gradient == "sorted" else embed(tokens)
        positions = jnp.arange(tokens.shape[-1])
        fused = {"fused": self.fused} if c.family == "gpt_neox" else {}
        for i in range(c.n_layers):
            x = block(c, name=f"layers_{i}", **fused)(x, positions)
        x = final_norm(c, **fused)(x)
        return layers.projection(c, c.vocab_size, s_in, False, "unembed", ("embed", "vocab"))(x)


def _init(config: ModelConfig, key: jax.Array) -> dict:
    """The parameter tree with its logical axis names (flax ``LogicallyPartitioned`` boxes)."""
    return CausalLM(config).init(key, jnp.zeros((1, 8), jnp.int32))["params"]


def init_params(config: ModelConfig, key: jax.Array, shardings: Any = None) -> dict:
    """A fresh parameter tree (float32) under the config's init recipes, created in place on the devices
    ``shardings`` (a tree like the parameters, :mod:`weibull_jax.sharding`) names; default: one device."""
    return jax.jit(lambda k: nn.unbox(_init(config, k)), out_shardings=shardings)(key)


def logical_axes(config: ModelConfig) -> dict:
    """A tree like the parameters of ``PartitionSpec``s of logical axis names, e.g. ``("embed", "mlp")``
    for an MLP's input kernel: what :func:`weibull_jax.sharding.param_shardings` maps onto a mesh."""
    return nn.get_partition_spec(jax.eval_shape(lambda k: _init(config, k), jax.random.key(0)))
