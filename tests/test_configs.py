"""The shipped configs: every variant passes the training program's checks, and each axis of V1b changes only
what its docstring says it changes (so that a difference between two runs of an axis is that field's)."""

import pytest

from configs import (backbone, backbone_pressure, corpus_axis, default, high_decay, llama70m, lr_sweep,
                     optimizer_axis, pythia70m_v1b, sosd_gpt2)
from train import train
from weibull_jax import tree

VARIANTS = [(default, None), (llama70m, None), *[(pythia70m_v1b, s) for s in "1234"],
            *[(lr_sweep, lr) for lr in ("3e-4", "1e-3", "3e-3")], *[(high_decay, wd) for wd in ("0.05", "0.1", "0.2")],
            *[(corpus_axis, c) for c in corpus_axis.CORPORA], *[(optimizer_axis, o) for o in optimizer_axis.OPTIMIZERS],
            *[(backbone, c) for c in backbone.CONTROLS], *[(sosd_gpt2, v) for v in sosd_gpt2.VARIANTS],
            *[(backbone_pressure, v) for v in backbone_pressure.VARIANTS]]


def _load(module, arg):
    return module.get_config() if arg is None else module.get_config(arg)


@pytest.mark.parametrize("module,arg", VARIANTS, ids=[f"{m.__name__.split('.')[-1]}:{a}" for m, a in VARIANTS])
def test_every_shipped_config_passes_the_programs_checks(module, arg):
    train.check_config(_load(module, arg))


def _changed(config, base=None) -> dict:
    base = dict(tree.flat_items((base or pythia70m_v1b.get_config()).to_dict()))
    return {k: v for k, v in tree.flat_items(config.to_dict()) if base[k] != v}


@pytest.mark.parametrize("module,arg,expected", [
    (lr_sweep, "3e-4", {"optimizer.lr": 3e-4}),
    (high_decay, "0.05", {"optimizer.weight_decay": 0.05}),
    (pythia70m_v1b, "3", {"seed": 3}),
    (corpus_axis, "docs-large", {"data.tokenizer_corpus": "docs-large"}),  # V1b's own BPE, trained on docs-large
    (corpus_axis, "kernel-docs", {"data.corpus": "kernel-docs", "data.tokenizer_corpus": "docs-large"}),
    (corpus_axis, "shuffled", {"data.shuffle_tokens": True, "data.tokenizer_corpus": "docs-large"}),
    (optimizer_axis, "adamw", {}),
    (optimizer_axis, "muon", {"optimizer.name": "muon", "optimizer.lr": 0.02, "optimizer.momentum": 0.95,
                              "optimizer.adam_lr": 1e-3}),
    (optimizer_axis, "sgdw_nesterov", {"optimizer.name": "sgdw_nesterov", "optimizer.lr": 1e-2}),
])
def test_each_axis_of_v1b_changes_only_its_field(module, arg, expected):
    assert _changed(_load(module, arg)) == expected


@pytest.mark.parametrize("variant,expected", [
    ("docs_large", {"data.corpus": "docs-large"}),
    ("narrow", {"model.d_model": 256, "model.n_heads": 8, "model.d_ff": 1024}),
    ("flat_weight", {"probe.weights": ((0, 2.0),)}),
    ("all", {"data.corpus": "docs-large", "model.d_model": 256, "model.n_heads": 8, "model.d_ff": 1024,
             "probe.rate": 0.05}),
])
def test_each_pressure_variant_changes_only_its_field_of_the_backbone_run(variant, expected):
    assert _changed(backbone_pressure.get_config(variant), backbone.get_config()) == expected


@pytest.mark.parametrize("module", [optimizer_axis, corpus_axis, backbone, sosd_gpt2, backbone_pressure])
def test_unknown_variants_are_refused_by_name(module):
    with pytest.raises(ValueError, match="known:"):
        module.get_config("adam")
