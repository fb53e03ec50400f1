"""Markdown (GitHub-flavoured): the board as pipe tables, and a parser of those tables (tests, tools)."""

from __future__ import annotations

import re

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

# GFM: '_' inside words and '<' before a digit are literal
_MD_SPECIAL = re.compile(r"([\\|*`]|<(?=[A-Za-z/!?]))")
_TEXT_COLUMNS = {"objective", "metric", "status", "run", "reason", "significantly better", "group"}


def md_escape(s: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", str(s))


def md_unescape(s: str) -> str:
    return re.sub(r"\\([\\|*`<])", r"\1", s)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = [
        "| " + " | ".join(md_escape(h) for h in header) + " |",
        "| "
        + " | ".join("---" if i == 0 or h in _TEXT_COLUMNS else "---:" for i, h in enumerate(header))
        + " |",
    ]
    out += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(board: Leaderboard) -> str:
    lines = [
        f"# {md_escape(board_title(board))}",
        "",
        f"> {md_escape(board.provenance.get('caveat') or '')}",
        "",
        "## Provenance",
        "",
    ]
    for k, v in provenance_items(board):
        lines.append(f"- {k}: `{v}`" if k in ("command", "tracking URI") else f"- {k}: {md_escape(v)}")
    lines += ["", "## Verdict", ""]
    lines += [f"- {md_escape(k)}: {md_escape(v)}" for k, v in verdict_lines(board)]
    lines += ["", "## Leaderboard", ""]
    lines += _md_table(*summary_rows(board))
    lines += [
        "",
        f"Score cells: {CELL}, then the rank of the mean on that task and its significance groups in "
        "parentheses (objectives sharing a letter are not significantly different).",
        "",
    ]
    fr_items = friedman_items(board)
    if fr_items:
        lines += ["## Across tasks: Friedman and Nemenyi", ""]
        lines += [f"- {md_escape(k)}: {md_escape(v)}" for k, v in fr_items] + [""]
    if board.text is not None:
        lines += (
            ["## Text (STS)", ""]
            + _md_table(*text_rows(board))
            + [
                "",
                "STS avg: per seed, the mean Spearman x100 over these STS tasks (SimCSE's Avg.), then the "
                f"{CELL}; p: paired t-test over seeds against the baseline.",
                "",
            ]
        )
    for t, tb in board.task_boards.items():
        arrow = "higher is better" if tb.higher_is_better else "lower is better"
        lines += [
            f"## Task {md_escape(t)}",
            "",
            f"Main metric `{tb.main_metric}` ({arrow}); {tb.n_items or 'no'} test items in the bootstrap.",
            "",
            f"Verdict: {md_escape(tb.verdict)}.",
            "",
        ]
        lines += _md_table(*task_rows(board, t))
        lines += [
            "",
            f"All metrics of {md_escape(t)} ({CELL}; \\* paired t-test p < {board.alpha} against "
            f"{md_escape(board.baseline)}):",
            "",
        ]
        lines += _md_table(*metric_rows(board, t))
        lines.append("")
    if board.failed:
        lines += ["## Not ranked", ""] + _md_table(*failed_rows(board)) + [""]
    if board.notes:
        lines += ["## Notes", ""] + [f"- {md_escape(n)}" for n in board.notes] + [""]
    lines += ["## Method", ""] + [f"- {md_escape(m)}" for m in method_lines(board)] + [""]
    return "\n".join(lines)


def parse_markdown_table(text: str, after_heading: str) -> list[dict[str, str]]:
    """The first pipe table after the heading ``after_heading`` as dicts (used by tests and tools)."""
    lines = text.splitlines()
    start = lines.index(after_heading)
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([md_unescape(c.strip()) for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif rows:
            break
    header, body = rows[0], rows[2:]
    return [dict(zip(header, r)) for r in body]
