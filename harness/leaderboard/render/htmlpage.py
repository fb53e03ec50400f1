"""One self-contained HTML page: inline CSS, the figures as base64 PNG, no script, no external resource."""

from __future__ import annotations

import html

from ..board import Leaderboard
from .cells import (
    CELL,
    board_title,
    failed_rows,
    friedman_items,
    method_lines,
    metric_rows,
    provenance_items,
    summary_rows,
    task_rows,
    text_rows,
    verdict_lines,
)
from .plots import breakdown_data, plot_breakdown, plot_cd, plot_cost, plot_loss, plot_scores

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}h3{font-size:1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:.9em}
dt{font-weight:600}dd{margin:0}
code{background:#f6f6f6;padding:1px 3px}img{max-width:100%}.note{color:#666;font-size:.9em}
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    out = [
        "<table>",
        "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>",
        "<tbody>",
    ]
    for row in rows:
        out.append(
            "<tr>"
            + "".join(f'<td class="num">{e(c)}</td>' if i else f"<td>{e(c)}</td>" for i, c in enumerate(row))
            + "</tr>"
        )
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def _img(png: str | None, alt: str, missing: str) -> str:
    if png is None:
        return f'<p class="note">{html.escape(missing)}</p>'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


def render_html(board: Leaderboard) -> str:
    """One self-contained page: inline CSS, figures as base64 PNG, no script, no external resource."""
    e = html.escape
    title = board_title(board)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="caveat">{e(board.provenance.get("caveat") or "")}</p>',
        '<section id="provenance">',
        "<h2>Provenance</h2>",
        "<dl>",
    ]
    for k, v in provenance_items(board):
        value = f"<code>{e(v)}</code>" if k in ("command", "tracking URI") else e(v)
        parts.append(f"<dt>{e(k)}</dt><dd>{value}</dd>")
    parts += [
        "</dl>",
        "</section>",
        '<section id="verdict">',
        "<h2>Verdict</h2>",
        "<ul>",
    ]
    parts += [f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in verdict_lines(board)]
    parts += [
        "</ul>",
        "</section>",
        '<section id="leaderboard">',
        "<h2>Leaderboard</h2>",
        _html_table(*summary_rows(board)),
        f'<p class="note">Score cells: {e(CELL)}, then the rank of the mean on that task and its '
        "significance groups in parentheses (objectives sharing a letter are not significantly "
        "different).</p>",
        "</section>",
        '<section id="friedman">',
        "<h2>Across tasks: Friedman and Nemenyi</h2>",
    ]
    fr_items = friedman_items(board)
    if fr_items:
        parts += ["<dl>"] + [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in fr_items] + ["</dl>"]
    parts += [
        _img(
            plot_cd(board),
            "critical-difference diagram",
            "no Friedman test: it needs 2 objectives that share 2 ranked tasks",
        ),
        "</section>",
    ]
    if board.text is not None:
        parts += [
            '<section id="text">',
            "<h2>Text (STS)</h2>",
            _html_table(*text_rows(board)),
            '<p class="note">STS avg: per seed, the mean Spearman x100 over these STS tasks '
            "(SimCSE's Avg.), "
            f"then the {e(CELL)}; p: paired t-test over seeds against the baseline.</p>",
            "</section>",
        ]
    parts += ['<section id="tasks">', "<h2>Per task</h2>"]
    for t, tb in board.task_boards.items():
        arrow = "higher is better" if tb.higher_is_better else "lower is better"
        parts += [
            f"<h3>{e(t)}</h3>",
            f'<p class="note">Main metric <code>{e(tb.main_metric)}</code> ({arrow}); '
            f"{tb.n_items or 'no'} test items in the bootstrap.</p>",
            f"<p>Verdict: {e(tb.verdict)}.</p>",
            _html_table(*task_rows(board, t)),
            f"<details><summary>all metrics of {e(t)} (* paired t-test p &lt; {board.alpha} against "
            f"{e(board.baseline)})</summary>",
            _html_table(*metric_rows(board, t)),
            "</details>",
        ]
    parts += [
        "</section>",
        '<section id="scores">',
        "<h2>Scores per task</h2>",
        _img(plot_scores(board), "main score per task with 95% CI", "no task scores"),
        "</section>",
        '<section id="loss">',
        "<h2>Training loss</h2>",
        _img(plot_loss(board), "training loss curves", "no train/loss history in these runs"),
        "</section>",
        '<section id="breakdowns">',
        "<h2>Metrics by group</h2>",
    ]
    shown = breakdown_data(board)
    for t in shown:
        parts += [f"<h3>{e(t)}</h3>", _img(plot_breakdown(board, t), f"{t}: metrics by group", "")]
    if not shown:
        parts.append('<p class="note">no task in these runs recorded a breakdown of its metrics</p>')
    parts += [
        "</section>",
        '<section id="cost">',
        "<h2>Cost against score</h2>",
        _img(plot_cost(board), "wall seconds against main score", "no cost metrics in these runs"),
        "</section>",
        '<section id="failed">',
        "<h2>Not ranked</h2>",
    ]
    parts.append(
        _html_table(*failed_rows(board)) if board.failed else '<p class="note">every run finished.</p>'
    )
    parts.append("</section>")
    if board.notes:
        parts += ['<section id="notes">', "<h2>Notes</h2>", "<ul>"]
        parts += [f"<li>{e(n)}</li>" for n in board.notes] + ["</ul>", "</section>"]
    parts += ['<section id="method">', "<h2>Method</h2>", "<ul>"]
    parts += [f"<li>{e(m)}</li>" for m in method_lines(board)]
    parts += ["</ul>", "</section>", "</body>", "</html>", ""]
    return "\n".join(parts)
