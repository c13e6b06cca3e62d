"""The training program: the jitted step (loss, optimizer update, force budget) and the loop around it.

One call of the step advances ``TrainState`` by one optimizer step on one batch of token ids and returns
the loss, the global gradient norm, the learning rate used and the five-term force budget of every matrix
(arXiv 2606.19367 §2–3) as one (matrices, 5) table next to their squared norms: read from the AdamW
moments that this very update produced (``weibull_jax.forces.adamw_forces``), or from the step itself for
any other optimizer (``forces_from_update``). Nothing leaves the device until a log step.

The loop (:func:`train_and_evaluate`) writes the run directory: ``config.json``; ``metrics.jsonl`` and
TensorBoard events every ``log_every`` steps (loss, LR, gradient norm, tokens/s, forces and norms per
class, kind and block, averaged over the interval); at every checkpoint ``forces/{step}.npz`` with the
per-step, per-matrix budget since the previous one; every ``snapshot_every`` steps (and at step 0) the
weights as one flat file in ``snapshots/`` (``weibull_jax.snapshots``: what the series analysis reads); and
orbax checkpoints of the parameters, the full optimizer state, the step and the data iterator, from which a
restarted run continues bit-identically.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import signal
import sys
import time
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from train import checkpoints, records
from weibull_jax import (convert, data, forces, fused_adamw, models, optim, pallas_triton, probe, sharding, snapshots,
                         spectra, tree)


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # optimizer steps taken (int32)
    params: Any
    opt_state: Any


def state_shardings(model_config: models.ModelConfig, optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, rules=sharding.DEFAULT_RULES) -> TrainState:
    """Where each part of the state lives on ``mesh``: the parameters by the model's logical axis names and
    ``rules`` (then FSDP), the optimizer moments as their parameters, the step replicated."""
    abstract = jax.eval_shape(lambda: models.init_params(model_config, jax.random.key(0)))
    params = sharding.param_shardings(abstract, models.logical_axes(model_config), mesh, rules)
    return TrainState(sharding.replicated(mesh), params,
                      sharding.optimizer_shardings(optimizer, abstract, params, mesh))


def create_train_state(model_config: models.ModelConfig, optimizer: optax.GradientTransformation,
                       key: jax.Array, params: Any = None, shardings: TrainState | None = None) -> TrainState:
    """Step 0: fresh weights (or ``params``, e.g. a converted checkpoint) and a fresh optimizer state, created
    where ``shardings`` (:func:`state_shardings`) puts them; None: on the default device."""
    where = shardings or TrainState(None, None, None)
    params = (models.init_params(model_config, key, where.params) if params is None
              else jax.device_put(params, where.params))
    return TrainState(jax.device_put(jnp.zeros((), jnp.int32), where.step), params,
                      jax.jit(optimizer.init, out_shardings=where.opt_state)(params))


def matrix_names(params: Any) -> list[str]:
    """The rows of the step's force table: every matrix of the model, in tree order."""
    return tree.named_leaves(params)[0]


