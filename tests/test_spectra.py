"""Singular spectra via the smaller Gram matrix against numpy's float64 SVD."""

import jax.numpy as jnp
import numpy as np
import pytest

from weibull_jax import spectra


@pytest.mark.parametrize("shape", [(96, 64), (64, 96), (3, 48, 80)])
def test_singular_values_and_distribution_match_float64_svd(shape):
    w = np.random.default_rng(0).normal(size=shape).astype(np.float32) * 0.02
    ref = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(spectra.singular_values(jnp.asarray(w)), ref, rtol=2e-5)
    sd = spectra.singular_distribution(jnp.asarray(w))
    np.testing.assert_allclose(sd, ref / ref.sum(-1, keepdims=True), atol=1e-6)


def test_low_rank_matrix_keeps_its_rank_and_distribution():
    rng = np.random.default_rng(1)
    w = (rng.normal(size=(128, 5)) * [8, 4, 2, 1, 0.5]) @ rng.normal(size=(5, 64))
    ref = np.linalg.svd(w, compute_uv=False)
    s = np.asarray(spectra.singular_values(jnp.asarray(w, jnp.float32)))
    np.testing.assert_allclose(s[:5], ref[:5], rtol=1e-5)
    assert np.all(s[5:] < 1e-2 * ref[4])  # numerically zero: at most √(ε·n)·σ_max
    sd = np.asarray(spectra.singular_distribution(jnp.asarray(w, jnp.float32)))
    np.testing.assert_allclose(sd, ref / ref.sum(), atol=2e-4)


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
