"""The terminal: the leaderboard, the text section and the runs not ranked as rich Tables."""

from __future__ import annotations

from ..board import Leaderboard
from ..runs import by_state
from .cells import CELL, failed_rows, summary_rows, text_rows, verdict_lines


def render_table(board: Leaderboard):
    """The leaderboard as a rich Table (terminal)."""
    header, rows = summary_rows(board)
    title = (
        f"{board.experiment} | {board.provenance.get('track_label', board.track)} | "
        f"budget {board.budget_id} | seeds "
        f"{', '.join(map(str, board.seeds))} | baseline {board.baseline}"
    )
    if board.provenance.get("parent_run_id"):
        title += f" | comparison {board.provenance['parent_run_id'][:8]}"
    caption = "\n".join(
        [
            f"score: {CELL} (rank of the mean, significance groups: a shared letter = not "
            "significantly different)",
            board.provenance.get("caveat") or "",
        ]
        + [f"{k}: {v}" for k, v in verdict_lines(board)]
    )
    return _rich_table(title, caption, header, rows)


def _rich_table(title: str, caption: str, header: list[str], rows: list[list[str]]):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left", caption=escape(caption), caption_justify="left")
    for i, h in enumerate(header):
        table.add_column(escape(h), justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    return table


def render_text_table(board: Leaderboard):
    """The text section (objectives against STS tasks) as a rich Table."""
    n = len(board.text.tasks)
    return _rich_table(
        f"text section (STS, {n} task{'' if n == 1 else 's'})",
        f"STS avg: per-seed mean Spearman x100 over the STS tasks; {CELL}",
        *text_rows(board),
    )


def render_failed_table(board: Leaderboard):
    from rich.markup import escape
    from rich.table import Table

    header, rows = failed_rows(board)
    table = Table(title=f"not ranked: {len(rows)} run(s): {by_state(board.failed)}", title_justify="left")
    for h in header:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    return table
