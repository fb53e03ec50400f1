"""One task's board: the objectives' main scores and metrics over seeds, the paired tests against
the baseline, and the ranks from every pair of objectives (:class:`TaskBoard`, built by
:func:`_task_board`). What the board knows of the task (family, main metric, direction, whether it
is a diagnostic, its breakdown for plots) is what the runs recorded, by majority over the runs that
have the task.

Split from :mod:`.board`, which builds the whole leaderboard from these.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .ranking import compact_letters, rank_of_means
from .runs import RunRecord
from .stats import (
    PairedTest,
    Summary,
    bootstrap_counts,
    item_diffs,
    metric_bounds,
    paired_bootstrap,
    paired_ttest,
    significance_ranks,
    summarize,
    task_seed,
)
from .verdict import task_verdict


@dataclass
class TaskBoard:
    task: str
    main_metric: str
    higher_is_better: bool
    scores: dict[str, Summary]  # objective -> main score over seeds
    ranks: dict[str, int]  # rank of the mean score (ties share the first rank)
    tests: dict[str, PairedTest]  # objective -> against the baseline (main score)
    metrics: dict[str, dict[str, Summary]]  # metric -> objective -> summary
    metric_tests: dict[str, dict[str, PairedTest]]  # metric -> objective -> t-test against the baseline
    better: dict[str, list[str]]  # objective -> the objectives significantly better than it
    n_items: int = 0
    family: str = ""
    diagnostic: bool = False  # shown, never part of the mean rank or the Borda count
    breakdown: dict[str, Any] = field(default_factory=dict)  # {"levels": [...], "metrics": {metric: values}}
    fractional_ranks: dict[str, float] = field(default_factory=dict)  # ties averaged (Friedman's ranks)
    groups: dict[str, str] = field(
        default_factory=dict
    )  # compact letter display: shared letter = no difference
    verdict: str = ""

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "main_metric": self.main_metric,
            "higher_is_better": self.higher_is_better,
            "family": self.family,
            "diagnostic": self.diagnostic,
            "n_items": self.n_items,
            "scores": {o: s.to_dict() for o, s in self.scores.items()},
            "ranks": self.ranks,
            "rank_method": "rank of the mean score over seeds; ties share a rank",
            "fractional_ranks": self.fractional_ranks,
            "groups": self.groups,
            "verdict": self.verdict,
            "significantly_better": self.better,
            "vs_baseline": {o: t.to_dict() for o, t in self.tests.items()},
            "metrics": {m: {o: s.to_dict() for o, s in d.items()} for m, d in self.metrics.items()},
            "metric_vs_baseline": {
                m: {o: t.to_dict() for o, t in d.items()} for m, d in self.metric_tests.items()
            },
        }


def _vote(values: Iterable[Any]) -> Any:
    """The most common of ``values`` (the first seen on a tie); dicts are compared by content."""
    values = list(values)
    keys = [json.dumps(v, sort_keys=True) for v in values]
    return values[keys.index(Counter(keys).most_common(1)[0][0])]


def _task_board(
    task: str,
    runs: list[RunRecord],
    objectives: list[str],
    baseline: str,
    alpha: float,
    n_boot: int,
    boot_seed: int,
    rule: str,
) -> TaskBoard | None:
    have = [r for r in runs if task in r.scores]
    objs = [o for o in objectives if any(r.objective == o for r in have)]
    if not objs:
        return None
    hib_votes = Counter(r.higher_is_better[task] for r in have)
    hib = hib_votes.most_common(1)[0][0]
    main_metric = Counter(r.main_metric[task] for r in have).most_common(1)[0][0]
    family = _vote(r.family.get(task, "") for r in have)
    diagnostic = _vote(r.diagnostic.get(task, False) for r in have)
    breakdown = _vote(r.breakdown.get(task) or {} for r in have)
    main = {o: {r.seed: r.scores[task] for r in have if r.objective == o} for o in objs}
    items = {
        o: {
            r.seed: np.asarray(r.item_scores[task], dtype=float)
            for r in have
            if r.objective == o and task in r.item_scores
        }
        for o in objs
    }
    scores = {o: summarize(main[o], bounds=metric_bounds(main_metric)) for o in objs}
    objs = [o for o in objs if scores[o] is not None]

    counts: dict[int, np.ndarray] = {}

    def boot(a: str, b: str):
        d = item_diffs(items[a], items[b])
        if d is None:
            return None
        n = len(d)
        if n not in counts:
            counts[n] = bootstrap_counts(n, n_boot, task_seed(boot_seed, task))
        return paired_bootstrap(d, counts[n]), n

    pair: dict[tuple[str, str], dict[str, tuple]] = {}  # (b, a) -> tests of b - a
    n_items = 0
    for i, a in enumerate(objs):
        for b in objs[i + 1 :]:
            d_t, p_t, _ = paired_ttest(main[b], main[a])
            bs = boot(b, a)
            tests = {"ttest": (d_t, p_t)}
            if bs is not None:
                (d_b, p_b, _, _), n_items = bs
                tests["bootstrap"] = (d_b, p_b)
            pair[(b, a)] = tests
            pair[(a, b)] = {k: (None if d is None else -d, p) for k, (d, p) in tests.items()}
    better, _ = significance_ranks(objs, pair, hib, alpha, rule)
    ranks, fractional = rank_of_means({o: scores[o].mean for o in objs}, hib)
    order = sorted(objs, key=lambda o: (ranks[o], objs.index(o)))
    different = {frozenset((a, b)) for a in objs for b in better[a]}
    groups = compact_letters(order, different)
    verdict = task_verdict(task, order, scores, better, pair, hib, alpha, rule)

    tests: dict[str, PairedTest] = {}
    if baseline in objs:
        for o in objs:
            if o == baseline:
                continue
            d_t, p_t, n_t = paired_ttest(main[o], main[baseline])
            t = PairedTest(o, baseline, delta=d_t, p_ttest=p_t, n_seeds=n_t)
            bs = boot(o, baseline)
            if bs is not None:
                (t.delta_items, t.p_bootstrap, t.boot_low, t.boot_high), t.n_items = bs
            tests[o] = t

    metric_names: list[str] = []
    for r in have:
        for m in r.metrics[task]:
            if m not in metric_names:
                metric_names.append(m)
    metrics: dict[str, dict[str, Summary]] = {}
    metric_tests: dict[str, dict[str, PairedTest]] = {}
    for m in metric_names:
        vals = {
            o: {r.seed: r.metrics[task][m] for r in have if r.objective == o and m in r.metrics[task]}
            for o in objs
        }
        metrics[m] = {o: s for o in objs if (s := summarize(vals[o], bounds=metric_bounds(m))) is not None}
        if baseline in objs:
            mt = {}
            for o in objs:
                if o != baseline:
                    d_t, p_t, n_t = paired_ttest(vals[o], vals[baseline])
                    mt[o] = PairedTest(o, baseline, delta=d_t, p_ttest=p_t, n_seeds=n_t)
            metric_tests[m] = mt
    return TaskBoard(
        task=task,
        main_metric=main_metric,
        higher_is_better=hib,
        scores={o: scores[o] for o in objs},
        ranks=ranks,
        tests=tests,
        metrics=metrics,
        metric_tests=metric_tests,
        better=better,
        n_items=n_items,
        family=family,
        diagnostic=diagnostic,
        breakdown=breakdown,
        fractional_ranks=fractional,
        groups=groups,
        verdict=verdict,
    )
