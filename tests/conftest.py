"""Eight simulated CPU devices for the whole suite (``tests/test_sharding.py`` builds its meshes from them);
every other test runs on the first device, as a one-device run does. Set before jax starts its backend."""

import os

COUNT_FLAG = "--xla_force_host_platform_device_count"
if COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {COUNT_FLAG}=8".strip()
