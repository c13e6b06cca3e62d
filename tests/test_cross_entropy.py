"""The LM loss and its gradient (``weibull_jax.cross_entropy``: XLA's passes, and the kernel: on a GPU the
Triton kernel, elsewhere Pallas' interpreter) against float64.

Error analysis (float32, u = 2⁻²⁴; first order). Per row, with A = max|z|, D = max z − min z, s = Σ_v e^{z_v − m}
and lse = m + log s. XLA sums e^{z − m} (argument rounded: u·D; exp: ≤ 4u) at worst as a sequence of V terms.
The kernel works in base 2 (y = z·log₂e rounded: u·A more in each argument), rescales its lanes' running
sums once per block (nb blocks; each rescaling's argument u·D, its exp2 4u, the add u) and sums the B lanes as
a tree. With K = 1, L = V (XLA) or K = nb + 1, L = log₂B (kernel):

* |δs|/s ≤ u(K(D + 6) + A + L), and |δloss| ≤ |δs|/s + u(|log s| + |lse| + |z_t| + 2|loss|) =: E;
* the gradient (e^{z − lse} − [v = t])·w: |δG| ≤ w(p(E + u(A + |z − lse|) + 4u) + 2u|p − [v = t]|), and rounded
  to bfloat16 (8 significant bits) another 2⁻⁸|G|.

The tests assert twice these bounds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weibull_jax import cross_entropy, pallas_triton

U32 = 2.0 ** -24
ON_GPU = jax.default_backend() == "gpu"
NEEDS_KERNEL = pytest.mark.skipif(not pallas_triton.AVAILABLE, reason="this JAX has no Pallas Triton backend")


def _logits(rows=12, vocab=1000, seed=0):
    """Rows of spread 3 and worse: a row whose maximum (60) lies in its last block (the running sums must be
    rescaled), one with a large common offset, one constant row."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (rows, vocab))
    z[1, -3] = 60.0
    z[2] += 40.0
    z[3] = 1.5
    targets = rng.integers(0, vocab, rows)
    targets[1] = vocab - 3
    return z.astype(np.float32), targets


def _reference(z, targets, weights):
    z = np.asarray(z, np.float64)
    top = z.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    p = np.exp(z - log_z[:, None])
    onehot = np.arange(z.shape[1]) == targets[:, None]
    loss = log_z - z[np.arange(len(z)), targets]
    return loss, log_z, p, onehot, (p - onehot) * weights[:, None]


