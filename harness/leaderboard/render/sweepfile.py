"""A sweep's files: sweep.md, sweep.html (with the figure), sweep.json, sweep.png, and each value's
own board in a subfolder (``batch_size-64/leaderboard.md``, ...)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ..sweep import SweepBoard
from . import render_all
from .cells import fmt_p, fmt_summary
from .jsonfile import jsonable
from .markdown import md_escape
from .plots import _colors, _grid, _png


def point_dir(sb: SweepBoard, i: int) -> str:
    return f"{sb.axis.split('.')[-1]}-{sb.values[i]}"


def _delta_cell(sb: SweepBoard, task: str, obj: str, i: int) -> str:
    b = sb.boards[i]
    tb = b.task_boards[task]
    t = tb.tests.get(obj)
    if obj == b.baseline or t is None or t.delta is None:
        return "–"
    p = t.p_bootstrap if t.p_bootstrap is not None else t.p_ttest
    return f"{t.delta:+.3f} (p {fmt_p(p)})"


def render_sweep_markdown(sb: SweepBoard) -> str:
    b0 = sb.boards[0]
    vals = [str(v) for v in sb.values]
    lines = [
        f"# Sweep: {md_escape(sb.axis)} over {', '.join(vals)}, "
        f"{md_escape(b0.provenance.get('track_label', ''))}",
        "",
        f"> {md_escape(b0.provenance.get('caveat') or '')}",
        "",
        "## Provenance",
        "",
        f"- sweep id: {sb.sweep_id} (experiment {md_escape(sb.experiment)})",
        f"- objectives: {', '.join(sb.objectives)}; baseline of the paired tests: {b0.baseline}",
        f"- seeds: {', '.join(map(str, b0.seeds))}",
    ]
    if sb.command:
        lines.append(f"- command: `{sb.command}`")
    for i, rule in enumerate(sb.rules):
        lines.append(
            f"- {md_escape(rule)}: comparison {sb.parents[i]}, budget id {sb.boards[i].budget_id}, "
            f"board in `{point_dir(sb, i)}/`"
        )
    lines += ["", "## Verdicts", ""]
    for t in sb.tasks:
        for i, b in enumerate(sb.boards):
            where = f"{sb.axis.split('.')[-1]} {vals[i]}"
            lines.append(f"- {md_escape(t)} at {where}: {md_escape(b.task_boards[t].verdict)}")
    for t in sb.tasks:
        tb0 = b0.task_boards[t]
        direction = "higher" if tb0.higher_is_better else "lower"
        lines += [
            "",
            f"## {md_escape(t)}: {md_escape(tb0.main_metric)} ({direction} is better)",
            "",
            "| objective | " + " | ".join(f"{sb.axis.split('.')[-1]} {v}" for v in vals) + " |",
            "| --- | " + " | ".join("---:" for _ in vals) + " |",
        ]
        for o, ss in sb.series(t).items():
            cells = []
            for i, s in enumerate(ss):
                tb = sb.boards[i].task_boards[t]
                cells.append(
                    "–" if s is None else f"{fmt_summary(s)} ({tb.ranks.get(o)}{tb.groups.get(o, '')})"
                )
            lines.append(f"| {md_escape(o)} | " + " | ".join(cells) + " |")
        for o in sb.objectives:
            if o == b0.baseline:
                continue
            cells = [_delta_cell(sb, t, o, i) for i in range(len(vals))]
            lines.append(f"| {md_escape(o)} - {md_escape(b0.baseline)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells: mean ± 95% CI over seeds (rank of the mean, significance groups at that value); the "
        "difference rows: mean difference to the baseline and the paired test's p (bootstrap over "
        "test items, else t-test over seeds).",
    ]
    return "\n".join(lines) + "\n"


def plot_sweep(sb: SweepBoard) -> str | None:
    """Per task: each objective's mean score against the value, its 95% interval as a band."""
    tasks = sb.tasks
    if not tasks:
        return None
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sb.values)
    xs = list(sb.values) if numeric else list(range(len(sb.values)))
    logx = numeric and min(xs) > 0 and max(xs) / min(xs) >= 8
    colors = _colors(sb.objectives)
    fig, axes = _grid(len(tasks))
    for ax, t in zip(axes, tasks):
        tb0 = sb.boards[0].task_boards[t]
        for o, ss in sb.series(t).items():
            pts = [(x, s) for x, s in zip(xs, ss) if s is not None]
            if not pts:
                continue
            px = [x for x, _ in pts]
            ax.plot(px, [s.mean for _, s in pts], marker="o", color=colors[o], label=o)
            band = [(x, s.low, s.high) for x, s in pts if s.low is not None and s.high is not None]
            if len(band) >= 2:
                bx, lo, hi = zip(*band)
                ax.fill_between(bx, lo, hi, color=colors[o], alpha=0.18)
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(v) for v in sb.values])
        ax.set_xlabel(sb.axis)
        ax.set_title(
            f"{t}\n{tb0.main_metric} ({'higher' if tb0.higher_is_better else 'lower'} is better)", fontsize=9
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"score against {sb.axis}: mean over seeds, band = 95% CI", fontsize=10)
    return _png(fig)


def render_sweep_html(sb: SweepBoard, png: str | None) -> str:
    e = html.escape
    md = render_sweep_markdown(sb)
    body = [f"<h1>{e(md.splitlines()[0][2:])}</h1>"]
    if png:
        body.append(f'<img alt="score against {e(sb.axis)}" src="data:image/png;base64,{png}">')
    body.append(f"<pre>{e(md)}</pre>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(sb.axis)} sweep</title></head><body>{''.join(body)}</body></html>\n"
    )


def render_sweep_all(sb: SweepBoard, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_sweep(sb)
    paths = {"md": out / "sweep.md", "html": out / "sweep.html", "json": out / "sweep.json"}
    paths["md"].write_text(render_sweep_markdown(sb), encoding="utf-8")
    paths["html"].write_text(render_sweep_html(sb, png), encoding="utf-8")
    paths["json"].write_text(json.dumps(jsonable(sb.to_dict()), indent=1, allow_nan=False), encoding="utf-8")
    if png:
        paths["png"] = out / "sweep.png"
        paths["png"].write_bytes(base64.b64decode(png))
    for i, b in enumerate(sb.boards):
        render_all(b, out / point_dir(sb, i))
    return paths
