"""The fit against npm-weibull-py 0.4 (the paper's reference library), scipy, and closed forms."""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import npm_weibull
import pytest
from scipy import stats

import weibull_jax
from weibull_jax import bincount
from weibull_jax import tree as tree_lib
from weibull_jax import weibull as wb

RNG = np.random.default_rng(20260522)


def _planted(shape, sigma=0.02, n_super=12, size=40.0):
    w = RNG.normal(0.0, sigma, shape)
    flat = w.reshape(-1)
    idx = RNG.choice(flat.size, n_super, replace=False)
    flat[idx] = RNG.choice([-1.0, 1.0], n_super) * size * sigma * RNG.uniform(0.5, 1.0, n_super)
    return w


ARRAYS = {
    "half_normal": RNG.normal(0.0, 0.02, (512, 2048)),
    "weibull_k0.8": 0.03 * RNG.weibull(0.8, (384, 700)) * RNG.choice([-1.0, 1.0], (384, 700)),
    "weibull_k1.6": 0.01 * RNG.weibull(1.6, (256, 1024)) * RNG.choice([-1.0, 1.0], (256, 1024)),
    "student_t3": 0.01 * RNG.standard_t(3, (1000, 1000)),
    "super_weights": _planted((768, 768)),
    "small": RNG.normal(0.0, 0.5, (40, 30)),
}
TRIMS = [(0.1, "mid_80"), (0.05, "mid_90"), (0.0, "full_range")]


def _reference(w, trim_name):
    return npm_weibull.weibull_fit(npm_weibull.extract_to_histogram(np.asarray(w, np.float32)), trim=trim_name)


@functools.lru_cache(maxsize=None)
def _reference_of(name, trim_name, dtype):
    """npm-weibull-py's fit of ``ARRAYS[name]`` rounded to ``dtype``, once for every way of fitting it."""
    return _reference(ARRAYS[name].astype(dtype).astype(np.float32), trim_name)


def _fit_in_kernel(w, trim):
    """The fit kernel's program (``rowwise.map_rows`` in Pallas' interpreter) on one matrix's slot counts."""
    slots = wb.log10_histogram([wb.as_rows(jnp.asarray(w))])
    return wb.WeibullFit(*np.asarray(wb._binned_table_in_kernel(slots, (trim,), interpret=True))[:4, 0])


FITS = {  # the library's call (on a CUDA GPU the fit kernel, elsewhere XLA's chain) and the kernel's formulas
    "fit_weibull": lambda w, trim: weibull_jax.fit_weibull(w, trim=trim),
    "fit kernel, interpreted": _fit_in_kernel,
}


@pytest.mark.parametrize("fit_of", list(FITS))
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("trim,trim_name", TRIMS)
@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_histogram_protocol_matches_npm_weibull(name, trim, trim_name, dtype, fit_of):
    w = ARRAYS[name].astype(dtype)
    ref = _reference_of(name, trim_name, np.dtype(dtype))
    fit = FITS[fit_of](w, trim)
    assert abs(float(fit.k) - ref["k"]) <= 1e-4
    assert abs(float(fit.scale) - ref["lambda"]) / ref["lambda"] <= 1e-4
    assert abs(float(fit.r2) - ref["R2"]) <= 1e-5
    assert abs(float(fit.ks) - ref["KS"]) <= 1e-5


def test_named_trims_and_centering():
    w = ARRAYS["half_normal"] + 0.01  # a shifted matrix: centring removes the shift before |w|
    assert float(weibull_jax.fit_weibull(w, trim="mid_90").k) == float(weibull_jax.fit_weibull(w, trim=0.05).k)
    centred = weibull_jax.fit_weibull(w, center=True)
    ref = _reference(w - w.astype(np.float32).mean(dtype=np.float32), "mid_80")
    assert abs(float(centred.k) - ref["k"]) <= 1e-4
    assert float(weibull_jax.fit_weibull(w).scale) / float(centred.scale) > 1.1  # the shift inflates λ


