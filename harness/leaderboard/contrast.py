"""Two boards of one comparison side by side (paper defaults against equal tuning): does equal
tuning shrink the gaps between objectives, as Musgrave, Belongie and Lim found for metric-learning
losses ("A Metric Learning Reality Check", ECCV 2020)?

Reads two ``leaderboard.json`` files (``harness leaderboard --out``) and reports, on the ranked tasks
and objectives both boards have:

- per task and objective: the mean main score on each board, the change, and the rank on each;
- per task: the spread of the objectives' means (best minus worst, and their standard deviation),
  the leader on each board, the Kendall tau between the two orders, and the share of objective
  pairs the board's paired tests tell apart;
- overall: on how many tasks the spread shrank, the Wilcoxon signed-rank test over tasks of the
  spread's change, and the mean rank of each objective on each board;
- per objective, its tuned parameters against the paper defaults its study started from (when the
  tuned board records them), with the factor each moved by.

``python -m harness.leaderboard.contrast DEFAULT.json TUNED.json --out contrast.md``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _ranked_tasks(a: dict, b: dict) -> list[str]:
    out = []
    for t in a["tasks"]:
        if t not in b["task_boards"] or t not in a["task_boards"]:
            continue
        if a["task_boards"][t].get("diagnostic") or b["task_boards"][t].get("diagnostic"):
            continue
        out.append(t)
    return out


def _mean(board: dict, task: str, obj: str) -> float | None:
    s = board["task_boards"][task]["scores"].get(obj)
    return None if s is None or s.get("mean") is None else float(s["mean"])


def _ranks(means: dict[str, float], higher: bool) -> dict[str, float]:
    """Fractional ranks of the means (1 = best, ties averaged)."""
    from scipy.stats import rankdata

    objs = list(means)
    vals = np.array([means[o] for o in objs]) * (-1 if higher else 1)
    return dict(zip(objs, rankdata(vals).tolist()))


def _told_apart(board: dict, task: str, objs: list[str]) -> float | None:
    """Share of the pairs of ``objs`` that the board's paired tests separate."""
    better = board["task_boards"][task].get("significantly_better")
    if better is None:
        return None
    pairs = [(x, y) for i, x in enumerate(objs) for y in objs[i + 1 :]]
    if not pairs:
        return None
    sep = sum(1 for x, y in pairs if y in better.get(x, []) or x in better.get(y, []))
    return sep / len(pairs)


