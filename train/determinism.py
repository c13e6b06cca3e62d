"""Is the training step bit-reproducible here? The same state and batch, stepped again, leaf by leaf.

  python -m train.determinism [--preset=pythia-70m] [--batch=8] [--seq=512] [--runs=3] [--steps=3]
      [--kernels=auto|all|loss|none] [--attention=auto|xla|cudnn] [--embedding_gradient=scatter|sorted]

Builds the training program's step (:func:`train.train.make_train_step`: AdamW, the forces recorded), then
``runs`` times creates the same initial state (seed 0), takes ``steps`` steps on the same batch and keeps the
parameters and the last step's metrics; prints which leaves are not bit for bit the same in every run.
``--kernels``: the Pallas kernels of one GPU (``all``: AdamW's step with its forces, the loss, the LayerNorms;
``loss``: all but AdamW's; ``none``: XLA's passes; ``auto``: as the training program, all on a GPU and none
elsewhere). On a CPU every leaf repeats (``tests/test_determinism.py``), which is what the kill campaign's
bit-for-bit restarts rest on; on a GPU the embedding table's gradient, a scatter-add of its token rows with
floating-point atomics, does not (docs/reliability.md), unless it is summed in a fixed order
(``--embedding_gradient=sorted``: :mod:`weibull_jax.embedding`).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags

from train import train
from weibull_jax import models, optim

_PRESET = flags.DEFINE_string("preset", "pythia-70m", "Model preset (weibull_jax.models.PRESETS).")
_BATCH = flags.DEFINE_integer("batch", 8, "Sequences a batch.")
_SEQ = flags.DEFINE_integer("seq", 512, "Tokens a sequence.")
_RUNS = flags.DEFINE_integer("runs", 3, "Runs from the same state.")
_STEPS = flags.DEFINE_integer("steps", 3, "Steps a run.")
_KERNELS = flags.DEFINE_enum("kernels", "auto", ["auto", "all", "loss", "none"], "The Pallas kernels used.")
_ATTENTION = flags.DEFINE_enum("attention", "auto", ["auto", "xla", "cudnn"], "The attention's implementation.")
_EMBEDDING_GRADIENT = flags.DEFINE_enum("embedding_gradient", "scatter", list(models.EMBEDDING_GRADIENTS),
                                        "How the embedding table's gradient is summed (weibull_jax.embedding).")

LR, B1, B2, EPS, WD, WARMUP, TOTAL = 1e-3, 0.9, 0.95, 1e-8, 0.01, 10, 1000


def differing_leaves(outputs: list) -> list[str]:
    """The paths of the leaves that are not bit for bit equal in every one of ``outputs`` (pytrees of one
    structure; arrays compared with their dtypes, NaNs equal where their bits are)."""
    flat = [jax.tree_util.tree_flatten_with_path(jax.device_get(o))[0] for o in outputs]
    paths = [jax.tree_util.keystr(path) for path, _ in flat[0]]
    as_bytes = [[np.asarray(leaf).tobytes() + str(np.asarray(leaf).dtype).encode() for _, leaf in f] for f in flat]
    return [p for i, p in enumerate(paths) if any(run[i] != as_bytes[0][i] for run in as_bytes[1:])]


def step_outputs(model_config: models.ModelConfig, tokens: np.ndarray, runs: int, steps: int, fused: bool,
                 fused_loss: bool | None) -> list:
    """``runs`` times: the same initial state, ``steps`` steps on ``tokens``; each run's (params, metrics)."""
    schedule = optim.learning_rate_schedule("cosine", LR, TOTAL, WARMUP)
    optimizer = optim.make_optimizer("adamw", schedule, WD, B1, B2, EPS)
    shapes = jax.eval_shape(lambda: models.init_params(model_config, jax.random.key(0)))
    weight_decay = optim.decay_per_leaf(shapes, WD)
    step = train.make_train_step(model_config, optimizer, schedule, weight_decay, dict(b1=B1, b2=B2, eps=EPS),
                                 True, fused=fused, fused_loss=fused_loss)
    outputs = []
    for _ in range(runs):
        state = train.create_train_state(model_config, optimizer, jax.random.key(0))
        for _ in range(steps):
            state, metrics = step(state, tokens)
        outputs.append(jax.device_get((state.params, metrics)))
    return outputs


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    model_config = models.preset(_PRESET.value, dtype="bfloat16", max_seq_len=_SEQ.value, attention=_ATTENTION.value,
                                 embedding_gradient=_EMBEDDING_GRADIENT.value)
    kernels = _KERNELS.value
    if kernels == "auto":
        kernels = "all" if jax.default_backend() == "gpu" else "none"
    fused, fused_loss = {"all": (True, None), "loss": (False, True), "none": (False, False)}[kernels]
    tokens = np.random.default_rng(0).integers(0, model_config.vocab_size, (_BATCH.value, _SEQ.value), np.int32)
    outputs = step_outputs(model_config, tokens, _RUNS.value, _STEPS.value, fused, fused_loss)
    differ = differing_leaves(outputs)
    print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; {_PRESET.value}, "
          f"{_BATCH.value} x {_SEQ.value}, kernels {kernels}, attention {_ATTENTION.value}, embedding gradient "
          f"{_EMBEDDING_GRADIENT.value}: {len(differ)} of "
          f"{len(jax.tree.leaves(outputs[0]))} leaves differ between {_RUNS.value} runs of {_STEPS.value} steps; "
          f"last loss {[float(metrics['loss']) for _, metrics in outputs]}")
    for path in differ:
        print(f"  differs: {path}")


if __name__ == "__main__":
    app.run(main)