def _bounds(z, targets, weights, path, block):
    z64 = np.asarray(z, np.float64)
    loss, log_z, p, onehot, grad = _reference(z, targets, weights)
    top, spread = np.abs(z64).max(axis=1), z64.max(axis=1) - z64.min(axis=1)
    vocab = z.shape[1]
    k, lanes = (1, vocab) if path == "xla" else (-(-vocab // block) + 1, np.log2(block))
    picked = np.abs(z64[np.arange(len(z)), targets])
    log_s = log_z - z64.max(axis=1)
    loss_bound = U32 * (k * (spread + 6) + top + lanes + np.abs(log_s) + np.abs(log_z) + picked + 2 * np.abs(loss))
    grad_bound = weights[:, None] * (p * (loss_bound[:, None] + U32 * (top[:, None] + np.abs(z64 - log_z[:, None]))
                                          + 4 * U32) + 2 * U32 * np.abs(p - onehot))
    return loss, grad, loss_bound, grad_bound


def _rows(path, z, targets, weights, block):
    if path == "xla":
        return cross_entropy.xla_rows(z, jnp.asarray(targets), weights)
    return cross_entropy.kernel_rows(z, jnp.asarray(targets), weights, block=block, interpret=not ON_GPU)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("path,block", [("xla", None), pytest.param("kernel", 64, marks=NEEDS_KERNEL),
                                        pytest.param("kernel", 1024, marks=NEEDS_KERNEL)])
def test_row_losses_and_gradients_match_float64_within_their_rounding(path, block, dtype):
    z, targets = _logits()
    z = np.asarray(jnp.asarray(z, dtype), np.float32)  # the values the kernel sees, exactly
    weights = np.random.default_rng(1).uniform(0.1, 2.0, len(z)).astype(np.float32)
    want_loss, want_grad, loss_bound, grad_bound = _bounds(z, targets, weights, path, block)
    if dtype == jnp.bfloat16:
        grad_bound = grad_bound + 2.0 ** -8 * np.abs(want_grad)
    loss, grad = _rows(path, jnp.asarray(z, dtype), targets, jnp.asarray(weights), block)
    assert grad.dtype == dtype
    assert np.all(np.abs(np.asarray(loss, np.float64) - want_loss) <= 2 * loss_bound)
    assert np.all(np.abs(np.asarray(grad, np.float64) - want_grad) <= 2 * grad_bound)
    alone, none = _rows(path, jnp.asarray(z, dtype), targets, None, block)  # the loss without the gradient
    assert none is None and np.all(np.abs(np.asarray(alone, np.float64) - want_loss) <= 2 * loss_bound)


@pytest.mark.parametrize("path", ["xla", pytest.param("kernel", marks=NEEDS_KERNEL)])
def test_mean_loss_and_its_gradient_match_float64(path):
    z, targets = _logits(rows=24)
    mask = np.random.default_rng(2).uniform(size=len(z)) < 0.6
    count = mask.sum()
    path = "interpret" if path == "kernel" and not ON_GPU else path
    loss_fn = jax.value_and_grad(lambda x: cross_entropy.mean_cross_entropy(x, jnp.asarray(targets), mask, path))
    loss, grad = loss_fn(jnp.asarray(z))
    weights = mask / count
    rows, want_grad, loss_bound, grad_bound = _bounds(z, targets, weights, path, cross_entropy.BLOCK)
    want = rows[mask].mean()
    # each term ℓ_r·(1/N) rounded twice (1/N, the product), then a sum of len(z) terms
    assert abs(float(loss) - want) <= 2 * (loss_bound[mask].mean() + (len(z) + 2) * U32 * np.abs(rows[mask]).mean())
    assert np.all(np.abs(np.asarray(grad, np.float64) - want_grad) <= 2 * grad_bound)
    assert np.all(np.asarray(grad)[~mask] == 0)


@pytest.mark.parametrize("path", ["xla", pytest.param("kernel", marks=NEEDS_KERNEL)])
def test_weighted_sum_its_gradient_and_the_losses_match_float64(path):
    """Any weights: Σ w·ℓ and its gradient w·(p − onehot); ℓ itself, which carries no gradient; a NaN loss of
    weight 0 (a target outside the vocabulary) left out of the sum."""
    z, targets = _logits(rows=16)
    targets[5] = -1
    weights = np.random.default_rng(3).uniform(0.0, 2.0, len(z)).astype(np.float32)
    weights[[0, 5, 9]] = 0.0
    path = "interpret" if path == "kernel" and not ON_GPU else path

    def total_and_losses(x):
        total, losses = cross_entropy.weighted_cross_entropy(x, jnp.asarray(targets), jnp.asarray(weights), path)
        return total + jnp.sum(jnp.where(jnp.isnan(losses), 0.0, losses)), (total, losses)

    grad, (total, losses) = jax.grad(total_and_losses, has_aux=True)(jnp.asarray(z))
    kept = weights != 0
    rows, want_grad, loss_bound, grad_bound = _bounds(z, np.where(kept, targets, 0), weights, path,
                                                      cross_entropy.BLOCK)
    assert np.isnan(np.asarray(losses)).tolist() == [i == 5 for i in range(len(z))]
    assert np.all(np.abs(np.asarray(losses)[kept] - rows[kept]) <= 2 * loss_bound[kept])
    want = np.sum(weights * np.where(kept, rows, 0.0))
    bound = np.sum(weights * (loss_bound + (len(z) + 1) * U32 * np.abs(rows)), where=kept)
    assert abs(float(total) - want) <= 2 * bound
    assert np.all(np.abs(np.asarray(grad, np.float64) - want_grad) <= 2 * grad_bound)
    assert np.all(np.asarray(grad)[~kept] == 0)


@pytest.mark.parametrize("path", ["xla", pytest.param("kernel", marks=NEEDS_KERNEL)])
def test_the_backward_scales_by_the_cotangent_and_an_empty_mask_gives_zero(path):
    z, targets = _logits(rows=8)
    path = "interpret" if path == "kernel" and not ON_GPU else path
    mask = np.arange(len(z)) % 2 == 0

    def loss(x, scale, m):
        return scale * cross_entropy.mean_cross_entropy(x, jnp.asarray(targets), m, path)

    once = jax.grad(loss)(jnp.asarray(z), 1.0, mask)
    thrice = jax.grad(loss)(jnp.asarray(z), 3.0, mask)
    np.testing.assert_allclose(thrice, 3 * once, rtol=4 * U32, atol=0)
    value, nothing = jax.value_and_grad(loss)(jnp.asarray(z), 1.0, np.zeros(len(z), bool))
    assert float(value) == 0.0 and not np.any(nothing)


@pytest.mark.parametrize("path", ["xla", pytest.param("kernel", marks=NEEDS_KERNEL)])
def test_a_target_outside_the_vocabulary_gives_nan(path):
    """A token id the logits have no column for is a NaN loss (which stops a run), never another logit."""
    z, targets = _logits(rows=4)
    targets[1], targets[2] = z.shape[1], -1
    losses, _ = _rows(path, jnp.asarray(z), targets, None, 64)
    assert np.isnan(np.asarray(losses)).tolist() == [False, True, True, False]


@NEEDS_KERNEL
def test_the_kernel_runs_only_in_programs_lowered_for_cuda():
    """``path="kernel"`` is XLA's passes in a program lowered for a CPU, the Triton kernel in one for CUDA."""
    z = jax.ShapeDtypeStruct((64, 1000), jnp.bfloat16)
    targets = jax.ShapeDtypeStruct((64,), jnp.int32)
    mask = jax.ShapeDtypeStruct((64,), jnp.bool_)

    def lowered(path, platform):
        fn = jax.jit(jax.grad(lambda x, t, m: cross_entropy.mean_cross_entropy(x, t, m, path)))
        return fn.trace(z, targets, mask).lower(lowering_platforms=(platform,)).as_text()

    assert "triton" in lowered("kernel", "cuda")
    assert "triton" not in lowered("kernel", "cpu")
    assert "triton" not in lowered("xla", "cuda")
