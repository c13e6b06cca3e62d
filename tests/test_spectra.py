"""Singular spectra via the smaller float64 Gram matrix against numpy's float64 SVD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weibull_jax import spectra


U64, U32 = np.finfo(np.float64).eps / 2, np.finfo(np.float32).eps / 2  # unit roundoffs


def _float64_sd(w: np.ndarray) -> np.ndarray:
    """SD of numpy's float64 SVD of the float32 matrix itself (the cast to float64 is exact)."""
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    return s / s.sum(-1, keepdims=True)


def _sd_bound(w: np.ndarray, ref_sd: np.ndarray) -> np.ndarray:
    """|SD − SD_float64| allowed: the float64 Gram's O(n·u·σ_max) per value (16n·u·σ_max/Σσ, which bounds
    it with room for the eigensolver's constant), plus the float32 rounding of the result (u₃₂·SD)."""
    n = min(w.shape[-2:])
    return 16 * n * U64 * ref_sd[..., :1] + 2 * U32 * ref_sd


def _ill_conditioned(rng, n: int) -> np.ndarray:
    """σ log-spaced from 1 to 1e-6 between random orthogonal bases (the issue's test matrix)."""
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    v, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return ((u * np.logspace(0, -6, n)) @ v.T).astype(np.float32)


@pytest.mark.parametrize("kind,shape", [("gaussian", (96, 64)), ("gaussian", (64, 96)), ("gaussian", (3, 48, 80)),
                                        ("gaussian", (4, 512, 512)), ("student_t2", (2, 512, 512)),
                                        ("student_t2", (1024, 256)), ("ill_conditioned", (2, 512, 512))])
def test_singular_values_and_distribution_match_float64_svd(kind, shape):
    rng = np.random.default_rng(0)
    if kind == "gaussian":
        w = rng.normal(size=shape).astype(np.float32) * 0.02
    elif kind == "student_t2":  # heavy-tailed weights: where a float32 Gram lost the small values (2e-5)
        w = rng.standard_t(2, size=shape).astype(np.float32) * 0.02
    else:
        w = np.stack([_ill_conditioned(rng, shape[-1]) for _ in range(shape[0])])
    ref = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    s = np.asarray(spectra.singular_values(jnp.asarray(w)), np.float64)
    n = min(shape[-2:])
    assert np.all(np.abs(s - ref) <= 16 * n * U64 * ref[..., :1] + 2 * U32 * ref)
    ref_sd = _float64_sd(w)
    sd = np.asarray(spectra.singular_distribution(jnp.asarray(w)), np.float64)
    assert np.all(np.abs(sd - ref_sd) <= _sd_bound(w, ref_sd))
    assert np.abs(sd - ref_sd).max() <= 1e-6  # the requirement, far inside the bound above


def test_sd_variation_of_nearby_heavy_tailed_matrices_keeps_its_digits():
    """Two Student-t matrices 1e-4 apart: an SD variation near 1e-7, SoSD's floor. A float32 Gram made it
    34x too large on an H200 (1.2x on a CPU); here it is float64's up to the float32 rounding of each SD
    entry, |Δvar| ≤ u₃₂(‖SD_a‖ + ‖SD_b‖) plus the bound above."""
    rng = np.random.default_rng(3)
    a = rng.standard_t(2, size=(512, 512)) * 0.02
    pair = np.stack([a, a + 1e-4 * 0.02 * rng.normal(size=a.shape)]).astype(np.float32)
    ref = _float64_sd(pair)
    want = np.linalg.norm(ref[0] - ref[1])
    sd = np.asarray(spectra.singular_distribution(jnp.asarray(pair)), np.float64)
    got = float(spectra.sd_variation(jnp.asarray(sd[0]), jnp.asarray(sd[1])))
    assert 3e-8 < want < 3e-7
    bound = 2 * U32 * np.linalg.norm(ref, axis=-1).sum() + np.linalg.norm(_sd_bound(pair, ref), axis=-1).sum()
    assert abs(got - want) <= bound + 2 * U32 * want
    assert abs(got - want) <= 0.1 * want


def test_stacks_of_several_shapes_in_one_program_match_float64_svd():
    """``singular_distributions`` solves the Grams of one size together (here 40 × 40 from a (3, 40, 64) and a
    (2, 64, 40) stack, and 20 × 20 from a (5, 30, 20) stack): each SD as numpy's float64 SVD of its own
    matrix, within the bound above."""
    rng = np.random.default_rng(6)
    stacks = [rng.standard_t(2, size=shape).astype(np.float32) * 0.02
              for shape in ((3, 40, 64), (2, 64, 40), (5, 30, 20))]
    got = spectra.singular_distributions([jnp.asarray(w) for w in stacks])
    assert [g.shape for g in got] == [(3, 40), (2, 40), (5, 20)]
    for w, sd in zip(stacks, got):
        ref = _float64_sd(w)
        assert np.all(np.abs(np.asarray(sd, np.float64) - ref) <= _sd_bound(w, ref))


