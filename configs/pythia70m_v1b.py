"""V1b of arXiv 2606.19367 (§2.4, App. C): Pythia-70M trained from scratch with the real Pythia optimizer.

Batch 24 × 512 tokens, 20k steps, AdamW lr 1e-3, β = (0.9, 0.95), ε = 1e-8, weight decay 0.01, 200 warmup
steps then cosine to 10 % of the peak, gradient clipping at 1.0, weight snapshots every 250 steps (the
paper's checkpoints, 81 × 280 MB) and a full resumable checkpoint every 1000; bf16 compute. The paper's four seeds: ``--config=configs/pythia70m_v1b.py:1`` … ``:4`` (default 1).
"""

from configs import default


def get_config(seed: str = "1"):
    config = default.get_config()
    config.seed = int(seed)
    config.model = default.model("pythia-70m", dtype="bfloat16")
    config.data.vocab_size = 50304
    config.data.seq_len = 512
    config.optimizer.update(lr=1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01, clip_norm=1.0,
                            schedule="cosine", warmup_steps=200, floor=0.1)
    config.batch_size = 24
    config.steps = 20_000
    config.log_every = 50
    config.ckpt_every = 1000
    config.keep_checkpoints = 2
    config.snapshot_every = 250
    config.spectra_every = 0  # V1b reads the weights' Weibull fits and forces, not spectra (the SoSD configs do)
    return config
