"""CSV: the long rows of a board (one per objective, task, metric and seed value, then the summaries)."""

from __future__ import annotations

import csv
import io

from ..board import LONG_FIELDS, Leaderboard


def render_csv(board: Leaderboard, header: bool = True) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LONG_FIELDS, lineterminator="\n")
    if header:
        w.writeheader()
    for row in board.long_rows():
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()
