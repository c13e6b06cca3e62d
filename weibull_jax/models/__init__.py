"""Flax (linen) models: GPT-NeoX/Pythia and LLaMA-style decoders, their presets and the LM loss."""

from weibull_jax.models.causal_lm import CausalLM, init_params
from weibull_jax.models.layers import next_token_loss
from weibull_jax.models.presets import PRESETS, ModelConfig, preset

__all__ = ["CausalLM", "ModelConfig", "PRESETS", "init_params", "next_token_loss", "preset"]
