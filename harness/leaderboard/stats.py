"""The statistics of a leaderboard: numpy and scipy only, no MLflow, no registry.

Summaries over seeds (mean and a 95% Student-t interval cut at the metric's range), the paired
t-test over seeds, the paired bootstrap over items, significance under a rank rule and, across tasks,
the mean rank and the Borda count. Ranks of the means, significance letters, Friedman and Nemenyi are
in :mod:`.ranking`. docs/leaderboard-statistics.md explains each.
"""

from __future__ import annotations

import math
import re
import warnings
import zlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

RANK_RULES = ("either", "both", "bootstrap", "ttest")
CI_METHOD = "95% Student-t over seeds, cut at the metric's range"

_INF = math.inf
_AT = r"(?:.+/)?"  # a prefix inside a task: a split, a probe target, a member task (test/, shape/, stsb/)

#: The range of a metric, by its name (``re.fullmatch``, first match wins); the CI is cut there. Names are
#: those the tasks record (CLIP_benchmark's and MTEB's, ``@`` also as MLflow's ``_at_``) and the cost keys.
#: Unknown names are unbounded. Never read from the installed task registry: a board is rebuilt from what
#: the runs recorded. docs/leaderboard-statistics.md explains each row.
METRIC_BOUNDS: list[tuple[str, tuple[float, float]]] = [
    (_AT + r"n_\w+", (0.0, _INF)),  # counts: n_undecodable, n_queries, n_groups, ...
    (_AT + r"(?:\w+_)?(?:recall|precision|ndcg|map|mrr)(?:@|_at_)\d+", (0.0, 1.0)),  # retrieval @k
    (_AT + r"(?:lp_)?(?:mean_per_class_recall|map|accuracy|f1(?:_\w+)?|ap|pairs_from_captions)", (0.0, 1.0)),
    (_AT + r"lp_acc\d+", (0.0, 1.0)),  # CLIP_benchmark's linear-probe keys
    (_AT + r"probe_converged", (0.0, 1.0)),
    (_AT + r"probe_(?:iterations|unconverged_fits)", (0.0, _INF)),
    (_AT + r"(?:macro_|val_)?acc\d*(?:/.+)?", (0.0, 1.0)),  # acc1, test/color/acc, macro_acc, acc/<group>
    (_AT + r"(?:text|image|group)_score(?:/.+)?", (0.0, 1.0)),  # Winoground
    (r"rsum", (0.0, _INF)),  # 100 x the sum of the recalls; its top depends on the task's ks
    (_AT + r"(?:\w+_)?(?:mean|median)_rank", (1.0, _INF)),  # 1-based rank of the first match
    (_AT + r"(?:spearman|pearson|avg|avg_pearson)", (-100.0, 100.0)),  # STS correlations x100 (SimCSE)
    (_AT + r"\w+_(?:spearman|pearson)", (-1.0, 1.0)),  # MTEB's cosine_spearman, ...: fractions
    (_AT + r"(?:mean_)?cosine(?:_\w+)?", (-1.0, 1.0)),  # cosines of unit vectors
    (_AT + r"mean_gold", (0.0, 5.0)),  # the shapes world's gold similarity
    (r"alignment", (0.0, 4.0)),  # E ||x - y||^2 of unit vectors (Wang & Isola, alpha = 2)
    (r"uniformity(?:_\w+)?", (-8.0, 0.0)),  # log E exp(-2 ||x - y||^2) of unit vectors
    (r"modality_gap", (0.0, 2.0)),  # distance of two centroids of unit vectors
    (r"effective_rank(?:_\w+)?", (0.0, _INF)),
    (_AT + r"weight_decay", (0.0, _INF)),  # the linear probe's chosen L2 penalty
    (r"wall_seconds|samples_per_second|peak_memory_mb|flops_per_step|samples_seen", (0.0, _INF)),  # cost/
]
_BOUND_PATTERNS = [(re.compile(p), b) for p, b in METRIC_BOUNDS]


def metric_bounds(name: str) -> tuple[float, float] | None:
    """(low, high) of a metric named ``name`` (a task's metric, a main metric or a cost key), or None."""
    return next((b for p, b in _BOUND_PATTERNS if p.fullmatch(name)), None)


