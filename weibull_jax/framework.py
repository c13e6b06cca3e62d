r"""The framework's diagnostic functions and the whole-model diagnosis (arXiv 2605.18898, App. B.1, F1–F8).

* k readout (F2): Transmission band, mild / strong Selection, the initialisation baseline.
* Training budget: τ_iter = 1/(η λ_wd), T/τ = T η λ_wd and its Physical State (App. A.5).
* k drift from the anchor (F6), attention architecture MHA / GQA / MQA (F7),
  λ ∝ √(η/λ_wd) through the origin (F5), paired log-log λ correlation (F8), cross-family band (F4).
* :func:`diagnose_model`: every matrix of a model fit in one compiled call, with the k80/k90/k100 ablation,
  Γ closure and tail signatures, summarised per kind, class and block.
* :func:`compare_to_benchmark`: a diagnosis against the paper's cohort (:mod:`weibull_jax.reference`).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from weibull_jax import reference as ref
from weibull_jax import tails, taxonomy
from weibull_jax import tree as tree_lib
from weibull_jax import weibull as wb

K_ANCHOR = 1.205  # the half-normal anchor at the resolution of the paper's readout (App. A.1: 1.2054)
K_CLASSES = ("transmission", "mild_selection", "strong_selection", "init_baseline")
_BAND_READOUT = (1.18, 1.21)  # F2 readout band (npm-weibull-py 0.4); the cohort band is reference.TRANSMISSION_BAND
_MILD_LOW, _INIT_TOL, _R2_MIN = 0.95, 0.01, 0.95


def classify_k(k: Any, r2: Any = None, is_init: bool = False) -> np.ndarray:
    """F2: the k class code per entry (index into ``K_CLASSES``).

    transmission: k ∈ [1.18, 1.21] with R² ≥ 0.95 (when given); mild selection: other k ≥ 0.95;
    strong selection: k < 0.95; init baseline (at step 0 only): |k − 1.205| < 0.01.
    """
    k = np.asarray(k, np.float64)
    good = np.ones_like(k, bool) if r2 is None else np.asarray(r2) >= _R2_MIN
    band = (k >= _BAND_READOUT[0]) & (k <= _BAND_READOUT[1]) & good
    code = np.where(band, 0, np.where(k >= _MILD_LOW, 1, 2))
    if is_init:
        code = np.where(np.abs(k - K_ANCHOR) < _INIT_TOL, 3, code)
    return code


def k_class_names(codes: Any) -> tuple[str, ...]:
    return tuple(K_CLASSES[c] for c in np.asarray(codes).reshape(-1))


class TrainingBudget(NamedTuple):
    """τ_iter = 1/(η λ_wd) steps and T/τ = T η λ_wd (App. A.5) with the Physical State it implies."""

    tau_iter: float
    t_over_tau: float
    state: str


BUDGET_STATES = ((1.0, "saturated"), (0.5, "near_saturated"), (0.2, "approaching"), (0.0, "transition"))


def training_budget(eta: float, weight_decay: float, steps: int) -> TrainingBudget:
    """T/τ and its state: saturated ≥ 1, near-saturated ≥ 0.5, approaching ≥ 0.2, else transition.

    The 0.5 boundary is ours: it reproduces the paper's labels of the five Pythia sizes (1.43 saturated,
    0.86 near-saturated, 0.43 approaching, 0.17 transition); npm-weibull-py folds [0.2, 1) into one state.
    """
    if eta <= 0 or weight_decay <= 0 or steps <= 0:
        raise ValueError(f"T/τ needs positive η, λ_wd and T; got η={eta}, λ_wd={weight_decay}, T={steps}")
    tau = 1.0 / (eta * weight_decay)
    ratio = steps / tau
    state = next(name for lo, name in BUDGET_STATES if ratio >= lo)
    return TrainingBudget(tau, ratio, state)


class KDrift(NamedTuple):
    """F6: Δk = k_trained − k_init, |Δk|/k_init in %, and severity (invariant < 1 %, mild ≤ 30 %, strong)."""

    delta: float
    percent: float
    severity: str


def k_drift(k_trained: float, k_init: float = K_ANCHOR) -> KDrift:
    if k_init <= 0:
        raise ValueError(f"k_init must be positive; got {k_init}")
    delta = k_trained - k_init
    pct = abs(delta) / k_init * 100.0
    return KDrift(delta, pct, "invariant" if pct < 1.0 else "mild" if pct <= 30.0 else "strong")


def attention_architecture(n_q: int, n_kv: int) -> str:
    """F7: MHA (n_kv = n_q), GQA (1 < n_kv < n_q), MQA (n_kv = 1) from the head counts."""
    if n_q <= 0 or n_kv <= 0 or n_q % n_kv:
        raise ValueError(f"need positive head counts with n_kv dividing n_q; got n_q={n_q}, n_kv={n_kv}")
    return "MQA" if n_kv == 1 and n_q > 1 else "MHA" if n_kv == n_q else "GQA"


def lambda_scaling(eta: Any, weight_decay: Any, lam: Any) -> tuple[float, float]:
    """F5: λ = slope · √(η/λ_wd) by least squares through the origin, and the Pearson r of λ on √(η/λ_wd).

    On the paper's five Pythia rows (Table 4) this gives slope 0.087 and r 0.94 (§5.4)."""
    x = np.sqrt(np.asarray(eta, np.float64) / np.asarray(weight_decay, np.float64))
    y = np.asarray(lam, np.float64)
    if x.size < 2:
        raise ValueError("lambda_scaling needs at least two (η, λ_wd, λ) triples")
    return float(x @ y / (x @ x)), float(np.corrcoef(x, y)[0, 1])