def make_train_step(model_config: models.ModelConfig, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, weight_decay: Any, adam: dict | None = None,
                    record_forces: bool = True, probe_weight: Callable | None = None,
                    leaf_lr: Callable | None = None, shardings: TrainState | None = None,
                    batch_sharding: jax.sharding.NamedSharding | None = None, fused: bool = False,
                    fused_loss: bool | None = None) -> Callable:
    """``step(state, batch) -> (state, metrics)``, jitted, donating ``state``.

    Args:
      weight_decay: λ_wd per leaf (a tree like the params, 0 where the decay mask is off).
      adam: ``{"b1", "b2", "eps", "clip_norm"}`` for an AdamW optimizer (forces from its moments; clip_norm:
        its global-norm clipping, 0 or absent: none); None for any other optimizer (forces from the step).
      record_forces: add ``metrics["forces"]``, the (matrices, 5) table of alignment, injection, decay,
        cross and wd2 (rows in :func:`matrix_names` order).
      probe_weight: λ_probe(step) for batches ``{"tokens", "probe_mask"}``: the loss is L_LM + λ_probe·L_probe
        (``weibull_jax.probe``), with ``lm_loss`` and ``probe_loss`` in the metrics; None: batches are token
        arrays and the loss is L_LM.
      leaf_lr: ``(params, step) -> tree of η`` where leaves step at different rates (Muon's AdamW part), for
        the forces; None: every leaf at ``schedule(step)``.
      shardings, batch_sharding: where the state and the batch live on a mesh (:func:`state_shardings`,
        :func:`weibull_jax.sharding.batch_sharding`); the metrics come back replicated. The same function on
        any mesh: XLA adds the collectives. None: one device.
      fused: for a mesh of one device: AdamW's step and its forces in one kernel per matrix
        (:mod:`weibull_jax.fused_adamw`: the forces without a second pass over the weights and moments) where
        ``adam`` and ``record_forces`` are set and this JAX has Pallas' Triton backend; for a GPU (elsewhere
        the kernel runs in Pallas' interpreter: the tests' path).
      fused_loss: for a mesh of one device, the loss and its gradient in one kernel on a GPU
        (:mod:`weibull_jax.cross_entropy`), and GPT-NeoX's LayerNorms in theirs (:mod:`weibull_jax.layer_norm`);
        XLA's passes on other backends. None: as ``fused``.
    """
    one_device = batch_sharding is None or batch_sharding.mesh.size == 1
    kernels = (fused if fused_loss is None else fused_loss) and one_device
    loss_fn = probe.make_loss(models.CausalLM(model_config, kernels), probe_weight, kernels)
    fused = fused and one_device and pallas_triton.AVAILABLE and adam is not None and record_forces
    constants = None if adam is None else {k: adam[k] for k in ("b1", "b2", "eps")}

    def fused_step(state: TrainState, grads, raw_grads, grad_norm, lr):
        """Optax's update for the state's counts (its moments and step, unused, are left out by XLA), then
        the moments, weights and forces from :func:`weibull_jax.fused_adamw.adamw_step` of the gradients as
        autodiff gave them (``raw_grads``: the kernels' in the compute dtype)."""
        _, opt_state = optimizer.update(grads, state.opt_state, state.params)
        clip = adam.get("clip_norm") or 0.0
        scale = jnp.where(grad_norm < clip, 1.0, clip / grad_norm) if clip else 1.0
        params, adam_state, budget = fused_adamw.adamw_step(
            state.params, raw_grads, forces.find_adam_state(state.opt_state), forces.find_adam_state(opt_state).count,
            lr, weight_decay, **constants, grad_scale=scale, select=tree.is_matrix)
        return params, forces.replace_adam_state(opt_state, adam_state), budget

    def step(state: TrainState, batch):
        # Fused: the kernels' gradients in the compute dtype, converted by the kernel as it reads them
        weights = models.cast_kernels(state.params, model_config) if fused else state.params
        (loss, parts), raw_grads = jax.value_and_grad(loss_fn, has_aux=True)(weights, batch, state.step)
        grads = jax.tree.map(lambda g, w: g.astype(w.dtype), raw_grads, state.params)
        lr = schedule(state.step)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr, **parts}
        if fused:
            params, opt_state, budget = fused_step(state, grads, raw_grads, metrics["grad_norm"], lr)
        else:
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            budget = None
            if record_forces and adam is not None:
                budget = forces.adamw_forces(state.params, opt_state, lr, weight_decay, **constants,
                                             select=tree.is_matrix)
            elif record_forces:
                eta = lr if leaf_lr is None else leaf_lr(state.params, state.step)
                budget = forces.forces_from_update(state.params, updates, eta, weight_decay, select=tree.is_matrix)
            params = optax.apply_updates(state.params, updates)
        if record_forces:
            rows = jax.tree.leaves(budget, is_leaf=lambda x: isinstance(x, forces.Forces))
            metrics["forces"] = jnp.stack([jnp.stack(f) for f in rows])
        return TrainState(state.step + 1, params, opt_state), metrics

    if shardings is None:
        return jax.jit(step, donate_argnums=0)
    return jax.jit(step, in_shardings=(shardings, batch_sharding), out_shardings=(shardings, shardings.step),
                   donate_argnums=0)


