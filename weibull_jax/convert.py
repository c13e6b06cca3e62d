"""HuggingFace ↔ JAX conversion for ``GPTNeoXForCausalLM`` (Pythia) and ``LlamaForCausalLM`` checkpoints.

A checkpoint is a local folder with ``config.json`` and its weights as ``model.safetensors``, a sharded
``model.safetensors.index.json`` or ``pytorch_model.bin`` (read with torch, imported only then). A Pythia
revision series is a folder of such folders named ``step{N}`` (what ``revision="step{N}"`` downloads).

Every tensor goes through one table (:func:`tensor_map`) in both directions: HF ``nn.Linear`` weights
(out, in) become Flax kernels (in, out), everything else is copied. Nothing here needs ``transformers``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, NamedTuple

import jax
import numpy as np

from weibull_jax.models import causal_lm
from weibull_jax.models.presets import ModelConfig

ARCHITECTURES = {"gpt_neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM"}

# HF tensors that are buffers, not parameters (older GPT-NeoX checkpoints store them).
_BUFFERS = re.compile(r"(attention\.(bias|masked_bias)|rotary_emb\.inv_freq)$")

# (HF module, Flax module, what it holds) per block, then outside the blocks.
_LAYOUT = {
    "gpt_neox": (
        "gpt_neox.layers.{i}.",
        [("input_layernorm", "input_norm", "norm"), ("post_attention_layernorm", "post_attention_norm", "norm"),
         ("attention.query_key_value", "attention.qkv", "linear"), ("attention.dense", "attention.o", "linear"),
         ("mlp.dense_h_to_4h", "mlp.ffn_in", "linear"), ("mlp.dense_4h_to_h", "mlp.ffn_out", "linear")],
        [("gpt_neox.embed_in", "embed", "embed"), ("gpt_neox.final_layer_norm", "final_norm", "norm"),
         ("embed_out", "unembed", "bare_linear")],
    ),
    "llama": (
        "model.layers.{i}.",
        [("input_layernorm", "attention_norm", "rms_norm"), ("post_attention_layernorm", "mlp_norm", "rms_norm"),
         *[(f"self_attn.{p}_proj", f"attention.{p}", "bare_linear") for p in "qkvo"],
         *[(f"mlp.{p}_proj", f"mlp.{p}", "bare_linear") for p in ("gate", "up", "down")]],
        [("model.embed_tokens", "embed", "embed"), ("model.norm", "final_norm", "rms_norm"),
         ("lm_head", "unembed", "bare_linear")],
    ),
}
# (HF leaf, Flax leaf, transpose) for each kind of module.
_LEAVES = {
    "linear": [("weight", "kernel", True), ("bias", "bias", False)],
    "bare_linear": [("weight", "kernel", True)],
    "norm": [("weight", "scale", False), ("bias", "bias", False)],
    "rms_norm": [("weight", "scale", False)],
    "embed": [("weight", "embedding", False)],
}


class TensorMap(NamedTuple):
    """One tensor: its HF name, its Flax path and whether the two are transposes of each other."""

    hf: str
    path: tuple[str, ...]
    transpose: bool


def tensor_map(config: ModelConfig) -> list[TensorMap]:
    """Every tensor of a ``config`` model, HF name ↔ Flax path."""
    block, per_block, outside = _LAYOUT[config.family]
    modules = [(block.format(i=i) + hf, f"layers_{i}." + flax, kind)
               for i in range(config.n_layers) for hf, flax, kind in per_block] + outside
    return [TensorMap(f"{hf}.{hf_leaf}", tuple(f"{flax}.{flax_leaf}".split(".")), transpose)
            for hf, flax, kind in modules for hf_leaf, flax_leaf, transpose in _LEAVES[kind]]


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The HF shape of every tensor of a ``config`` model (from a Flax init, no weights drawn)."""
    shapes = jax.eval_shape(lambda: causal_lm.init_params(config, jax.random.key(0)))
    out = {}
    for t in tensor_map(config):
        leaf = shapes
        for p in t.path:
            leaf = leaf[p]
        out[t.hf] = tuple(reversed(leaf.shape)) if t.transpose else tuple(leaf.shape)
    return out


