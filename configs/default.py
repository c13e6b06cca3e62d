"""A tiny Pythia on the bundled default corpus: the README's main job, a few minutes on a 2-core CPU.

Every field below can be overridden on the command line, e.g. ``--config.steps=1000``.
"""

import dataclasses

import ml_collections

from weibull_jax import models, sharding


def model(preset: str, **changes) -> ml_collections.ConfigDict:
    """``config.model``: every field of a preset's :class:`weibull_jax.models.ModelConfig`, overridable."""
    return ml_collections.ConfigDict(dataclasses.asdict(models.preset(preset, **changes)))


def variant(table: dict, key: str, what: str):
    """``table[key]`` of a parameterised config (``--config=configs/x.py:KEY``), or one message naming the
    known keys."""
    if key not in table:
        raise ValueError(f"unknown {what} {key!r}; known: {sorted(table)}")
    return table[key]


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = model("pythia-14m", d_model=128, n_layers=4, n_heads=4, d_ff=512, vocab_size=4096,
                         max_seq_len=512)
    config.data = ml_collections.ConfigDict(dict(
        corpus="default",  # a name (default, docs-large, kernel-docs), folder, glob or comma list; weibull_jax.data
        tokenizer="",  # a tokenizer.json (e.g. GPT-NeoX's); empty: a byte-level BPE trained on the corpus
        tokenizer_corpus="",  # the corpus that BPE is trained on, if not this one (a corpus spec as above)
        vocab_size=4096,  # size of that BPE
        shuffle_tokens=False,  # the token stream in one fixed random order (the data-coherence control)
        seq_len=128,
        sampling="epochs",  # epochs of shuffled chunks; random_offsets: the public code's draws; unigram: iid tokens
        cache_dir="~/.cache/weibull_jax",
    ))
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adamw",  # adamw, muon, sgd, sgd_momentum, sgdw_nesterov
        lr=1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01, momentum=0.9,
        clip_norm=1.0,  # 0: no clipping
        schedule="cosine",  # cosine, wsd, step, constant
        warmup_steps=30, floor=0.1, decay_fraction=0.2, milestones=(0.5, 0.75), gamma=0.1,
        adam_lr=0.0,  # muon only: peak lr of its AdamW part (embeddings, head, vectors); 0: lr
    ))
    config.batch_size = 16
    config.steps = 200
    config.log_every = 10
    config.ckpt_every = 100
    config.snapshot_every = 20  # weights only, for the series analysis (python -m analysis.main); 0: none
    config.spectra_every = 20  # singular distributions of the trunk matrices (spectra/, SoSD); 0: none
    config.keep_checkpoints = 0  # the latest N full checkpoints (weights + optimizer state); 0: all
    config.record_forces = True
    config.mesh = ml_collections.ConfigDict(dict(  # the devices (weibull_jax.sharding); -1: the rest of them
        data=1, fsdp=1, tensor=1,  # e.g. --config.mesh.fsdp=-1: every device, weights and moments sharded
        rules=sharding.DEFAULT_RULES,  # logical parameter axis → mesh axis (then FSDP on the largest free axis)
    ))
    config.init_from = ""  # a HuggingFace checkpoint folder, or RUN_DIR@STEP (our snapshot), to start from
    config.probe = ml_collections.ConfigDict(dict(  # the codeword-retrieval probe (configs/backbone.py)
        enabled=False,
        rate=0.10,  # share of training sequences that carry a KEY/QUERY pair
        codewords=512, seed=0,
        gap=(5, 30), ood_gap=(80, 200),  # tokens between KEY and QUERY: training / in-distribution, OOD
        weights=((0, 2.0), (4000, 4.0)),  # λ_probe from each step on
        eval_size=2000, eval_every=200,  # p_in / p_ood on fixed sets, into the metrics
    ))
    return config
