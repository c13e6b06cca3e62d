"""LayerNorms with their written-out backward, in XLA and in the kernels, against torch in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weibull_jax import layer_norm


@pytest.mark.parametrize("path", ["xla", "interpret", pytest.param("kernel", marks=pytest.mark.skipif(
    jax.default_backend() != "gpu", reason="the compiled kernels need a CUDA GPU"))])
@pytest.mark.parametrize("residual", [False, True])
def test_layer_norms_and_their_gradients_against_torch_float64(path, residual):
    """Two LayerNorms of one x (the parallel residual's pair, statistics shared) and the vjp of both, with
    the residual stream's cotangent joined or not, in XLA and in the kernels (Pallas' interpreter), against
    torch's layer_norm and autograd in float64.

    Error analysis (float32, u = 2⁻²⁴, e = n·u for a sum of n = 512 terms, R = 64 rows): |Δμ| ≤ e·mean|x|
    and |Δr/r| ≤ 3e/2 + 2u give |Δx̂| ≤ e·(a + 2|x̂|), a = mean|x|·r; y = x̂γ + β adds 2u|y|, and bfloat16
    one rounding, 2⁻⁸|y|. The backward r(g − ḡ − x̂·m), m = mean(g·x̂), g = Σ dy_k·γ_k (G = Σ|dy_k·γ_k|):
    r·[2uG + eḠ + |Δx̂|(|m| + Ḡ) + |x̂|(e·mean(G|x̂|) + mean(G|Δx̂|))] + 2e|dx|; the parameters' sums over
    the rows R·u·Σ|dy·x̂| + Σ|dy||Δx̂| and R·u·Σ|dy|. Each bound is doubled for the roundings between."""
    torch = pytest.importorskip("torch")
    n, u, eps = 512, 2.0**-24, 1e-5
    e = n * u
    rng = np.random.default_rng(0)
    x = (0.5 + 2.0 * rng.standard_normal((4, 16, n))).astype(np.float32)
    rows, flat = 4 * 16, (0, 1)  # the parameters' sums run over both leading axes
    norms = tuple((1 + 0.3 * rng.standard_normal(n).astype(np.float32),
                   0.1 * rng.standard_normal(n).astype(np.float32)) for _ in range(2))
    for dtype, rounding in ((jnp.float32, 0.0), (jnp.bfloat16, 2.0**-8)):
        dys = tuple(jnp.asarray(rng.standard_normal(x.shape), dtype) for _ in norms)
        through = rng.standard_normal(x.shape).astype(np.float32) if residual else np.zeros_like(x)
        outs, vjp = jax.vjp(lambda x, norms: layer_norm.layer_norms(x, norms, eps, dtype, path, residual), x, norms)
        dx, dnorms = vjp(((jnp.asarray(through), *dys) if residual else dys))
        if residual:
            assert np.array_equal(outs[0], x)
            outs = outs[1:]
        assert all(out.dtype == dtype for out in outs) and dx.dtype == jnp.float32

        x64 = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        params64 = [[torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in norm] for norm in norms]
        want = [torch.nn.functional.layer_norm(x64, (n,), scale, bias, eps) for scale, bias in params64]
        dy64 = [np.asarray(dy, np.float64) for dy in dys]
        sum((w * torch.tensor(dy)).sum() for w, dy in zip(want, dy64)).backward()

        mean = x.mean(-1, keepdims=True, dtype=np.float64)
        r = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
        xhat = (x - mean) * r
        dxhat = e * (np.abs(x).mean(-1, keepdims=True) * r + 2 * np.abs(xhat))
        for out, w, (scale, _) in zip(outs, want, norms):
            w = w.detach().numpy()
            bound = np.abs(scale) * dxhat + (2 * u + rounding) * np.abs(w)
            assert np.all(np.abs(np.asarray(out, np.float64) - w) <= 2 * bound)
        big_g = sum(np.abs(dy * scale) for dy, (scale, _) in zip(dy64, norms))
        g_bar = big_g.mean(-1, keepdims=True)
        m = (sum(dy * scale for dy, (scale, _) in zip(dy64, norms)) * xhat).mean(-1, keepdims=True)
        want_dx = x64.grad.numpy() + through
        bound = r * (2 * u * big_g + e * g_bar + dxhat * (np.abs(m) + g_bar)
                     + np.abs(xhat) * (e * (big_g * np.abs(xhat)).mean(-1, keepdims=True)
                                       + (big_g * dxhat).mean(-1, keepdims=True))) + 2 * e * np.abs(want_dx)
        assert np.all(np.abs(np.asarray(dx, np.float64) - want_dx) <= 2 * bound)
        for (d_scale, d_bias), (scale64, bias64), dy in zip(dnorms, params64, dy64):
            scale_bound = rows * u * np.abs(dy * xhat).sum(flat) + (np.abs(dy) * dxhat).sum(flat)
            assert np.all(np.abs(np.asarray(d_scale, np.float64) - scale64.grad.numpy()) <= 2 * scale_bound)
            bias_bound = rows * u * np.abs(dy).sum(flat)
            assert np.all(np.abs(np.asarray(d_bias, np.float64) - bias64.grad.numpy()) <= 2 * bias_bound)