def _rope(hf: dict) -> dict:
    """The rotary settings of an HF config, new style (``rope_parameters``) or legacy keys."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope.setdefault("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    rope.setdefault("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0)))
    return rope


def config_from_hf(hf: dict) -> ModelConfig:
    """A :class:`ModelConfig` from an HF ``config.json`` dict; unsupported variants raise ``ValueError``."""
    family = hf.get("model_type")
    if family not in ARCHITECTURES:
        raise ValueError(f"unknown architecture: model_type {family!r} (architectures {hf.get('architectures')}); "
                         f"supported: {sorted(ARCHITECTURES.values())}")
    rope = _rope(hf)
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"unsupported rope scaling {rope} in a {ARCHITECTURES[family]} config")
    act = {"gpt_neox": "gelu", "llama": "silu"}[family]
    if hf.get("hidden_act", act) != act:
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r} for {ARCHITECTURES[family]} (need {act!r})")
    common = dict(d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
                  d_ff=hf["intermediate_size"], vocab_size=hf["vocab_size"],
                  max_seq_len=hf.get("max_position_embeddings", 2048), rope_base=float(rope["rope_theta"]))
    if family == "gpt_neox":
        if hf.get("tie_word_embeddings", False) or not hf.get("attention_bias", True):
            raise ValueError("unsupported GPT-NeoX variant: tied embeddings or attention without bias")
        return ModelConfig("gpt_neox", **common, rotary_fraction=float(rope["partial_rotary_factor"]),
                           norm_eps=hf.get("layer_norm_eps", 1e-5),
                           parallel_residual=hf.get("use_parallel_residual", True))
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("unsupported Llama variant: attention_bias or mlp_bias")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    if head_dim * hf["num_attention_heads"] != hf["hidden_size"]:
        raise ValueError(f"unsupported Llama variant: head_dim {head_dim} × heads != hidden_size")
    return ModelConfig("llama", **common, n_kv_heads=hf.get("num_key_value_heads"), rotary_fraction=1.0,
                       norm_eps=hf.get("rms_norm_eps", 1e-6), parallel_residual=False, init_in="normal",
                       init_out="normal")


def config_to_hf(config: ModelConfig) -> dict:
    """The HF ``config.json`` dict of a ``config`` model: ``transformers`` 5 keys (``rope_parameters``) and the
    legacy rotary keys that ``transformers`` 4 reads (``rope_theta``; GPT-NeoX's ``rotary_emb_base``,
    ``rotary_pct``), so that either reads the same model."""
    hf = {"architectures": [ARCHITECTURES[config.family]], "model_type": config.family,
          "hidden_size": config.d_model, "num_hidden_layers": config.n_layers,
          "num_attention_heads": config.n_heads, "intermediate_size": config.d_ff, "vocab_size": config.vocab_size,
          "max_position_embeddings": config.max_seq_len, "tie_word_embeddings": False, "torch_dtype": "float32",
          "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base}, "rope_theta": config.rope_base}
    if config.family == "gpt_neox":
        hf["rope_parameters"]["partial_rotary_factor"] = config.rotary_fraction
        return {**hf, "hidden_act": "gelu", "layer_norm_eps": config.norm_eps,
                "use_parallel_residual": config.parallel_residual, "attention_bias": True,
                "rotary_emb_base": config.rope_base, "rotary_pct": config.rotary_fraction}
    return {**hf, "hidden_act": "silu", "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim,
            "rms_norm_eps": config.norm_eps, "attention_bias": False, "mlp_bias": False}


def read_hf_config(path: str) -> dict:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise FileNotFoundError(f"no config.json in {path!r}: not a HuggingFace checkpoint folder")
    with open(config) as f:
        return json.load(f)


def read_hf_tensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint folder as float32 numpy (safetensors, sharded safetensors or .bin)."""
    from safetensors.numpy import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        tensors = load_file(os.path.join(path, "model.safetensors"))
    elif os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {k: v for shard in shards for k, v in load_file(os.path.join(path, shard)).items()}
    elif os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        import torch

        state = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
        tensors = {k: v.float().numpy() for k, v in state.items()}
    else:
        raise FileNotFoundError(f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {path!r}")
    return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def match_tensors(shapes: dict[str, tuple[int, ...]], config: ModelConfig) -> dict[str, str]:
    """For each HF tensor of a ``config`` model, the key of the checkpoint that holds it, from the
    checkpoint's ``shapes`` (key → shape) alone, so that a checkpoint can be checked before it is read.

    Raises ``ValueError`` naming the tensor for a missing tensor, a wrong shape, or a tensor the
    architecture does not have. A missing ``lm_head.weight`` of a Llama checkpoint with tied embeddings
    is taken from the embedding; GPT-NeoX's head is read as ``embed_out.weight`` (checkpoints) or
    ``lm_head.weight`` (the module name in ``transformers`` 5, which a raw ``state_dict()`` keeps).
    """
    keys = {k: k for k in shapes if not _BUFFERS.search(k)}
    if config.family == "gpt_neox" and "lm_head.weight" in keys and "embed_out.weight" not in keys:
        keys["embed_out.weight"] = keys.pop("lm_head.weight")
    if config.family == "llama" and "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys:
        keys["lm_head.weight"] = "model.embed_tokens.weight"
    expected = expected_shapes(config)
    for t in tensor_map(config):
        if t.hf not in keys:
            raise ValueError(f"checkpoint is missing tensor {t.hf!r} (expected shape {expected[t.hf]})")
        if tuple(shapes[keys[t.hf]]) != expected[t.hf]:
            raise ValueError(f"tensor {t.hf!r} has shape {tuple(shapes[keys[t.hf]])}, the config says "
                             f"{expected[t.hf]}")
    unknown = sorted(set(keys) - set(expected))
    if unknown:
        raise ValueError(f"checkpoint has tensor {unknown[0]!r} that a {ARCHITECTURES[config.family]} with this "
                         f"config does not have ({len(unknown)} such tensors)")
    return {name: keys[name] for name in expected}


def params_from_hf(tensors: dict[str, Any], config: ModelConfig) -> dict:
    """The Flax parameter tree of HF ``tensors`` for a ``config`` model (checked by :func:`match_tensors`)."""
    source = match_tensors({k: np.shape(v) for k, v in tensors.items()}, config)
    params: dict = {}
    for t in tensor_map(config):
        x = np.asarray(tensors[source[t.hf]], np.float32)
        node = params
        for p in t.path[:-1]:
            node = node.setdefault(p, {})
        node[t.path[-1]] = x.T if t.transpose else x
    return params


def params_to_hf(params: dict, config: ModelConfig, dtype: str = "float32") -> dict[str, np.ndarray]:
    """The HF state dict (numpy, in ``dtype``) of a Flax parameter tree."""
    out = {}
    for t in tensor_map(config):
        leaf = params
        for p in t.path:
            leaf = leaf[p]
        x = np.asarray(leaf, dtype)
        out[t.hf] = np.ascontiguousarray(x.T if t.transpose else x)
    return out


def load_hf_checkpoint(path: str) -> tuple[ModelConfig, dict]:
    """(config, Flax params) of a local HF checkpoint folder."""
    config = config_from_hf(read_hf_config(path))
    return config, params_from_hf(read_hf_tensors(path), config)


def save_hf_checkpoint(path: str, params: dict, config: ModelConfig, dtype: str = "float32") -> None:
    """Writes ``config.json`` and ``model.safetensors`` (tensors in ``dtype``: ``float32`` or ``float16``, the
    dtype of Pythia's revisions) that ``transformers`` loads with ``from_pretrained``."""
    from safetensors.numpy import save_file

    if dtype not in ("float32", "float16"):
        raise ValueError(f"save_hf_checkpoint writes float32 or float16, not {dtype!r}")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**config_to_hf(config), "torch_dtype": dtype}, f, indent=2)
    save_file(params_to_hf(params, config, dtype), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
