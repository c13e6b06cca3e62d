"""Diagnose a freshly initialised Pythia-70M-shaped model: the default of ``python -m analysis.diagnose``.

Override any field on the command line, e.g. ``--config.preset=pythia-160m`` or
``--config.params=/path/to/weights.npz`` (an ``.npz`` of named arrays, e.g. a converted state dict).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.preset = "pythia-70m"  # shape of the freshly initialised model (weibull_jax.models.presets)
    config.init_recipe = ""  # the preset's own; or A = small_init / wang_init, B = normal / scaled_normal
    config.seed = 0
    config.params = ""  # an .npz of named arrays to diagnose instead of a fresh init
    config.center = False  # subtract each matrix's mean first (the paper's pipeline)
    config.protocol = "histogram"  # or "exact"
    config.step = 0  # checkpoint step (0 reads matrices at the anchor as init_baseline)
    # Training recipe for the T/τ readout (Pythia-70M's published values; 0 disables it).
    config.learning_rate = 1e-3
    config.weight_decay = 0.01
    config.steps = 143_000
    config.out_dir = ""  # where to write matrices.csv (nothing written when empty)
    return config
