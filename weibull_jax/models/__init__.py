"""Flax (linen) models: GPT-NeoX/Pythia and LLaMA-style decoders, their presets and the LM loss."""

from weibull_jax.models.causal_lm import CausalLM, init_params, logical_axes
from weibull_jax.models.layers import cast_kernels, next_token_loss, next_token_targets
from weibull_jax.models.presets import EMBEDDING_GRADIENTS, PRESETS, ModelConfig, config_from_fields, preset

__all__ = ["CausalLM", "EMBEDDING_GRADIENTS", "ModelConfig", "PRESETS", "cast_kernels", "config_from_fields",
           "init_params", "logical_axes", "next_token_loss", "next_token_targets", "preset"]
