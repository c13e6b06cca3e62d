"""The shared-memory counting kernel against numpy's bincount (its slot counts against npm-weibull-py's
histogram: tests/test_weibull.py).

On a CPU the kernel runs in Pallas' interpreter, where the block count is its scatter-add reference: that
checks everything around it (spans, partial blocks, masks, offsets, the sum of the spans). On a CUDA GPU the
same tests also run the compiled kernel, whose block counts are Triton's ``tt.histogram``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weibull_jax import bincount
from weibull_jax import weibull as wb

pytestmark = pytest.mark.skipif(bincount.triton_lowering is None, reason="this jax has no Pallas Triton backend")
RNG = np.random.default_rng(20261203)
MODES = [True] + ([False] if bincount.available() else [])  # interpret; compiled where it can be


def _tenths(v):
    return jnp.clip(jnp.floor(v * 10.0), 0, 99).astype(jnp.int32)


def _numpy_counts(x):
    return np.bincount(np.clip(np.floor(x * np.float32(10)), 0, 99).astype(int), minlength=100)


@pytest.mark.parametrize("interpret", MODES)
@pytest.mark.parametrize("launch", [bincount.LAUNCH, (1024, 4096, 4, None)])
@pytest.mark.parametrize("n", [37, 4096, 10_001])
def test_row_counts_are_numpy_bincounts(interpret, launch, n):
    """Rows shorter than a block, one or several blocks a program, several programs a row with a partial
    last block, arrays of other row lengths and dtypes in the same call: every value counted once, in its
    own row, none of the padding."""
    xs = [RNG.uniform(0.0, 10.0, (3, n)).astype(np.float32), RNG.uniform(0.0, 10.0, (2, 300)).astype(np.float32),
          RNG.uniform(0.0, 10.0, (1, n)).astype(jnp.bfloat16)]
    offsets = [RNG.uniform(-1.0, 0.0, len(x)).astype(np.float32) for x in xs]
    got = np.asarray(bincount.row_counts([jnp.asarray(x) for x in xs], _tenths, 100, launch=launch,
                                         interpret=interpret))
    shifted = np.asarray(bincount.row_counts([jnp.asarray(x) for x in xs], _tenths, 100,
                                             offsets=[jnp.asarray(o) for o in offsets], launch=launch,
                                             interpret=interpret))
    rows = [(x[r].astype(np.float32), o[r]) for x, o in zip(xs, offsets) for r in range(len(x))]
    assert got.shape == shifted.shape == (len(rows), 100)
    for (row, offset), counts, moved_counts in zip(rows, got, shifted):
        assert np.array_equal(counts, _numpy_counts(row))
        assert np.array_equal(moved_counts, _numpy_counts(row - offset))  # float32, as the kernel subtracts


@pytest.mark.skipif(not bincount.available(), reason="the compiled kernel needs a CUDA GPU")
@pytest.mark.parametrize("center", [False, True])
def test_the_fits_histogram_on_a_gpu_is_the_scatter_adds(center):
    """The fits' histogram takes the kernel for arrays on one GPU: the same counts as the scatter-add path,
    for arrays of several shapes and dtypes counted together, centred or not."""
    rows = [jnp.asarray(RNG.normal(0.0, 0.02, (4, 70_000)), jnp.float32),
            jnp.asarray(0.01 * RNG.standard_t(3, (2, 300_001)), jnp.bfloat16)]
    scatter = wb.count_rows([wb.slot_index(wb.magnitudes(r, center)) for r in rows], wb.NUM_SLOTS)
    assert wb.counts_in_shared_memory(rows)
    assert np.array_equal(np.asarray(wb.log10_histogram(rows, center, kernel=True)), np.asarray(scatter))


def test_only_arrays_on_one_device_take_the_kernel(monkeypatch):
    """XLA would gather a sharded operand of the kernel onto every device, and a caller's jit hides its
    arrays' shardings: those fits keep the scatter-add."""
    monkeypatch.setattr(bincount, "available", lambda: True)  # as on a CUDA GPU
    mesh = jax.sharding.Mesh(np.array(jax.devices("cpu")[:2]), ("x",))  # the suite's simulated CPUs, on any host
    one = jnp.ones((4, 6))
    split = jax.device_put(one, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x")))
    assert wb.counts_in_shared_memory([one, np.ones((3, 3)), jax.ShapeDtypeStruct((2, 2), jnp.float32)])
    assert not wb.counts_in_shared_memory([one, split])
    assert jax.jit(lambda a: jnp.asarray(wb.counts_in_shared_memory([a])))(one).item() is False
