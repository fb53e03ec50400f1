"""What every format shows, as strings: number formats, and the rows of each table (the summary, one
task, its metrics, the text section, the runs not ranked), the provenance and the method notes."""

from __future__ import annotations

import math

from harness.tracking import STALE_AFTER_S

from ..board import Leaderboard
from ..runs import duration
from ..stats import Summary


def fmt_num(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_summary(s: Summary | None, digits: int = 3) -> str:
    if s is None:
        return "n/a"
    if s.ci is None:
        return f"{s.mean:.{digits}f} ± n/a"
    if s.symmetric:
        return f"{s.mean:.{digits}f} ± {s.ci:.{digits}f}"
    return f"{s.mean:.{digits}f} [{s.low:.{digits}f}, {s.high:.{digits}f}]"  # cut at the metric's range


#: how a score cell reads, for captions
CELL = "mean ± 95% CI over seeds, or mean [low, high] where the interval is cut at the metric's range"


def err(s: Summary | None) -> tuple[float, float]:
    """(below, above) the mean: error bar lengths of the (possibly asymmetric) interval."""
    if s is None or s.ci is None:
        return 0.0, 0.0
    return s.mean - s.low, s.high - s.mean


COST_COLUMNS = [  # (key, header, scale, digits)
    ("wall_seconds", "wall s", 1.0, 1),
    ("samples_per_second", "samples/s", 1.0, 0),
    ("peak_memory_mb", "peak MB", 1.0, 0),
    ("flops_per_step", "GFLOPs/step", 1e-9, 2),
]


def _cost_cell(board: Leaderboard, o: str, key: str, scale: float, digits: int) -> str:
    s = board.cost.get(o, {}).get(key)
    return "n/a" if s is None else f"{s.mean * scale:.{digits}f}"


def summary_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """The main table: header and rows of strings (shared by the terminal, Markdown and HTML)."""
    header = (
        ["objective"]
        + [f"{t} (rank group)" for t in board.tasks]
        + ["mean rank", "Borda", "seeds"]
        + [h for _, h, _, _ in COST_COLUMNS]
    )
    rows = []
    for o in board.objectives:
        cells = [o + (" (baseline)" if o == board.baseline else "")]
        for t in board.tasks:
            tb = board.task_boards[t]
            cells.append(
                f"{fmt_summary(tb.scores[o])} ({tb.ranks[o]} {tb.groups[o]})" if o in tb.scores else "–"
            )
        cells += [fmt_num(board.mean_rank[o], 2), str(board.borda[o]), str(board.seeds_of(o))]
        cells += [_cost_cell(board, o, k, sc, d) for k, _, sc, d in COST_COLUMNS]
        rows.append(cells)
    return header, rows


def task_rows(board: Leaderboard, task: str) -> tuple[list[str], list[list[str]]]:
    tb = board.task_boards[task]
    header = [
        "objective",
        "mean, 95% CI",
        "rank",
        "group",
        f"Δ vs {board.baseline}",
        "p (paired t, seeds)",
        "p (paired bootstrap, items)",
        "bootstrap 95% CI of Δ",
        "seeds",
        "significantly better",
    ]
    rows = []
    for o in board.objectives:
        if o not in tb.scores:
            continue
        t = tb.tests.get(o)
        rows.append(
            [
                o,
                fmt_summary(tb.scores[o]),
                str(tb.ranks[o]),
                tb.groups[o],
                "(baseline)" if o == board.baseline else fmt_num(t.delta if t else None, 4),
                fmt_p(t.p_ttest) if t else "",
                fmt_p(t.p_bootstrap) if t else "",
                f"[{fmt_num(t.boot_low, 4)}, {fmt_num(t.boot_high, 4)}]"
                if t and t.boot_low is not None
                else "",
                str(tb.scores[o].n),
                ", ".join(tb.better[o]) or "none",
            ]
        )
    return header, rows


def metric_rows(board: Leaderboard, task: str) -> tuple[list[str], list[list[str]]]:
    """Every metric of a task: mean and CI per objective; ``*``: paired t-test p < alpha vs the baseline."""
    tb = board.task_boards[task]
    objs = [o for o in board.objectives if o in tb.scores]
    rows = []
    for m, d in tb.metrics.items():
        cells = [m]
        for o in objs:
            t = tb.metric_tests.get(m, {}).get(o)
            star = "*" if t is not None and t.p_ttest is not None and t.p_ttest < board.alpha else ""
            cells.append(fmt_summary(d.get(o), 4) + star)
        rows.append(cells)
    return ["metric"] + objs, rows


def failed_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Runs not ranked: status is the state shown (FAILED, KILLED, running, interrupted, SCHEDULED)."""
    return (
        ["objective", "seed", "status", "run", "reason"],
        [
            [
                r.objective,
                str(r.seed),
                r.state,
                r.run_id,
                (r.failure_reason or "").splitlines()[0][:300] if r.failure_reason else "",
            ]
            for r in board.failed
        ],
    )


def method_lines(board: Leaderboard) -> list[str]:
    rule = {
        "either": "the paired bootstrap over items or the paired t-test over seeds has p < alpha",
        "both": "every available test (paired bootstrap over items, paired t-test over seeds) has p < alpha",
        "bootstrap": "the paired bootstrap over items has p < alpha (the t-test where items are missing)",
        "ttest": "the paired t-test over seeds has p < alpha (the bootstrap where seeds are too few)",
    }
    return [
        (
            "Scores: mean over seeds and a 95% Student-t confidence interval (mean ± t(0.975, n-1) sd / "
            "sqrt(n)), cut at the metric's range (recall and accuracy [0, 1], STS Spearman x100 [-100, 100], "
            "ranks >= 1, cost >= 0; an unknown metric is unbounded): shown mean ± half-width, or mean "
            "[low, high] where an end was cut (± n/a: one seed)."
        ),
        "Rank per task: the rank of the mean score over seeds (1 = best; equal means share a rank).",
        f"Significance groups (compact letter display): objectives sharing a letter are not significantly "
        f"different; B is significantly better than A when the difference favours B and "
        f"{rule[board.rank_rule]} "
        f"(alpha = {board.alpha}, every pair of objectives tested). Letter a holds the best mean. Without "
        f"any test (one seed, no item scores) objectives share a letter.",
        "Paired t-test: scipy.stats.ttest_rel over the seeds both objectives have (two or more).",
        f"Paired bootstrap: the per-item differences of the item scores (matched by item index and "
        f"seed), averaged over the common seeds; items resampled with replacement {board.n_boot} times "
        f"(seeded numpy Generator); two-sided p = (1 + #|d* - d| >= |d|) / (B + 1).",
        "Mean rank: the ranks of the means with ties averaged (1.5, 1.5, 3), over the tasks an objective "
        "has, diagnostic tasks excluded (as each run recorded them: the geometry family, aggregates such "
        "as sts-avg). Borda count: per task, the number of objectives with a strictly worse mean, summed "
        "over tasks. Order: mean rank, then Borda count, then name.",
        "Across tasks (Demsar 2006): the Friedman test on those ranks over the tasks every objective has, "
        "chi2_F = 12N / (k(k+1)) (sum R_j^2 - k(k+1)^2 / 4) and Iman-Davenport's F_F = (N-1) chi2_F / "
        "(N(k-1) - chi2_F) with (k-1, (k-1)(N-1)) degrees of freedom (its p decides); when it rejects at "
        "alpha, the Nemenyi post-hoc test: two objectives differ when their mean ranks differ by at least "
        "CD = q_alpha sqrt(k(k+1) / (6N)).",
        "Cost columns: means over seeds of cost/wall_seconds, cost/samples_per_second, cost/peak_memory_mb "
        "and cost/flops_per_step (GFLOPs, forward + backward, one step).",
        (
            "Not ranked: runs that did not finish, by state: FAILED and KILLED (MLflow's status), running "
            "(RUNNING with a fresh harness.heartbeat), interrupted (RUNNING without a heartbeat for over "
            f"{duration(STALE_AFTER_S)}: the process was killed before it could end the run)."
        ),
    ]


def verdict_lines(board: Leaderboard) -> list[tuple[str, str]]:
    """(label, verdict): the board's, then one per ranked task, then the diagnostic tasks'."""
    tasks = sorted(board.task_boards.values(), key=lambda tb: tb.diagnostic)
    return [("overall", board.verdict)] + [
        (tb.task + (" (diagnostic)" if tb.diagnostic else ""), tb.verdict) for tb in tasks
    ]


def friedman_items(board: Leaderboard) -> list[tuple[str, str]]:
    """The Friedman and Nemenyi statistics as (label, value), empty when there is no test."""
    fr = board.friedman
    if fr is None:
        return []
    return [
        ("objectives", f"k = {fr.k}: {', '.join(fr.objectives)}"),
        ("tasks", f"N = {fr.n}: {', '.join(fr.tasks)}"),
        ("Friedman chi2_F", f"{fr.chi2:.3f}, p = {fmt_p(fr.p_chi2)} (chi2, {fr.k - 1} df)"),
        (
            "Iman-Davenport F_F",
            f"{fmt_num(fr.ff)}, p = {fmt_p(fr.p_ff)} (F, {fr.k - 1} and {(fr.k - 1) * (fr.n - 1)} df)",
        ),
        (
            f"Nemenyi CD (alpha {fr.alpha})",
            f"{fr.cd:.3f}" + ("" if fr.significant else " (not applied: the Friedman test does not reject)"),
        ),
        (
            "pairs that differ",
            (", ".join(f"{a} vs {b}" for a, b in fr.differ) or "none") if fr.significant else "n/a",
        ),
    ]


def text_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """The text section's table: STS tasks (mean ± CI, rank), the average, its test against the baseline."""
    sec = board.text
    header = (
        ["objective"]
        + [f"{t} (rank)" for t in sec.tasks]
        + ["STS avg, 95% CI", f"Δ avg vs {board.baseline}", "p (paired t, seeds)", "mean rank (STS)"]
    )
    rows = []
    order = sorted(
        board.objectives, key=lambda o: (sec.mean_rank.get(o) is None, sec.mean_rank.get(o) or 0, o)
    )
    for o in order:
        if sec.mean_rank.get(o) is None:
            continue
        cells = [o + (" (baseline)" if o == board.baseline else "")]
        for t in sec.tasks:
            tb = board.task_boards[t]
            cells.append(f"{fmt_summary(tb.scores[o])} ({tb.ranks[o]})" if o in tb.scores else "–")
        t = sec.tests.get(o)
        cells += [
            fmt_summary(sec.average.get(o)),
            "(baseline)" if o == board.baseline else fmt_num(t.delta if t else None, 3),
            fmt_p(t.p_ttest) if t else "",
            fmt_num(sec.mean_rank[o], 2),
        ]
        rows.append(cells)
    return header, rows


def provenance_items(board: Leaderboard) -> list[tuple[str, str]]:
    p = board.provenance
    items = [
        ("experiment", f"{p['experiment']} (id {p['experiment_id']})"),
        ("tracking URI", p["tracking_uri"]),
        ("comparison (parent run)", p["parent_run_id"] or "none: every run of the experiment"),
        ("budget id", p["budget_id"] + (f" (preset {p['budget_preset']})" if p.get("budget_preset") else "")),
        ("track", f"{p.get('track_label', p['track'])} ({p['track']})"),
        ("seeds", ", ".join(map(str, p["seeds"]))),
        ("baseline", board.baseline),
        ("objectives", ", ".join(p["objectives"])),
        ("tasks", ", ".join(p["tasks"])),
        ("runs", f"{p['n_runs']} finished, {p['n_failed']} not finished"),
    ]
    for key, label in (
        ("command", "command"),
        ("model", "model"),
        ("dataset_fingerprint", "dataset fingerprint"),
        ("harness_version", "harness version"),
        ("git_sha", "git commit"),
        ("compare_key", "compare key"),
    ):
        if p.get(key):
            items.append((label, str(p[key])))
    for obj, st in (p.get("tuned_from") or {}).items():
        items.append((f"tuned {obj}", tuned_line(st)))
    items.append(("generated", p["generated"]))
    return items


def tuned_line(st: dict) -> str:
    """An objective's tuned parameters and the study they came from, in one line."""
    params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(st.get("params", {}).items()))
    best = fmt_num(st.get("best_value"), 4)
    origin = "the paper defaults" if st.get("best_is_paper_defaults") else f"trial {st.get('best_trial')}"
    return (
        f"{params or 'no parameters'} (best of {st.get('trials')} trials on {st.get('task')} "
        f"validation: {best}, {origin})"
    )


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def board_title(board: Leaderboard) -> str:
    return f"Leaderboard: {board.experiment}, {board.provenance.get('track_label', board.track)}"