def make_probe_eval(model_config: models.ModelConfig, eval_sets: dict[str, dict[str, np.ndarray]],
                    params: Any, replicated: jax.sharding.Sharding | None = None) -> Callable:
    """``evaluate(params) -> {"p_in": …, "p_ood": …}``: argmax accuracy on each fixed probe set (on device),
    compiled here for ``params``' shapes, so that the first evaluation inside the loop does not stall it. The
    sets are arguments, not constants of the program (XLA would spend seconds folding 2,000 × seq_len
    constants). ``replicated``: where the sets and the accuracies live (a copy on every device of the run's
    mesh); None: the default device."""
    model = models.CausalLM(model_config)
    sets = jax.device_put(eval_sets, replicated)

    def evaluate(params, sets):
        return {name: probe.accuracy(lambda t: model.apply({"params": params}, t), s["tokens"], s["probe_mask"])
                for name, s in sets.items()}

    compiled = jax.jit(evaluate, out_shardings=replicated).lower(params, sets).compile()
    return lambda params: compiled(params, sets)


@jax.jit
def matrix_sq_norms(params: Any) -> jax.Array:
    """‖w‖² of every matrix, in :func:`matrix_names` order."""
    return jnp.stack([s.sq_norm for s in forces.norm_stats(tree.named_leaves(params)[1])])


class PreemptionNotice:
    """``notice(step) -> bool``: whether the run saves a checkpoint after ``step`` and stops, on a SIGTERM
    (a scheduler's notice that the job is about to be preempted); :meth:`close` when the loop ends.

    One process: whether a SIGTERM has arrived (a handler of ours until ``close``). Several processes
    (``jax.distributed``): a host's SIGTERM, if every host gets one at all, arrives at its own step, and a
    process that stopped alone would leave the others waiting in the next step's collectives. jax's
    preemption service (its own SIGTERM handler, from ``jax.distributed.initialize``, which a Python handler
    would replace) passes any host's notice to all of them and answers True at one step, the same on every
    process; so every process asks at every step.
    """

    def __init__(self):
        self._received = False
        self._shared = jax.process_count() > 1  # asked of jax's service; else our handler, replaced until close
        self._previous = None if self._shared else signal.signal(signal.SIGTERM, self._receive)

    def _receive(self, signum, frame) -> None:
        self._received = True

    def __call__(self, step: int) -> bool:
        return multihost_utils.reached_preemption_sync_point(step) if self._shared else self._received

    def close(self) -> None:
        if not self._shared:
            signal.signal(signal.SIGTERM, self._previous)


def _drain(pending: list[dict]) -> dict[str, np.ndarray]:
    """The interval's per-step metrics, stacked on device and fetched in one transfer."""
    window = jax.device_get({k: jnp.stack([m[k] for m in pending]) for k in pending[0] if k != "step"})
    window["step"] = np.asarray([m["step"] for m in pending])
    return window


def optimizer_of(config: ml_collections.ConfigDict):
    """(optimizer, schedule, Adam constants or None, per-leaf η or None) from ``config.optimizer``."""
    o = config.optimizer
    schedule = optim.schedule_of(o, config.steps)
    adam_lr = (lambda t: schedule(t) * (o.adam_lr / o.lr)) if o.name == "muon" and o.adam_lr else None
    optimizer = optim.make_optimizer(o.name, schedule, o.weight_decay, o.b1, o.b2, o.eps, o.momentum,
                                     o.clip_norm or None, adam_learning_rate=adam_lr)
    adam = dict(b1=o.b1, b2=o.b2, eps=o.eps, clip_norm=o.clip_norm) if o.name == "adamw" else None

    def leaf_lr(params, step):  # Muon's hidden matrices at the schedule, its AdamW part at adam_lr
        return jax.tree.map(lambda on: jnp.where(on, schedule(step), adam_lr(step)), optim.hidden_matrices(params))

    return optimizer, schedule, adam, leaf_lr if adam_lr else None


