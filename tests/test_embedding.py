"""weibull_jax.embedding: the lookup's gradient in a fixed order, against numpy's float64 scatter-add."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import determinism
from weibull_jax import embedding


def _gradient(table, tokens, rows_cotangent):
    _, pullback = jax.vjp(lambda t: embedding.lookup(t, tokens), table)
    return pullback(rows_cotangent)[0]


def _reference(shape, tokens, rows_cotangent):
    grad = np.zeros(shape)
    np.add.at(grad, np.asarray(tokens).reshape(-1), np.asarray(rows_cotangent, np.float64).reshape(-1, shape[1]))
    return grad


@pytest.mark.parametrize("vocab, batch, seq", [(50, 2, 64), (7, 8, 512), (1000, 3, 5)])
def test_gradient_is_the_scatter_add_within_the_scan_bound(vocab, batch, seq):
    rng = np.random.default_rng(vocab)
    table = jnp.asarray(rng.standard_normal((vocab, 16)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, vocab, (batch, seq)), jnp.int32)
    cotangent = jnp.asarray(rng.standard_normal((batch, seq, 16)) * 10.0 ** rng.uniform(-3, 3, (batch, seq, 1)),
                            jnp.float32)
    np.testing.assert_array_equal(embedding.lookup(table, tokens), np.asarray(table)[np.asarray(tokens)])
    ours = np.asarray(_gradient(table, tokens, cotangent))
    magnitude = _reference(table.shape, tokens, np.abs(np.asarray(cotangent, np.float64)))
    bound = 2 * math.ceil(math.log2(batch * seq)) * 2.0 ** -24 * magnitude
    error = np.abs(ours - _reference(table.shape, tokens, cotangent))
    assert np.all(error <= bound), float(np.max(error - bound))
    assert np.all(ours[np.setdiff1d(np.arange(vocab), np.asarray(tokens))] == 0)  # rows no token read


def test_exact_sums_are_exact_and_repeat():
    """Integer rows sum exactly in any order: the gradient equals numpy's bit for bit, run after run."""
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 11, (4, 300)), jnp.int32)
    cotangent = jnp.asarray(rng.integers(-1000, 1000, (4, 300, 8)), jnp.float32)
    table = jnp.zeros((11, 8), jnp.float32)
    first = np.asarray(_gradient(table, tokens, cotangent))
    np.testing.assert_array_equal(first, _reference(table.shape, tokens, cotangent))
    np.testing.assert_array_equal(jax.jit(_gradient)(table, tokens, cotangent), first)


def test_the_models_sorted_embedding_changes_only_how_its_gradient_is_summed():
    """``embedding_gradient="sorted"``: the same parameters, loss and gradients but the table's, which is the
    scatter-add of the rows' cotangents within the scan's bound (those cotangents read exactly, as the
    gradient of a table with one row a position)."""
    from weibull_jax import models
    from weibull_jax.models import CausalLM

    scatter = models.preset("pythia-14m", n_layers=2, max_seq_len=64)
    ordered = scatter.replace(embedding_gradient="sorted")
    params = models.init_params(scatter, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 6, (2, 64)), jnp.int32)  # long runs of a token

    def loss(p, config, ids=tokens):
        return jnp.mean(CausalLM(config).apply({"params": p}, ids).astype(jnp.float32) ** 2)

    assert determinism.differing_leaves([params, models.init_params(ordered, jax.random.key(0))]) == []
    assert loss(params, scatter) == loss(params, ordered)
    ours, theirs = jax.grad(loss)(params, ordered), jax.grad(loss)(params, scatter)
    assert " sort[" in str(jax.make_jaxpr(lambda p: jax.grad(loss)(p, ordered))(params))
    assert set(determinism.differing_leaves([ours, theirs])) <= {"['embed']['embedding']"}  # only the table
    n = tokens.size
    table = params["embed"]["embedding"]
    spread = jnp.zeros_like(table).at[:n].set(table[tokens.reshape(-1)])  # row i: position i's embedding
    spread_params = {**params, "embed": {"embedding": spread}}
    rows = jax.grad(loss)(spread_params, scatter, jnp.arange(n).reshape(tokens.shape))["embed"]["embedding"][:n]
    reference = _reference(table.shape, tokens, rows)
    bound = 2 * math.ceil(math.log2(n)) * 2.0 ** -24 * _reference(table.shape, tokens, np.abs(np.asarray(rows)))
    assert np.all(np.abs(np.asarray(ours["embed"]["embedding"]) - reference) <= bound)
