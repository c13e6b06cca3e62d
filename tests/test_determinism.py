"""train.determinism: the leaf comparison, and the training step repeating bit for bit on the CPU."""

import jax.numpy as jnp
import numpy as np

from train import determinism
from weibull_jax import models


def _tree():
    rng = np.random.default_rng(0)
    return {"a": {"kernel": rng.standard_normal((3, 4)).astype(np.float32)},
            "b": jnp.asarray(rng.standard_normal(5), jnp.bfloat16), "loss": np.float32(np.nan)}


def test_differing_leaves_names_exactly_the_leaf_one_ulp_away():
    base = _tree()
    assert determinism.differing_leaves([base, _tree(), _tree()]) == []  # NaN == NaN where the bits are equal
    nudged = _tree()
    nudged["a"]["kernel"][2, 1] = np.nextafter(nudged["a"]["kernel"][2, 1], np.float32(np.inf))
    assert determinism.differing_leaves([base, _tree(), nudged]) == ["['a']['kernel']"]
    retyped = _tree()
    retyped["b"] = retyped["b"].astype(jnp.float16)  # bf16 → f16: other bits of the same width
    assert determinism.differing_leaves([base, retyped]) == ["['b']"]


def test_the_training_step_repeats_bit_for_bit_on_the_cpu():
    """What the kill campaign's bit-identical restarts rest on; on a GPU the embedding's gradient does not
    repeat (docs/reliability.md)."""
    config = models.preset("pythia-14m", n_layers=2, max_seq_len=32)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 32), np.int32)
    runs = determinism.step_outputs(config, tokens, runs=2, steps=2, fused=False, fused_loss=False)
    assert determinism.differing_leaves(runs) == []
    other = determinism.step_outputs(config, (tokens + 1) % config.vocab_size, runs=1, steps=2, fused=False,
                                     fused_loss=False)
    differ = determinism.differing_leaves([runs[0], other[0]])
    assert "[0]['embed']['embedding']" in differ and "[1]['loss']" in differ  # the comparison sees the batch
