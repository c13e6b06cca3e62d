"""The backbone run (AdamW, run A) under more pressure from the language model: the search for the paper's
p_ood oscillations and LM-dominant end (issue 16, item 4): ``--config=configs/backbone_pressure.py:NAME``.

Our backbone run learns the probe and keeps it (p_ood rises to 0.85): its 2.8 M-token corpus is seen ~58
times, the LM gradients shrink 40-fold, and nothing competes with the probe any more. The paper trains on
TinyStories, which its 10k steps never repeat. Each variant changes one thing of ``configs/backbone.py``
towards more competition for the model's capacity:

* ``docs_large``: the 8.6 M-token ``docs-large`` corpus (a third of the repetition), same vocabulary size;
* ``narrow``: a quarter of the width (d 256, 8 heads, d_ff 1024): less capacity for both tasks;
* ``rare_probe``: the probe on 5 % of the sequences instead of 10 %;
* ``flat_weight``: λ_probe 2 throughout (no doubling at step 4000);
* ``all``: ``docs_large`` + ``narrow`` + ``rare_probe``.
"""

from configs import backbone, default

VARIANTS = ("docs_large", "narrow", "rare_probe", "flat_weight", "all")


def get_config(variant: str = "all"):
    default.variant(dict.fromkeys(VARIANTS), variant, "variant")
    config = backbone.get_config()
    if variant in ("docs_large", "all"):
        config.data.corpus = "docs-large"
    if variant in ("narrow", "all"):
        config.model.update(d_model=256, n_heads=8, d_ff=1024)
    if variant in ("rare_probe", "all"):
        config.probe.rate = 0.05
    if variant == "flat_weight":
        config.probe.weights = ((0, 2.0),)
    return config
