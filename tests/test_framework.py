"""The F-functions against npm-weibull-py and the paper's tables; the whole-model diagnosis; the taxonomy."""

import jax
import numpy as np
import npm_weibull
import pytest
from scipy import stats

import weibull_jax
from weibull_jax import framework, models, reference, taxonomy


@pytest.mark.parametrize("k,r2,is_init", [
    (1.19, 0.99, False), (1.19, 0.90, False), (1.25, None, False), (1.0, 0.99, False), (0.8, None, False),
    (1.203, 0.99, True), (1.203, 0.99, False), (1.17, None, True), (0.95, None, False), (1.21, None, False),
])
def test_classify_k_matches_npm_weibull(k, r2, is_init):
    ours = framework.k_class_names(weibull_jax.classify_k(k, r2, is_init))[0]
    assert ours == npm_weibull.classify_k(k, R2=r2, is_init=is_init)["class"]


def test_training_budget_matches_npm_weibull_and_the_papers_pythia_states():
    for eta, wd, steps in [(1e-3, 0.01, 143_000), (1.2e-4, 0.01, 143_000), (3e-4, 0.1, 10_000)]:
        ours = weibull_jax.training_budget(eta, wd, steps)
        ref = npm_weibull.compute_T_tau(eta, wd, steps)
        assert ours.t_over_tau == pytest.approx(ref["T_tau"]) and ours.tau_iter == pytest.approx(ref["tau_iter"])
    # §4.2 and Table 3: 70m 1.43 saturated, 160m 0.86 near-saturated, 410m 0.43 approaching, 6.9B 0.17 transition
    states = [weibull_jax.training_budget(eta, 0.01, 143_000).state for eta in (1e-3, 6e-4, 3e-4, 1.2e-4)]
    assert states == ["saturated", "near_saturated", "approaching", "transition"]
    with pytest.raises(ValueError, match="positive"):
        weibull_jax.training_budget(0.0, 0.01, 100)


@pytest.mark.parametrize("k_trained", [1.2, 1.15, 0.8, 1.6])
def test_k_drift_matches_npm_weibull(k_trained):
    ours = weibull_jax.k_drift(k_trained, 1.205)
    ref = npm_weibull.core.trajectory.k_drift_severity(1.205, k_trained)
    assert ours.severity == ref["severity"] and ours.percent == pytest.approx(ref["delta_pct"])


@pytest.mark.parametrize("n_q,n_kv", [(32, 32), (32, 8), (28, 4), (16, 1)])
def test_attention_architecture_matches_npm_weibull(n_q, n_kv):
    assert weibull_jax.attention_architecture(n_q, n_kv) == npm_weibull.classify_attention_arch(n_q, n_kv)["arch"]


def test_attention_architecture_rejects_bad_head_counts():
    with pytest.raises(ValueError, match="n_kv dividing n_q"):
        weibull_jax.attention_architecture(12, 5)


def test_lambda_scaling_on_table_4_pythia_rows_gives_the_papers_fit():
    pythia = [e for e in reference.REFERENCE if e.model.startswith("pythia")]
    slope, r = weibull_jax.lambda_scaling([e.eta_peak for e in pythia], [e.weight_decay for e in pythia],
                                          [e.terminal_mean_scale for e in pythia])
    assert round(slope, 3) == reference.PYTHIA_LAMBDA_SLOPE
    assert round(r, 2) == reference.PYTHIA_LAMBDA_R
    # Table 4's last column is λ/√(η/λ_wd) of each row.
    assert [round(e.scale_slope, 3) for e in pythia] == [0.071, 0.082, 0.110, 0.110, 0.136]


def test_paired_lambda_correlation_is_log_log_pearson():
    a = np.exp(np.random.default_rng(3).normal(-4, 0.3, 25))
    b = a * np.exp(np.random.default_rng(4).normal(0, 0.05, 25))
    assert weibull_jax.paired_lambda_correlation(a, b) == pytest.approx(stats.pearsonr(np.log(a), np.log(b))[0])


