"""HuggingFace ↔ JAX conversion against real ``transformers`` models built on CPU torch (no download)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from weibull_jax import convert, models, suites

VOCAB, SEQ = 211, 24


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter redrawn (norm gains around 1) so that each tensor's mapping shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.1 * noise)
    return model.eval()


def _neox(parallel_residual=True):
    config = transformers.GPTNeoXConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=VOCAB,
        rotary_pct=0.25, max_position_embeddings=64, use_parallel_residual=parallel_residual)
    return _randomised(transformers.GPTNeoXForCausalLM(config), 0)


def _llama():
    config = transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=160,
        vocab_size=VOCAB, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=500.0)
    return _randomised(transformers.LlamaForCausalLM(config), 1)


BUILDERS = {"neox": _neox, "neox_sequential": lambda: _neox(False), "llama_gqa": _llama}


def _tokens():
    return np.random.default_rng(0).integers(0, VOCAB, (3, SEQ))


def _hf_logits(model):
    with torch.no_grad():
        return model(torch.as_tensor(_tokens())).logits.numpy()


def _jax_logits(config, params):
    return np.asarray(models.CausalLM(config).apply({"params": params}, jnp.asarray(_tokens(), jnp.int32)))


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def saved(request, tmp_path_factory):
    model = BUILDERS[request.param]()
    path = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(path)
    return model, path


def test_logits_match_huggingface(saved):
    model, path = saved
    config, params = convert.load_hf_checkpoint(path)
    ref = _hf_logits(model)
    assert ref.std() > 0.3  # logits far from trivial
    np.testing.assert_allclose(_jax_logits(config, params), ref, atol=1e-4, rtol=0)


def test_next_token_loss_matches_huggingface(saved):
    model, path = saved
    config, params = convert.load_hf_checkpoint(path)
    tokens = _tokens()
    with torch.no_grad():
        ref = float(model(torch.as_tensor(tokens), labels=torch.as_tensor(tokens)).loss)
    ours = models.next_token_loss(models.CausalLM(config).apply({"params": params}, jnp.asarray(tokens)), tokens)
    assert abs(float(ours) - ref) < 1e-5 * ref


def test_gradients_match_huggingface(saved):
    """The backward against torch's autograd of the same model, loss and tokens: our gradients, taken to HF's
    tensors by the conversion (transposes and reshapes: linear, so it maps gradients too), agree with torch's
    in float32 to 2e-5 of each tensor's largest entry: the two backwards add the same terms in other orders,
    sums of at most 256 terms here, whose rounding is bounded by ~256u = 1.5e-5 (u = 2⁻²⁴; 1.2e-6 seen)."""
    model, path = saved
    config, params = convert.load_hf_checkpoint(path)
    tokens = _tokens()
    model.zero_grad()
    model(torch.as_tensor(tokens), labels=torch.as_tensor(tokens)).loss.backward()

    def loss(p):
        return models.next_token_loss(models.CausalLM(config).apply({"params": p}, jnp.asarray(tokens)), tokens)

    ours = convert.params_to_hf(jax.grad(loss)(params), config)
    theirs = {n: p.grad.numpy() for n, p in model.named_parameters()}
    source = convert.match_tensors({n: g.shape for n, g in theirs.items()}, config)  # HF name → module's
    assert set(source) == set(ours)
    for name, key in source.items():
        ref = theirs[key]
        assert np.abs(ref).max() > 0, name
        np.testing.assert_allclose(ours[name], ref, atol=2e-5 * np.abs(ref).max(), rtol=0, err_msg=name)


def test_round_trip_to_huggingface_gives_identical_tensors(saved, tmp_path):
    model, path = saved
    config, params = convert.load_hf_checkpoint(path)
    convert.save_hf_checkpoint(str(tmp_path), params, config)
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    original = {k: v for k, v in model.state_dict().items() if not k.endswith("inv_freq")}
    reloaded = back.state_dict()
    assert set(original) <= set(reloaded)
    for name, tensor in original.items():
        assert torch.equal(tensor, reloaded[name]), name
    np.testing.assert_array_equal(_hf_logits(back), _hf_logits(model))
    assert convert.config_from_hf(json.load(open(os.path.join(tmp_path, "config.json")))) == config


def test_pytorch_bin_checkpoint_and_step_series(tmp_path):
    model = _neox()
    for step in (1000, 0, 512):
        folder = tmp_path / f"step{step}"
        folder.mkdir()
        (folder / "config.json").write_text(model.config.to_json_string())
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (tmp_path / "notes").mkdir()
    series = suites.revisions(str(tmp_path))
    assert [s for s, _ in series] == [0, 512, 1000]
    config, params = convert.load_hf_checkpoint(series[-1][1])
    np.testing.assert_allclose(_jax_logits(config, params), _hf_logits(model), atol=1e-4, rtol=0)


def test_legacy_pythia_config_keys():
    """Pythia's own config.json (transformers 4 era) names rotary settings rotary_pct / rotary_emb_base."""
    hf = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 512,
          "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 2048, "vocab_size": 50304,
          "rotary_pct": 0.25, "rotary_emb_base": 10000, "layer_norm_eps": 1e-5, "use_parallel_residual": True,
          "max_position_embeddings": 2048, "hidden_act": "gelu", "tie_word_embeddings": False}
    assert convert.config_from_hf(hf) == models.preset("pythia-70m")


def test_mismatches_name_the_tensor(saved):
    model, path = saved
    hf = convert.read_hf_config(path)
    tensors = convert.read_hf_tensors(path)
    config = convert.config_from_hf(hf)
    name = sorted(tensors)[3]
    with pytest.raises(ValueError, match=f"missing tensor '{name}'"):
        convert.params_from_hf({k: v for k, v in tensors.items() if k != name}, config)
    wider = convert.config_from_hf({**hf, "intermediate_size": hf["intermediate_size"] * 2})
    with pytest.raises(ValueError, match=r"tensor '\S+\.layers\.0\.\S+' has shape .*, the config says"):
        convert.params_from_hf(tensors, wider)
    with pytest.raises(ValueError, match="has tensor 'extra.weight'"):
        convert.params_from_hf({**tensors, "extra.weight": np.zeros(3)}, config)
    with pytest.raises(ValueError, match="unknown architecture: model_type 'gpt2'"):
        convert.config_from_hf({**hf, "model_type": "gpt2"})
    with pytest.raises(FileNotFoundError, match="no config.json"):
        convert.load_hf_checkpoint(os.path.dirname(path))


def test_a_run_starts_from_a_checkpoint_with_its_own_compute_settings_and_refuses_another_shape(saved):
    """``config.init_from``: the checkpoint fixes the shapes; how to compute (dtype, attention, the embedding's
    gradient) and the initialisers are the run's."""
    import ml_collections

    from train import determinism, train

    _, path = saved
    config, params = convert.load_hf_checkpoint(path)
    ours = config.replace(dtype="bfloat16", attention="xla", embedding_gradient="sorted", init_in="normal")
    started = train.initial_params(ml_collections.ConfigDict({"init_from": path}), ours)
    assert determinism.differing_leaves([started, params]) == []
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        train.initial_params(ml_collections.ConfigDict({"init_from": path}), ours.replace(d_ff=2 * ours.d_ff))
