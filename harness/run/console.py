"""Terminal output: rich progress and tables on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class Reporter:
    """All user-facing output of a run. ``quiet`` silences progress (tests, sweeps)."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.interactive = self.console.is_terminal and not quiet

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg, highlight=False)

    def error(self, msg: str) -> None:
        self.console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False)

    @contextmanager
    def training(self, total: int, label: str):
        """Yields ``update(step, loss)``: a live bar on a terminal, a line per ~10% otherwise."""
        if self.quiet:
            yield lambda *args: None
            return
        if self.interactive:
            cols = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[sps]:.0f} samples/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
            )
            with Progress(*cols, console=self.console, transient=False) as prog:
                tid = prog.add_task(escape(label), total=total, loss=float("nan"), sps=0.0)
                t0 = time.perf_counter()
                state = {"bs": 1}

                def update(step: int, loss: float, batch_size: int = 0):
                    state["bs"] = batch_size or state["bs"]
                    sps = (step + 1) * state["bs"] / max(time.perf_counter() - t0, 1e-9)
                    prog.update(tid, completed=step + 1, loss=loss, sps=sps)

                yield update
            return
        every = max(1, total // 10)
        t0 = time.perf_counter()

        def update(step: int, loss: float, batch_size: int = 0):
            if (step + 1) % every == 0 or step + 1 == total:
                el = time.perf_counter() - t0
                eta = el / (step + 1) * (total - step - 1)
                sps = f"  {(step + 1) * batch_size / el:.0f} samples/s" if batch_size else ""
                self.console.print(
                    f"{label}: step {step + 1}/{total}  loss {loss:.4f}{sps}  "
                    f"elapsed {el:.0f}s  eta {eta:.0f}s",
                    highlight=False,
                )

        yield update

    def results_table(self, results, title: str) -> Table:
        table = Table(title=title, title_justify="left")
        table.add_column("task")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for r in results:
            first = True
            for k, v in r.metrics.items():
                name = f"[bold]{escape(k)}[/]" if k == r.main_metric else escape(k)
                table.add_row(escape(r.task) if first else "", name, f"{v:.4f}")
                first = False
        return table

    def print(self, renderable) -> None:
        Console(file=sys.stdout, width=max(self.console.width, 100)).print(renderable)
