"""A sweep along one budget axis (``harness compare --sweep``): one board per value, and each
objective's main score per task against the value, with its 95% interval over seeds.

The comparisons of a sweep are found by their parent runs' ``harness.sweep`` tag; each is ranked as
any comparison is (:func:`.board.build`), so a point of the sweep reads exactly as its own board.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .board import Leaderboard, build
from .errors import LeaderboardError, NoRunsError
from .runs import _client, _search, collect
from .stats import Summary


@dataclass
class SweepBoard:
    sweep_id: str
    experiment: str
    axis: str
    values: list[Any]
    rules: list[str]  # what each value adjusted, in words (steps, lr, ...)
    parents: list[str]  # the comparisons' parent run ids, in value order
    boards: list[Leaderboard]
    command: str | None = None

    @property
    def objectives(self) -> list[str]:
        seen: list[str] = []
        for b in self.boards:
            seen += [o for o in b.objectives if o not in seen]
        return seen

    @property
    def tasks(self) -> list[str]:
        """Ranked tasks present at every value (diagnostics left out), in the first board's order."""
        return [
            t
            for t in self.boards[0].tasks
            if all(t in b.task_boards and not b.task_boards[t].diagnostic for b in self.boards)
        ]

    def series(self, task: str) -> dict[str, list[Summary | None]]:
        """objective -> its main score on ``task`` at each value (None where it has none)."""
        return {
            o: [b.task_boards[task].scores.get(o) if task in b.task_boards else None for b in self.boards]
            for o in self.objectives
        }

    def to_dict(self) -> dict:
        tasks = {}
        for t in self.tasks:
            tb0 = self.boards[0].task_boards[t]
            tasks[t] = {
                "main_metric": tb0.main_metric,
                "higher_is_better": tb0.higher_is_better,
                "scores": {
                    o: [None if s is None else s.to_dict() for s in ss] for o, ss in self.series(t).items()
                },
                "vs_baseline": {o: [_test_dict(b, t, o) for b in self.boards] for o in self.objectives},
                "ranks": {o: [b.task_boards[t].ranks.get(o) for b in self.boards] for o in self.objectives},
                "groups": {o: [b.task_boards[t].groups.get(o) for b in self.boards] for o in self.objectives},
                "verdicts": [b.task_boards[t].verdict for b in self.boards],
            }
        return {
            "sweep": self.sweep_id,
            "experiment": self.experiment,
            "axis": self.axis,
            "values": self.values,
            "rules": self.rules,
            "comparisons": self.parents,
            "budget_ids": [b.budget_id for b in self.boards],
            "baseline": self.boards[0].baseline,
            "objectives": self.objectives,
            "track": self.boards[0].track,
            "command": self.command,
            "tasks": tasks,
        }


def _test_dict(board: Leaderboard, task: str, objective: str) -> dict | None:
    tb = board.task_boards.get(task)
    test = tb.tests.get(objective) if tb else None
    if test is None or objective == board.baseline:
        return None
    return {
        "baseline": test.baseline,
        "delta": test.delta,
        "p_ttest": test.p_ttest,
        "p_bootstrap": test.p_bootstrap,
        "n_seeds": test.n_seeds,
    }


def sweep_board(
    experiment: str = "harness", sweep: str = "latest", tracking_uri: str | None = None, **build_kw
) -> SweepBoard:
    """Find the sweep's comparisons (``latest``: the most recent sweep) and rank each."""
    client, uri = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise NoRunsError(
            f"no MLflow experiment {experiment!r} in {uri}; run `harness compare --sweep` first"
        )
    parents = _search(client, exp.experiment_id, "tags.`harness.role` = 'compare'")
    parents = [r for r in parents if r.data.tags.get("harness.sweep")]
    if not parents:
        raise NoRunsError("no sweep in this experiment: run `harness compare --sweep AXIS=V1,V2,...` first")
    if sweep == "latest":
        sweep = max(parents, key=lambda r: r.info.start_time).data.tags["harness.sweep"]
    ids = sorted({r.data.tags["harness.sweep"] for r in parents})
    matches = [i for i in ids if i.startswith(sweep)]
    if len(matches) != 1:
        raise LeaderboardError(
            f"sweep {sweep!r} matches {len(matches)} sweeps; known: {', '.join(ids) or 'none'}"
        )
    sid = matches[0]
    by_index: dict[int, Any] = {}
    mine = [r for r in parents if r.data.tags["harness.sweep"] == sid]
    for r in sorted(mine, key=lambda r: r.info.start_time):
        by_index[int(r.data.tags.get("harness.sweep_index", 0))] = r  # a resumed point: its latest parent
    runs = [by_index[i] for i in sorted(by_index)]
    boards = []
    for r in runs:
        try:
            (board,) = build(collect(experiment, r.info.run_id, None, uri), **build_kw)
        except NoRunsError as e:
            raise NoRunsError(f"sweep {sid}: {r.data.tags.get('harness.sweep_rule')}: {e}") from None
        boards.append(board)
    tags = runs[0].data.tags
    return SweepBoard(
        sweep_id=sid,
        experiment=experiment,
        axis=tags.get("harness.sweep_axis", "?"),
        values=[json.loads(r.data.tags.get("harness.sweep_value", "null")) for r in runs],
        rules=[r.data.tags.get("harness.sweep_rule", "") for r in runs],
        parents=[r.info.run_id for r in runs],
        boards=boards,
        command=tags.get("harness.command"),
    )
