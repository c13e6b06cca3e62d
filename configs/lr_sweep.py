"""V1b at another peak learning rate (App. C.2, Fig. 4: 3e-4, 1e-3, 3e-3): ``--config=configs/lr_sweep.py:3e-4``."""

from configs import pythia70m_v1b


def get_config(lr: str = "3e-3"):
    config = pythia70m_v1b.get_config()
    config.optimizer.lr = float(lr)
    return config
