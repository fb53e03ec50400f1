"""One renderer per format: the terminal (rich), Markdown, CSV, JSON and one HTML page with plots."""

from __future__ import annotations

from pathlib import Path

from ..board import Leaderboard
from .cells import (
    CELL,
    COST_COLUMNS,
    failed_rows,
    fmt_num,
    fmt_p,
    fmt_summary,
    friedman_items,
    method_lines,
    metric_rows,
    provenance_items,
    summary_rows,
    task_rows,
    text_rows,
    verdict_lines,
)
from .csvfile import render_csv
from .htmlpage import render_html
from .jsonfile import jsonable, render_json
from .markdown import md_escape, md_unescape, parse_markdown_table, render_markdown
from .plots import breakdown_data, plot_breakdown, plot_cd, plot_cost, plot_loss, plot_scores
from .table import render_failed_table, render_table, render_text_table


def render_all(board: Leaderboard, out_dir: str | Path) -> dict[str, Path]:
    """Write leaderboard.{md,html,json,csv} into ``out_dir``; returns {"md": path, ...}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": out / "leaderboard.md",
        "html": out / "leaderboard.html",
        "json": out / "leaderboard.json",
        "csv": out / "leaderboard.csv",
    }
    paths["md"].write_text(render_markdown(board), encoding="utf-8")
    paths["html"].write_text(render_html(board), encoding="utf-8")
    paths["json"].write_text(render_json(board), encoding="utf-8")
    paths["csv"].write_text(render_csv(board), encoding="utf-8")
    return paths


__all__ = [
    "CELL",
    "COST_COLUMNS",
    "breakdown_data",
    "failed_rows",
    "fmt_num",
    "fmt_p",
    "fmt_summary",
    "friedman_items",
    "jsonable",
    "md_escape",
    "md_unescape",
    "method_lines",
    "metric_rows",
    "parse_markdown_table",
    "plot_breakdown",
    "plot_cd",
    "plot_cost",
    "plot_loss",
    "plot_scores",
    "provenance_items",
    "render_all",
    "render_csv",
    "render_failed_table",
    "render_html",
    "render_json",
    "render_markdown",
    "render_table",
    "render_text_table",
    "summary_rows",
    "task_rows",
    "text_rows",
    "verdict_lines",
]