def test_exact_protocol_matches_scipy_probability_plot():
    """Order statistics with Hazen positions (scipy's plotting_positions α = β = ½), line by scipy linregress."""
    w = ARRAYS["student_t3"][:300]
    a = np.sort(np.abs(w.astype(np.float32)).reshape(-1)).astype(np.float64)
    pos = stats.mstats.plotting_positions(a, alpha=0.5, beta=0.5)
    keep = (pos >= 0.1) & (pos <= 0.9)
    line = stats.linregress(np.log(a[keep]), np.log(-np.log1p(-pos[keep])))
    fit = weibull_jax.fit_weibull(w, protocol="exact")
    k = line.slope
    assert abs(float(fit.k) - k) <= 1e-4
    assert abs(float(fit.scale) / np.exp(-line.intercept / k) - 1) <= 1e-4
    assert abs(float(fit.r2) - line.rvalue ** 2) <= 1e-5
    ks = stats.kstest(a, stats.weibull_min(k, scale=np.exp(-line.intercept / k)).cdf).statistic
    assert abs(float(fit.ks) - ks) <= 1e-5


def test_exact_protocol_recovers_weibull_parameters():
    w = 0.05 * RNG.weibull(1.3, 2_000_000)
    fit = weibull_jax.fit_weibull(w, protocol="exact")
    assert abs(float(fit.k) - 1.3) < 0.005 and abs(float(fit.scale) / 0.05 - 1) < 0.005


def test_stack_leading_axes_are_batch():
    stack = np.stack([ARRAYS["half_normal"][:256, :512] * s for s in (1.0, 2.0, 3.0)]).reshape(3, 1, 256, 512)
    fits = weibull_jax.fit_weibull(stack)
    assert fits.k.shape == (3, 1)
    for i in range(3):
        ref = _reference(stack[i, 0], "mid_80")
        assert abs(float(fits.k[i, 0]) - ref["k"]) <= 1e-4


def test_tree_fit_is_one_call_and_bit_identical_to_single_fits():
    params = {
        "layers_0": {"qkv": ARRAYS["half_normal"], "ffn": ARRAYS["weibull_k0.8"], "bias": np.zeros(64)},
        "layers_1": {"qkv": ARRAYS["student_t3"], "ffn": ARRAYS["super_weights"], "norm": np.ones(64)},
        "stacked": np.stack([ARRAYS["weibull_k1.6"]] * 2),
    }
    tree = weibull_jax.fit_weibull_tree(params)
    assert tree["layers_0"]["bias"] is None and tree["layers_1"]["norm"] is None
    for block, name in [("layers_0", "qkv"), ("layers_0", "ffn"), ("layers_1", "qkv"), ("layers_1", "ffn")]:
        alone = weibull_jax.fit_weibull(params[block][name])
        together = tree[block][name]
        for a, b in zip(alone, together):
            assert np.array_equal(np.asarray(a), np.asarray(b))
    assert tree["stacked"].k.shape == (2,)
    assert np.array_equal(np.asarray(tree["stacked"].k[1]), np.asarray(weibull_jax.fit_weibull(params["stacked"][1]).k))


@jax.tree_util.register_pytree_node_class
class _Tagged:
    """A pytree node with metadata: a string, or an array (jax cannot compare those, so no cache holds them)."""

    def __init__(self, w, tag):
        self.w, self.tag = w, tag

    def tree_flatten(self):
        return (self.w,), self.tag

    @classmethod
    def tree_unflatten(cls, tag, children):
        return cls(children[0], tag)


def test_leaf_names_are_their_paths_through_the_cache_of_structures():
    """``named_leaves`` keeps each structure's names: every call, in any order, gives each selected leaf
    with its path as jax's ``tree_flatten_with_path`` spells it, also for structures that jax hashes alike
    (other dict keys, nodes' metadata) and for nodes whose metadata no cache can compare."""
    trees = [{"a": {"w": np.ones((3, 3))}, "b": [np.ones((2, 4)), np.ones(3)]},
             {"a": {"v": np.ones((3, 3))}, "b": [np.ones((2, 4)), np.ones(3)]},
             {"a": _Tagged(np.ones((3, 3)), "x"), "b": _Tagged(np.ones((2, 4)), "y")},
             {"a": _Tagged(np.ones((3, 3)), "y"), "b": _Tagged(np.ones((2, 4)), "x")},
             {"a": _Tagged(np.ones((3, 3)), np.arange(2))}, {"a": _Tagged(np.ones((3, 3)), np.arange(3))}]
    for params in trees + trees[::-1]:
        expected = [(".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path), leaf)
                    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0] if np.ndim(leaf) >= 2]
        names, leaves, _, _ = tree_lib.named_leaves(params)
        assert names == [name for name, _ in expected]
        assert all(got is leaf for got, (_, leaf) in zip(leaves, expected))


