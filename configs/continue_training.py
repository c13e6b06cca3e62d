"""Continue training a converted HuggingFace checkpoint with a fresh AdamW: ``--config=configs/continue_training.py:DIR``.

DIR is a local ``GPTNeoXForCausalLM`` or ``LlamaForCausalLM`` folder (config.json + weights), e.g. a Pythia
revision; the model fields are read from it, the optimizer starts from zero moments, and ``data.tokenizer``
should be that model's ``tokenizer.json`` so that token ids mean the same thing.
"""

import dataclasses

import ml_collections

from configs import pythia70m_v1b
from weibull_jax import convert


def get_config(checkpoint: str = ""):
    config = pythia70m_v1b.get_config()
    config.init_from = checkpoint
    if checkpoint:
        model = convert.config_from_hf(convert.read_hf_config(checkpoint)).replace(dtype="bfloat16")
        config.model = ml_collections.ConfigDict(dataclasses.asdict(model))
        config.data.tokenizer = f"{checkpoint}/tokenizer.json"
    config.optimizer.warmup_steps = 100
    config.steps = 2_000
    return config