def initial_params(config: ml_collections.ConfigDict, model_config: models.ModelConfig) -> Any:
    """The weights ``config.init_from`` names, or None (a fresh init): a HuggingFace checkpoint folder, or
    ``RUN_DIR@STEP``, the snapshot of one of our runs at that step (reheating, backbone paper §6)."""
    if not config.init_from:
        return None
    if "@" in config.init_from:
        run_dir, step = config.init_from.rsplit("@", 1)
        series = snapshots.Series(os.path.join(run_dir, "snapshots"))
        expected = snapshots.layout_of(jax.eval_shape(lambda: models.init_params(model_config, jax.random.key(0))))
        if series.layout != expected:
            raise ValueError(f"config.model does not match the weights of {run_dir}")
        return series.tree(series.index_of(int(step)))
    hf_config, params = convert.load_hf_checkpoint(config.init_from)
    not_in_a_checkpoint = {field: getattr(model_config, field)  # how to compute and initialise
                           for field in ("dtype", "attention", "embedding_gradient", "init_in", "init_out")}
    if hf_config.replace(**not_in_a_checkpoint) != model_config:
        raise ValueError(f"config.model does not match the checkpoint {config.init_from!r}: {hf_config}")
    return params


def check_config(config: ml_collections.ConfigDict) -> None:
    """One clear message per bad value, before anything is written."""
    positive = {"steps": config.steps, "batch_size": config.batch_size, "data.seq_len": config.data.seq_len,
                "log_every": config.log_every, "ckpt_every": config.ckpt_every, "optimizer.lr": config.optimizer.lr}
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"config.{name} must be positive, got {value!r}")
    for name in ("snapshot_every", "spectra_every"):
        if config[name] < 0:
            raise ValueError(f"config.{name} must be >= 0 (0: never), got {config[name]}")
    if config.probe.enabled:
        if config.probe.eval_every <= 0 or config.probe.eval_every % config.log_every:
            raise ValueError(f"config.probe.eval_every ({config.probe.eval_every}) must be a positive multiple of "
                             f"config.log_every ({config.log_every}): the accuracies go into the metrics lines")
        if not 0 <= config.probe.rate <= 1:
            raise ValueError(f"config.probe.rate must lie in [0, 1], got {config.probe.rate}")
    if config.ckpt_every % config.log_every:
        raise ValueError(f"config.ckpt_every ({config.ckpt_every}) must be a multiple of config.log_every "
                         f"({config.log_every}): a checkpoint is written only after its interval is checked")
    if config.optimizer.name not in optim.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer.name!r}; known: {optim.OPTIMIZERS}")
    if config.optimizer.schedule not in optim.SCHEDULES:
        raise ValueError(f"unknown schedule {config.optimizer.schedule!r}; known: {optim.SCHEDULES}")
    if not 0 <= config.optimizer.warmup_steps < config.steps:
        raise ValueError(f"config.optimizer.warmup_steps ({config.optimizer.warmup_steps}) must lie in "
                         f"[0, config.steps = {config.steps})")
    if config.optimizer.weight_decay < 0:
        raise ValueError(f"config.optimizer.weight_decay must be >= 0, got {config.optimizer.weight_decay}")
    if config.data.sampling not in data.SAMPLINGS:
        raise ValueError(f"config.data.sampling must be one of {data.SAMPLINGS}, got {config.data.sampling!r}")
    if config.data.seq_len > config.model.max_seq_len:
        raise ValueError(f"config.data.seq_len ({config.data.seq_len}) exceeds config.model.max_seq_len "
                         f"({config.model.max_seq_len})")
    o = config.optimizer
    unit = {"optimizer.b1": (o.b1, False), "optimizer.b2": (o.b2, False), "optimizer.momentum": (o.momentum, False),
            "optimizer.floor": (o.floor, True), "optimizer.gamma": (o.gamma, True),
            "optimizer.decay_fraction": (o.decay_fraction, True)}
    for name, (value, closed) in unit.items():  # β and momentum in [0, 1); the schedule's fractions in [0, 1]
        if not (0 <= value <= 1 if closed else 0 <= value < 1):
            raise ValueError(f"config.{name} must lie in [0, 1{']' if closed else ')'}, got {value!r}")
    if not o.eps > 0 or not o.clip_norm >= 0 or not (o.adam_lr >= 0):
        raise ValueError(f"config.optimizer.eps must be positive and clip_norm, adam_lr >= 0 (0: off); got "
                         f"{o.eps}, {o.clip_norm}, {o.adam_lr}")
    if o.schedule == "step" and not all(0 < m < 1 for m in o.milestones):
        raise ValueError(f"config.optimizer.milestones must be fractions of the run in (0, 1), got {o.milestones}")
    if config.keep_checkpoints < 0 or config.seed < 0:
        raise ValueError(f"config.keep_checkpoints and config.seed must be >= 0, got {config.keep_checkpoints}, "
                         f"{config.seed}")
    if config.data.tokenizer and config.data.tokenizer_corpus:
        raise ValueError("give config.data.tokenizer (a tokenizer.json) or config.data.tokenizer_corpus (the corpus "
                         "a BPE is trained on), not both")
    if not config.data.tokenizer and config.data.vocab_size < 258:
        raise ValueError(f"config.data.vocab_size ({config.data.vocab_size}) must be at least 258 for the trained "
                         "byte-level BPE (256 bytes, the end-of-text token and one merge)")
    models.config_from_fields(config.model.to_dict())  # the model's own checks (shapes, dtype, init)
    m = config.mesh
    shards = sharding.mesh_shape(m.data, m.fsdp, m.tensor, jax.device_count())
    unknown = {axis for _, target in m.rules for axis in sharding.mesh_axes(target) if axis not in sharding.AXES}
    if unknown:
        raise ValueError(f"config.mesh.rules name mesh axes {sorted(unknown)}; known: {sharding.AXES}")
    if config.batch_size % (shards[0] * shards[1]) or config.batch_size % jax.process_count():
        raise ValueError(f"config.batch_size ({config.batch_size}) must be divisible by config.mesh.data × fsdp "
                         f"({shards[0]} × {shards[1]}) and by the number of processes ({jax.process_count()})")
    if config.probe.enabled:
        p = config.probe
        lo, hi = p.gap
        ood_lo, ood_hi = p.ood_gap
        if not (0 < lo <= hi and 0 < ood_lo <= ood_hi) or p.eval_size <= 0 or p.codewords <= 0:
            raise ValueError(f"config.probe: gap {tuple(p.gap)} and ood_gap {tuple(p.ood_gap)} must be increasing "
                             f"positive ranges, eval_size ({p.eval_size}) and codewords ({p.codewords}) positive")


