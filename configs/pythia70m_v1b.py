"""V1b of arXiv 2606.19367 (§2.4, App. C): Pythia-70M trained from scratch, as the authors' public code ran it.

Batch 24 × 512 tokens, 20k steps, AdamW lr 1e-3, β = (0.9, 0.999) (real Pythia used 0.95; the paper's own
runs 0.999), ε = 1e-8, weight decay 0.01, 200 warmup steps then cosine to 10 % of the peak, no gradient
clipping; non-overlapping contiguous chunks in epochs (App. C.1; the public code's random-offset windows:
``--config.data.sampling=random_offsets``) of the ``docs-large`` corpus (8.6 M tokens: 246 M tokens are 29
epochs, the paper's small 8 M-token configuration had 31); forces every step (the paper records every
50th: a subset of ours), weight snapshots every 250 steps (the paper's checkpoints, 81 × 280 MB) and a full
resumable checkpoint every 1000; bf16 compute. The paper's four seeds: ``--config=configs/pythia70m_v1b.py:1``
… ``:4`` (default 1).
"""

from configs import default


def get_config(seed: str = "1"):
    config = default.get_config()
    config.seed = int(seed)
    config.model = default.model("pythia-70m", dtype="bfloat16")
    config.data.corpus = "docs-large"
    config.data.vocab_size = 50304
    config.data.seq_len = 512
    config.optimizer.update(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=0.0,
                            schedule="cosine", warmup_steps=200, floor=0.1)
    config.batch_size = 24
    config.steps = 20_000
    config.log_every = 50
    config.ckpt_every = 1000
    config.keep_checkpoints = 2
    config.snapshot_every = 250
    config.spectra_every = 0  # V1b reads the weights' Weibull fits and forces, not spectra (the SoSD configs do)
    return config
