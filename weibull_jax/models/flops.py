r"""Model FLOPs of a training step, for the model FLOPs utilisation (MFU) of a benchmark.

A forward pass multiplies each token by every weight matrix but the embedding (a lookup): 2 FLOPs per
weight, N weights in all (the head included). Attention adds its two products, scores q·kᵀ and the
weighted sum of the values, 2·T·d_attn each per token and layer for a context of T (d_attn = heads ×
head size). The backward pass costs twice the forward (PaLM, Chowdhery et al. 2022, App. B):

.. math:: C = 6N + 12\,L\,T\,d_{attn} \quad\text{per token.}

PaLM counts the attention over the whole context; ``causal=True`` halves that term (the pairs a causal
kernel must compute, T/2 keys on average). Norms, softmax, activations, the optimizer and the forces are not
counted: MFU = C × tokens/s over the chip's dense peak measures the useful matrix work.
"""

from __future__ import annotations

import math

import jax

from weibull_jax import taxonomy, tree
from weibull_jax.models.causal_lm import init_params
from weibull_jax.models.presets import ModelConfig


def matmul_parameters(config: ModelConfig) -> int:
    """N: the weights of every matrix a token is multiplied by (all ≥ 2-D parameters but the embedding)."""
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    names, leaves, _, _ = tree.named_leaves(shapes)
    return sum(math.prod(x.shape) for name, x in zip(names, leaves)
               if len(x.shape) >= 2 and taxonomy.describe(name).kind != "embed")


def training_flops_per_token(config: ModelConfig, seq_len: int, causal: bool = False) -> float:
    """C = 6N + 12·L·T·d_attn (the attention term halved with ``causal``)."""
    attention = 12 * config.n_layers * seq_len * config.n_heads * config.head_dim * (0.5 if causal else 1.0)
    return 6.0 * matmul_parameters(config) + attention