class NonFiniteError(RuntimeError):
    """NaN or inf in the loss, the gradients or the forces."""


def _first_non_finite(window: dict[str, np.ndarray], names: list[str]) -> str | None:
    """Where the interval went bad: the step and the matrix, or None."""
    bad_steps = ~np.isfinite(window["loss"]) | ~np.isfinite(window["grad_norm"])
    if "forces" in window:
        bad_steps |= ~np.all(np.isfinite(window["forces"]), axis=(1, 2))
    if not bad_steps.any():
        return None
    i = int(np.argmax(bad_steps))
    where = f"step {int(window['step'][i])} (loss {window['loss'][i]}, gradient norm {window['grad_norm'][i]})"
    if "forces" in window:
        rows = np.flatnonzero(~np.all(np.isfinite(window["forces"][i]), axis=1))
        if rows.size:
            where += f", first in matrix {names[rows[0]]}"
    return where


class Setup(NamedTuple):
    """What a run trains with."""

    model_config: models.ModelConfig
    corpus: data.Corpus
    batches: Any  # this host's block of every global batch (grain)
    state: TrainState  # step 0, on the mesh
    step_fn: Callable  # the jitted step
    mesh: jax.sharding.Mesh
    batch_sharding: jax.sharding.NamedSharding


def setup(config: ml_collections.ConfigDict) -> Setup:
    """Everything a run of ``config`` trains with, on the mesh ``config.mesh`` asks for."""
    model_config = models.config_from_fields(config.model.to_dict())
    mesh = sharding.mesh_of(config.mesh)
    batch_sharding = sharding.batch_sharding(mesh)
    corpus = data.prepare(config.data, config.probe)
    if corpus.tokenizer.get_vocab_size() > model_config.vocab_size:
        raise ValueError(f"the tokenizer has {corpus.tokenizer.get_vocab_size()} tokens but the model's vocabulary "
                         f"is {model_config.vocab_size}: raise config.model.vocab_size (the probe adds its made-up "
                         "codewords to the tokenizer) or shrink the tokenizer")
    batches = data.training_batches(corpus.tokens, config.data.seq_len, config.batch_size, config.seed, corpus.task,
                                    config.probe.rate, jax.process_count(), jax.process_index(),
                                    config.data.sampling)
    optimizer, schedule, adam, leaf_lr = optimizer_of(config)
    params = initial_params(config, model_config)
    shardings = state_shardings(model_config, optimizer, mesh, tuple(map(tuple, config.mesh.rules)))
    sharding.wait_for_every_process("setup")  # the corpus and the weights are ready on every host: collectives next
    state = create_train_state(model_config, optimizer, jax.random.key(config.seed), params, shardings)
    weight_decay = optim.decay_per_leaf(state.params, config.optimizer.weight_decay)
    probe_weight = probe.weight_schedule(config.probe.weights) if corpus.task else None
    step_fn = make_train_step(model_config, optimizer, schedule, weight_decay, adam, config.record_forces,
                              probe_weight, leaf_lr, shardings, batch_sharding, fused=jax.default_backend() == "gpu")
    return Setup(model_config, corpus, batches, state, step_fn, mesh, batch_sharding)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the final summary.

    With several processes (``jax.distributed``) every process runs this on the same ``workdir``: all of them
    compute and checkpoint (orbax writes each process's shards), process 0 alone writes the records (metrics,
    forces, snapshots, spectra, summary) and returns the summary; the others return ``{}``.
    """
    check_config(config)
    workdir = os.path.abspath(workdir)  # orbax's commits need an absolute path
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir} is a file, not a run directory: give a folder")
    # before anything is read from or written to the run directory
    lock = records.RunLock(workdir) if jax.process_index() == 0 else None
    try:
        return _train(config, workdir)
    finally:
        if lock:
            lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    model_config, corpus, batches, state, step_fn, mesh, batch_sharding = setup(config)
    writer = jax.process_index() == 0  # the one process that writes the records
    replicated = sharding.replicated(mesh)

    def fetchable(fn: Callable) -> Callable:  # its result whole on every device: any host can read it
        return jax.jit(fn, out_shardings=replicated)

    # on a mesh of several CPU devices each program is waited for and the spectra use one device (two
    # deadlocks of XLA's CPU client: sharding.cpu_mesh)
    in_order = sharding.cpu_mesh(mesh)

    def settled(x):
        return jax.block_until_ready(x) if in_order else x

    names = matrix_names(state.params)
    evaluate = None
    if corpus.task:
        evaluate = make_probe_eval(model_config, {
            name: probe.eval_set(corpus.task, config.probe.eval_size, config.data.seq_len, gap, config.probe.seed + i)
            for i, (name, gap) in enumerate((("p_in", tuple(config.probe.gap)), ("p_ood", tuple(config.probe.ood_gap))))},
            state.params, replicated)

    run = records.RunRecords(workdir, config, names) if writer else None
    manager = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    iterator = iter(batches)
    state, resumed = manager.restore_latest(state, iterator)  # onto this run's mesh, whatever the writer's
    if writer:
        run.start(resumed)
    snapshot_dir = os.path.join(workdir, "snapshots")
    layout = snapshots.layout_of(state.params)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    margin = 16 << 20  # metrics, TensorBoard events, forces files: what a write needs besides its own bytes
    spectra_dir = os.path.join(workdir, "spectra")
    if config.snapshot_every and writer:
        if not resumed:
            snapshots.write_layout(snapshot_dir, layout)
        snapshots.drop_after(snapshot_dir, resumed)
    if config.spectra_every:
        if writer:
            os.makedirs(spectra_dir, exist_ok=True)
            records.write_json(os.path.join(spectra_dir, "names.json"),
                               spectra.trunk_names(state.params, model_config.n_heads))
            snapshots.drop_after(spectra_dir, resumed)

        def table(params):
            return spectra.trunk_distributions(params, model_config.n_heads)

        compute_table = jax.jit(table) if in_order else fetchable(table)

        def trunk_distributions(params):
            return compute_table(sharding.on_one_device(params) if in_order else params)

    flatten, sq_norms_of = fetchable(snapshots.flatten), fetchable(matrix_sq_norms)
    if resumed:
        logging.info("resumed from the checkpoint at step %d", resumed)

    preempted = PreemptionNotice()
    sizes = np.asarray([w.size for w in tree.named_leaves(state.params)[1]], np.float64)
    # The host never waits for the device inside the loop: each log interval's metrics, each weight snapshot
    # and each checkpoint (of an on-device copy of the state, which the next step's donation cannot touch)
    # are fetched and written by one worker thread, in order, while the main thread keeps dispatching steps
    # (with several processes the main thread saves the checkpoints itself: see save_on_worker below).
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    in_flight: list[tuple[bool, concurrent.futures.Future]] = []  # (holds a copy of the weights, its task)

    waits = {"writes": 0.0, "data": 0.0}  # main-thread seconds on the writer thread and in the data feed

    @contextlib.contextmanager
    def timed(key: str):
        start = time.perf_counter()
        yield
        waits[key] += time.perf_counter() - start

    def enqueue(holds_copy: bool, task, *args) -> None:
        in_flight.append((holds_copy, worker.submit(task, *args)))
        # wait only to bound the device memory held by copies (two in flight at most)
        with timed("writes"):
            while in_flight and (in_flight[0][1].done() or sum(c for c, _ in in_flight) > 2):
                in_flight.pop(0)[1].result()  # re-raises the worker's NonFiniteError here

    def finish_writes() -> None:
        with timed("writes"):
            while in_flight:
                in_flight.pop(0)[1].result()

    def due(every: int, step: int) -> bool:
        return bool(every) and (step % every == 0 or step == config.steps)

    def snapshot(step: int) -> None:
        if due(config.snapshot_every, step):  # every process takes part in gathering the weights; one writes
            records.ensure_space(workdir, margin + 4 * layout.size, f"the snapshot of step {step}")
            flat = settled(flatten(state.params))
            if writer:
                flat.copy_to_host_async()  # the device→host copy starts now, without the worker thread or the GIL
                enqueue(True, snapshots.write, snapshot_dir, step, flat)
        if due(config.spectra_every, step):  # the SD table (trunk matrices × r): small, no copy of the weights
            distributions = settled(trunk_distributions(state.params))
            if writer:
                enqueue(False, snapshots.write, spectra_dir, step, distributions)

    if not resumed:
        snapshot(0)
    clock = [time.perf_counter()]
    steady: dict = {}  # the clock and step once the first step (and its compilation) is done: throughput

    # orbax's barriers inside a save are collectives (jax's sync_global_devices): with several processes, a
    # save on the worker thread would meet the main thread's steps in another order on each process, and the
    # two would wait for each other (two CPU processes hung at their first checkpoint before the last step).
    # There the main thread saves, in step order, once the worker has written what the checkpoint vouches for.
    save_on_worker = jax.process_count() == 1

    def record(pending, sq_norms, evals, checkpoint: bool, save: Callable | None):
        records.ensure_space(workdir, margin + (state_bytes if checkpoint else 0),
                             "the next log interval and checkpoint" if checkpoint else "the next log interval")
        window = _drain(pending)
        bad = _first_non_finite(window, names)
        if bad:
            raise NonFiniteError(f"non-finite values at {bad}; last good checkpoint: "
                                 f"{manager.latest_step() or 'none'} in {manager.directory}")
        now = time.perf_counter()
        if writer:
            run.log(window, np.asarray(sq_norms), sizes, (now - clock[0]) / window["step"].size,
                    config.batch_size * config.data.seq_len, config.steps, jax.device_get(evals))
        clock[0] = now
        if checkpoint and writer:  # the forces file first: a checkpoint is committed only after what it vouches for
            run.flush_forces(int(window["step"][-1]))
        if save:
            save()

    def submit(pending, checkpoint: bool, data_state: dict) -> None:
        # every process saves (each writes its own shards) an on-device copy, which the next step cannot donate
        save = functools.partial(manager.save, done, jax.tree.map(jnp.copy, state), data_state) if checkpoint else None
        evals = settled(evaluate(state.params)) if evaluate and due(config.probe.eval_every, done) else {}
        enqueue(checkpoint, record, pending, settled(sq_norms_of(state.params)), evals, checkpoint,
                save if save_on_worker else None)
        if save and not save_on_worker:
            finish_writes()
            save()

    done = resumed  # the host's count of steps taken: reading state.step would wait for the device
    pending: list[dict] = []
    feed = data.prefetch_to_device(iterator, sharding=batch_sharding)
    stopping = False
    try:
        while done < config.steps and not stopping:
            with timed("data"):
                batch, data_state = next(feed)
            state, metrics = settled(step_fn(state, batch))
            done += 1
            if not steady:  # one wait, once: the whole-program clock starts when the first step is done
                jax.block_until_ready(metrics)
                steady["start"] = (time.perf_counter(), done)
            pending.append({"step": done, **metrics})
            snapshot(done)
            stopping = preempted(done)
            if stopping or done % config.log_every == 0 or done == config.steps:
                submit(pending, stopping or done % config.ckpt_every == 0 or done == config.steps, data_state)
                pending = []
        finish_writes()
        if stopping:
            logging.info("SIGTERM: saved the checkpoint at step %d and stopped", done)
    except OSError as e:  # a full disk, a vanished or read-only folder: where the run can resume from
        raise OSError(f"writing the run directory failed at step {done} ({e}); the last complete checkpoint is "
                      f"step {manager.latest_step() or 'none'} in {manager.directory}: free space (or fix the "
                      "folder) and rerun the same command to resume from it") from e
    finally:
        preempted.close()
        worker.shutdown(wait=True, cancel_futures=True)
        manager.close(failed=sys.exc_info()[0] is not None)
    throughput = None
    if "start" in steady and done > steady["start"][1]:
        seconds = time.perf_counter() - steady["start"][0]
        throughput = {"steps": done - steady["start"][1], "seconds": seconds,
                      "tokens_per_s": (done - steady["start"][1]) * config.batch_size * config.data.seq_len / seconds,
                      "waited_on_writes_s": waits["writes"], "waited_on_data_s": waits["data"]}
    final = jax.device_get(fetchable(lambda p: p)(state.params))  # every process gathers; the writer reads
    if not writer:
        return {}
    summary = records.summarize(run, final, throughput)
    run.close(summary)
    return summary