def test_fits_compiled_ahead_match_npm_weibull_and_fit_arrays_to_the_bit_and_check_alike():
    """``compile_fits`` from shapes alone: npm-weibull-py's fits, ``fit_arrays``' bits, its errors."""
    stack = np.stack([ARRAYS["weibull_k1.6"], ARRAYS["weibull_k1.6"][::-1] * 2]).astype(np.float32)
    flat = ARRAYS["student_t3"].astype(np.float32)
    fit = wb.compile_fits([jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (stack, flat)], trims=(0.1, 0.05))
    ahead = fit(["stack", "flat"], [jnp.asarray(stack), jnp.asarray(flat)])
    now = wb.fit_arrays(["stack", "flat"], [stack, flat], trims=(0.1, 0.05))
    for per_trim_ahead, per_trim_now, trim_name in zip(ahead, now, ["mid_80", "mid_90"]):
        for a, b in zip(per_trim_ahead, per_trim_now):
            for x, y in zip(a, b):
                assert np.array_equal(np.asarray(x), np.asarray(y))
        ref = _reference(flat, trim_name)
        assert abs(float(per_trim_ahead[1].k) - ref["k"]) <= 1e-4
        assert abs(float(per_trim_ahead[1].scale) - ref["lambda"]) / ref["lambda"] <= 1e-4
    with pytest.raises(ValueError, match="'flat'.*fewer than 100"):
        fit(["stack", "flat"], [jnp.asarray(stack), jnp.zeros_like(flat)])


def test_tree_fit_runs_inside_jit():
    params = {"a": ARRAYS["half_normal"], "b": ARRAYS["weibull_k0.8"]}
    jitted = jax.jit(weibull_jax.fit_weibull_tree)(params)
    assert float(jitted["a"].k) == float(weibull_jax.fit_weibull_tree(params)["a"].k)


@pytest.mark.parametrize("w,needle", [
    (np.zeros((0, 5), np.float32), "empty"),
    (np.zeros((64, 64), np.float32), "fewer than 100"),
    (np.arange(200, dtype=np.int32).reshape(10, 20), "not floating point"),
    (RNG.normal(size=(9, 10)).astype(np.float32), "at least 100"),
    (np.full((32, 32), 0.5, np.float32), "degenerate"),
])
def test_bad_inputs_raise_naming_the_matrix(w, needle):
    with pytest.raises(ValueError, match=needle) as err:
        weibull_jax.fit_weibull_tree({"model": {"bad_matrix": w, "good": ARRAYS["half_normal"]}})
    assert "model.bad_matrix" in str(err.value)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_values_raise_naming_the_matrix(value):
    w = ARRAYS["half_normal"].copy()
    w[3, 7] = value
    with pytest.raises(ValueError, match="NaN or inf") as err:
        weibull_jax.fit_weibull(w, name="layers.3.mlp")
    assert "layers.3.mlp" in str(err.value)
    stack = np.stack([ARRAYS["half_normal"], w])
    with pytest.raises(ValueError, match=r"stack\[1\]"):
        weibull_jax.fit_weibull(stack, name="stack")
    with pytest.raises(ValueError, match="NaN or inf"):
        weibull_jax.fit_weibull(w, protocol="exact")


def test_trim_ablation_is_three_fits_of_one_histogram():
    w = ARRAYS["super_weights"]
    ab = weibull_jax.trim_ablation(w)
    for value, name in ((ab.k80, "mid_80"), (ab.k90, "mid_90"), (ab.k100, "full_range")):
        assert abs(float(value) - _reference(w, name)["k"]) <= 1e-4
    assert np.isclose(float(ab.gap), float(ab.k80) - float(ab.k100))


