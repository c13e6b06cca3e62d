"""A suite's revisions read in place, against the eager loader (safetensors' and torch's own readers)."""

import hashlib
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from weibull_jax import convert, spectra, suites

STEPS = (0, 128, 1000)


def _model(family: str, seed: int) -> transformers.PreTrainedModel:
    if family == "neox":
        config = transformers.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, vocab_size=97, rotary_pct=0.25)
        model = transformers.GPTNeoXForCausalLM(config)
    else:
        config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=48, vocab_size=97,
                                          tie_word_embeddings=True)
        model = transformers.LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _save(model, folder: str, layout: str) -> None:
    """One revision as ``layout``: safetensors in float32/float16/bfloat16, sharded, or pytorch_model.bin."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(layout, torch.float32)
    model = model.to(dtype)
    if layout == "bin":
        os.makedirs(folder)
        model.config.to_json_file(os.path.join(folder, "config.json"))
        torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
    else:
        model.save_pretrained(folder, max_shard_size="20KB" if layout == "sharded" else "10GB")


def _hub_cache(step_root, cache_root) -> str:
    """The hub cache's layout of the step folders: blobs by hash, snapshots/<commit>/ of links, refs/step{N}."""
    repo = cache_root / "models--org--tiny"
    for name in ("blobs", "refs", "snapshots"):
        (repo / name).mkdir(parents=True)
    for step in STEPS:
        commit = hashlib.sha1(f"step{step}".encode()).hexdigest()
        (repo / "refs" / f"step{step}").write_text(commit)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir()
        for name in os.listdir(step_root / f"step{step}"):
            data = (step_root / f"step{step}" / name).read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs" / "main").write_text("0" * 40)  # not a step revision: ignored
    return str(repo)


@pytest.mark.parametrize("family,layout", [("neox", "fp32"), ("neox", "fp16"), ("neox", "bf16"),
                                           ("neox", "sharded"), ("neox", "bin"), ("llama", "bf16")])
def test_suite_reads_every_layout_as_the_eager_loader_does(family, layout, tmp_path):
    for i, step in enumerate(STEPS):
        _save(_model(family, i), str(tmp_path / "steps" / f"step{step}"), layout)
    for root in (str(tmp_path / "steps"), _hub_cache(tmp_path / "steps", tmp_path / "cache")):
        suite = suites.Suite(root)
        assert list(suite.steps) == list(STEPS)
        for i, folder in enumerate(suite.folders):
            config, params = convert.load_hf_checkpoint(folder)
            assert config == suite.config
            jax.tree.map(np.testing.assert_array_equal, suite.tree(i), params)
        stored = torch.load(os.path.join(tmp_path / "steps" / "step128" / "pytorch_model.bin"), weights_only=True) \
            if layout == "bin" else None
        qkv = "layers_1.attention.qkv.kernel" if family == "neox" else "layers_1.attention.q.kernel"
        whole = suite.slab(qkv)
        part = suite.slab(qkv, [2, 1], slice(7, 300))
        np.testing.assert_array_equal(part, whole[[2, 1], 7:300])
        native = suite.slab(qkv, dtype=None)  # as stored: what travels to the device
        assert native.dtype == {"bf16": jnp.bfloat16, "fp16": np.float16}.get(layout, np.float32)
        np.testing.assert_array_equal(native.astype(np.float32), whole)
        module = qkv.split(".")[2]
        np.testing.assert_array_equal(suite.unravel(qkv, whole)[1], suite.tree(1)["layers_1"]["attention"][module]["kernel"])
        if stored is not None:  # the stored order is HF's (out, in)
            key = "gpt_neox.layers.1.attention.query_key_value.weight"
            np.testing.assert_array_equal(whole[1], stored[key].float().numpy().ravel())


def test_measure_reads_each_file_front_to_back(tmp_path):
    """The matrices are read in the order of their bytes in the file (from the safetensors header itself),
    which is not the layout's order of Flax paths."""
    from analysis import series

    for i, step in enumerate(STEPS):
        _save(_model("neox", i), str(tmp_path / f"step{step}"), "fp16")
    suite = suites.Suite(str(tmp_path))
    read, slab = [], suite.slab
    suite.slab = lambda name, *args, **kwargs: (read.append(name), slab(name, *args, **kwargs))[1]
    series.measure(suite)
    with open(tmp_path / "step0" / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    source = convert.match_tensors({k: v["shape"] for k, v in header.items() if k != "__metadata__"}, suite.config)
    hf_name = {".".join(t.path): source[t.hf] for t in convert.tensor_map(suite.config)}
    offsets = [header[hf_name[name]]["data_offsets"][0] for name in read]
    assert sorted(read) == sorted(suite.matrices()) and len(read) == len(set(read))
    assert offsets == sorted(offsets)
    assert read != suite.matrices()


@pytest.mark.parametrize("devices", [1, pytest.param(8, marks=pytest.mark.eight_cpu_devices)])
def test_series_measures_of_a_suite_match_its_converted_checkpoints(tmp_path, devices):
    """Fits, norms and the spectra of the W_qkv parts (which need the Flax orientation) from the in-place
    reads equal those of the eagerly converted parameter trees, on one device and with the float16 slabs
    split over eight."""
    from analysis import series
    from weibull_jax import weibull

    for i, step in enumerate(STEPS):
        _save(_model("neox", i), str(tmp_path / f"step{step}"), "fp16")
    suite = suites.Suite(str(tmp_path))
    data = series.measure(suite, n_heads=4, devices=devices)
    trees = [convert.load_hf_checkpoint(folder)[1] for folder in suite.folders]
    for m, name in enumerate(data.names):
        leaves = [np.asarray(suite.unravel(name, suite.slab(name, [t]))[0]) for t in range(len(STEPS))]
        fits = weibull.fit_arrays([name], [np.stack(leaves)])[0][0]
        np.testing.assert_array_equal(data.k[:, m], np.asarray(fits.k, np.float64))
        np.testing.assert_allclose(data.sq_norm[:, m], [np.sum(x.astype(np.float64) ** 2) for x in leaves], rtol=1e-6)
    for t, params in enumerate(trees):
        names = spectra.trunk_names(params, 4)
        table = np.asarray(spectra.trunk_distributions(params, 4))
        for name, row in zip(names, table):
            np.testing.assert_array_equal(data.sd[name][t], row)


def test_bad_suites_give_one_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="no step"):
        suites.Suite(str(tmp_path))
    _save(_model("neox", 0), str(tmp_path / "step0"), "fp32")
    wider = _model("neox", 1)
    wider.config.intermediate_size = 96
    _save(transformers.GPTNeoXForCausalLM(wider.config), str(tmp_path / "step10"), "fp32")
    with pytest.raises(ValueError, match=r"step10: tensor '\S+dense_h_to_4h.weight' has shape"):
        suites.Suite(str(tmp_path))
    os.remove(tmp_path / "step10" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        suites.Suite(str(tmp_path))


def test_truncated_file_is_named(tmp_path):
    _save(_model("neox", 0), str(tmp_path / "step0"), "fp32")
    _save(_model("neox", 1), str(tmp_path / "step5"), "fp32")
    path = tmp_path / "step5" / "model.safetensors"
    intact = path.read_bytes()
    suite = suites.Suite(str(tmp_path))
    path.write_bytes(intact[:-4000])
    with pytest.raises(ValueError, match="step5/model.safetensors holds .* bytes, its header describes"):
        suites.Suite(str(tmp_path))
    with pytest.raises(ValueError, match="step5/model.safetensors ends before byte"):  # cut after opening
        for name in suite.names:
            suite.slab(name)