def paired_lambda_correlation(lam_a: Any, lam_b: Any) -> float:
    """F8: Pearson r of log10 λ_a against log10 λ_b (the paper: λ_O vs λ_FFN_out, r = 0.9967)."""
    a, b = np.log10(np.asarray(lam_a, np.float64)), np.log10(np.asarray(lam_b, np.float64))
    if a.shape != b.shape or a.size < 2:
        raise ValueError("paired λ correlation needs two series of the same length ≥ 2")
    return float(np.corrcoef(a, b)[0, 1])


class BandStatistics(NamedTuple):
    """F4: median and coefficient of variation of per-entry median k, and how many lie in the band."""

    median: float
    cv: float
    n_in_band: int
    n: int


def band_statistics(median_k: Any, band: tuple[float, float] = ref.TRANSMISSION_BAND) -> BandStatistics:
    k = np.asarray(median_k, np.float64).reshape(-1)
    inside = int(np.sum((k >= band[0]) & (k <= band[1])))
    return BandStatistics(float(np.median(k)), float(np.std(k) / np.mean(k)), inside, k.size)


# --------------------------------------------------------------------------------------------------
# The whole-model diagnosis
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MatrixTable:
    """One row per weight matrix (a stacked leaf of scanned layers gives one row per layer)."""

    name: tuple[str, ...]
    kind: tuple[str, ...]
    cls: tuple[str, ...]
    block: np.ndarray
    numel: np.ndarray
    k: np.ndarray
    scale: np.ndarray
    r2: np.ndarray
    ks: np.ndarray
    k90: np.ndarray
    k100: np.ndarray
    rms: np.ndarray
    gamma_rel_error: np.ndarray
    max_over_q99: np.ndarray
    excess_kurtosis: np.ndarray
    log10_p_tail: np.ndarray
    n_super: np.ndarray
    n_super_expected: np.ndarray
    k_class: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.name)

    def columns(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]

    def to_csv(self, path: str) -> None:
        cols = self.columns()
        with open(path, "w") as f:
            f.write(",".join(cols) + "\n")
            for i in range(len(self)):
                f.write(",".join(str(getattr(self, c)[i]) for c in cols) + "\n")