def test_closed_forms_match_scipy_weibull_min():
    k, lam = np.array([0.7, 1.2054, 2.5], np.float32), np.array([0.01, 0.02, 0.3], np.float32)
    m = weibull_jax.weibull_moments(k, lam)
    dist = stats.weibull_min(k.astype(np.float64), scale=lam.astype(np.float64))
    np.testing.assert_allclose(m.mean, dist.mean(), rtol=1e-5)
    np.testing.assert_allclose(m.std, dist.std(), rtol=1e-5)
    np.testing.assert_allclose(m.median, dist.median(), rtol=1e-5)
    np.testing.assert_allclose(m.rms, np.sqrt(dist.moment(2)), rtol=1e-5)
    np.testing.assert_allclose(weibull_jax.weibull_quantile(k, lam, 0.999), dist.ppf(0.999), rtol=1e-5)
    np.testing.assert_allclose(wb.weibull_log10_sf(5 * lam, k, lam), dist.logsf(5 * lam) / np.log(10), rtol=1e-5)
    rms = np.asarray(m.rms)
    np.testing.assert_allclose(weibull_jax.scale_from_rms(rms, k), lam, rtol=1e-5)
    np.testing.assert_allclose(weibull_jax.rms_from_scale(lam, k), rms, rtol=1e-5)


def test_gamma_closure_is_tight_on_weibull_data_and_15_percent_on_the_half_normal():
    w = 0.02 * RNG.weibull(1.2, (1000, 1000))
    closure = weibull_jax.gamma_closure(w, weibull_jax.fit_weibull(w))
    assert float(closure.rel_error) < 0.01
    np.testing.assert_allclose(closure.std_measured, np.std(w), rtol=1e-5)
    hn = RNG.normal(0.0, 1.0, (2000, 2000))
    closure = weibull_jax.gamma_closure(hn, weibull_jax.fit_weibull(hn, protocol="exact"))
    assert abs(float(closure.rel_error) - 0.1527) < 0.004  # 0.8875·C(1.2054) vs √(1 − 2/π): see gamma_closure


def test_fit_kernel_reports_bad_matrices_as_xla_does():
    """Non-finite, nearly empty and constant matrices get the same status codes and NaN fits from the fit
    kernel's program as from XLA's chain, next to a good matrix."""
    w = np.stack([ARRAYS["student_t3"][:200, :200], np.zeros((200, 200)), np.full((200, 200), 0.5),
                  ARRAYS["half_normal"][:200, :200]]).astype(np.float32)
    w[0, 5, 5] = np.nan
    slots = wb.log10_histogram([wb.as_rows(jnp.asarray(w))])
    trims = (0.1, 0.0)
    ours = np.asarray(wb._binned_table_in_kernel(slots, trims, interpret=True))
    xla = np.asarray(wb._binned_table(slots, trims))
    assert list(ours[-1]) == list(xla[-1]) == [wb.NONFINITE, wb.TOO_FEW_VALUES, wb.DEGENERATE, wb.OK]
    assert np.array_equal(np.isnan(ours), np.isnan(xla)) and np.all(np.isfinite(ours[:, 3]))


def test_kernel_programs_lowered_for_a_cpu_scatter_add():
    """The kernels' program, lowered for a CPU (here; on a GPU host, for arrays on its CPU), takes the
    scatter-add and XLA's fit, the same bits as the program without them."""
    w = jax.device_put(ARRAYS["weibull_k1.6"].astype(np.float32), jax.devices("cpu")[0])
    with_kernels = wb._fit_arrays((w,), (0.1,), "histogram", False, True)
    assert np.array_equal(np.asarray(with_kernels), np.asarray(wb._fit_arrays((w,), (0.1,), "histogram", False)))


def test_fit_is_device_agnostic_in_dtype_and_shape():
    fit = weibull_jax.fit_weibull(jnp.asarray(ARRAYS["half_normal"], jnp.bfloat16))
    assert fit.k.dtype == jnp.float32 and fit.k.shape == ()


