"""Parameter name → kind → functional class, for every supported model family.

Kinds (framework paper §2.2): ``qkv`` (fused), ``q``, ``k``, ``v``, ``o``; 2-matrix FFNs ``ffn_in`` /
``ffn_out`` (GPT-NeoX, GPT-2, OLMo-1), 3-matrix SwiGLU FFNs ``gate`` / ``up`` / ``down`` (LLaMA, Mistral,
Qwen2/3, OLMo-2); and ``embed``, ``unembed``, ``norm``, ``bias``, ``other``.

Classes: **Transmission** = FFN + W_o + W_v (the OV circuit and the MLP: k stays in the band near the
half-normal anchor); **Selection** = W_q, W_k and the fused W_qkv (the QK circuit: k departs from the anchor);
everything else is ``other``.

Recognised names: HuggingFace GPTNeoX (Pythia), Llama, Mistral, Qwen2, Qwen3, Olmo, Olmo2, GPT-2, the
native OLMo-1 checkpoint (``att_proj``/``attn_out``/``ff_proj``/``ff_out``), Meta's LLaMA
(``wq``/``w1``/…), and this toolkit's own Flax models (``qkv``, ``o``, ``ffn_in``, ``ffn_out``, …).
"""

from __future__ import annotations

import re
from typing import NamedTuple

TRANSMISSION, SELECTION, OTHER = "transmission", "selection", "other"
KINDS = ("qkv", "q", "k", "v", "o", "ffn_in", "gate", "up", "ffn_out", "down",
         "embed", "unembed", "norm", "bias", "other")
CLASS_OF_KIND = {
    **{k: SELECTION for k in ("qkv", "q", "k")},
    **{k: TRANSMISSION for k in ("v", "o", "ffn_in", "gate", "up", "ffn_out", "down")},
}

# Module names that say their kind wherever they stand.
_MODULE_KIND = {
    "query_key_value": "qkv", "qkv": "qkv", "qkv_proj": "qkv", "c_attn": "qkv", "att_proj": "qkv",
    "wqkv": "qkv",
    "q_proj": "q", "query": "q", "wq": "q", "q": "q",
    "k_proj": "k", "key": "k", "wk": "k", "k": "k",
    "v_proj": "v", "value": "v", "wv": "v", "v": "v",
    "o_proj": "o", "attn_out": "o", "wo": "o", "o": "o",
    "dense_h_to_4h": "ffn_in", "c_fc": "ffn_in", "fc1": "ffn_in", "fc_in": "ffn_in", "ffn_in": "ffn_in",
    "ff_proj": "ffn_in", "w_in": "ffn_in",
    "gate_proj": "gate", "w1": "gate", "gate": "gate",
    "up_proj": "up", "w3": "up", "up": "up",
    "dense_4h_to_h": "ffn_out", "fc2": "ffn_out", "fc_out": "ffn_out", "ffn_out": "ffn_out",
    "w_out": "ffn_out",
    "down_proj": "down", "w2": "down", "down": "down",
    "embed_in": "embed", "embed_tokens": "embed", "wte": "embed", "word_embeddings": "embed",
    "tok_embeddings": "embed", "embed": "embed", "embedding": "embed",
    "embed_out": "unembed", "lm_head": "unembed", "unembed": "unembed",
}
# Module names whose kind depends on the enclosing attention or MLP module.
_CONTEXT_KIND = {"dense": ("o", "ffn_out"), "c_proj": ("o", "ffn_out"), "out_proj": ("o", "ffn_out"),
                 "proj": ("o", "ffn_out"), "output": ("o", "ffn_out")}
_ATTENTION = re.compile(r"att|attn|attention")
_MLP = re.compile(r"mlp|ffn|feed_forward|ff$")
_PARAM_SUFFIXES = {"weight", "bias", "kernel", "scale", "embedding", "w", "b", "g", "gamma", "beta"}
_BLOCK = re.compile(r"^(?:layers?|blocks?|h|block)[_.]?(\d+)$")


class NameInfo(NamedTuple):
    """What a parameter name says: its kind, its functional class and its block (-1 outside blocks)."""

    kind: str
    cls: str
    block: int


def _components(name: str) -> list[str]:
    return [c for c in re.split(r"[./]", name.lower()) if c]


def block_of(name: str) -> int:
    """The transformer block index in a parameter name, or -1."""
    parts = _components(name)
    for i, c in enumerate(parts):
        m = _BLOCK.match(c)
        if m:
            return int(m.group(1))
        if c.isdigit() and i > 0 and re.match(r"^(layers?|blocks?|h)$", parts[i - 1]):
            return int(c)
    return -1


def kind_of(name: str) -> str:
    """The kind of a parameter from its name (see the module docstring for the families covered)."""
    parts = _components(name)
    suffix = parts[-1] if parts and parts[-1] in _PARAM_SUFFIXES else None
    modules = parts[:-1] if suffix else parts
    if not modules:
        return "other"
    module = modules[-1]
    if "norm" in module or re.match(r"^ln(_\w+)?$", module):
        return "norm"
    if suffix in ("bias", "b", "beta"):
        return "bias"
    if module == "ff_out" and block_of(name) < 0:  # native OLMo-1: the output head outside the blocks
        return "unembed"
    if module == "ff_out":
        return "ffn_out"
    if module in _MODULE_KIND:
        return _MODULE_KIND[module]
    if module in _CONTEXT_KIND:
        parents = " ".join(modules[:-1])
        attention_kind, mlp_kind = _CONTEXT_KIND[module]
        if _ATTENTION.search(parents):
            return attention_kind
        if any(_MLP.search(p) for p in modules[:-1]):
            return mlp_kind
    if module == "output" and block_of(name) < 0:  # Meta LLaMA: output.weight is the head
        return "unembed"
    return "other"


def class_of(kind: str) -> str:
    """Transmission, Selection or other (framework paper §2.2)."""
    return CLASS_OF_KIND.get(kind, OTHER)


def describe(name: str) -> NameInfo:
    """Kind, class and block of one parameter name."""
    kind = kind_of(name)
    return NameInfo(kind, class_of(kind), block_of(name))