def test_band_statistics_on_table_1():
    """§3.2: k80 median 1.195 puts 10 of 12 in the band; a cohort spread like §3.1's CV of 0.5 %."""
    k = np.array([1.190, 1.192, 1.194, 1.195, 1.195, 1.196, 1.197, 1.199, 1.201, 1.203, 1.180, 1.210])
    band = framework.band_statistics(k)
    assert band.n_in_band == 10 and band.n == 12
    assert band.median == pytest.approx(np.median(k)) and band.cv == pytest.approx(np.std(k) / np.mean(k))


# Parameter names as they appear in each family's HuggingFace checkpoints (and native OLMo-1, Meta LLaMA).
NAMES = {
    "gpt_neox.layers.3.attention.query_key_value.weight": ("qkv", "selection", 3),
    "gpt_neox.layers.3.attention.dense.weight": ("o", "transmission", 3),
    "gpt_neox.layers.3.mlp.dense_h_to_4h.weight": ("ffn_in", "transmission", 3),
    "gpt_neox.layers.3.mlp.dense_4h_to_h.weight": ("ffn_out", "transmission", 3),
    "gpt_neox.layers.3.mlp.dense_4h_to_h.bias": ("bias", "other", 3),
    "gpt_neox.embed_in.weight": ("embed", "other", -1),
    "embed_out.weight": ("unembed", "other", -1),
    "gpt_neox.final_layer_norm.weight": ("norm", "other", -1),
    "model.layers.7.self_attn.q_proj.weight": ("q", "selection", 7),
    "model.layers.7.self_attn.k_proj.weight": ("k", "selection", 7),
    "model.layers.7.self_attn.v_proj.weight": ("v", "transmission", 7),
    "model.layers.7.self_attn.o_proj.weight": ("o", "transmission", 7),
    "model.layers.7.self_attn.k_norm.weight": ("norm", "other", 7),  # Qwen3, OLMo-2
    "model.layers.7.mlp.gate_proj.weight": ("gate", "transmission", 7),
    "model.layers.7.mlp.up_proj.weight": ("up", "transmission", 7),
    "model.layers.7.mlp.down_proj.weight": ("down", "transmission", 7),
    "model.layers.7.post_feedforward_layernorm.weight": ("norm", "other", 7),  # OLMo-2
    "model.embed_tokens.weight": ("embed", "other", -1),
    "lm_head.weight": ("unembed", "other", -1),
    "model.transformer.blocks.2.att_proj.weight": ("qkv", "selection", 2),  # native OLMo-1
    "model.transformer.blocks.2.attn_out.weight": ("o", "transmission", 2),
    "model.transformer.blocks.2.ff_out.weight": ("ffn_out", "transmission", 2),
    "model.transformer.ff_out.weight": ("unembed", "other", -1),
    "transformer.h.5.attn.c_attn.weight": ("qkv", "selection", 5),  # GPT-2
    "transformer.h.5.attn.c_proj.weight": ("o", "transmission", 5),
    "transformer.h.5.mlp.c_proj.weight": ("ffn_out", "transmission", 5),
    "layers.4.attention.wq.weight": ("q", "selection", 4),  # Meta LLaMA
    "layers.4.feed_forward.w1.weight": ("gate", "transmission", 4),
    "output.weight": ("unembed", "other", -1),
    "params.layers_2.attention.qkv.kernel": ("qkv", "selection", 2),  # our Flax models
    "params.layers_2.mlp.ffn_out.kernel": ("ffn_out", "transmission", 2),
    "params.embed.embedding": ("embed", "other", -1),
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_taxonomy(name):
    assert tuple(taxonomy.describe(name)) == NAMES[name]


@pytest.fixture(scope="module")
def fresh_pythia_14m():
    config = models.preset("pythia-14m")
    params = models.init_params(config, jax.random.key(0))
    info = {"num_attention_heads": config.n_heads, "learning_rate": 1e-3, "weight_decay": 0.01, "steps": 143_000}
    return params, weibull_jax.diagnose_model(params, info, step=0)


def test_diagnosis_of_a_fresh_init(fresh_pythia_14m):
    params, d = fresh_pythia_14m
    t = d.matrices
    assert len(t) == 6 * 4 + 2  # the blocks' four matrices, the embedding and the head
    assert set(d.by_kind.group) == {"qkv", "o", "ffn_in", "ffn_out", "embed", "unembed"}
    assert np.all(np.abs(t.k - 1.2054) < 0.02)
    large = t.numel >= 1_000_000  # the 6.4 M-weight embeddings; 16k–65k-weight matrices scatter by ±0.01
    assert large.sum() == 2 and {c for c, big in zip(t.k_class, large) if big} == {"init_baseline"}
    assert abs(np.median(t.k) - 1.2054) < 0.004
    assert d.architecture == "MHA" and d.budget.state == "saturated"
    i = t.name.index("layers_2.mlp.ffn_out.kernel")
    w = np.asarray(params["layers_2"]["mlp"]["ffn_out"]["kernel"])
    fit = weibull_jax.fit_weibull(w)
    assert t.k[i] == float(fit.k) and t.scale[i] == float(fit.scale)
    assert t.rms[i] == pytest.approx(np.sqrt(np.mean(w.astype(np.float64) ** 2)), rel=1e-5)
    assert t.excess_kurtosis[i] == pytest.approx(stats.kurtosis(w.reshape(-1)), abs=1e-3)
    assert t.k100[i] < t.k90[i] < t.k[i]  # full-range fits sit below the body fit (§3.2)
    assert "init_baseline" not in weibull_jax.diagnose_model(params, step=1000).matrices.k_class


def test_diagnosis_of_stacked_layers_expands_per_layer():
    w = np.random.default_rng(0).normal(0, 0.02, (3, 256, 128)).astype(np.float32)
    d = weibull_jax.diagnose_model({"layers": {"mlp": {"ffn_in": {"kernel": w}}}})
    assert d.matrices.name == tuple(f"layers.mlp.ffn_in.kernel[{i}]" for i in range(3))
    assert list(d.matrices.block) == [0, 1, 2]
    assert d.matrices.k[1] == float(weibull_jax.fit_weibull(w[1]).k)


def test_diagnosis_errors_name_the_matrix():
    with pytest.raises(ValueError, match="no weight matrices"):
        weibull_jax.diagnose_model({"bias": np.zeros(10)})
    w = np.random.default_rng(0).normal(0, 0.02, (64, 64)).astype(np.float32)
    w[0, 0] = np.nan
    with pytest.raises(ValueError, match="'model.layers.0.mlp.down_proj.weight'"):
        weibull_jax.diagnose_model({"model.layers.0.mlp.down_proj.weight": w})


def test_compare_to_benchmark_agrees_with_npm_weibull():
    """The nearest cohort entry and its distance, for the per-kind medians of the paper's archetypes."""
    for arch, medians in [("GQA", {"q": 1.14, "k": 1.15, "v": 1.18, "o": 1.18}),
                          ("MHA", {"q": 0.80, "k": 0.75, "v": 1.05, "o": 1.05}),
                          ("MHA", {"qkv": 1.06})]:
        ref = npm_weibull.compare_to_benchmark({"arch": arch, "per_component_summary": medians})
        distances = [(e.model, framework._entry_distance(medians, e)) for e in reference.REFERENCE]
        best = min((d, m) for m, d in distances if d is not None)
        assert best[0] == pytest.approx(ref["k_distance"], abs=1e-12)
        peer_name = ref["nearest_neighbor"].replace("olmo-7b-hf", "olmo-1-7b").replace("-step143000", "")
        peer_name = peer_name.replace("olmo2-7b-final", "olmo-2-7b").replace("llama-3-8b", "llama-3-8b")
        assert peer_name in [m for m, d in distances if d == best[0]]


def test_compare_to_benchmark_report(fresh_pythia_14m):
    _, d = fresh_pythia_14m
    cmp = weibull_jax.compare_to_benchmark(d)
    assert cmp.distances[0][1] == cmp.distance <= min(x for _, x in cmp.distances)
    metrics = {row[0]: row for row in cmp.rows}
    assert metrics["median k80 − k100"][2] == 0.0519