SLOT_COUNTERS = {  # rows of weights → slot counts: the scatter-add with its private copies, bincount's kernel
    **{f"scatter-add, {lanes} copies": (lambda rows, lanes=lanes: wb.count_rows(
        [wb.slot_index(wb.magnitudes(rows))], wb.NUM_SLOTS, lanes)) for lanes in (1, 7, 256)},
    **({"kernel, interpreted": lambda rows: bincount.row_counts([rows], wb._slot_of_value, wb.NUM_SLOTS,
                                                                 interpret=True)}
       if bincount.triton_lowering is not None else {}),
    **({"kernel": lambda rows: bincount.row_counts([rows], wb._slot_of_value, wb.NUM_SLOTS)}
       if bincount.available() else {}),
}


@pytest.mark.parametrize("counter", list(SLOT_COUNTERS))
def test_slot_counts_are_npm_weibull_bins(counter):
    """Every way of counting (the scatter-add's private copies, summed back; the kernel's shared memory)
    gives npm-weibull-py's bins, and the slots around them (below 1e-12, above 100, non-finite)."""
    w = np.stack([_planted((30, 61)), 0.01 * RNG.standard_t(2, (30, 61))]).astype(np.float32)
    w[0, 0, :3] = [0.0, 1e-14, 250.0]
    w[1, 1, :2] = [np.nan, np.inf]
    a = np.abs(w).reshape(2, -1)
    counts = np.asarray(SLOT_COUNTERS[counter](jnp.asarray(w.reshape(2, -1))))
    for r in range(2):
        finite = np.isfinite(a[r])
        assert np.array_equal(counts[r, 1 : wb.NUM_BINS + 1], npm_weibull.extract_to_histogram(a[r][finite])["hist"])
        assert counts[r, wb.BELOW] == np.sum(a[r] < 1e-12)
        assert counts[r, wb.ABOVE] == np.sum(finite & (a[r] > 100.0))
        assert counts[r, wb.NONFINITE_SLOT] == np.sum(~finite)


def test_only_concrete_arrays_on_one_gpu_write_their_fits_to_host_memory():
    """The fits' table goes to pinned host memory for arrays that all live on one GPU; numpy, traced and
    sharded inputs, and a CPU's arrays, keep XLA's placement."""
    cpus = jax.devices("cpu")
    split = jax.device_put(jnp.ones((4, 6)), jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(cpus[:2]), ("x",)),
                                                                        jax.sharding.PartitionSpec("x")))
    assert wb.host_memory([np.ones((3, 3))]) is None and wb.host_memory([split]) is None
    assert jax.jit(lambda a: jnp.asarray(wb.host_memory([a]) is None))(jnp.ones(3)).item()
    assert wb.host_memory([jax.device_put(jnp.ones(3), cpus[0])]) is None
    if jax.default_backend() == "gpu":
        assert wb.host_memory([jnp.ones(3), jnp.ones((2, 2), jnp.bfloat16)]).memory_kind == "pinned_host"
        assert wb.host_memory([jnp.ones(3), jax.device_put(jnp.ones(3), cpus[0])]) is None


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="pinned host memory is a GPU's")
def test_fits_read_from_pinned_host_memory_are_the_device_tables():
    """Through pinned host memory the fits are the bits of the same program's table read from the GPU."""
    arrays = [jnp.asarray(_planted((3, 64, 80))), jnp.asarray(0.01 * RNG.standard_t(3, (300, 70)), jnp.bfloat16)]
    got = wb.fit_arrays(["a", "b"], arrays, trims=(0.1, 0.05))
    kernel = wb.counts_in_shared_memory(arrays)
    table = np.asarray(wb._fit_arrays(tuple(arrays), (0.1, 0.05), "histogram", False, kernel))
    for got_fits, table_fits in zip(got, wb._split_rows(table, arrays)):
        for fit, expected in zip(got_fits, table_fits):
            assert all(np.array_equal(a, b) for a, b in zip(fit, expected))
