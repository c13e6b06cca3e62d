"""The SoSD paper's comparisons (§5, App. D) on the modded-nanoGPT GPT-2 Small (124M), at H100-minutes scale.

  python -m train.main --config=configs/sosd_gpt2.py:adamw_wsd       # AdamW, warmup–stable–decay (Fig. 4b, 5b)
  python -m train.main --config=configs/sosd_gpt2.py:muon_wsd        # Muon on the hidden matrices (Fig. 5b)
  python -m train.main --config=configs/sosd_gpt2.py:adamw_step      # ×0.1 at 50 % and 75 % (Fig. 4a)
  python -m train.main --config=configs/sosd_gpt2.py:adamw_cosine    # cosine to 10 % (Fig. 4c)
  python -m train.main --config=configs/sosd_gpt2.py:adamw_cosine_nowd   # the same without weight decay (Fig. 5a)

VARIANT is OPTIMIZER_SCHEDULE[_nowd], every combination of ``adamw`` or ``muon`` with ``wsd``, ``step`` or
``cosine``, with weight decay 0.1 or without (``_nowd``): AdamW's and Muon's SD-variation floors under each
schedule (issue 16, item 4).

AdamW (0.9, 0.95) at lr 6e-4, weight decay 0.1; Muon at lr 0.02 (momentum 0.95, Nesterov) with its AdamW part
at 6e-4; 100 warmup steps, WSD's decay over the last 20 %; batch 32 × 512 tokens, 2000 steps; snapshots every
100 steps and the singular distributions of the trunk every 25 (the SD-variation curve). The papers' runs
are longer (FineWeb, thousands of steps at 0.5M tokens); ours keeps their shapes and ratios on the bundled
corpus so that each run takes minutes.
"""

from configs import default

VARIANTS = {f"{optimizer}_{schedule}{suffix}": (optimizer, schedule, weight_decay)
            for optimizer in ("adamw", "muon") for schedule in ("wsd", "step", "cosine")
            for suffix, weight_decay in (("", 0.1), ("_nowd", 0.0))}


def get_config(variant: str = "adamw_wsd"):
    name, schedule, weight_decay = default.variant(VARIANTS, variant, "variant")
    config = default.get_config()
    config.data.vocab_size = 8192
    config.data.seq_len = 512
    config.model = default.model("gpt2-124m", vocab_size=8192, max_seq_len=512, dtype="bfloat16")
    config.optimizer.update(name=name, lr=0.02 if name == "muon" else 6e-4, adam_lr=6e-4 if name == "muon" else 0.0,
                            b1=0.9, b2=0.95, momentum=0.95, weight_decay=weight_decay, clip_norm=1.0,
                            schedule=schedule, warmup_steps=100, floor=0.0 if schedule == "wsd" else 0.1,
                            decay_fraction=0.2, milestones=(0.5, 0.75), gamma=0.1)
    config.batch_size = 32
    config.steps = 2000
    config.log_every = 25
    config.ckpt_every = 1000
    config.keep_checkpoints = 1
    config.snapshot_every = 100
    config.spectra_every = 25
    return config
