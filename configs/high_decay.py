"""V1b with a larger weight decay (App. C.2; issue 16's series 0.05, 0.1, 0.2): ``--config=configs/high_decay.py:0.1``.

The decay force's share grows and the λ floor moves with √(η/λ_wd) (the floor coefficient of §6.2)."""

from configs import pythia70m_v1b


def get_config(weight_decay: str = "0.2"):
    config = pythia70m_v1b.get_config()
    config.optimizer.weight_decay = float(weight_decay)
    return config
