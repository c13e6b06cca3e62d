"""Published shapes of the models the toolkit trains and diagnoses.

Pythia sizes follow the EleutherAI model cards and configs (Biderman et al., 2023).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TransformerShape:
    """The sizes that fix every weight matrix of a decoder-only transformer."""

    family: str  # "gpt_neox" or "llama"
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    vocab_size: int
    n_kv_heads: int | None = None  # None: as many as n_heads (MHA)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


PRESETS: dict[str, TransformerShape] = {
    "pythia-14m": TransformerShape("gpt_neox", 128, 6, 4, 512, 50304),
    "pythia-70m": TransformerShape("gpt_neox", 512, 6, 8, 2048, 50304),
    "pythia-160m": TransformerShape("gpt_neox", 768, 12, 12, 3072, 50304),
    "pythia-410m": TransformerShape("gpt_neox", 1024, 24, 16, 4096, 50304),
    "pythia-1b": TransformerShape("gpt_neox", 2048, 16, 8, 8192, 50304),
    "pythia-6.9b": TransformerShape("gpt_neox", 4096, 32, 32, 16384, 50432),
}


def preset(name: str) -> TransformerShape:
    """A preset by name, with the known names in the error."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
