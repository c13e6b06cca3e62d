"""The Flax models: published sizes, init recipes against their formulas, causality, the LM loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import weibull_jax
from weibull_jax import models, taxonomy, tree
from weibull_jax.models import flops

# Parameter counts of the HuggingFace checkpoints (EleutherAI model cards / safetensors headers).
PUBLISHED_SIZES = {"pythia-14m": 14_067_712, "pythia-70m": 70_426_624, "pythia-160m": 162_322_944,
                   "pythia-410m": 405_334_016, "pythia-1b": 1_011_781_632}


@pytest.mark.parametrize("name", sorted(PUBLISHED_SIZES))
def test_presets_have_the_published_parameter_counts(name):
    shapes = jax.eval_shape(lambda: models.init_params(models.preset(name), jax.random.key(0)))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == PUBLISHED_SIZES[name]


@pytest.mark.parametrize("name,sigma_in,sigma_out", [
    ("pythia-14m", np.sqrt(2 / (5 * 128)), 2 / (6 * np.sqrt(128))),  # small_init, wang_init
    ("llama-70m", 0.02, 0.02),  # HF Llama's normal(0.02)
    ("pythia-6.9b-shaped", 0.02, 0.02 / np.sqrt(2 * 4)),  # recipe B on a small shape
])
def test_init_recipes_give_the_formula_sigma_and_the_anchor_scale(name, sigma_in, sigma_out):
    config = (models.preset("pythia-6.9b", d_model=128, n_layers=4, n_heads=4, d_ff=512, vocab_size=1000)
              if name == "pythia-6.9b-shaped" else models.preset(name))
    params = models.init_params(config, jax.random.key(3))
    names, leaves, _, _ = tree.named_leaves(params, lambda p, x: True)
    _, ratio = weibull_jax.halfnormal_anchor()
    for n, x in zip(names, leaves):
        x = np.asarray(x)
        kind = taxonomy.kind_of(n)
        if kind == "norm" and n.endswith("scale"):
            assert np.all(x == 1.0), n
        elif kind in ("norm", "bias"):
            assert np.all(x == 0.0), n
        else:
            sigma = sigma_out if kind in ("o", "ffn_out", "down") else sigma_in
            assert abs(x.std() / sigma - 1) < 4 / np.sqrt(x.size) + 2e-3, n
            assert abs(abs(x.mean()) / sigma) < 4 / np.sqrt(x.size), n
            if x.size >= 60_000:  # the fitted λ at init is the anchor's 0.8875 σ (App. A.1)
                assert abs(float(weibull_jax.fit_weibull(x).scale) / sigma / ratio - 1) < 0.02, n


@pytest.mark.parametrize("name,d,layers,vocab", [("gpt2-51m", 512, 8, 50304), ("gpt2-124m", 768, 12, 50304),
                                                  ("gpt2-355m", 1024, 24, 50304)])
def test_gpt2_presets_count_untied_embeddings_and_12d_squared_per_block(name, d, layers, vocab):
    shapes = jax.eval_shape(lambda: models.init_params(models.preset(name), jax.random.key(0)))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == 2 * vocab * d + layers * 12 * d * d  # no gains, no biases


def test_gpt2_logits_match_a_pytorch_reference():
    """The modded-nanoGPT block written again in PyTorch: RMSNorm without gain, full rotary (half-split
    pairs), causal softmax attention, ReLU², untied head."""
    torch = pytest.importorskip("torch")
    config = models.preset("gpt2-51m", d_model=32, n_layers=2, n_heads=4, d_ff=128, vocab_size=61, max_seq_len=16)
    params = models.init_params(config, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, 61, (2, 12))
    t = {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in
         zip(*tree.named_leaves(params, lambda p, x: True)[:2])}

    def rms(x):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + config.norm_eps)

    def rotate(x):  # (B, T, H, hd)
        half = x.shape[-1] // 2
        inv = 1.0 / 10000.0 ** (torch.arange(0, x.shape[-1], 2, dtype=torch.float64) / x.shape[-1])
        ang = torch.arange(x.shape[1], dtype=torch.float64)[:, None] * inv[None]
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1)[None, :, None], torch.cat([ang.sin(), ang.sin()], -1)[None, :, None]
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    x = t["embed.embedding"][torch.tensor(tokens)]
    b, n, h = 2, 12, 4
    for i in range(2):
        p = f"layers_{i}."
        y = rms(x)
        q, k, v = (rotate((y @ t[p + f"attention.{m}.kernel"]).view(b, n, h, 8)) if m != "v"
                   else (y @ t[p + "attention.v.kernel"]).view(b, n, h, 8) for m in "qkv")
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
        scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
        att = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, n, 32)
        x = x + att @ t[p + "attention.o.kernel"]
        x = x + torch.relu(rms(x) @ t[p + "mlp.ffn_in.kernel"]) ** 2 @ t[p + "mlp.ffn_out.kernel"]
    expected = (rms(x) @ t["unembed.kernel"]).numpy()
    logits = np.asarray(models.CausalLM(config).apply({"params": params}, jnp.asarray(tokens)))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["pythia-14m", "llama-70m", "gpt2-51m"])
def test_models_are_causal(name):
    config = models.preset(name, d_model=64, n_heads=4, n_layers=2, d_ff=128, vocab_size=97)
    model = models.CausalLM(config)
    params = models.init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 97)
    changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % 97)
    a, b = (np.asarray(model.apply({"params": params}, t)) for t in (tokens, changed))
    np.testing.assert_array_equal(a[:, :9], b[:, :9])
    assert np.abs(a[:, 9:] - b[:, 9:]).min(axis=-1).max() > 0


def test_bfloat16_compute_tracks_float32():
    config = models.preset("pythia-14m", vocab_size=97)
    params = models.init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, 97)
    full = models.CausalLM(config).apply({"params": params}, tokens)
    half = models.CausalLM(config.replace(dtype="bfloat16")).apply({"params": params}, tokens)
    assert half.dtype == jnp.bfloat16 and full.dtype == jnp.float32
    assert np.abs(np.asarray(half, np.float32) - np.asarray(full)).max() < 0.05 * np.abs(np.asarray(full)).max()


@pytest.mark.parametrize("name", ["pythia-14m", "llama-70m", "gpt2-51m"])
def test_kernels_cast_ahead_give_the_same_loss_and_gradients_in_the_compute_dtype(name):
    """cast_kernels: the loss is the same bits, each kernel's gradient comes out in bfloat16 and equals, in
    float32, autodiff's gradient of the float32 kernel (the GEMM's bfloat16 output, converted); the other
    leaves' gradients are unchanged. A kernel cast to a coarser dtype, or left float32, fails."""
    config = models.preset(name, d_model=64, n_heads=4, n_layers=2, d_ff=128, vocab_size=97, dtype="bfloat16")
    params = models.init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 97)

    def loss(p):
        return models.next_token_loss(models.CausalLM(config).apply({"params": p}, tokens), tokens)

    want_loss, want = jax.jit(jax.value_and_grad(loss))(params)
    cast = models.cast_kernels(params, config)
    got_loss, got = jax.jit(jax.value_and_grad(loss))(cast)
    assert float(got_loss) == float(want_loss)
    kernels = 0
    leaves = zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), jax.tree.leaves(cast))
    for (path, g), w, c in leaves:
        is_kernel = tree.path_name(path).endswith(".kernel")
        kernels += is_kernel
        assert g.dtype == c.dtype == (jnp.bfloat16 if is_kernel else jnp.float32), tree.path_name(path)
        np.testing.assert_array_equal(np.asarray(g, np.float32), w, err_msg=tree.path_name(path))
    assert kernels == 2 * {"pythia-14m": 4, "llama-70m": 7, "gpt2-51m": 6}[name] + 1  # the layers' and the head's


