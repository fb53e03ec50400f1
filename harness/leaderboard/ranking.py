"""Ranks of the means, significance groups (a compact letter display) and, across tasks, the Friedman
test with the Nemenyi post-hoc test (Demsar, JMLR 2006). numpy and scipy only.

docs/leaderboard-statistics.md explains each rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from string import ascii_lowercase
from typing import Iterable

import numpy as np

#: q_alpha of the Nemenyi test (the Studentized range statistic over sqrt(2), infinite df), for k = 2..10
#: objectives, from Demsar (2006), Table 5. Other (alpha, k) are computed with scipy.
Q_ALPHA = {
    0.05: (1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164),
    0.10: (1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920),
}


def rank_of_means(means: dict[str, float], hib: bool) -> tuple[dict[str, int], dict[str, float]]:
    """(rank, fractional rank) per objective by its mean score (1 = best, ``hib`` = higher is better).
    Objectives with the same mean share the rank of the first of them (1, 1, 3); the fractional rank
    averages the tied places (1.5, 1.5, 3), as the Friedman test wants."""
    sign = -1.0 if hib else 1.0
    keys = {o: sign * m for o, m in means.items()}
    rank, frac = {}, {}
    for o, k in keys.items():
        better = sum(1 for v in keys.values() if v < k)
        ties = sum(1 for v in keys.values() if v == k)
        rank[o] = 1 + better
        frac[o] = better + (ties + 1) / 2
    return rank, frac


def _maximal_cliques(nodes: list[str], adjacent: dict[str, set[str]]) -> list[set[str]]:
    """Bron-Kerbosch with pivoting: every maximal set of pairwise adjacent nodes."""
    out: list[set[str]] = []

    def grow(r: set[str], p: set[str], x: set[str]) -> None:
        if not p and not x:
            out.append(r)
            return
        pivot = max(p | x, key=lambda u: len(adjacent[u] & p))
        for v in sorted(p - adjacent[pivot], key=nodes.index):
            grow(r | {v}, p & adjacent[v], x & adjacent[v])
            p = p - {v}
            x = x | {v}

    grow(set(), set(nodes), set())
    return out


def _letter(i: int) -> str:
    return ascii_lowercase[i] if i < 26 else _letter(i // 26 - 1) + ascii_lowercase[i % 26]


def compact_letters(order: list[str], different: set[frozenset[str]]) -> dict[str, str]:
    """A compact letter display: ``order`` is the objectives best first, ``different`` the pairs that
    differ significantly. Two objectives share a letter exactly when they do not differ: each letter is
    one maximal group of objectives no two of which differ, lettered by its best member (``a`` holds
    the best)."""
    adjacent = {o: {p for p in order if p != o and frozenset((o, p)) not in different} for o in order}
    cliques = _maximal_cliques(order, adjacent)
    cliques.sort(key=lambda c: sorted(order.index(o) for o in c))
    letters = {o: "" for o in order}
    for i, c in enumerate(cliques):
        for o in c:
            letters[o] += _letter(i)
    return letters


def q_alpha(k: int, alpha: float) -> float:
    """The Nemenyi test's critical value for ``k`` objectives (Demsar's table where it has one)."""
    table = Q_ALPHA.get(round(alpha, 6))
    if table is not None and 2 <= k <= 10:
        return table[k - 2]
    from scipy.stats import studentized_range

    return float(studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def nemenyi_cd(k: int, n: int, alpha: float) -> float:
    """The critical difference of mean ranks: ``q_alpha sqrt(k (k + 1) / (6 N))``."""
    return q_alpha(k, alpha) * math.sqrt(k * (k + 1) / (6 * n))


@dataclass
class Friedman:
    """The Friedman test over a complete block of objectives and tasks, and the Nemenyi post-hoc test."""

    objectives: list[str]
    tasks: list[str]
    mean_ranks: dict[str, float]  # over ``tasks`` only (the complete blocks)
    chi2: float
    p_chi2: float
    ff: float | None  # Iman-Davenport; None when chi2_F = N (k - 1): all tasks agree perfectly
    p_ff: float  # F_F's p, the one that decides (chi2_F's p when F_F is undefined)
    cd: float
    alpha: float
    differ: list[tuple[str, str]]  # pairs whose mean ranks differ by at least CD (better first)

    @property
    def k(self) -> int:
        return len(self.objectives)

    @property
    def n(self) -> int:
        return len(self.tasks)

    @property
    def significant(self) -> bool:
        return self.p_ff < self.alpha

    def to_dict(self) -> dict:
        return {
            "test": "Friedman (chi2_F) with Iman-Davenport's F_F; Nemenyi post-hoc (Demsar 2006)",
            "objectives": self.objectives,
            "tasks": self.tasks,
            "k": self.k,
            "n_tasks": self.n,
            "mean_ranks": self.mean_ranks,
            "chi2_f": self.chi2,
            "p_chi2": self.p_chi2,
            "f_f": self.ff,
            "p_f": self.p_ff,
            "df_f": [self.k - 1, (self.k - 1) * (self.n - 1)],
            "alpha": self.alpha,
            "q_alpha": q_alpha(self.k, self.alpha),
            "cd": self.cd,
            "significant": self.significant,
            "nemenyi_differ": [list(p) for p in self.differ],
        }


def friedman_stats(mean_ranks: Iterable[float], n: int) -> tuple[float, float | None]:
    """(chi2_F, F_F) from the mean ranks of k objectives over N tasks (Demsar 2006, section 3.2.2)."""
    r = np.asarray(list(mean_ranks), dtype=float)
    k = len(r)
    chi2 = 12 * n / (k * (k + 1)) * (float(np.sum(r**2)) - k * (k + 1) ** 2 / 4)
    denom = n * (k - 1) - chi2
    ff = (n - 1) * chi2 / denom if denom > 1e-12 else None
    return chi2, ff


def complete_block(
    task_fracs: dict[str, dict[str, float]], objectives: list[str]
) -> tuple[list[str], list[str]]:
    """(objectives, tasks) for the Friedman test, which needs every objective on every task: either the
    objectives that have every task, over all tasks, or every objective, over the tasks they all have;
    whichever keeps more (objective, task) cells (on a tie, more tasks)."""
    tasks = list(task_fracs)
    full = [o for o in objectives if all(o in task_fracs[t] for t in tasks)]
    shared = [t for t in tasks if all(o in task_fracs[t] for o in objectives)]
    a, b = (full, tasks), (list(objectives), shared)
    return max((a, b), key=lambda x: (len(x[0]) * len(x[1]) if len(x[0]) >= 2 else 0, len(x[1])))


def friedman(task_fracs: dict[str, dict[str, float]], objectives: list[str], alpha: float) -> Friedman | None:
    """The Friedman test on the fractional ranks (``task -> objective -> rank``) over the complete block
    of :func:`complete_block`, re-ranked among its objectives; None below 2 objectives or 2 tasks."""
    from scipy import stats

    objectives, tasks = complete_block(task_fracs, objectives)
    k, n = len(objectives), len(tasks)
    if k < 2 or n < 2:
        return None
    ranks = []
    for t in tasks:
        # re-rank among ``objectives`` (lower fractional rank is better)
        _, fr = rank_of_means({o: task_fracs[t][o] for o in objectives}, hib=False)
        ranks.append([fr[o] for o in objectives])
    mean = np.mean(ranks, axis=0)
    chi2, ff = friedman_stats(mean, n)
    p_chi2 = float(stats.chi2.sf(chi2, k - 1))
    # F_F is undefined when every task ranks alike (chi2_F = N (k - 1)): chi2_F's p decides then
    p_ff = p_chi2 if ff is None else float(stats.f.sf(ff, k - 1, (k - 1) * (n - 1)))
    cd = nemenyi_cd(k, n, alpha)
    mr = {o: float(m) for o, m in zip(objectives, mean)}
    order = sorted(objectives, key=lambda o: (mr[o], objectives.index(o)))
    differ = [(a, b) for i, a in enumerate(order) for b in order[i + 1 :] if mr[b] - mr[a] >= cd - 1e-12]
    return Friedman(objectives, tasks, mr, chi2, p_chi2, ff, p_ff, cd, alpha, differ)


def cd_cliques(mean_ranks: dict[str, float], cd: float) -> list[list[str]]:
    """The bars of a critical-difference diagram: maximal runs of objectives (by mean rank) whose mean
    ranks span less than CD, runs of one left out."""
    order = sorted(mean_ranks, key=lambda o: mean_ranks[o])
    runs = []
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and mean_ranks[order[j + 1]] - mean_ranks[order[i]] < cd:
            j += 1
        if j > i and not any(i >= a and j <= b for a, b in runs):
            runs.append((i, j))
    return [order[a : b + 1] for a, b in runs]
