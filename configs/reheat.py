"""Reheating (backbone paper §6): from the backbone run's last snapshot, a fresh AdamW, λ_probe = 4, 2000
cosine steps, p_in / p_ood every 100 steps; three peak learning rates (Table 11).

  python -m train.main --config=configs/reheat.py:1e-3 --config.init_from=runs/backbone@10000
  python -m train.main --config=configs/reheat.py:6e-4 --config.init_from=runs/backbone@10000
  python -m train.main --config=configs/reheat.py:3e-4 --config.init_from=runs/backbone@10000
"""

from configs import backbone


def get_config(lr: str = "6e-4"):
    config = backbone.get_config("adamw")
    config.init_from = "runs/backbone@10000"
    config.optimizer.update(lr=float(lr), warmup_steps=0)
    config.steps = 2000
    config.probe.weights = ((0, 4.0),)
    config.probe.eval_every = 100
    config.snapshot_every = 100
    return config
