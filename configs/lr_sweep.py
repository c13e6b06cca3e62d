"""V1b at another peak learning rate: ``--config=configs/lr_sweep.py:5e-4`` (the sweep: 5e-4, 1e-3, 2e-3)."""

from configs import pythia70m_v1b


def get_config(lr: str = "2e-3"):
    config = pythia70m_v1b.get_config()
    config.optimizer.lr = float(lr)
    return config
