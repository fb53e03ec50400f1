"""Figures of the HTML page, as base64 PNG (matplotlib, no pyplot state): main scores, training loss,
the breakdowns the tasks recorded (e.g. compositionality by split and negative type), cost against score."""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from typing import Any

import numpy as np

from ..board import Leaderboard
from ..ranking import cd_cliques
from ..stats import Summary, hull, metric_bounds
from .cells import err


def _colors(objectives: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(objectives) <= 10 else "tab20"]
    return {o: cmap(i % cmap.N) for i, o in enumerate(objectives)}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n: int, width: float = 4.2, height: float = 3.2, max_cols: int = 3):
    from matplotlib.figure import Figure

    cols = max(1, min(n, max_cols))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def plot_scores(board: Leaderboard) -> str | None:
    if not board.tasks:
        return None
    colors = _colors(board.objectives)
    fig, axes = _grid(len(board.tasks))
    for ax, t in zip(axes, board.tasks):
        tb = board.task_boards[t]
        objs = [o for o in board.objectives if o in tb.scores]
        for i, o in enumerate(objs):
            s = tb.scores[o]
            below, above = err(s)
            ax.errorbar([i], [s.mean], yerr=[[below], [above]], fmt="o", color=colors[o], capsize=4)
            ax.scatter([i] * s.n, list(s.values.values()), s=10, color=colors[o], alpha=0.4)
        ax.set_xticks(
            range(len(objs)),
            [f"{o}\n#{tb.ranks[o]} {tb.groups[o]}" for o in objs],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        ax.set_title(
            f"{t}\n{tb.main_metric} ({'higher' if tb.higher_is_better else 'lower'} is better)", fontsize=9
        )
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "main score per task: mean and 95% CI over seeds, within the metric's range (dots: seeds)",
        fontsize=10,
    )
    return _png(fig)