def test_zero_columns_give_exact_zero_singular_values():
    rng = np.random.default_rng(1)
    w = np.zeros((128, 64), np.float32)
    w[:, :5] = (rng.normal(size=(128, 5)) * [8, 4, 2, 1, 0.5]).astype(np.float32)
    ref = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    s = np.asarray(spectra.singular_values(jnp.asarray(w)), np.float64)
    np.testing.assert_allclose(s[:5], ref[:5], rtol=2 * U32)
    assert np.all(s[5:] == 0)  # the float64 noise below n·u·σ_max is set to 0
    sd = np.asarray(spectra.singular_distribution(jnp.asarray(w)))
    np.testing.assert_allclose(sd, ref / ref.sum(), rtol=2 * U32, atol=0)


def test_float64_inside_a_float32_jit():
    """The float64 arithmetic is switched on inside the function: a caller's jit without x64 gets the same
    float32 result as a direct call."""
    w = np.random.default_rng(4).standard_t(2, size=(2, 64, 48)).astype(np.float32)
    assert not jax.config.jax_enable_x64
    direct = spectra.singular_distribution(jnp.asarray(w))
    inside = jax.jit(lambda x: spectra.singular_distribution(x) * 1.0)(jnp.asarray(w))
    assert inside.dtype == jnp.float32
    np.testing.assert_array_equal(inside, direct)


def test_variation_and_cosines():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 32, 16))
    b = a + 0.1 * rng.normal(size=a.shape)
    cos = np.sum(a * b, (1, 2)) / np.linalg.norm(a, axis=(1, 2)) / np.linalg.norm(b, axis=(1, 2))
    np.testing.assert_allclose(spectra.cosine_similarity(jnp.asarray(a), jnp.asarray(b)), cos, rtol=1e-5)
    sa, sb = (np.linalg.svd(x, compute_uv=False) for x in (a, b))
    sa, sb = sa / sa.sum(-1, keepdims=True), sb / sb.sum(-1, keepdims=True)
    np.testing.assert_allclose(spectra.sd_variation(jnp.asarray(sb), jnp.asarray(sa)),
                               np.linalg.norm(sb - sa, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(spectra.cosine_similarity(jnp.asarray(sa), jnp.asarray(sb), (-1,)),
                               np.sum(sa * sb, -1) / np.linalg.norm(sa, axis=-1) / np.linalg.norm(sb, axis=-1),
                               rtol=1e-6)


def test_fused_qkv_splits_as_the_attention_reads_it():
    from weibull_jax import models

    config = models.preset("pythia-14m", d_model=32, n_heads=4, n_layers=1, d_ff=64, vocab_size=50)
    kernel = np.asarray(models.init_params(config, jax.random.key(0))["layers_0"]["attention"]["qkv"]["kernel"])
    x = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    heads = (x @ kernel).reshape(5, 4, 3, 8)  # NeoXAttention's reading of the fused output
    for i, part in enumerate(spectra.split_qkv(jnp.asarray(kernel), 4)):
        np.testing.assert_allclose(x @ np.asarray(part), heads[:, :, i, :].reshape(5, 32), rtol=1e-5, atol=1e-6)


def test_trunk_distributions_of_a_model_match_float64_svd_per_matrix():
    from weibull_jax import models, tree

    config = models.preset("pythia-14m", d_model=32, n_heads=4, n_layers=2, d_ff=96, vocab_size=50)
    params = models.init_params(config, jax.random.key(1))
    names = spectra.trunk_names(params, 4)
    table = np.asarray(jax.jit(lambda p: spectra.trunk_distributions(p, 4))(params))
    leaves = dict(zip(*tree.named_leaves(params)[:2]))
    assert len(names) == 2 * 6 and table.shape == (12, 32)
    assert not any("embed" in n or "bias" in n for n in names)
    for name, row in zip(names, table):
        if name.endswith((".q", ".k", ".v")):
            w = np.asarray(leaves[name[:-2]]).reshape(32, 4, 3, 8)[:, :, ".q.k.v".index(name[-2:]) // 2]
            w = w.reshape(32, 32)
        else:
            w = np.asarray(leaves[name])
        s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        np.testing.assert_allclose(row[: len(s)], s / s.sum(), rtol=2 * U32, atol=16 * 32 * U64)
        assert np.all(row[len(s):] == 0)
    means = spectra.group_means(table, names)
    attention = [i for i, n in enumerate(names) if ".attention." in n]
    np.testing.assert_allclose(means["attention"], table[attention].mean(0), rtol=1e-6)
    assert set(means) == {"attention", "mlp"}