@dataclass
class Summary:
    """Values over seeds: mean, sample sd, the 95% Student-t half-width ``ci`` (None when n = 1), and the
    metric's range ``bounds``: the interval is ``[mean - ci, mean + ci]`` cut at ``bounds``."""

    values: dict[int, float]
    mean: float
    std: float | None
    ci: float | None
    n: int
    bounds: tuple[float, float] | None = None

    @property
    def low(self) -> float | None:
        if self.ci is None:
            return None
        return self.mean - self.ci if self.bounds is None else max(self.bounds[0], self.mean - self.ci)

    @property
    def high(self) -> float | None:
        if self.ci is None:
            return None
        return self.mean + self.ci if self.bounds is None else min(self.bounds[1], self.mean + self.ci)

    @property
    def symmetric(self) -> bool:
        """Whether the interval is ``mean ± ci`` (no end was cut at the range)."""
        return self.ci is None or (self.low == self.mean - self.ci and self.high == self.mean + self.ci)

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "std": self.std,
            "ci95": self.ci,
            "low": self.low,
            "high": self.high,
            "symmetric": self.symmetric,
            "bounds": None if self.bounds is None else list(self.bounds),
            "n": self.n,
            "values": {str(k): v for k, v in sorted(self.values.items())},
        }


def summarize(
    values: dict[int, float], level: float = 0.95, bounds: tuple[float, float] | None = None
) -> Summary | None:
    """Mean and Student-t interval over seeds, cut at ``bounds`` (see :func:`metric_bounds`). Values outside
    ``bounds`` mean the table does not describe this metric: the interval is then left unbounded."""
    from scipy import stats

    vals = {s: float(v) for s, v in values.items() if v is not None and math.isfinite(float(v))}
    if not vals:
        return None
    x = np.array([vals[s] for s in sorted(vals)])
    if bounds is not None and not (bounds[0] <= x.min() and x.max() <= bounds[1]):
        bounds = None
    bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
    n = len(x)
    mean = float(x.mean()) if bounds is None else float(np.clip(x.mean(), *bounds))  # rounding only
    if n == 1:
        return Summary(vals, mean, None, None, 1, bounds)
    sd = float(np.std(x, ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    return Summary(vals, mean, sd, half, n, bounds)


def hull(bounds: Iterable[tuple[float, float] | None]) -> tuple[float, float] | None:
    """The smallest range holding every one of ``bounds``; None when any is unknown (or there are none)."""
    bs = list(bounds)
    if not bs or any(b is None for b in bs):
        return None
    return min(b[0] for b in bs), max(b[1] for b in bs)


@dataclass
class PairedTest:
    """``objective`` against ``baseline``: delta = objective - baseline (raw, not direction-adjusted)."""

    objective: str
    baseline: str
    delta: float | None = None  # mean over the seeds both have
    p_ttest: float | None = None
    n_seeds: int = 0
    p_bootstrap: float | None = None
    delta_items: float | None = None  # mean over items of the seed-averaged per-item differences
    boot_low: float | None = None
    boot_high: float | None = None
    n_items: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def paired_ttest(a: dict[int, float], b: dict[int, float]) -> tuple[float | None, float | None, int]:
    """(mean difference a - b, two-sided p, n) over the seeds both have; p None below two seeds."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None, None, 0
    x = np.array([a[s] for s in seeds], dtype=float)
    y = np.array([b[s] for s in seeds], dtype=float)
    delta = float((x - y).mean())
    if len(seeds) < 2:
        return delta, None, len(seeds)
    if np.all(x == y):
        return delta, 1.0, len(seeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_rel(x, y).pvalue)
    return delta, (p if math.isfinite(p) else None), len(seeds)


def item_diffs(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> np.ndarray | None:
    """Per item, the difference a - b averaged over the seeds both have (None: no common seed, or the
    seeds disagree on the number of items)."""
    seeds = [s for s in sorted(set(a) & set(b)) if len(a[s]) == len(b[s]) and len(a[s]) > 0]
    lengths = {len(a[s]) for s in seeds}
    if not seeds or len(lengths) != 1:
        return None
    return np.mean([a[s] - b[s] for s in seeds], axis=0)


def bootstrap_counts(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """``n_boot`` resamples of ``n_items`` items with replacement, as counts per item (n_boot x n_items)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_items, size=(n_boot, n_items))
    return np.stack([np.bincount(row, minlength=n_items) for row in idx]).astype(np.float64)


def paired_bootstrap(diffs: np.ndarray, counts: np.ndarray) -> tuple[float, float, float, float]:
    """(observed mean difference, two-sided p, 2.5%, 97.5%) of the mean per-item difference."""
    n_boot, n = counts.shape
    delta = float(diffs.mean())
    boot = counts @ diffs / n
    if np.all(diffs == 0):
        p = 1.0
    else:
        extreme = np.abs(boot - delta) >= abs(delta) - 1e-12 * max(1.0, abs(delta))
        p = float((1 + extreme.sum()) / (n_boot + 1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return delta, p, float(lo), float(hi)


def task_seed(boot_seed: int, task: str) -> int:
    """The bootstrap's seed for one task: every pair of objectives of the task sees the same resamples."""
    return (boot_seed * 1_000_003 + zlib.crc32(task.encode())) % (2**32)


def significantly_better(
    b_over_a: dict[str, tuple[float | None, float | None]], hib: bool, alpha: float, rule: str
) -> bool:
    """``b_over_a``: test name (``bootstrap``, ``ttest``) -> (delta b - a, p). True when b beats a under
    ``rule`` (one of :data:`RANK_RULES`); False when no test is available."""

    def sig(name):
        delta, p = b_over_a.get(name, (None, None))
        if delta is None or p is None:
            return None
        return p < alpha and (delta > 0 if hib else delta < 0)

    boot, tt = sig("bootstrap"), sig("ttest")
    available = [x for x in (boot, tt) if x is not None]
    if not available:
        return False
    if rule == "either":
        return any(available)
    if rule == "both":
        return all(available)
    if rule == "bootstrap":
        return boot if boot is not None else tt
    return tt if tt is not None else boot


def significance_ranks(
    objectives: list[str], tests: dict[tuple[str, str], dict[str, tuple]], hib: bool, alpha: float, rule: str
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """(better, ranks): per objective a, the objectives b significantly better than it (``tests[(b, a)]``
    as in :func:`significantly_better`), and ``1 + len(better[a])``. The board no longer ranks by the
    latter (it rewarded noise): a task's rank is the rank of the mean (:func:`.ranking.rank_of_means`),
    and ``better`` gives the significance groups (:func:`.ranking.compact_letters`)."""
    better = {
        a: [b for b in objectives if b != a and significantly_better(tests[(b, a)], hib, alpha, rule)]
        for a in objectives
    }
    return better, {a: 1 + len(better[a]) for a in objectives}


def mean_rank_and_borda(
    task_ranks: Iterable[dict[str, int]], objectives: list[str]
) -> tuple[dict[str, float | None], dict[str, int], dict[str, int]]:
    """(mean rank, Borda count, number of tasks) per objective over the tasks' ranks. The mean covers the
    tasks an objective has; Borda: per task, the number of objectives with a strictly worse rank, summed."""
    task_ranks = list(task_ranks)
    mean_rank, borda, n_tasks = {}, {}, {}
    for o in objectives:
        rs = [ranks[o] for ranks in task_ranks if o in ranks]
        mean_rank[o] = float(np.mean(rs)) if rs else None
        n_tasks[o] = len(rs)
        borda[o] = sum(
            sum(1 for p, rp in ranks.items() if p != o and rp > ranks[o])
            for ranks in task_ranks
            if o in ranks
        )
    return mean_rank, borda, n_tasks


def board_order(
    objectives: Iterable[str], mean_rank: dict[str, float | None], borda: dict[str, int]
) -> list[str]:
    """Objectives by mean rank (none last), then Borda count (descending), then name."""
    return sorted(
        objectives, key=lambda o: (mean_rank[o] if mean_rank[o] is not None else math.inf, -borda[o], o)
    )