def plot_cd(board: Leaderboard) -> str | None:
    """The critical-difference diagram (Demsar 2006): objectives on a mean-rank axis (1 = best, at the
    left), bars joining objectives whose mean ranks differ by less than the Nemenyi CD, the CD drawn
    above. None without a Friedman test."""
    fr = board.friedman
    if fr is None:
        return None
    from matplotlib.figure import Figure

    k, mr = fr.k, fr.mean_ranks
    order = sorted(mr, key=lambda o: (mr[o], fr.objectives.index(o)))
    half = math.ceil(k / 2)
    fig = Figure(figsize=(7, 1.2 + 0.3 * half), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(0.5 - 0.6, k + 0.5 + 0.6)
    ax.set_ylim(-(half * 0.6 + 0.4), 1.6)
    ax.axis("off")
    ax.hlines(0, 1, k, color="k", lw=1)
    for r in range(1, k + 1):
        ax.vlines(r, 0, 0.12, color="k", lw=1)
        ax.text(r, 0.2, str(r), ha="center", va="bottom", fontsize=8)
    ax.hlines(1.2, 1, 1 + fr.cd, color="k", lw=1.5)
    ax.vlines([1, 1 + fr.cd], 1.12, 1.28, color="k", lw=1.5)
    ax.text(1 + fr.cd / 2, 1.32, f"CD = {fr.cd:.2f}", ha="center", va="bottom", fontsize=8)
    for i, o in enumerate(order):
        left = i < half
        y = -(i + 1) * 0.6 if left else -(k - i) * 0.6
        x_end = 0.5 - 0.1 if left else k + 0.5 + 0.1
        ax.plot([mr[o], mr[o], x_end], [0, y, y], color="k", lw=0.8)
        ax.text(x_end, y, f"{o} ({mr[o]:.2f})", ha="right" if left else "left", va="center", fontsize=8)
    for j, group in enumerate(cd_cliques(mr, fr.cd)):
        y = -0.25 - 0.15 * j
        ax.hlines(y, mr[group[0]] - 0.03, mr[group[-1]] + 0.03, color="k", lw=3)
    test = f"Friedman p = {fr.p_ff:.3g} (Iman-Davenport), k = {k}, N = {fr.n}" + (
        "" if fr.significant else f", not significant at alpha {fr.alpha}"
    )
    ax.set_title(f"critical-difference diagram, Nemenyi at alpha {fr.alpha}; {test}", fontsize=9)
    return _png(fig)


def plot_loss(board: Leaderboard) -> str | None:
    if not board.loss_curves:
        return None
    from matplotlib.figure import Figure

    colors = _colors(board.objectives)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for o in board.objectives:
        c = board.loss_curves.get(o)
        if not c:
            continue
        ax.plot(c["step"], c["mean"], color=colors[o], label=f"{o} (n={c['n']})")
        if c["n"] > 1:
            ax.fill_between(c["step"], c["min"], c["max"], color=colors[o], alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("train/loss")
    ax.set_title("training loss: mean over seeds (band: min to max)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def breakdown_data(board: Leaderboard) -> dict[str, dict[str, dict[str, dict[str, Summary]]]]:
    """task -> group (the breakdown's leading levels, joined by ``/``) -> last level -> objective -> summary,
    for every task whose runs recorded a breakdown of its metrics (:attr:`TaskBoard.breakdown`)."""
    out = {}
    for t, tb in board.task_boards.items():
        groups: dict[str, dict[str, dict[str, Summary]]] = defaultdict(dict)
        for m, values in (tb.breakdown.get("metrics") or {}).items():
            if m in tb.metrics and values:
                groups["/".join(values[:-1])][values[-1]] = tb.metrics[m]
        if groups:
            out[t] = dict(groups)
    return out


def plot_breakdown(board: Leaderboard, task: str) -> str | None:
    """One panel per group of ``task``'s breakdown: a bar per objective and value of the last level."""
    data = breakdown_data(board).get(task)
    if not data:
        return None
    bd = board.task_boards[task].breakdown
    levels = bd.get("levels") or ["group"]
    fixed = [s for s in str(bd.get("pattern", "")).split("/") if s and not s.startswith("{")]
    ylabel = "/".join(fixed) or "value"
    bounds = hull(metric_bounds(m) for m in bd.get("metrics") or {})
    colors = _colors(board.objectives)
    fig, axes = _grid(len(data), width=5.5, height=3.5)
    for ax, (group, by) in zip(axes, data.items()):
        names = list(by)
        objs = [o for o in board.objectives if any(o in by[x] for x in names)]
        width = 0.8 / max(1, len(objs))
        for j, o in enumerate(objs):
            xs = [i + (j - (len(objs) - 1) / 2) * width for i in range(len(names))]
            s = [by[x].get(o) for x in names]
            ax.bar(
                xs,
                [x.mean if x else 0 for x in s],
                width,
                color=colors[o],
                label=o,
                yerr=np.array([err(x) for x in s]).T,
                capsize=2,
            )
        ax.set_xticks(range(len(names)), names, fontsize=8)
        if bounds is not None and all(map(math.isfinite, bounds)):
            ax.set_ylim(bounds[0], bounds[1] + 0.05 * (bounds[1] - bounds[0]))
        ax.set_ylabel(ylabel)
        where = f"{group} {'/'.join(levels[:-1])}, " if group else ""
        ax.set_title(f"{task}: {where}by {levels[-1]}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_cost(board: Leaderboard) -> str | None:
    if not board.tasks or not any("wall_seconds" in board.cost.get(o, {}) for o in board.objectives):
        return None
    colors = _colors(board.objectives)
    fig, axes = _grid(len(board.tasks))
    for ax, t in zip(axes, board.tasks):
        tb = board.task_boards[t]
        for o in board.objectives:
            w = board.cost.get(o, {}).get("wall_seconds")
            s = tb.scores.get(o)
            if w is None or s is None:
                continue
            ax.errorbar(
                [w.mean],
                [s.mean],
                xerr=np.array([err(w)]).T,
                yerr=np.array([err(s)]).T,
                fmt="o",
                color=colors[o],
                capsize=3,
            )
            ax.annotate(o, (w.mean, s.mean), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.margins(0.15)
        ax.set_xlabel("wall seconds (training)")
        ax.set_ylabel(tb.main_metric)
        ax.set_title(t, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("cost against score: mean and 95% CI over seeds, within each metric's range", fontsize=10)
    return _png(fig)
