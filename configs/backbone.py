"""The backbone run of arXiv "Optimizer-Induced Low-Dimensional Drift" (Table 1), at H100-minutes scale.

The paper's model and optimizer: a GPT-2-family model of 8 layers, d 512, 16 heads, d_ff 2048 (here the
modded-nanoGPT block, ``gpt2-51m``), sequences of 256, AdamW (0.9, 0.95), lr 1e-3 with 1500 warmup steps and
cosine decay to 10 %, weight decay 0.5, clipping 1.0, batch 128, 10k steps, a snapshot every 200 steps (51),
the probe on 10 % of sequences with λ_probe 2 then 4 from step 4000, p_in / p_ood every 200 steps.
Differences: the corpus is ours (TinyStories is not bundled), so the vocabulary is our BPE (8192 tokens plus
the probe's added codewords) instead of GPT-2's 50257; one batch of 64 per step instead of 64 × 2 accumulated,
so that the 10k steps take about five minutes on one H100 (``--config.batch_size=128`` for the paper's).

  python -m train.main --config=configs/backbone.py                       # AdamW (run A)
  python -m train.main --config=configs/backbone.py:sgd                   # B: SGD, no momentum, L2 0.5
  python -m train.main --config=configs/backbone.py:sgd_momentum          # C: lr 1e-2, momentum 0.9, L2 0.05
  python -m train.main --config=configs/backbone.py:sgdw_nesterov         # C': lr 1e-2, Nesterov, decoupled 0.5

The SGD controls run 4000 steps (Table 8–9).
"""

from configs import default

CONTROLS = {  # optimizer, lr, momentum, weight decay (Table 8)
    "adamw": ("adamw", 1e-3, 0.0, 0.5),
    "sgd": ("sgd", 1e-3, 0.0, 0.5),
    "sgd_momentum": ("sgd_momentum", 1e-2, 0.9, 0.05),
    "sgdw_nesterov": ("sgdw_nesterov", 1e-2, 0.9, 0.5),
}


def get_config(optimizer: str = "adamw"):
    name, lr, momentum, weight_decay = default.variant(CONTROLS, optimizer, "control")
    config = default.get_config()
    config.seed = 42
    config.data.vocab_size = 8192
    config.data.seq_len = 256
    config.model = default.model("gpt2-51m", vocab_size=8192 + 512, max_seq_len=256, dtype="bfloat16")
    config.optimizer.update(name=name, lr=lr, b1=0.9, b2=0.95, momentum=momentum, weight_decay=weight_decay,
                            clip_norm=1.0, schedule="cosine", warmup_steps=1500, floor=0.1)
    config.batch_size = 64
    config.steps = 10_000 if name == "adamw" else 4000
    config.log_every = 50
    config.ckpt_every = 1000
    config.keep_checkpoints = 1
    config.snapshot_every = 200
    config.spectra_every = 0  # the backbone reads the weights' trajectory, not their spectra
    config.probe.enabled = True
    return config
