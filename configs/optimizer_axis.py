"""V1b under other optimizers: the force budget no paper has measured (issue 16, item 5):
``--config=configs/optimizer_axis.py:NAME``.

Everything but the optimizer is V1b's (model, corpus, batch, 20k steps, 200 warmup steps then cosine to
10 %, decoupled or L2 weight decay 0.01, no clipping). Each optimizer at the peak rate its own literature
uses, since one rate does not suit them all:

* ``muon``: lr 0.02, momentum 0.95 (Nesterov) on the hidden matrices (the SoSD comparison's and
  modded-nanoGPT's rate); its AdamW part (embeddings, head, vectors) at V1b's 1e-3 with V1b's β;
* ``sgd_momentum``: lr 1e-2, momentum 0.9, L2 decay (the backbone paper's control C, Table 8);
* ``sgdw_nesterov``: lr 1e-2, Nesterov momentum 0.9, decoupled decay (its control C');
* ``sgd``: lr 1e-3, no momentum (its control B);
* ``adamw``: V1b itself.

For these the forces are read from the update itself (``weibull_jax.forces.forces_from_update``:
u = −Δw/η − λw), so the budget has the same three terms and its closure is exact as for AdamW.
"""

from configs import default, pythia70m_v1b

OPTIMIZERS = {  # optimizer, peak lr, momentum, lr of Muon's AdamW part
    "adamw": ("adamw", 1e-3, 0.9, 0.0),
    "muon": ("muon", 0.02, 0.95, 1e-3),
    "sgd_momentum": ("sgd_momentum", 1e-2, 0.9, 0.0),
    "sgdw_nesterov": ("sgdw_nesterov", 1e-2, 0.9, 0.0),
    "sgd": ("sgd", 1e-3, 0.0, 0.0),
}


def get_config(optimizer: str = "muon"):
    name, lr, momentum, adam_lr = default.variant(OPTIMIZERS, optimizer, "optimizer")
    config = pythia70m_v1b.get_config()
    config.optimizer.update(name=name, lr=lr, momentum=momentum, adam_lr=adam_lr)
    return config
