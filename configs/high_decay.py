"""V1b with weight decay 0.2 instead of 0.01: the decay force's share and the λ floor √(η/λ_wd) move."""

from configs import pythia70m_v1b


def get_config(seed: str = "1"):
    config = pythia70m_v1b.get_config(seed)
    config.optimizer.weight_decay = 0.2
    return config
