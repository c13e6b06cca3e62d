"""Eight simulated CPU devices for the whole suite (``tests/test_sharding.py`` builds its meshes from them);
every other test runs on the first device, as a one-device run does. Set before jax starts its backend.

Tests marked ``eight_cpu_devices`` (the sharded suite, and the series measured over eight devices) need those
eight: on a GPU host, whose default devices are its GPUs, they are skipped with the command that runs them
on its CPU (``JAX_PLATFORMS=cpu``).

The tests hold float32 results to float32 error bounds (against float64, numpy or torch), so float32 products
run at float32 precision on every backend. A GPU's default for them is TF32 (10-bit mantissas): under it
the GPT-2 logits' test, which allows 1e-4 relative, was 1.6e-4 off on logits of ~0.1 (H200, 2026-12-04)."""

import os

import pytest

COUNT_FLAG = "--xla_force_host_platform_device_count"
if COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {COUNT_FLAG}=8".strip()


def pytest_configure(config):
    import jax

    jax.config.update("jax_default_matmul_precision", "float32")
    config.addinivalue_line("markers", "eight_cpu_devices: runs on the suite's 8 simulated CPU devices")


def pytest_collection_modifyitems(config, items):
    import jax

    if jax.default_backend() == "cpu" and jax.device_count() >= 8:
        return
    skip = pytest.mark.skip(reason=f"needs 8 simulated CPU devices, and the default devices here are "
                                   f"{jax.device_count()} × {jax.default_backend()}: on a GPU host, run it with "
                                   f"JAX_PLATFORMS=cpu python -m pytest")
    for item in items:
        if "eight_cpu_devices" in item.keywords:
            item.add_marker(skip)