def contrast(
    a: dict,
    b: dict,
    names: tuple[str, str] = ("paper defaults", "equal tuning"),
    drop_tasks: tuple[str, ...] = (),
    drop_objectives: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``drop_tasks`` / ``drop_objectives``: leave out what the two boards do not measure alike
    (a task whose protocol changed between them, an objective whose code did)."""
    from scipy.stats import kendalltau, wilcoxon

    tasks = [t for t in _ranked_tasks(a, b) if t not in drop_tasks]
    rows, per_task = [], {}
    for t in tasks:
        higher = bool(b["task_boards"][t]["higher_is_better"])
        objs = [
            o
            for o in a["objectives"]
            if o not in drop_objectives and _mean(a, t, o) is not None and _mean(b, t, o) is not None
        ]
        if len(objs) < 2:
            continue
        ma = {o: _mean(a, t, o) for o in objs}
        mb = {o: _mean(b, t, o) for o in objs}
        ra, rb = _ranks(ma, higher), _ranks(mb, higher)
        for o in objs:
            rows.append({"task": t, "objective": o, "a": ma[o], "b": mb[o], "rank_a": ra[o], "rank_b": rb[o]})
        tau = kendalltau([ma[o] for o in objs], [mb[o] for o in objs]).statistic
        per_task[t] = {
            "metric": b["task_boards"][t]["main_metric"],
            "higher_is_better": higher,
            "objectives": objs,
            "spread_a": max(ma.values()) - min(ma.values()),
            "spread_b": max(mb.values()) - min(mb.values()),
            "sd_a": float(np.std(list(ma.values()), ddof=1)),
            "sd_b": float(np.std(list(mb.values()), ddof=1)),
            "leader_a": min(objs, key=ra.get),
            "leader_b": min(objs, key=rb.get),
            "kendall_tau": None if tau is None or math.isnan(tau) else float(tau),
            "told_apart_a": _told_apart(a, t, objs),
            "told_apart_b": _told_apart(b, t, objs),
        }
    # relative changes, so tasks on different scales (STS in Spearman x100) weigh alike
    ratios = [v["spread_b"] / v["spread_a"] for v in per_task.values() if v["spread_a"] > 0]
    shrank = sum(v["spread_b"] < v["spread_a"] for v in per_task.values())
    test = None
    logs = [math.log(r) for r in ratios if r > 0]
    if len(logs) >= 2 and any(x != 0 for x in logs):
        w = wilcoxon(logs, alternative="two-sided")
        test = {"statistic": float(w.statistic), "p": float(w.pvalue), "n": len(logs)}
    full = [o for o in a["objectives"] if all(o in v["objectives"] for v in per_task.values())]
    mean_rank = {
        o: (
            float(np.mean([r["rank_a"] for r in rows if r["objective"] == o])),
            float(np.mean([r["rank_b"] for r in rows if r["objective"] == o])),
        )
        for o in a["objectives"]
        if any(r["objective"] == o for r in rows)
    }
    moved = _moved(b)
    return {
        "names": list(names),
        "budget_ids": [a.get("budget_id"), b.get("budget_id")],
        "tasks": per_task,
        "rows": rows,
        "spread_shrank_on": shrank,
        "n_tasks": len(per_task),
        "median_spread_ratio": float(np.median(ratios)) if ratios else None,
        "wilcoxon": test,
        "mean_rank": mean_rank,
        "on_every_task": full,
        "moved": moved,
        "verdict": _verdict(names, per_task, shrank, ratios, test),
        "dropped": {"tasks": list(drop_tasks), "objectives": list(drop_objectives)},
    }


def _moved(b: dict) -> dict[str, list[dict]]:
    """objective -> [{param, default, tuned, factor}] from the tuned board's study records."""
    out: dict[str, list[dict]] = {}
    for obj, st in (b.get("provenance", {}).get("tuned_from") or {}).items():
        items = []
        for k, v in sorted((st.get("params") or {}).items()):
            d = (st.get("defaults") or {}).get(k)
            factor = None
            if isinstance(v, (int, float)) and isinstance(d, (int, float)) and d and v:
                factor = max(v / d, d / v) * (1 if v >= d else -1)
            items.append({"param": k, "default": d, "tuned": v, "factor": factor})
        out[obj] = items
    return out


def _verdict(names, per_task: dict, shrank: int, ratios: list[float], test: dict | None) -> str:
    if not per_task:
        return "no task in common"
    text = (
        f"the best-to-worst gap between objectives shrank on {shrank} of {len(per_task)} tasks under "
        f"{names[1]} (median ratio of the gaps, {names[1]} over {names[0]}: {float(np.median(ratios)):.2f})"
    )
    if test is not None:
        text += f"; Wilcoxon signed-rank over the {test['n']} tasks' log ratios: p = {test['p']:.3f}"
        text += (
            ", a significant change at alpha 0.05" if test["p"] < 0.05 else ", not significant at alpha 0.05"
        )
    return text


def render_markdown(c: dict) -> str:
    na, nb = c["names"]
    lines = [f"# {na} against {nb}", "", f"**Verdict:** {c['verdict']}.", ""]
    dropped = c.get("dropped") or {}
    if dropped.get("tasks") or dropped.get("objectives"):
        left = ", ".join(dropped.get("tasks", []) + dropped.get("objectives", []))
        lines += [f"Left out (not measured alike on the two boards): {left}.", ""]
    lines += [
        f"## Spread of the objectives per task ({na} -> {nb})",
        "",
        "| task | metric | best - worst | sd of means | leader | Kendall tau | pairs told apart |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for t, v in c["tasks"].items():

        def pct(x):
            return "n/a" if x is None else f"{100 * x:.0f}%"

        tau = "n/a" if v["kendall_tau"] is None else f"{v['kendall_tau']:.2f}"
        lines.append(
            f"| {t} | {v['metric']} | {v['spread_a']:.3f} -> {v['spread_b']:.3f} | "
            f"{v['sd_a']:.3f} -> {v['sd_b']:.3f} | {v['leader_a']} -> {v['leader_b']} | {tau} | "
            f"{pct(v['told_apart_a'])} -> {pct(v['told_apart_b'])} |"
        )
    lines += [
        "",
        f"## Mean rank over these tasks ({na} -> {nb})",
        "",
        "| objective | mean rank |",
        "| --- | ---: |",
    ]
    for o, (ra, rb) in sorted(c["mean_rank"].items(), key=lambda kv: kv[1][1]):
        note = "" if o in c["on_every_task"] else " (not on every task)"
        lines.append(f"| {o}{note} | {ra:.2f} -> {rb:.2f} |")
    lines += ["", f"## Main score per task and objective ({na} -> {nb})", ""]
    lines += ["| task | objective | score | change | rank |", "| --- | --- | ---: | ---: | ---: |"]
    for r in c["rows"]:
        lines.append(
            f"| {r['task']} | {r['objective']} | {r['a']:.3f} -> {r['b']:.3f} | {r['b'] - r['a']:+.3f} | "
            f"{r['rank_a']:g} -> {r['rank_b']:g} |"
        )
    if c["moved"]:
        lines += ["", "## Tuned hyperparameters against the paper defaults", ""]
        lines += [
            "| objective | parameter | default | tuned | moved by |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for o, items in c["moved"].items():
            for it in items:
                f = it["factor"]
                moved = "n/a" if f is None else (f"x{f:.2f}" if f > 0 else f"/{-f:.2f}")
                lines.append(
                    f"| {o} | {it['param']} | {_fmt(it['default'])} | {_fmt(it['tuned'])} | {moved} |"
                )
    lines += [
        "",
        "Spread: the best objective's mean main score minus the worst one's, and the standard deviation "
        "of the objectives' means, over the objectives both boards rank on the task. Kendall tau: the "
        "agreement of the two orders of the means (1 = same order). Pairs told apart: the share of "
        "objective pairs whose paired tests (the board's rank rule) differ at alpha 0.05. Wilcoxon: "
        "the signed-rank test over tasks of log(gap with the second board / gap with the first), "
        "so that tasks on different scales weigh alike.",
    ]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m harness.leaderboard.contrast", description=__doc__.split("\n")[0]
    )
    p.add_argument("a", help="the first board's leaderboard.json (e.g. paper defaults)")
    p.add_argument("b", help="the second board's leaderboard.json (e.g. equal tuning)")
    p.add_argument("--names", default="paper defaults,equal tuning", help="the two boards' names")
    p.add_argument("--drop-tasks", default="", help="comma-separated tasks to leave out")
    p.add_argument("--drop-objectives", default="", help="comma-separated objectives to leave out")
    p.add_argument("--out", help="write the Markdown there (and the JSON beside it)")
    args = p.parse_args(argv)
    a, b = (json.loads(Path(x).read_text()) for x in (args.a, args.b))
    if a.get("budget_id") != b.get("budget_id"):
        print(
            f"note: the boards' budgets differ ({a.get('budget_id')} vs {b.get('budget_id')})",
            file=sys.stderr,
        )
    c = contrast(
        a,
        b,
        tuple(args.names.split(",", 1)),
        tuple(x for x in args.drop_tasks.split(",") if x),
        tuple(x for x in args.drop_objectives.split(",") if x),
    )
    md = render_markdown(c)
    if args.out:
        Path(args.out).write_text(md, encoding="utf-8")
        Path(args.out).with_suffix(".json").write_text(json.dumps(c, indent=1), encoding="utf-8")
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
