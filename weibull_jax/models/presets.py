"""Model configurations and the published shapes of the models the toolkit trains and diagnoses.

Pythia sizes follow the EleutherAI model cards and configs (Biderman et al., 2023). ``llama-70m`` is the
Llama-style control of arXiv 2606.19367 §2.4 (same d, L and heads as Pythia-70M; SwiGLU width 1536, the
LLaMA rule ⌈(2/3)·4d⌉ rounded up to a multiple of 256). The GPT-2 presets are modded-nanoGPT blocks at
GPT-2 Small and Medium sizes (SoSD paper §3.1) and at the backbone paper's 51M shape (8 × 512, 16 heads);
their vocabulary is GPT-2's 50257 padded to 50304.
"""

from __future__ import annotations

import dataclasses

from weibull_jax.anchor import INIT_RECIPES

FAMILIES = ("gpt_neox", "llama", "gpt2")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION = ("xla", "cudnn", "auto")
EMBEDDING_GRADIENTS = ("scatter", "sorted")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes a decoder-only transformer: its shapes, its variant and its initialisation.

    ``init_in`` / ``init_out`` name the initialisers (:func:`weibull_jax.anchor.init_sigma`) of the
    input-side (embedding, W_qkv or W_q/W_k/W_v, W_FFN_in or gate/up, the head) and output-side (W_o,
    W_FFN_out or down) matrices. ``dtype`` is the compute dtype; parameters are always float32.
    ``attention``: ``"xla"``, ``"cudnn"`` (flash attention on NVIDIA GPUs, half precision only) or
    ``"auto"`` (cuDNN on a GPU in half precision, XLA otherwise). ``embedding_gradient``: ``"scatter"``
    (XLA's scatter-add, atomic and unordered on a GPU) or ``"sorted"`` (:mod:`weibull_jax.embedding`: summed in
    an order fixed by the tokens, so that a GPU step repeats bit for bit).
    """

    family: str  # "gpt_neox", "llama" or "gpt2" (modded-nanoGPT)
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    vocab_size: int
    n_kv_heads: int | None = None  # None: as many as n_heads (MHA)
    max_seq_len: int = 2048
    rotary_fraction: float = 0.25  # share of each head's dimensions that rotary embeddings turn
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    parallel_residual: bool = True  # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x))
    init_in: str = "small_init"
    init_out: str = "wang_init"
    dtype: str = "float32"
    attention: str = "auto"
    embedding_gradient: str = "scatter"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; known: {FAMILIES}")
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"model {name} must be a positive integer, got {value!r}")
        if self.n_kv_heads is not None and not self.n_kv_heads > 0:
            raise ValueError(f"model n_kv_heads must be positive (or None: one per query head), got {self.n_kv_heads!r}")
        if not 0 <= self.rotary_fraction <= 1 or not self.rope_base > 0 or not self.norm_eps > 0:
            raise ValueError(f"model rotary_fraction must lie in [0, 1], rope_base and norm_eps be positive; got "
                             f"{self.rotary_fraction}, {self.rope_base}, {self.norm_eps}")
        if self.dtype not in DTYPES or self.attention not in ATTENTION:
            raise ValueError(f"model dtype {self.dtype!r} / attention {self.attention!r}: known {DTYPES} / {ATTENTION}")
        if self.embedding_gradient not in EMBEDDING_GRADIENTS:
            raise ValueError(f"model embedding_gradient {self.embedding_gradient!r}: known {EMBEDDING_GRADIENTS}")
        for recipe in (self.init_in, self.init_out):
            if recipe not in INIT_RECIPES:
                raise ValueError(f"unknown init recipe {recipe!r}; known: {INIT_RECIPES}")
        if self.d_model % self.n_heads or self.n_heads % self.kv_heads:
            raise ValueError(f"d_model={self.d_model}, n_heads={self.n_heads} and n_kv_heads={self.kv_heads} "
                             "must divide: d_model by n_heads, n_heads by n_kv_heads")
        if self.family != "llama" and self.kv_heads != self.n_heads:
            raise ValueError(f"{self.family} has one key/value head per query head; n_kv_heads is for llama")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _llama(d_model, n_layers, n_heads, d_ff, vocab_size, **kw) -> ModelConfig:
    defaults = dict(rotary_fraction=1.0, norm_eps=1e-6, parallel_residual=False, init_in="normal",
                    init_out="normal")
    return ModelConfig("llama", d_model, n_layers, n_heads, d_ff, vocab_size, **{**defaults, **kw})


def _gpt2(d_model, n_layers, n_heads, vocab_size=50304) -> ModelConfig:
    return ModelConfig("gpt2", d_model, n_layers, n_heads, 4 * d_model, vocab_size, rotary_fraction=1.0,
                       norm_eps=1e-6, parallel_residual=False, init_in="normal", init_out="scaled_normal")


PRESETS: dict[str, ModelConfig] = {
    "pythia-14m": ModelConfig("gpt_neox", 128, 6, 4, 512, 50304),
    "pythia-70m": ModelConfig("gpt_neox", 512, 6, 8, 2048, 50304),
    "pythia-160m": ModelConfig("gpt_neox", 768, 12, 12, 3072, 50304),
    "pythia-410m": ModelConfig("gpt_neox", 1024, 24, 16, 4096, 50304),
    "pythia-1b": ModelConfig("gpt_neox", 2048, 16, 8, 8192, 50304),
    "pythia-6.9b": ModelConfig("gpt_neox", 4096, 32, 32, 16384, 50432, init_in="normal", init_out="scaled_normal"),
    "llama-70m": _llama(512, 6, 8, 1536, 50304),
    "gpt2-51m": _gpt2(512, 8, 16),
    "gpt2-124m": _gpt2(768, 12, 12),
    "gpt2-355m": _gpt2(1024, 24, 16),
}


def preset(name: str, **changes) -> ModelConfig:
    """A preset by name (fields overridden by ``changes``), with the known names in the error."""
    try:
        return PRESETS[name].replace(**changes)
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None


def config_from_fields(fields: dict) -> ModelConfig:
    """A :class:`ModelConfig` from a dict of its fields (a run's ``config.model``), naming unknown fields."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(fields) - known
    if unknown:
        raise ValueError(f"config.model has unknown fields {sorted(unknown)}; known: {sorted(known)}")
    return ModelConfig(**fields)
