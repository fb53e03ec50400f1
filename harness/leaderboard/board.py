"""Building the leaderboard from collected runs: one board per track, under one budget.

Runs with different ``harness.budget_id`` are never ranked side by side (:class:`MixedBudgetsError`
unless ``budget_id=`` selects one); tracks (``default``, ``tuned``) are never mixed either. What a board
knows of a task (family, main metric, direction, whether it is a diagnostic, its breakdown for plots)
is what the runs recorded (:mod:`.runs`), by majority over the runs that have the task; each task's
board (:class:`TaskBoard`) is built in :mod:`.task_board`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .errors import LeaderboardError, MixedBudgetsError, NoRunsError
from .ranking import Friedman, friedman
from .runs import Collected, RunRecord, by_state, collect
from .stats import (
    CI_METHOD,
    RANK_RULES,
    PairedTest,
    Summary,
    board_order,
    hull,
    mean_rank_and_borda,
    metric_bounds,
    paired_ttest,
    summarize,
)
from .task_board import TaskBoard, _task_board
from .verdict import overall_verdict

LONG_FIELDS = ["track", "kind", "objective", "task", "metric", "seed", "value", "run_id"]
#: task families of the text section (objectives against STS tasks, SimCSE's protocol)
TEXT_FAMILIES = ("sts",)


@dataclass
class Leaderboard:
    experiment: str
    track: str
    budget_id: str
    baseline: str
    objectives: list[str]  # ordered: mean rank, Borda (desc), name
    tasks: list[str]
    seeds: list[int]
    task_boards: dict[str, TaskBoard]
    mean_rank: dict[str, float | None]
    borda: dict[str, int]
    n_tasks: dict[str, int]
    cost: dict[str, dict[str, Summary]]  # objective -> cost metric -> summary
    loss_curves: dict[str, dict[str, list]]  # objective -> {"step", "mean", "min", "max"}
    runs: list[RunRecord]
    failed: list[RunRecord]
    provenance: dict[str, Any]
    notes: list[str]
    alpha: float = 0.05
    n_boot: int = 1000
    rank_rule: str = "either"
    text: "TextSection | None" = None
    friedman: Friedman | None = None  # across the ranked tasks every objective has
    verdict: str = ""

    def seeds_of(self, objective: str) -> int:
        return len({r.seed for r in self.runs if r.objective == objective})

    def long_rows(self) -> list[dict[str, Any]]:
        """Long format: one row per (objective, task, metric, seed) value, then the summary rows."""
        rows: list[dict[str, Any]] = []

        def add(kind, objective, task, metric, seed, value, run_id=""):
            rows.append(
                {
                    "track": self.track,
                    "kind": kind,
                    "objective": objective,
                    "task": task,
                    "metric": metric,
                    "seed": "" if seed is None else seed,
                    "value": value,
                    "run_id": run_id,
                }
            )

        for r in sorted(self.runs, key=lambda r: (self.objectives.index(r.objective), r.seed)):
            for task in self.tasks:
                if task not in r.scores:
                    continue
                add("value", r.objective, task, "main_score", r.seed, r.scores[task], r.run_id)
                for m, v in r.metrics[task].items():
                    add("value", r.objective, task, m, r.seed, v, r.run_id)
            for m, v in r.cost.items():
                add("value", r.objective, "cost", m, r.seed, v, r.run_id)
        for task, tb in self.task_boards.items():
            for o in self.objectives:
                if o not in tb.scores:
                    continue
                s = tb.scores[o]
                for kind, v in (
                    ("mean", s.mean),
                    ("ci95", s.ci),
                    ("ci_low", s.low),
                    ("ci_high", s.high),
                    ("n", s.n),
                    ("rank", tb.ranks[o]),
                ):
                    add(kind, o, task, "main_score", None, v)
                t = tb.tests.get(o)
                if t is not None:
                    for kind, v in (
                        ("delta_vs_baseline", t.delta),
                        ("p_ttest", t.p_ttest),
                        ("p_bootstrap", t.p_bootstrap),
                    ):
                        add(kind, o, task, "main_score", None, v)
                for m, d in tb.metrics.items():
                    if o in d:
                        for kind, v in (
                            ("mean", d[o].mean),
                            ("ci95", d[o].ci),
                            ("ci_low", d[o].low),
                            ("ci_high", d[o].high),
                        ):
                            add(kind, o, task, m, None, v)
                        mt = tb.metric_tests.get(m, {}).get(o)
                        if mt is not None:
                            add("p_ttest", o, task, m, None, mt.p_ttest)
        for o in self.objectives:
            add("mean_rank", o, "", "", None, self.mean_rank[o])
            add("borda", o, "", "", None, self.borda[o])
            for m, s in self.cost.get(o, {}).items():
                for kind, v in (("mean", s.mean), ("ci95", s.ci), ("ci_low", s.low), ("ci_high", s.high)):
                    add(kind, o, "cost", m, None, v)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "provenance": self.provenance,
            "track": self.track,
            "budget_id": self.budget_id,
            "baseline": self.baseline,
            "objectives": self.objectives,
            "tasks": self.tasks,
            "seeds": self.seeds,
            "statistics": {
                "alpha": self.alpha,
                "n_boot": self.n_boot,
                "rank_rule": self.rank_rule,
                "ci": CI_METHOD,
            },
            "summary": {
                o: {
                    "mean_rank": self.mean_rank[o],
                    "borda": self.borda[o],
                    "n_tasks": self.n_tasks[o],
                    "seeds": self.seeds_of(o),
                    "scores": {
                        t: tb.scores[o].to_dict() for t, tb in self.task_boards.items() if o in tb.scores
                    },
                    "ranks": {t: tb.ranks[o] for t, tb in self.task_boards.items() if o in tb.ranks},
                    "groups": {t: tb.groups[o] for t, tb in self.task_boards.items() if o in tb.groups},
                    "cost": {m: s.to_dict() for m, s in self.cost.get(o, {}).items()},
                }
                for o in self.objectives
            },
            "task_boards": {t: tb.to_dict() for t, tb in self.task_boards.items()},
            "friedman": self.friedman.to_dict() if self.friedman is not None else None,
            "verdict": self.verdict,
            "verdicts": {t: tb.verdict for t, tb in self.task_boards.items()},
            "text": self.text.to_dict() if self.text is not None else None,
            "loss_curves": self.loss_curves,
            "runs": [
                {
                    "run_id": r.run_id,
                    "objective": r.objective,
                    "seed": r.seed,
                    "status": r.status,
                    "identity": r.identity,
                    "results_artifact": r.results_artifact,
                }
                for r in self.runs
            ],
            "failed": [
                {
                    "run_id": r.run_id,
                    "objective": r.objective,
                    "seed": r.seed,
                    "status": r.status,
                    "state": r.state,
                    "reason": r.failure_reason,
                }
                for r in self.failed
            ],
            "notes": self.notes,
            "rows": self.long_rows(),
        }


@dataclass
class TextSection:
    """Objectives against the STS tasks: per-seed average Spearman over the STS tasks an objective
    has (SimCSE's "Avg."), summarised over seeds with the same statistics as a task (95% Student-t
    CI cut at the range of the tasks' main metrics, paired t-test against the baseline over seeds),
    and the mean rank over the STS tasks."""

    tasks: list[str]
    average: dict[str, Summary]
    tests: dict[str, PairedTest]
    mean_rank: dict[str, float | None]

    def to_dict(self) -> dict:
        return {
            "tasks": self.tasks,
            "average": {o: s.to_dict() for o, s in self.average.items()},
            "vs_baseline": {o: t.to_dict() for o, t in self.tests.items()},
            "mean_rank": self.mean_rank,
        }


def _text_section(
    boards_t: dict[str, TaskBoard], runs: list, objectives: list[str], baseline: str
) -> TextSection | None:
    tasks = [t for t, tb in boards_t.items() if tb.family in TEXT_FAMILIES and not tb.diagnostic]
    if not tasks:
        return None
    per_seed: dict[str, dict[int, float]] = {}
    for o in objectives:
        vals: dict[int, float] = {}
        for r in runs:
            if r.objective == o and all(t in r.scores for t in tasks):
                vals[r.seed] = float(np.mean([r.scores[t] for t in tasks]))
        per_seed[o] = vals
    bounds = hull(metric_bounds(boards_t[t].main_metric) for t in tasks)
    average = {o: s for o in objectives if (s := summarize(per_seed[o], bounds=bounds))}
    tests = {}
    for o in average:
        if o != baseline and baseline in average:
            delta, p, n = paired_ttest(per_seed[o], per_seed[baseline])
            tests[o] = PairedTest(o, baseline, delta=delta, p_ttest=p, n_seeds=n)
    mean_rank = {}
    for o in objectives:
        rs = [boards_t[t].fractional_ranks[o] for t in tasks if o in boards_t[t].fractional_ranks]
        mean_rank[o] = float(np.mean(rs)) if rs else None
    return TextSection(tasks, average, tests, mean_rank)


def _board_notes(
    collected: Collected, truns: list[RunRecord], failed: list[RunRecord], track: str, budget: str
) -> list[str]:
    """Notes about the runs of one board (its track and budget), counted over those runs only."""

    def mine(rs):
        return [r for r in rs if r.track == track and r.budget_id == budget]

    notes = []
    dup, sup = mine(collected.duplicates), mine(collected.superseded)
    if dup:
        notes.append(
            f"{len(dup)} older duplicate FINISHED run(s) of the same (track, budget, objective, seed) ignored"
        )
    if sup:
        notes.append(
            f"{len(sup)} run(s) that did not finish ({by_state(sup)}) are not listed: a FINISHED "
            f"run of the same (objective, seed) is ranked instead"
        )
    reused = [r for r in truns if r.run_id in collected.reused]
    if reused:
        notes.append(
            f"{len(reused)} run(s) reused by this comparison from earlier runs (resumed), not its children"
        )
    if collected.with_artifacts:
        notes += [
            f"run {r.run_id[:8]} ({r.label}) has no results JSON: no item scores, no paired bootstrap for it"
            for r in truns
            if r.results_artifact is None
        ]
    if failed:
        notes.append(f"{len(failed)} run(s) not ranked: {by_state(failed)} (see Not ranked)")
    running = [r.label for r in failed if r.state == "running"]
    if running:
        notes.append(
            f"{len(running)} run(s) still running ({', '.join(running)}): this board is provisional "
            f"until they finish"
        )
    interrupted = [r.label for r in failed if r.state == "interrupted"]
    if interrupted:
        notes.append(
            f"{len(interrupted)} run(s) interrupted ({', '.join(interrupted)}): their processes "
            f"were killed without ending the run (no heartbeat); rerunning the comparison trains "
            f"these pairs again"
        )
    return notes


def _loss_curves(runs: list[RunRecord], objectives: list[str]) -> dict[str, dict[str, list]]:
    out = {}
    for o in objectives:
        curves = [dict(r.loss) for r in runs if r.objective == o and r.loss]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if not steps:
            continue
        m = np.array([[c[s] for s in steps] for c in curves])
        out[o] = {
            "step": steps,
            "mean": m.mean(0).tolist(),
            "min": m.min(0).tolist(),
            "max": m.max(0).tolist(),
            "n": len(curves),
        }
    return out


def _select_budget(runs: list[RunRecord], budget_id: str | None, where: str) -> tuple[list[RunRecord], str]:
    counts = Counter(r.budget_id for r in runs)
    if budget_id:
        matches = [b for b in counts if b == budget_id] or [b for b in counts if b.startswith(budget_id)]
        if len(matches) != 1:
            listing = ", ".join(f"{b} ({n} runs)" for b, n in counts.most_common())
            problem = "matches several" if matches else "matches none of"
            raise NoRunsError(
                f"--budget-id {budget_id!r} {problem} the budget ids of the finished runs in "
                f"{where}: {listing}"
            )
        return [r for r in runs if r.budget_id == matches[0]], matches[0]
    if len(counts) > 1:
        lines = []
        for b, n in counts.most_common():
            objs = sorted({r.objective for r in runs if r.budget_id == b})
            lines.append(f"  {b}: {n} finished run(s) ({', '.join(objs)})")
        raise MixedBudgetsError(
            f"the finished runs in {where} were trained under {len(counts)} different budgets, and runs "
            f"under different budgets are never ranked side by side:\n"
            + "\n".join(lines)
            + f"\nselect one with --budget-id ID (for example --budget-id {counts.most_common(1)[0][0]})",
            dict(counts),
        )
    return runs, next(iter(counts))


#: how each track is named wherever a board is shown
TRACK_LABELS = {"default": "paper defaults", "tuned": "equal tuning"}


def track_caveat(track: str, tuning: str | None = None) -> str:
    """The one line every format shows under a board's title."""
    if track == "default":
        return (
            "paper defaults: each objective trains with its published hyperparameters, taken from "
            "the regime its paper used (data, batch size, views, pretrained or not), which may not "
            "transplant here; sources in docs/objective-defaults.md"
        )
    if track == "tuned":
        return "equal tuning: each objective's best configuration from harness tune" + (
            f": {tuning}" if tuning else " (the same number of trials for every objective)"
        )
    return f"track {track}"


def _tuned_from(runs: Iterable[RunRecord]) -> dict[str, dict]:
    """objective -> the study its tuned runs came from (``harness.tuned_from``)."""
    out = {}
    for r in runs:
        raw = r.tags.get("harness.tuned_from")
        if raw and r.objective not in out:
            try:
                out[r.objective] = json.loads(raw)
            except ValueError:
                continue
    return out


def _distinct(runs: Iterable[RunRecord], tag: str) -> list[str]:
    return sorted({r.tags[tag] for r in runs if r.tags.get(tag)})


def build(
    collected: Collected,
    *,
    budget_id: str | None = None,
    baseline: str | None = None,
    alpha: float = 0.05,
    n_boot: int = 1000,
    boot_seed: int = 0,
    rank_rule: str = "either",
) -> list[Leaderboard]:
    """One :class:`Leaderboard` per track (``default`` first), from one budget.

    Raises :class:`MixedBudgetsError` when the runs carry several budget ids and ``budget_id`` is
    None, :class:`NoRunsError` when nothing is left, :class:`LeaderboardError` for an unknown
    ``baseline`` or ``rank_rule``.
    """
    if rank_rule not in RANK_RULES:
        raise LeaderboardError(f"unknown rank rule {rank_rule!r}; one of {', '.join(RANK_RULES)}")
    where = (
        f"comparison {collected.parent_run_id}"
        if collected.parent_run_id
        else f"experiment {collected.experiment!r}"
    )
    if not collected.runs:
        raise NoRunsError(f"no FINISHED run to rank in {where}")
    runs, budget = _select_budget(collected.runs, budget_id, where)
    failed = [r for r in collected.failed if r.budget_id in (budget, "unknown")]
    declared = [
        o.strip() for o in collected.parent_tags.get("harness.objectives", "").split(",") if o.strip()
    ]
    tracks = sorted({r.track for r in runs}, key=lambda t: (t != "default", t))
    boards = []
    for track in tracks:
        truns = [r for r in runs if r.track == track]
        present = {r.objective for r in truns}
        objectives = [o for o in declared if o in present] + sorted(present - set(declared))
        if baseline is not None and baseline not in present:
            raise LeaderboardError(
                f"baseline {baseline!r} has no finished run on track {track!r} under "
                f"budget {budget}; objectives there: {', '.join(objectives)}"
            )
        base = baseline or ("clip" if "clip" in present else objectives[0])
        tasks: list[str] = []
        for r in truns:
            for t in r.scores:
                if t not in tasks:
                    tasks.append(t)
        boards_t = {}
        for t in tasks:
            tb = _task_board(t, truns, objectives, base, alpha, n_boot, boot_seed, rank_rule)
            if tb is not None:
                boards_t[t] = tb
        # diagnostic tasks (geometry, aggregates), as the runs recorded them, are shown but never ranked
        # mean rank over the fractional ranks of the means (ties averaged, Friedman's ranks); Borda counts
        # the objectives with a strictly worse mean, which the fractional ranks keep
        ranked = {t: tb.fractional_ranks for t, tb in boards_t.items() if not tb.diagnostic}
        mean_rank, borda, n_tasks = mean_rank_and_borda(ranked.values(), objectives)
        objectives = board_order(objectives, mean_rank, borda)
        fr = friedman(ranked, [o for o in objectives if n_tasks[o]], alpha)
        cost = {}
        for o in objectives:
            keys = sorted({k for r in truns if r.objective == o for k in r.cost})
            per_key = {
                k: {r.seed: r.cost[k] for r in truns if r.objective == o and k in r.cost} for k in keys
            }
            cost[o] = {k: s for k in keys if (s := summarize(per_key[k], bounds=metric_bounds(k)))}
        seeds = sorted({r.seed for r in truns})
        tfailed = [r for r in failed if r.track == track]
        notes = list(collected.notes) + _board_notes(collected, truns, tfailed, track, budget)
        for tag, label in (
            ("harness.dataset_fingerprint", "dataset fingerprints"),
            ("harness.git_sha", "git commits"),
            ("harness.version", "harness versions"),
        ):
            vals = _distinct(truns, tag)
            if len(vals) > 1:
                notes.append(f"the runs span {len(vals)} {label}: {', '.join(vals)}")
        n_ranked = sum(not tb.diagnostic for tb in boards_t.values())
        missing = [f"{o} ({n_tasks[o]}/{n_ranked} tasks)" for o in objectives if n_tasks[o] < n_ranked]
        if missing:
            notes.append(
                "not every objective has every task; mean ranks cover different tasks: " + ", ".join(missing)
            )
        pt = collected.parent_tags
        provenance = {
            "experiment": collected.experiment,
            "experiment_id": collected.experiment_id,
            "tracking_uri": collected.tracking_uri,
            "parent_run_id": collected.parent_run_id,
            "budget_id": budget,
            "budget_preset": pt.get("harness.budget_preset")
            or ", ".join(_distinct(truns, "harness.budget_preset")),
            "track": track,
            "track_label": TRACK_LABELS.get(track, track),
            "caveat": track_caveat(track, pt.get("harness.tuning")),
            "tuning": pt.get("harness.tuning"),
            "tuned_from": _tuned_from(truns),
            "seeds": seeds,
            "objectives": objectives,
            "tasks": tasks,
            "command": pt.get("harness.command"),
            "compare_key": pt.get("harness.compare_key"),
            "harness_version": ", ".join(_distinct(truns, "harness.version")),
            "git_sha": ", ".join(_distinct(truns, "harness.git_sha")),
            "dataset_fingerprint": ", ".join(_distinct(truns, "harness.dataset_fingerprint")),
            "model": ", ".join(_distinct(truns, "harness.model")),
            "n_runs": len(truns),
            "n_failed": len(tfailed),
            "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        boards.append(
            Leaderboard(
                experiment=collected.experiment,
                track=track,
                budget_id=budget,
                baseline=base,
                objectives=objectives,
                tasks=list(boards_t),
                seeds=seeds,
                task_boards=boards_t,
                mean_rank=mean_rank,
                borda=borda,
                n_tasks=n_tasks,
                cost=cost,
                loss_curves=_loss_curves(truns, objectives),
                runs=truns,
                failed=tfailed,
                provenance=provenance,
                notes=notes,
                alpha=alpha,
                n_boot=n_boot,
                rank_rule=rank_rule,
                text=_text_section(boards_t, truns, objectives, base),
                friedman=fr,
                verdict=overall_verdict(objectives, mean_rank, len(ranked), fr, alpha, n_tasks),
            )
        )
    return boards


def leaderboard(
    experiment: str = "harness",
    parent_run_id: str | None = None,
    track: str | None = None,
    tracking_uri: str | None = None,
    **build_kw,
) -> list[Leaderboard]:
    """:func:`collect` then :func:`build`."""
    return build(collect(experiment, parent_run_id, track, tracking_uri), **build_kw)
