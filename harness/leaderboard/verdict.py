"""One verdict line per task and one for the whole board, written from the statistics: who leads, what
cannot be told apart, at which alpha, over how many seeds or tasks, under which test."""

from __future__ import annotations

from .ranking import Friedman
from .stats import Summary

TEST_NAMES = {"bootstrap": "paired bootstrap over items", "ttest": "paired t-test over seeds"}
RULE_TEXT = {
    "either": "paired bootstrap over items or paired t-test over seeds",
    "both": "paired bootstrap over items and paired t-test over seeds",
    "bootstrap": "paired bootstrap over items",
    "ttest": "paired t-test over seeds",
}


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _names(xs: list[str]) -> str:
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


def deciding_test(
    b_over_a: dict[str, tuple[float | None, float | None]], hib: bool, alpha: float, rule: str
) -> tuple[str, float] | None:
    """(test name, p) of the test that made b significantly better than a under ``rule``: the smallest
    significant p (``either``), the largest p (``both``), else the rule's own test (or its fallback)."""
    avail = {n: (d, p) for n, (d, p) in b_over_a.items() if d is not None and p is not None}
    if not avail:
        return None
    sig = {n: p for n, (d, p) in avail.items() if p < alpha and (d > 0 if hib else d < 0)}
    if rule == "either":
        return min(sig.items(), key=lambda x: x[1]) if sig else None
    if rule == "both":
        return max(((n, p) for n, (_, p) in avail.items()), key=lambda x: x[1])
    name = rule if rule in avail else next(iter(avail))
    return name, avail[name][1]


def _seeds(scores: dict[str, Summary], objs: list[str]) -> str:
    ns = sorted({scores[o].n for o in objs})
    n = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return f"{n} seed{'' if n == '1' else 's'}"


def task_verdict(
    task: str,
    order: list[str],
    scores: dict[str, Summary],
    better: dict[str, list[str]],
    pair: dict[tuple[str, str], dict[str, tuple]],
    hib: bool,
    alpha: float,
    rule: str,
) -> str:
    """``order``: the objectives by mean, best first; ``better[a]``: those significantly better than a;
    ``pair[(b, a)]``: the tests of b - a. Leaders: the best mean and every objective not significantly
    worse than it."""
    if len(order) == 1:
        return f"only {order[0]} has {task} ({_seeds(scores, order)}); nothing to compare"
    top = order[0]
    leaders = [top] + [o for o in order[1:] if top not in better[o]]
    how = f"at alpha {alpha} over {_seeds(scores, order)} ({RULE_TEXT[rule]})"
    if len(leaders) == len(order):
        return f"{_names(order)} cannot be told apart on {task} {how}"
    if len(leaders) > 1:
        text = f"{_names(leaders)} lead {task}; indistinguishable {how}"
    else:
        text = f"{top} leads {task}, significantly ahead of every other objective {how}"
    rest = [o for o in order if o not in leaders]
    nxt = rest[0]
    gap = abs(scores[top].mean - scores[nxt].mean)
    dec = deciding_test(pair.get((top, nxt), {}), hib, alpha, rule)
    text += f"; {nxt} is {gap:.3g} behind {top}"
    if dec is not None:
        text += f", {_p(dec[1])} ({TEST_NAMES[dec[0]]})"
    if len(rest) > 1:
        text += f"; {len(rest) - 1} more trail{'s' if len(rest) == 2 else ''} further"
    return text


def overall_verdict(
    order: list[str],
    mean_rank: dict[str, float | None],
    n_ranked: int,
    fr: Friedman | None,
    alpha: float,
    n_tasks: dict[str, int] | None = None,
) -> str:
    """``order``: the board's order (mean rank, Borda, name); ``n_ranked``: tasks ranked (no
    diagnostics); ``n_tasks``: tasks each objective is ranked on. An objective ranked on fewer tasks
    than the others (an image-only objective) does not lead: its mean rank covers other tasks."""
    ranked = [o for o in order if mean_rank.get(o) is not None]
    if not ranked:
        return "no ranked task"
    full = [o for o in ranked if (n_tasks or {}).get(o, n_ranked) >= n_ranked] or ranked
    partial = [o for o in ranked if o not in full]
    text = _lead_text(full, mean_rank, n_ranked)
    if partial:
        text += "; " + ", ".join(
            f"{o} is ranked on {n_tasks[o]} of {n_ranked} tasks only (mean rank {mean_rank[o]:.2f} there)"
            for o in partial
        )
    return text + _friedman_text(ranked, n_ranked, fr, alpha)


def _lead_text(ranked: list[str], mean_rank: dict[str, float | None], n_ranked: int) -> str:
    # the first three (two from 4 objectives, one below), and any tied with the last of them
    n_lead = 3 if len(ranked) >= 6 else 2 if len(ranked) >= 4 else 1
    lead = [o for o in ranked if mean_rank[o] <= mean_rank[ranked[n_lead - 1]]]
    ranks = ", ".join(f"{mean_rank[o]:.2f}" for o in lead)
    text = (
        f"{_names(lead)} lead{'s' if len(lead) == 1 else ''} on mean rank ({ranks}) "
        f"over {n_ranked} task{'' if n_ranked == 1 else 's'}"
    )
    return text


def _friedman_text(ranked: list[str], n_ranked: int, fr: Friedman | None, alpha: float) -> str:
    if fr is None:
        return "; no Friedman test (it needs 2 objectives that share 2 ranked tasks)"
    left = [o for o in ranked if o not in fr.objectives]
    over = "" if fr.n == n_ranked else f" over the {fr.n} tasks every objective has"
    if left:
        over = f" without {_names(left)} (not on every task)"
    ff = (
        "undefined (every task ranks the objectives alike)"
        if fr.ff is None
        else f"= {fr.ff:.2f} ({_p(fr.p_ff)})"
    )
    text = (
        f"; Friedman{over}: chi2_F = {fr.chi2:.2f} ({_p(fr.p_chi2)}), Iman-Davenport F_F {ff}, "
        f"k = {fr.k}, N = {fr.n}"
    )
    if not fr.significant:
        return (
            text + f"; at alpha {alpha} the objectives cannot be told apart across tasks (no post-hoc test)"
        )
    text += f"; the Nemenyi CD at alpha {alpha} is {fr.cd:.2f}, so "
    if not fr.differ:
        return text + "no pair of objectives differs"
    pairs = [f"{a} and {b}" if len(fr.differ) == 1 else f"{a} vs {b}" for a, b in fr.differ]
    shown = pairs[:6] + ([f"{len(pairs) - 6} more pairs"] if len(pairs) > 6 else [])
    return text + "only " + ", ".join(shown) + (" differ" if len(fr.differ) == 1 else " differ")