def test_next_token_loss_and_its_gradient_against_the_closed_form():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 7, 13))
    tokens = rng.integers(0, 13, (2, 7))
    z = logits[:, :-1] - logits[:, :-1].max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    onehot = np.eye(13)[tokens[:, 1:]]
    want_loss = -np.mean(np.sum(log_p * onehot, -1))
    want_grad = np.zeros_like(logits)
    want_grad[:, :-1] = (np.exp(log_p) - onehot) / onehot[..., 0].size
    loss, grad = jax.value_and_grad(models.next_token_loss)(jnp.asarray(logits, jnp.float32), tokens)
    assert abs(float(loss) - want_loss) < 1e-5
    np.testing.assert_allclose(grad, want_grad, atol=1e-7)
    half = jax.grad(models.next_token_loss)(jnp.asarray(logits, jnp.bfloat16), tokens)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), want_grad, atol=2e-3)


def test_gelu_and_its_gradient_against_float64():
    """Exact GeLU ½x(1 + erf(x/√2)) and its slope Φ(x) + xφ(x) against float64 (scipy's erf).

    float32 (u = 2⁻²⁴): erf's error (taken as 4u), the rounding of x/√2 carried through erf′ ≤ 2/√π, of 1 + erf
    (≤ 2u) and of the product give |Δ| ≤ (2 + 0.6 + 1)·u·|x| + u·|gelu| < 6u·|x|; the slope's terms, each
    ≤ 1.2 with a few roundings, |Δ| ≤ 6u. bfloat16 adds one rounding of the float32 value, 2⁻⁸ relative
    (jax.nn.gelu, which rounds its intermediates to bfloat16, is 4 % off)."""
    from scipy.special import erf

    def cdf(x):
        return 0.5 * (1 + erf(x / np.sqrt(2)))

    u = 2.0**-24
    for dtype, rounding in ((jnp.float32, 0.0), (jnp.bfloat16, 2.0**-8)):
        x = jnp.asarray(np.linspace(-12, 12, 24_001), dtype)
        x64 = np.asarray(x, np.float64)
        want, want_slope = x64 * cdf(x64), cdf(x64) + x64 * np.exp(-0.5 * x64**2) / np.sqrt(2 * np.pi)
        got, slope = jax.vmap(jax.value_and_grad(models.layers.gelu))(x)
        assert got.dtype == slope.dtype == dtype
        assert np.all(np.abs(np.asarray(got, np.float64) - want) <= rounding * np.abs(want) + 7 * u * np.abs(x64))
        assert np.all(np.abs(np.asarray(slope, np.float64) - want_slope) <= rounding * np.abs(want_slope) + 7 * u)


