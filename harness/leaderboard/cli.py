"""``harness leaderboard`` on the command line, and the leaderboard of a comparison (``harness compare``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .board import Leaderboard, build
from .errors import LeaderboardError
from .render import (
    jsonable,
    render_all,
    render_csv,
    render_failed_table,
    render_markdown,
    render_table,
    render_text_table,
)
from .render.sweepfile import render_sweep_all, render_sweep_markdown
from .runs import collect, log_to_mlflow
from .stats import RANK_RULES
from .sweep import sweep_board

FORMATS = ("table", "md", "json", "csv")


def summarize_comparison(
    experiment: str,
    parent_run_id: str,
    tracking_uri: str | None = None,
    out_dir: str | Path | None = None,
    baseline: str | None = None,
    log: bool = True,
    **build_kw,
) -> Leaderboard:
    """For ``harness compare``: rank one comparison, write the files (``out_dir``) and log them on the
    parent run. A comparison has one track and one budget, so this is one board."""
    boards = build(collect(experiment, parent_run_id, None, tracking_uri), baseline=baseline, **build_kw)
    board = boards[0]
    if out_dir is not None:
        paths = render_all(board, out_dir)
        if log:
            log_to_mlflow(paths, parent_run_id, tracking_uri)
    return board


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``harness leaderboard``; the subparser calls :func:`main` with the namespace."""
    p.add_argument("--experiment", default="harness", help="MLflow experiment (default: harness)")
    p.add_argument(
        "--parent",
        metavar="RUN_ID",
        help="rank one comparison: its parent run id (a unique prefix, or 'latest'); "
        "default: every run of the experiment",
    )
    p.add_argument(
        "--track", choices=["default", "tuned"], help="only this track (default: one board per track)"
    )
    p.add_argument(
        "--budget-id", metavar="ID", help="rank the runs of this budget (needed when runs span budgets)"
    )
    p.add_argument(
        "--baseline",
        metavar="NAME",
        help="objective the paired tests compare against (default: clip if present, else the first)",
    )
    p.add_argument(
        "--rank-rule",
        choices=RANK_RULES,
        default="either",
        help="which paired tests must be significant for a rank difference (default: either)",
    )
    p.add_argument(
        "--sweep",
        metavar="ID",
        help="a sweep of `harness compare --sweep` (its id, a prefix, or 'latest'): each objective's "
        "score against the swept value, and one board per value",
    )
    p.add_argument("--out", metavar="DIR", help="write leaderboard.{md,html,json,csv} there")
    p.add_argument(
        "--log", action="store_true", help="with --parent and --out: attach the files to the parent run"
    )
    p.add_argument(
        "--format", choices=FORMATS, default="table", help="what to print on stdout (default: table)"
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<output-dir>/mlflow.db)",
    )
    p.add_argument(
        "--output-dir", default=".harness", help="where the default store lives (default .harness)"
    )


def print_wide(renderable) -> None:
    """Print to stdout; when stdout is not a terminal, as wide as the table needs (no wrapped cells)."""
    import sys

    from rich.console import Console
    from rich.measure import Measurement

    console = Console(file=sys.stdout)
    if not console.is_terminal:
        need = Measurement.get(console, console.options.update_width(1000), renderable).maximum
        console = Console(file=sys.stdout, width=max(100, need))
    console.print(renderable)


def _store_uri(args) -> tuple[str, str | None]:
    """(uri, problem): the default SQLite store must exist (reading must not create an empty one)."""
    uri = getattr(args, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        db = Path(getattr(args, "output_dir", None) or ".harness").resolve() / "mlflow.db"
        uri = f"sqlite:///{db}"
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if uri.startswith("sqlite:////"):
            path = Path("/" + uri[len("sqlite:////") :])
        if not path.exists():
            return (
                uri,
                f"no MLflow store at {path}: nothing has been run yet (run `harness compare` "
                f"first, or pass --tracking-uri / --output-dir)",
            )
    return uri, None


def main(args: argparse.Namespace, reporter) -> int:
    """``harness leaderboard``: 0 ok, 2 nothing to rank (no store, experiment or finished run; mixed
    budgets)."""
    import sys

    uri, problem = _store_uri(args)
    if problem:
        reporter.error(problem)
        return 2
    if getattr(args, "sweep", None):
        return _sweep_main(args, uri, reporter)
    try:
        collected = collect(
            getattr(args, "experiment", None) or "harness",
            getattr(args, "parent", None),
            getattr(args, "track", None),
            uri,
        )
        boards = build(
            collected,
            budget_id=getattr(args, "budget_id", None),
            baseline=getattr(args, "baseline", None),
            rank_rule=getattr(args, "rank_rule", None) or "either",
        )
    except LeaderboardError as e:
        reporter.error(str(e))
        return 2
    fmt = getattr(args, "format", None) or "table"
    for i, board in enumerate(boards):
        if fmt == "table":
            print_wide(render_table(board))
            if board.text is not None:
                print_wide(render_text_table(board))
            if board.failed:
                print_wide(render_failed_table(board))
            for n in board.notes:
                reporter.info(f"note: {n}")
        elif fmt == "md":
            sys.stdout.write(render_markdown(board) + "\n")
        elif fmt == "csv":
            sys.stdout.write(render_csv(board, header=i == 0))
    if fmt == "json":
        docs = [jsonable(b.to_dict()) for b in boards]
        sys.stdout.write(json.dumps(docs[0] if len(docs) == 1 else {"boards": docs}, indent=1) + "\n")
    out = getattr(args, "out", None)
    if out:
        for board in boards:
            where = Path(out) if len(boards) == 1 else Path(out) / board.track
            paths = render_all(board, where)
            reporter.info(f"wrote {', '.join(str(p) for p in paths.values())}")
            if getattr(args, "log", False):
                if collected.parent_run_id:
                    log_to_mlflow(paths, collected.parent_run_id, uri)
                    reporter.info(f"logged under leaderboard/ of run {collected.parent_run_id}")
                else:
                    reporter.error("--log needs --parent (there is no comparison run to attach the files to)")
    return 0


def _sweep_main(args: argparse.Namespace, uri: str, reporter) -> int:
    """``harness leaderboard --sweep ID``: the sweep's Markdown on stdout, its files with ``--out``."""
    import sys

    try:
        sb = sweep_board(
            getattr(args, "experiment", None) or "harness",
            args.sweep,
            uri,
            baseline=getattr(args, "baseline", None),
            rank_rule=getattr(args, "rank_rule", None) or "either",
        )
    except LeaderboardError as e:
        reporter.error(str(e))
        return 2
    if (getattr(args, "format", None) or "table") in ("table", "md"):
        sys.stdout.write(render_sweep_markdown(sb))
    else:
        sys.stdout.write(json.dumps(jsonable(sb.to_dict()), indent=1) + "\n")
    if getattr(args, "out", None):
        paths = render_sweep_all(sb, args.out)
        reporter.info(f"wrote {', '.join(str(p) for p in paths.values())} and one board per value")
    return 0