@dataclasses.dataclass(frozen=True)
class GroupTable:
    """Summaries over groups of matrices (a kind, a class or a block)."""

    group: tuple[str, ...]
    n: np.ndarray
    median_k: np.ndarray
    median_scale: np.ndarray
    mean_scale: np.ndarray
    min_r2: np.ndarray
    max_max_over_q99: np.ndarray


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose_model` finds: the per-matrix table, its summaries and the alerts."""

    matrices: MatrixTable
    by_kind: GroupTable
    by_class: GroupTable
    by_block: GroupTable
    architecture: str | None
    budget: TrainingBudget | None
    drift: dict[str, KDrift]
    alerts: tuple[str, ...]

    def median_k(self) -> dict[str, float]:
        return {g: float(k) for g, k in zip(self.by_kind.group, self.by_kind.median_k)}

    def transmission_mean_scale(self) -> float:
        """Mean over Transmission kinds of the per-kind mean λ (Table 4's aggregation; W_v excluded)."""
        kinds = [i for i, g in enumerate(self.by_kind.group) if taxonomy.class_of(g) == taxonomy.TRANSMISSION
                 and g != "v"]
        return float(np.mean(self.by_kind.mean_scale[kinds])) if kinds else float("nan")

    def format(self) -> str:
        return format_diagnosis(self)


def _group(keys: Sequence[str], table: MatrixTable) -> GroupTable:
    order = list(dict.fromkeys(keys))
    idx = [np.array([i for i, key in enumerate(keys) if key == g]) for g in order]
    return GroupTable(tuple(order), np.array([len(i) for i in idx]),
                      np.array([np.median(table.k[i]) for i in idx]),
                      np.array([np.median(table.scale[i]) for i in idx]),
                      np.array([np.mean(table.scale[i]) for i in idx]),
                      np.array([np.min(table.r2[i]) for i in idx]),
                      np.array([np.max(table.max_over_q99[i]) for i in idx]))


def _config_value(config: Any, *names: str) -> Any:
    for n in names:
        value = config.get(n) if isinstance(config, Mapping) else getattr(config, n, None)
        if value is not None:
            return value
    return None


def _expand(name: str, leaf: Any) -> list[tuple[str, int]]:
    """(row name, block) for each matrix of a leaf; stacked leaves index their layers."""
    block = taxonomy.block_of(name)
    batch = wb.batch_shape(leaf)
    if not batch:
        return [(name, block)]
    rows = []
    for index in np.ndindex(*batch):
        rows.append((f"{name}[{','.join(map(str, index))}]", block if block >= 0 else index[0]))
    return rows


def diagnose_model(params: Any, config: Any = None, *, step: int | None = None, center: bool = False,
                   protocol: str = "histogram",
                   select: Callable[[tree_lib.Path, Any], bool] = tree_lib.is_weight_matrix) -> Diagnosis:
    """Diagnose every weight matrix of a model (framework paper's ``diagnose_model``, Layer A).

    Args:
      params: any pytree of arrays (a Flax tree, or a HuggingFace state dict as ``{name: array}``).
      config: optional mapping or object with head counts (``n_heads``/``num_attention_heads``,
        ``n_kv_heads``/``num_key_value_heads``) and the training recipe (``learning_rate``/``lr``,
        ``weight_decay``, ``steps``/``train_steps``) for the architecture and T/τ readouts.
      step: the checkpoint's step; at step 0 matrices near the anchor are read as ``init_baseline``.
      center: subtract each matrix's mean before fitting (the paper's pipeline).
      protocol: ``"histogram"`` (default) or ``"exact"``.
      select: which leaves are weight matrices (default: every array with ≥ 2 axes).
    """
    names, leaves, _, _ = tree_lib.named_leaves(params, select)
    if not leaves:
        raise ValueError("diagnose_model: no weight matrices in params (nothing with two or more axes)")
    f80, f90, f100 = wb.fit_arrays(names, leaves, (0.1, 0.05, 0.0), protocol, center)
    signatures = tails.tail_signatures(leaves, f80, center)
    closures = [wb.gamma_closure(w, f, center) for w, f in zip(leaves, f80)]
    rows, kinds = [], []
    for n, w in zip(names, leaves):
        expanded = _expand(n, w)
        rows += expanded
        kinds += [taxonomy.kind_of(n)] * len(expanded)
    kinds = tuple(kinds)

    def cat(values):
        return np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in values])

    k, r2 = cat(f.k for f in f80), cat(f.r2 for f in f80)
    numel = np.concatenate([np.full(int(np.prod(wb.batch_shape(w), dtype=int)),
                                    w.shape[-1] * (w.shape[-2] if w.ndim >= 2 else 1)) for w in leaves])
    table = MatrixTable(
        name=tuple(r[0] for r in rows), kind=kinds, cls=tuple(taxonomy.class_of(x) for x in kinds),
        block=np.array([r[1] for r in rows]), numel=numel,
        k=k, scale=cat(f.scale for f in f80), r2=r2, ks=cat(f.ks for f in f80),
        k90=cat(f.k for f in f90), k100=cat(f.k for f in f100),
        rms=cat(wb.matrix_rms(w, center) for w in leaves),
        gamma_rel_error=cat(c.rel_error for c in closures),
        max_over_q99=cat(s.max_over_q99 for s in signatures),
        excess_kurtosis=cat(s.excess_kurtosis for s in signatures),
        log10_p_tail=cat(s.log10_p_tail for s in signatures),
        n_super=cat(s.n_super for s in signatures).astype(np.int64),
        n_super_expected=cat(s.n_super_expected for s in signatures),
        k_class=k_class_names(classify_k(k, r2, is_init=step == 0)),
    )
    by_kind = _group(table.kind, table)
    by_class = _group(table.cls, table)
    by_block = _group(tuple(f"block {b}" if b >= 0 else "outside blocks" for b in table.block), table)

    architecture = None
    if config is not None:
        n_q = _config_value(config, "n_heads", "num_attention_heads", "n_head")
        n_kv = _config_value(config, "n_kv_heads", "num_key_value_heads") or n_q
        architecture = attention_architecture(int(n_q), int(n_kv)) if n_q else None
    budget = None
    if config is not None:
        eta = _config_value(config, "learning_rate", "lr", "eta")
        wd = _config_value(config, "weight_decay")
        steps = _config_value(config, "steps", "train_steps", "num_train_steps")
        if eta and wd and steps:
            budget = training_budget(float(eta), float(wd), int(steps))
    drift = {g: k_drift(float(m)) for g, m in zip(by_kind.group, by_kind.median_k)
             if taxonomy.class_of(g) != taxonomy.OTHER}
    return Diagnosis(table, by_kind, by_class, by_block, architecture, budget, drift,
                     _alerts(table, by_kind, budget))


def _alerts(table: MatrixTable, by_kind: GroupTable, budget: TrainingBudget | None) -> tuple[str, ...]:
    alerts = []
    if budget is not None and budget.state == "transition":
        alerts.append(f"T/τ = {budget.t_over_tau:.2f} < 0.2: transition state; apparent stability may be a "
                      "training-budget artifact, not a terminal state (App. A.5)")
    for g, m in zip(by_kind.group, by_kind.median_k):
        if taxonomy.class_of(g) == taxonomy.SELECTION and m < _MILD_LOW:
            alerts.append(f"{g}: median k = {m:.3f} < 0.95, strong Selection drift (§4.3)")
    low = [n for n, r in zip(table.name, table.r2) if r < _R2_MIN]
    if low:
        alerts.append(f"{len(low)} matrices fit with R² < 0.95 (first: {low[0]}): read their heaviness "
                      "distribution-free (weibull_jax.tails.heaviness)")
    heavy = [(n, m) for n, m in zip(table.name, table.max_over_q99) if m > 10.0]
    if heavy:
        n, m = max(heavy, key=lambda x: x[1])
        alerts.append(f"{len(heavy)} matrices carry super-weights (max/q99 > 10); largest {m:.1f}× in {n}")
    return tuple(alerts)


def format_diagnosis(d: Diagnosis, max_name: int = 48) -> str:
    """The diagnosis as text: the per-matrix table, then per-kind, per-class and per-block summaries."""
    t = d.matrices
    out = io.StringIO()
    header = (f"{'matrix':<{max_name}} {'kind':>7} {'class':>12} {'k':>7} {'lambda':>9} {'R2':>7} {'KS':>6} "
              f"{'k90':>6} {'k100':>6} {'Γerr%':>6} {'max/q99':>8} {'kurt':>7} {'log10P':>8} {'super':>6}")
    out.write(header + "\n" + "-" * len(header) + "\n")
    for i in range(len(t)):
        name = t.name[i] if len(t.name[i]) <= max_name else "…" + t.name[i][-max_name + 1:]
        out.write(f"{name:<{max_name}} {t.kind[i]:>7} {t.cls[i]:>12} {t.k[i]:7.4f} {t.scale[i]:9.5f} "
                  f"{t.r2[i]:7.4f} {t.ks[i]:6.3f} {t.k90[i]:6.3f} {t.k100[i]:6.3f} "
                  f"{100 * t.gamma_rel_error[i]:6.2f} {t.max_over_q99[i]:8.2f} {t.excess_kurtosis[i]:7.2f} "
                  f"{t.log10_p_tail[i]:8.2f} {t.n_super[i]:6d}\n")
    for title, g in (("kind", d.by_kind), ("class", d.by_class), ("block", d.by_block)):
        out.write(f"\nper {title}: {'':<16} {'n':>4} {'median k':>9} {'median λ':>10} {'mean λ':>10} "
                  f"{'min R2':>7} {'max max/q99':>12}\n")
        for i, name in enumerate(g.group):
            out.write(f"  {name:<24} {g.n[i]:4d} {g.median_k[i]:9.4f} {g.median_scale[i]:10.5f} "
                      f"{g.mean_scale[i]:10.5f} {g.min_r2[i]:7.4f} {g.max_max_over_q99[i]:12.2f}\n")
    if d.architecture:
        out.write(f"\nattention architecture: {d.architecture}\n")
    if d.budget:
        out.write(f"training budget: τ_iter = {d.budget.tau_iter:.0f} steps, T/τ = {d.budget.t_over_tau:.3f} "
                  f"({d.budget.state})\n")
    for a in d.alerts:
        out.write(f"alert: {a}\n")
    return out.getvalue()


# --------------------------------------------------------------------------------------------------
# Comparison with the paper's cohort
# --------------------------------------------------------------------------------------------------

_KIND_WEIGHT = {"q": 2.0, "k": 2.0, "qkv": 2.0, "v": 1.0, "o": 1.0}


class BenchmarkComparison(NamedTuple):
    """The nearest cohort entry by weighted distance of per-kind median k to the entries' ranges."""

    nearest: str
    distance: float
    distances: tuple[tuple[str, float], ...]
    label: str
    rows: tuple[tuple[str, float, float, str], ...]  # (metric, ours, paper's nearest entry, source)
    alerts: tuple[str, ...]


def _entry_distance(median_k: Mapping[str, float], entry: ref.ReferenceEntry) -> float | None:
    ranges = {kind: (lo, hi) for kind, lo, hi in entry.k_ranges}
    total = weight = 0.0
    for kind, k in median_k.items():
        rng = ranges.get(kind) or (ranges.get("v_o") if kind in ("v", "o") else None)
        if rng is None:
            continue
        w = _KIND_WEIGHT.get(kind, 0.5)
        total += w * (0.0 if rng[0] <= k <= rng[1] else min(abs(k - rng[0]), abs(k - rng[1])))
        weight += w
    return total / weight if weight else None


def _family_label(arch: str | None, median_k: Mapping[str, float]) -> str:
    qk = median_k.get("q", median_k.get("qkv"))
    if qk is None:
        return f"{arch or '?'} (no q/qkv matrices)"
    if arch == "GQA":
        return "GQA transmission-like (LLaMA-3/Mistral/Qwen)" if qk > 1.10 else "GQA with Selection drift (atypical)"
    if arch == "MQA":
        return "MQA (no cohort reference; transmission-like expected)"
    if qk < _MILD_LOW:
        return "MHA strong Selection (OLMo-1-like, no QK-Norm)"
    if qk < 1.10:
        return "MHA mild Selection (OLMo-2-like, or Pythia merged qkv)"
    return "MHA near-transmission (Pythia-1B/6.9B-like merged qkv, or early training)"


def compare_to_benchmark(diagnosis: Diagnosis, reference: Sequence[ref.ReferenceEntry] = ref.REFERENCE
                         ) -> BenchmarkComparison:
    """Compare a diagnosis with the cohort (Layer B): nearest entry by the weighted L1 distance of per-kind
    median k to the entry's expected ranges (q, k, qkv weigh 2; v, o weigh 1), and our numbers beside the
    nearest entry's published ones."""
    median_k = diagnosis.median_k()
    scored = [(e, _entry_distance(median_k, e)) for e in reference]
    scored = sorted(((e, d) for e, d in scored if d is not None), key=lambda x: x[1])
    if not scored:
        raise ValueError("compare_to_benchmark: the diagnosis has no q, k, v, o or qkv matrices to compare")
    nearest, dist = scored[0]
    rows = [("median k, Transmission (FFN band)", float(np.median([m for g, m in median_k.items()
                                                                  if g in ("ffn_in", "ffn_out", "gate", "up", "down")]
                                                                 or [np.nan])),
             float(np.mean(ref.TRANSMISSION_BAND)), "§3.1 cohort band [1.186, 1.204]"),
            ("mean λ, Transmission kinds", diagnosis.transmission_mean_scale(), nearest.terminal_mean_scale,
             "Table 4"),
            ("median k80 − k100", float(np.median(diagnosis.matrices.k - diagnosis.matrices.k100)),
             ref.BODY_TAIL_GAP[0], "§3.2 Table 1")]
    if nearest.max_q99_median is not None:
        rows.append(("median max/q99", float(np.median(diagnosis.matrices.max_over_q99)),
                     nearest.max_q99_median, "Table 2"))
    if diagnosis.budget is not None and nearest.t_over_tau is not None:
        rows.append(("T/τ", diagnosis.budget.t_over_tau, nearest.t_over_tau, "Table 3"))
    alerts = []
    if diagnosis.architecture and diagnosis.architecture != nearest.arch:
        alerts.append(f"architecture {diagnosis.architecture} but the nearest entry {nearest.model} is {nearest.arch}")
    if dist > 0.5:
        alerts.append(f"distance {dist:.3f} > 0.5: far from every cohort entry")
    return BenchmarkComparison(nearest.model, float(dist), tuple((e.model, float(d)) for e, d in scored),
                               _family_label(diagnosis.architecture, median_k), tuple(rows), tuple(alerts))