def test_config_checks():
    with pytest.raises(ValueError, match="unknown model family"):
        models.ModelConfig("gpt3", 64, 2, 4, 128, 97)
    with pytest.raises(ValueError, match="must divide"):
        models.ModelConfig("llama", 64, 2, 4, 128, 97, n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown preset"):
        models.preset("pythia-7b")
    with pytest.raises(ValueError, match="gpt2 has one key/value head per query head"):
        models.preset("gpt2-51m", n_kv_heads=4)


@pytest.mark.parametrize("name,non_embedding", [("pythia-70m", 18_915_328), ("pythia-160m", 85_056_000),
                                                ("pythia-410m", 302_311_424), ("pythia-1b", 805_736_448)])
def test_matmul_parameters_against_the_pythia_papers_counts(name, non_embedding):
    """The Pythia paper's non-embedding parameters (Biderman et al. 2023, Table 1) are the block and final-norm
    weights: our N (every matrix a token meets, the head included) plus the vectors, less the head."""
    config = models.preset(name)
    params = jax.eval_shape(lambda: models.init_params(config, jax.random.key(0)))
    vectors = sum(x.size for x in jax.tree.leaves(params) if x.ndim == 1)
    assert flops.matmul_parameters(config) + vectors - config.d_model * config.vocab_size == non_embedding


def test_training_flops_per_token_is_six_n_plus_the_attention_products():
    d, layers, heads, ff, vocab, kv, t = 256, 3, 8, 768, 1000, 2, 128
    llama = models.preset("llama-70m", d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv, d_ff=ff,
                          vocab_size=vocab)
    n = layers * (2 * d * d + 2 * d * kv * (d // heads) + 3 * d * ff) + d * vocab  # q, o; k, v (GQA); SwiGLU
    assert flops.matmul_parameters(llama) == n
    assert flops.training_flops_per_token(llama, t) == 6 * n + 12 * layers * t * d
    assert flops.training_flops_per_token(llama, t, causal=True) == 6 * n + 6 * layers * t * d
    gpt2 = models.preset("gpt2-51m", d_model=d, n_layers=layers, n_heads=heads, d_ff=ff, vocab_size=vocab)
    assert flops.matmul_parameters(gpt2) == layers * (4 * d * d + 2 * d * ff) + d * vocab
