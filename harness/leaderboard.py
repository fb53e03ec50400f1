"""``harness leaderboard``: rank objectives from what MLflow holds, with seeds, CIs and paired tests.

Everything is rebuilt from the MLflow store alone: run tags, metrics, the ``train/loss`` history and
the results JSON artifact of each run (for the per-item scores). Nothing is read from the local
``.harness/results`` copies.

Which runs
    ``collect(experiment, parent_run_id=...)`` takes the members of one comparison: the child runs
    of the parent (``mlflow.parentRunId``), plus the earlier FINISHED runs that a resumed comparison
    reused instead of retraining (found through the parent's ``pairs.json`` artifact when there is
    one, and through the ``harness.compare_key`` tag). Without a parent it takes every
    ``harness.role = "run"`` run of the experiment. Only FINISHED runs are ranked; the others are
    listed under "Not ranked" by state: ``FAILED`` and ``KILLED`` (MLflow's status, with the
    ``harness.failure_reason`` tag), ``running`` (MLflow says RUNNING and the run's
    ``harness.heartbeat`` is fresh) and ``interrupted`` (RUNNING, but no heartbeat for longer than
    :data:`harness.tracking.STALE_AFTER_S`, or no heartbeat tag and a start that old: the process
    was killed, SIGKILL or a lost node, before it could end the run; see
    :func:`harness.tracking.is_stale`). When one (track, budget, objective, seed) has several
    FINISHED runs, the newest is used (a direct child of the parent first) and the others are
    counted in the notes; a run that did not finish and that a later FINISHED run of the same pair
    superseded is not listed. Notes count the runs of the board shown (its track and budget) only.

Budgets and tracks
    Runs with different ``harness.budget_id`` are never ranked side by side: :func:`build` raises
    :class:`MixedBudgetsError` unless ``budget_id=`` selects one (an unambiguous prefix is enough).
    Tracks (``default``, ``tuned``) are never mixed either: :func:`build` returns one
    :class:`Leaderboard` per track.

Statistics (``alpha`` = 0.05 by default)
    * Mean over seeds and a 95% Student-t confidence interval, ``mean ± t.ppf(0.975, n-1) * sd /
      sqrt(n)`` with the sample standard deviation (ddof 1), cut at the metric's range (its
      intersection with :data:`METRIC_BOUNDS`, found by the metric's name; an unknown metric is
      unbounded). The mean lies in the range, so the cut interval keeps the t-interval's coverage
      and claims no impossible value. Shown ``mean ± half-width`` when nothing was cut, ``mean
      [low, high]`` when it was. One seed: no interval (``± n/a``). See
      docs/leaderboard-statistics.md.
    * Against the baseline objective (``clip`` when present, else the first objective): the
      paired t-test over seeds (``scipy.stats.ttest_rel`` on the seeds both objectives have; at
      least two), for the main score and for every metric; and, for the main score, the paired
      bootstrap over test items: per seed both objectives have, the per-item differences of the
      ``item_scores`` (matched by item index), averaged over those seeds into one difference per
      item; the items are resampled with replacement ``n_boot`` = 1000 times (a numpy Generator
      seeded from ``boot_seed`` and the task name; every pair of objectives of one task sees the
      same resamples); the two-sided p-value is ``(1 + #{|d* - d| >= |d|}) / (n_boot + 1)``, where
      ``d`` is the observed mean difference and ``d*`` a resampled one (the bootstrap distribution
      shifted to the null). The 2.5/97.5 percentiles of ``d*`` give a CI of the difference.
    * Ranks per task (main score), where objectives that cannot be told apart share a rank:
      ``rank = 1 + the number of objectives significantly better``. "B is significantly better
      than A" means the difference favours B (``higher_is_better`` respected) and, under the
      default rule ``either``, the paired bootstrap over items or the paired t-test over seeds has
      p < alpha. Other rules: ``both`` (every available test), ``bootstrap`` (the bootstrap, the
      t-test where items are missing), ``ttest`` (the t-test, the bootstrap where seeds are too
      few). When no test is possible (one seed and no item scores) objectives cannot be told apart.
      Every pair of objectives is tested for the ranks, not only pairs with the baseline.
    * Across tasks: mean rank (over the tasks the objective has), and the Borda count: per task,
      the number of objectives with a strictly worse (larger) rank, summed over tasks. The
      leaderboard is ordered by mean rank, then Borda count (descending), then name.
    * Cost per objective: means over seeds of ``cost/wall_seconds``, ``cost/samples_per_second``,
      ``cost/peak_memory_mb`` and ``cost/flops_per_step``.

Outputs: a rich table (:func:`render_table`), Markdown, CSV, JSON (long rows: objective, task,
metric, seed, value, plus summary rows) and one self-contained HTML page with the plots embedded as
base64 PNG (:func:`render_all`); :func:`log_to_mlflow` attaches the files to the parent run.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import re
import tempfile
import time
import warnings
import zlib
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .tracking import HEARTBEAT_TAG, STALE_AFTER_S, is_stale, metric_key, open_store
from .core.errors import UserError

NOT_TASKS = {"cost", "train", "compare", "system", "eval"}
RANK_RULES = ("either", "both", "bootstrap", "ttest")
COMPOSITIONALITY = "shapes-compositionality"
FORMATS = ("table", "md", "json", "csv")
LONG_FIELDS = ["track", "kind", "objective", "task", "metric", "seed", "value", "run_id"]
CI_METHOD = "95% Student-t over seeds, cut at the metric's range"


# -- errors -----------------------------------------------------------------------------------------
class LeaderboardError(UserError):
    """Nothing can be ranked as asked (exit code 2 on the command line)."""


class NoRunsError(LeaderboardError):
    """The experiment (or comparison) has no FINISHED run to rank."""


class MixedBudgetsError(LeaderboardError):
    """Finished runs carry more than one budget id and none was selected."""

    def __init__(self, message: str, budget_ids: dict[str, int]):
        super().__init__(message)
        self.budget_ids = budget_ids


# -- what MLflow holds ------------------------------------------------------------------------------
@dataclass
class RunRecord:
    run_id: str
    objective: str
    seed: int
    status: str
    track: str
    budget_id: str
    identity: str = ""
    start_time: int = 0
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # task -> main score
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metric -> value
    main_metric: dict[str, str] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    item_scores: dict[str, list[float]] = field(default_factory=dict)  # task -> per-item scores
    cost: dict[str, float] = field(default_factory=dict)
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, train/loss)
    results_artifact: str | None = None
    failure_reason: str | None = None
    #: what the board shows: FINISHED, FAILED, KILLED, SCHEDULED, or for MLflow's RUNNING either
    #: ``running`` (heartbeat fresh) or ``interrupted`` (stale: the process died without ending it)
    state: str = ""

    def __post_init__(self):
        self.state = self.state or self.status

    @property
    def label(self) -> str:
        return f"{self.objective} seed {self.seed}"

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.track, self.budget_id, self.objective, self.seed)


@dataclass
class Collected:
    experiment: str
    experiment_id: str
    tracking_uri: str
    parent_run_id: str | None
    parent_tags: dict[str, str]
    runs: list[RunRecord]  # FINISHED, one per (track, budget, objective, seed)
    failed: list[RunRecord]  # not finished: FAILED, KILLED, running, interrupted, SCHEDULED
    notes: list[str] = field(default_factory=list)  # about the collection as a whole
    # per run, so that each board counts its own (track, budget) only
    duplicates: list[RunRecord] = field(default_factory=list)  # older FINISHED runs of a ranked pair
    superseded: list[RunRecord] = field(default_factory=list)  # unfinished runs of a pair that later finished
    reused: set[str] = field(default_factory=set)  # run ids a resumed comparison reused (not its children)
    with_artifacts: bool = True


def _client(tracking_uri: str | None):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or mlflow.get_tracking_uri()
    open_store(uri)
    return MlflowClient(tracking_uri=uri), uri


def _search(client, experiment_id: str, filter_string: str, order_by: list[str] | None = None,
            max_results: int | None = None) -> list:
    from mlflow.entities import ViewType

    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=min(max_results or 1000, 1000), order_by=order_by, page_token=token)
        out.extend(page)
        token = page.token
        if not token or (max_results and len(out) >= max_results):
            return out


def _resolve_parent(client, experiment_id: str, parent: str):
    """A full run id, a unique prefix of a comparison's run id, or ``latest``."""
    from mlflow.exceptions import MlflowException

    if parent == "latest":
        found = _search(client, experiment_id, "tags.`harness.role` = 'compare'",
                        order_by=["attributes.start_time DESC"], max_results=1)
        if not found:
            raise NoRunsError("no comparison (harness.role = 'compare') in this experiment; "
                              "run `harness compare` first")
        return found[0]
    if len(parent) < 32:
        found = [r for r in _search(client, experiment_id, "tags.`harness.role` = 'compare'")
                 if r.info.run_id.startswith(parent)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise LeaderboardError(f"run id prefix {parent!r} matches {len(found)} comparisons: "
                                   f"{', '.join(r.info.run_id for r in found)}; give more characters")
    try:
        return client.get_run(parent)
    except MlflowException as e:
        raise NoRunsError(f"no MLflow run {parent!r} (--parent): {str(e).splitlines()[0]}") from None


def _int(v: Any, default: int = 0) -> int:
    try:
        return int(str(v))
    except (TypeError, ValueError):
        return default


def _duration(seconds: float) -> str:
    """``20 s``, ``43 min``, ``3 h``, ``3 h 5 min``, ``2 d 4 h``."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    m = s // 60
    if m < 120:
        return f"{m} min"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h" + (f" {m} min" if m else "")
    d, h = divmod(h, 24)
    return f"{d} d" + (f" {h} h" if h else "")


def _state(status: str, tags: dict[str, str], start_time_ms: int | None, now: float) -> tuple[str, str]:
    """(state shown, reason when no ``harness.failure_reason`` was recorded) of a run that did not finish.
    MLflow's RUNNING splits in two by :func:`harness.tracking.is_stale`: ``running`` and ``interrupted``."""
    if status != "RUNNING":
        return status, {"KILLED": "stopped (Ctrl-C or a signal) with no reason recorded",
                        "SCHEDULED": "never started"}.get(status, "no failure reason recorded")
    beat = tags.get(HEARTBEAT_TAG)
    try:
        last = float(beat) if beat is not None else None
    except ValueError:
        last = None
    started = start_time_ms / 1000.0 if start_time_ms else None
    if is_stale(status, tags, start_time_ms, now):
        killed = "the process was killed (SIGKILL, a lost node) without ending the run; " \
                 "rerunning the comparison trains this pair again"
        if last is not None:
            return "interrupted", f"no heartbeat for {_duration(now - last)}: {killed}"
        return "interrupted", f"no heartbeat since it started {_duration(now - started)} ago: {killed}"
    if last is not None:
        return "running", f"still running (last heartbeat {_duration(now - last)} ago)"
    if beat is not None:
        return "running", f"still running as far as can be told (unreadable {HEARTBEAT_TAG} tag {beat!r})"
    return "running", "still running" + (f" (started {_duration(now - started)} ago, no heartbeat yet)"
                                          if started else "")


def _record(run, now: float | None = None) -> RunRecord:
    tags = dict(run.data.tags)
    reason = tags.get("harness.failure_reason")
    state = run.info.status
    if state != "FINISHED":
        state, default = _state(state, tags, run.info.start_time, time.time() if now is None else now)
        reason = reason or default
    return RunRecord(
        run_id=run.info.run_id, objective=tags.get("harness.objective", "?"),
        seed=_int(tags.get("harness.seed", run.data.params.get("seed"))), status=run.info.status,
        track=tags.get("harness.track") or "default", budget_id=tags.get("harness.budget_id") or "unknown",
        identity=tags.get("harness.identity", ""), start_time=run.info.start_time or 0,
        parent_run_id=tags.get("mlflow.parentRunId"), tags=tags, failure_reason=reason, state=state,
    )


@contextmanager
def _quiet_downloads():
    """No tqdm bar per downloaded artifact (MLflow reads this variable at each download)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _results_document(client, run_id: str) -> tuple[dict | None, str | None]:
    """The results JSON at the artifact root (``<identity>-<runid8>.json``), or (None, None)."""
    try:
        files = [f.path for f in client.list_artifacts(run_id) if not f.is_dir and f.path.endswith(".json")]
    except Exception:  # noqa: BLE001 - an unreachable artifact store means no item scores, not no board
        return None, None
    preferred = [p for p in files if p.endswith(f"-{run_id[:8]}.json")]
    for path in preferred + [p for p in files if p not in preferred]:
        try:
            with tempfile.TemporaryDirectory() as d:
                local = client.download_artifacts(run_id, path, d)
                doc = json.loads(Path(local).read_text())
        except Exception:  # noqa: BLE001
            continue
        if isinstance(doc, dict) and isinstance(doc.get("tasks"), dict):
            return doc, path
    return None, None


def _is_diagnostic(task: str) -> bool:
    """Tasks of the geometry family describe the embedding space, and aggregates (sts-avg) repeat
    their members' scores: neither is a ranking target."""
    try:
        from tasks import TASKS

        cls = TASKS.get(task)
        return cls.family == "geometry" or bool(getattr(cls, "aggregate", False))
    except Exception:  # noqa: BLE001 - unknown task: ranked like any other
        return False


def _family(task: str) -> str:
    try:
        from tasks import TASKS

        return TASKS.get(task).family
    except Exception:  # noqa: BLE001 - unknown task: no family
        return ""


#: task families of the text section (objectives against STS tasks, SimCSE's protocol)
TEXT_FAMILIES = ("sts",)


def _registry_direction(task: str) -> bool | None:
    try:
        from tasks import TASKS

        return bool(TASKS.get(task).higher_is_better)
    except Exception:  # noqa: BLE001 - unknown or unloadable task: the caller falls back
        return None


def _load_finished(client, run, rec: RunRecord, with_artifacts: bool, with_history: bool) -> None:
    metrics = dict(run.data.metrics)
    doc, rec.results_artifact = _results_document(client, rec.run_id) if with_artifacts else (None, None)
    doc_tasks = (doc or {}).get("tasks") or {}
    tasks = list(doc_tasks)
    for k in metrics:
        task = k.split("/", 1)[0]
        if k.endswith("/main_score") and task not in NOT_TASKS and task not in tasks:
            tasks.append(task)
    for task in tasks:
        td = doc_tasks.get(task) or {}
        names = {metric_key(f"{task}/{m}"): m for m in (td.get("metrics") or {})}
        values: dict[str, float] = {}
        for k, v in metrics.items():
            if k.startswith(task + "/") and k != f"{task}/main_score":
                values[names.get(k, k[len(task) + 1:])] = float(v)
        for m, v in (td.get("metrics") or {}).items():
            values.setdefault(m, float(v))
        main = metrics.get(f"{task}/main_score", td.get("main_score"))
        if main is None:
            continue
        rec.scores[task] = float(main)
        rec.metrics[task] = values
        rec.main_metric[task] = td.get("main_metric") or "main_score"
        hib = td.get("higher_is_better")
        rec.higher_is_better[task] = bool(hib) if hib is not None else (_registry_direction(task) is not False)
        items = td.get("item_scores")
        if items:
            rec.item_scores[task] = [float(x) for x in items]
    rec.cost = {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("cost/")}
    if "train/final_loss" in metrics:
        rec.cost["final_loss"] = float(metrics["train/final_loss"])
    if with_history:
        hist: dict[int, float] = {}
        for m in sorted(client.get_metric_history(rec.run_id, "train/loss"), key=lambda m: (m.step, m.timestamp)):
            hist[int(m.step)] = float(m.value)
        rec.loss = sorted(hist.items())


def _parent_pairs(client, parent_id: str) -> list[str]:
    """Run ids a comparison lists in its ``pairs.json`` artifact (reused runs included), if any."""
    try:
        names = [f.path for f in client.list_artifacts(parent_id) if f.path == "pairs.json"]
        if not names:
            return []
        with tempfile.TemporaryDirectory() as d:
            doc = json.loads(Path(client.download_artifacts(parent_id, "pairs.json", d)).read_text())
    except Exception:  # noqa: BLE001
        return []
    pairs = doc.get("pairs", doc) if isinstance(doc, dict) else doc
    return [p["run_id"] for p in pairs if isinstance(p, dict) and p.get("run_id")]


def collect(experiment: str = "harness", parent_run_id: str | None = None, track: str | None = None,
            tracking_uri: str | None = None, *, with_artifacts: bool = True, with_history: bool = True,
            now: float | None = None) -> Collected:
    """Read the runs to rank (the members of one comparison, or every run of the experiment).

    ``now`` (Unix seconds, default the clock) is when heartbeats are judged stale.
    Raises :class:`NoRunsError` when the experiment, the parent or any FINISHED run is missing.
    """
    client, uri = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    parent = None
    notes: list[str] = []
    if exp is None and parent_run_id is None:
        known = sorted(e.name for e in client.search_experiments())
        raise NoRunsError(f"no MLflow experiment {experiment!r} in {uri} (experiments there: "
                          f"{', '.join(known) or 'none'}); run `harness compare` or `harness run` first, "
                          f"or pick one with --experiment")
    if parent_run_id:
        parent = _resolve_parent(client, exp.experiment_id if exp else "0", parent_run_id)
        if exp is None or parent.info.experiment_id != exp.experiment_id:
            exp = client.get_experiment(parent.info.experiment_id)
            notes.append(f"parent run {parent.info.run_id} belongs to experiment {exp.name!r}; that is used")
        if parent.data.tags.get("harness.role") not in (None, "compare"):
            notes.append(f"run {parent.info.run_id} is not a comparison (harness.role = "
                         f"{parent.data.tags.get('harness.role')!r})")
        pid = parent.info.run_id
        runs = {r.info.run_id: r for r in _search(client, exp.experiment_id, f"tags.mlflow.parentRunId = '{pid}'")}
        children = set(runs)
        with _quiet_downloads():
            listed = _parent_pairs(client, pid)
        for rid in listed:
            if rid not in runs:
                try:
                    runs[rid] = client.get_run(rid)
                except Exception:  # noqa: BLE001
                    notes.append(f"pairs.json lists run {rid}, which is not in the store")
        key = parent.data.tags.get("harness.compare_key")
        if key:
            for r in _search(client, exp.experiment_id,
                             f"tags.`harness.compare_key` = '{key}' and attributes.status = 'FINISHED'"):
                runs.setdefault(r.info.run_id, r)
        runs = {k: r for k, r in runs.items() if r.data.tags.get("harness.role", "run") == "run"}
        reused = set(runs) - children
    else:
        runs = {r.info.run_id: r for r in _search(client, exp.experiment_id, "tags.`harness.role` = 'run'")}
        reused = set()
    now = time.time() if now is None else now
    records = {rid: _record(r, now) for rid, r in runs.items()}
    if track:
        records = {k: v for k, v in records.items() if v.track == track}

    def preference(rec: RunRecord):
        direct = parent is not None and rec.parent_run_id == parent.info.run_id
        return (direct, rec.start_time)

    finished: dict[tuple, RunRecord] = {}
    duplicates = []
    for rec in sorted((r for r in records.values() if r.status == "FINISHED"), key=preference, reverse=True):
        if rec.key in finished:
            duplicates.append(rec)
        else:
            finished[rec.key] = rec
    failed = [r for r in records.values() if r.status != "FINISHED" and r.key not in finished]
    superseded = [r for r in records.values() if r.status != "FINISHED" and r.key in finished]
    where = f"comparison {parent.info.run_id}" if parent else f"experiment {exp.name!r}"
    if not finished:
        what = f" on track {track!r}" if track else ""
        fails = f"; {len(failed)} run(s) did not finish ({_by_state(failed)})" if failed else ""
        raise NoRunsError(f"no FINISHED run to rank in {where}{what} ({uri}){fails}; "
                          f"run `harness compare --objectives ...` first")
    for rec in finished.values():
        with _quiet_downloads():
            _load_finished(client, runs[rec.run_id], rec, with_artifacts, with_history)
    order = sorted(finished.values(), key=lambda r: (r.track, r.objective, r.seed, r.start_time))
    return Collected(experiment=exp.name, experiment_id=exp.experiment_id, tracking_uri=uri,
                     parent_run_id=parent.info.run_id if parent else None,
                     parent_tags=dict(parent.data.tags) if parent else {}, runs=order,
                     failed=sorted(failed, key=lambda r: (r.track, r.objective, r.seed)), notes=notes,
                     duplicates=duplicates, superseded=superseded, reused=reused,
                     with_artifacts=with_artifacts)


#: the order in which counts of states are written ("1 FAILED, 1 KILLED, 1 running, 2 interrupted")
STATES = ("FAILED", "KILLED", "running", "interrupted", "SCHEDULED")


def _by_state(runs: Iterable[RunRecord]) -> str:
    counts = Counter(r.state for r in runs)
    order = [s for s in STATES if s in counts] + sorted(set(counts) - set(STATES))
    return ", ".join(f"{counts[s]} {s}" for s in order)


def _board_notes(collected: Collected, truns: list[RunRecord], failed: list[RunRecord], track: str,
                 budget: str) -> list[str]:
    """Notes about the runs of one board (its track and budget), counted over those runs only."""
    def mine(rs):
        return [r for r in rs if r.track == track and r.budget_id == budget]

    notes = []
    dup, sup = mine(collected.duplicates), mine(collected.superseded)
    if dup:
        notes.append(f"{len(dup)} older duplicate FINISHED run(s) of the same (track, budget, objective, "
                     f"seed) ignored")
    if sup:
        notes.append(f"{len(sup)} run(s) that did not finish ({_by_state(sup)}) are not listed: a FINISHED "
                     f"run of the same (objective, seed) is ranked instead")
    reused = [r for r in truns if r.run_id in collected.reused]
    if reused:
        notes.append(f"{len(reused)} run(s) reused by this comparison from earlier runs (resumed), not its "
                     f"children")
    if collected.with_artifacts:
        notes += [f"run {r.run_id[:8]} ({r.label}) has no results JSON: no item scores, no paired bootstrap "
                  f"for it" for r in truns if r.results_artifact is None]
    if failed:
        notes.append(f"{len(failed)} run(s) not ranked: {_by_state(failed)} (see Not ranked)")
    running = [r.label for r in failed if r.state == "running"]
    if running:
        notes.append(f"{len(running)} run(s) still running ({', '.join(running)}): this board is provisional "
                     f"until they finish")
    interrupted = [r.label for r in failed if r.state == "interrupted"]
    if interrupted:
        notes.append(f"{len(interrupted)} run(s) interrupted ({', '.join(interrupted)}): their processes "
                     f"were killed without ending the run (no heartbeat); rerunning the comparison trains "
                     f"these pairs again")
    return notes


# -- statistics -------------------------------------------------------------------------------------
_INF = math.inf
_AT = r"(?:.+/)?"  # a prefix inside a task: a split, a probe target, a member task (test/, shape/, stsb/)

#: The range of a metric, by its name (``re.fullmatch``, first match wins); the CI is cut there. Names are
#: those the tasks record (CLIP_benchmark's and MTEB's, ``@`` also as MLflow's ``_at_``) and the cost keys.
#: Unknown names are unbounded. Never read from the installed task registry: a board is rebuilt from what
#: the runs recorded. docs/leaderboard-statistics.md explains each row.
METRIC_BOUNDS: list[tuple[str, tuple[float, float]]] = [
    (_AT + r"n_\w+", (0.0, _INF)),  # counts: n_undecodable, n_queries, n_groups, ...
    (_AT + r"(?:\w+_)?(?:recall|precision|ndcg|map|mrr)(?:@|_at_)\d+", (0.0, 1.0)),  # retrieval @k
    (_AT + r"(?:mean_per_class_recall|map|accuracy|f1(?:_\w+)?|ap|pairs_from_captions)", (0.0, 1.0)),
    (_AT + r"(?:macro_|val_)?acc\d*(?:/.+)?", (0.0, 1.0)),  # acc1, test/color/acc, macro_acc, acc/<group>
    (_AT + r"(?:text|image|group)_score(?:/.+)?", (0.0, 1.0)),  # Winoground
    (r"rsum", (0.0, _INF)),  # 100 x the sum of the recalls; its top depends on the task's ks
    (_AT + r"(?:\w+_)?(?:mean|median)_rank", (1.0, _INF)),  # 1-based rank of the first match
    (_AT + r"(?:spearman|pearson|avg|avg_pearson)", (-100.0, 100.0)),  # STS correlations x100 (SimCSE)
    (_AT + r"\w+_(?:spearman|pearson)", (-1.0, 1.0)),  # MTEB's cosine_spearman, ...: fractions
    (_AT + r"(?:mean_)?cosine(?:_\w+)?", (-1.0, 1.0)),  # cosines of unit vectors
    (_AT + r"mean_gold", (0.0, 5.0)),  # the shapes world's gold similarity
    (r"alignment", (0.0, 4.0)),  # E ||x - y||^2 of unit vectors (Wang & Isola, alpha = 2)
    (r"uniformity(?:_\w+)?", (-8.0, 0.0)),  # log E exp(-2 ||x - y||^2) of unit vectors
    (r"modality_gap", (0.0, 2.0)),  # distance of two centroids of unit vectors
    (r"effective_rank(?:_\w+)?", (0.0, _INF)),
    (_AT + r"weight_decay", (0.0, _INF)),  # the linear probe's chosen L2 penalty
    (r"wall_seconds|samples_per_second|peak_memory_mb|flops_per_step|samples_seen", (0.0, _INF)),  # cost/
]
_BOUND_PATTERNS = [(re.compile(p), b) for p, b in METRIC_BOUNDS]


def metric_bounds(name: str) -> tuple[float, float] | None:
    """(low, high) of a metric named ``name`` (a task's metric, a main metric or a cost key), or None."""
    return next((b for p, b in _BOUND_PATTERNS if p.fullmatch(name)), None)


@dataclass
class Summary:
    """Values over seeds: mean, sample sd, the 95% Student-t half-width ``ci`` (None when n = 1), and the
    metric's range ``bounds``: the interval is ``[mean - ci, mean + ci]`` cut at ``bounds``."""

    values: dict[int, float]
    mean: float
    std: float | None
    ci: float | None
    n: int
    bounds: tuple[float, float] | None = None

    @property
    def low(self) -> float | None:
        if self.ci is None:
            return None
        return self.mean - self.ci if self.bounds is None else max(self.bounds[0], self.mean - self.ci)

    @property
    def high(self) -> float | None:
        if self.ci is None:
            return None
        return self.mean + self.ci if self.bounds is None else min(self.bounds[1], self.mean + self.ci)

    @property
    def symmetric(self) -> bool:
        """Whether the interval is ``mean ± ci`` (no end was cut at the range)."""
        return self.ci is None or (self.low == self.mean - self.ci and self.high == self.mean + self.ci)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "ci95": self.ci, "low": self.low, "high": self.high,
                "symmetric": self.symmetric, "bounds": None if self.bounds is None else list(self.bounds),
                "n": self.n, "values": {str(k): v for k, v in sorted(self.values.items())}}


def summarize(values: dict[int, float], level: float = 0.95,
              bounds: tuple[float, float] | None = None) -> Summary | None:
    """Mean and Student-t interval over seeds, cut at ``bounds`` (see :func:`metric_bounds`). Values outside
    ``bounds`` mean the table does not describe this metric: the interval is then left unbounded."""
    from scipy import stats

    vals = {s: float(v) for s, v in values.items() if v is not None and math.isfinite(float(v))}
    if not vals:
        return None
    x = np.array([vals[s] for s in sorted(vals)])
    if bounds is not None and not (bounds[0] <= x.min() and x.max() <= bounds[1]):
        bounds = None
    bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
    n = len(x)
    mean = float(x.mean()) if bounds is None else float(np.clip(x.mean(), *bounds))  # rounding only
    if n == 1:
        return Summary(vals, mean, None, None, 1, bounds)
    sd = float(np.std(x, ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    return Summary(vals, mean, sd, half, n, bounds)


def _hull(bounds: Iterable[tuple[float, float] | None]) -> tuple[float, float] | None:
    """The smallest range holding every one of ``bounds``; None when any is unknown (or there are none)."""
    bs = list(bounds)
    if not bs or any(b is None for b in bs):
        return None
    return min(b[0] for b in bs), max(b[1] for b in bs)


@dataclass
class PairedTest:
    """``objective`` against ``baseline``: delta = objective - baseline (raw, not direction-adjusted)."""

    objective: str
    baseline: str
    delta: float | None = None  # mean over the seeds both have
    p_ttest: float | None = None
    n_seeds: int = 0
    p_bootstrap: float | None = None
    delta_items: float | None = None  # mean over items of the seed-averaged per-item differences
    boot_low: float | None = None
    boot_high: float | None = None
    n_items: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def paired_ttest(a: dict[int, float], b: dict[int, float]) -> tuple[float | None, float | None, int]:
    """(mean difference a - b, two-sided p, n) over the seeds both have; p None below two seeds."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None, None, 0
    x = np.array([a[s] for s in seeds], dtype=float)
    y = np.array([b[s] for s in seeds], dtype=float)
    delta = float((x - y).mean())
    if len(seeds) < 2:
        return delta, None, len(seeds)
    if np.all(x == y):
        return delta, 1.0, len(seeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_rel(x, y).pvalue)
    return delta, (p if math.isfinite(p) else None), len(seeds)


def _item_diffs(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> np.ndarray | None:
    seeds = [s for s in sorted(set(a) & set(b)) if len(a[s]) == len(b[s]) and len(a[s]) > 0]
    lengths = {len(a[s]) for s in seeds}
    if not seeds or len(lengths) != 1:
        return None
    return np.mean([a[s] - b[s] for s in seeds], axis=0)


def bootstrap_counts(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """``n_boot`` resamples of ``n_items`` items with replacement, as counts per item (n_boot x n_items)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_items, size=(n_boot, n_items))
    return np.stack([np.bincount(row, minlength=n_items) for row in idx]).astype(np.float64)


def paired_bootstrap(diffs: np.ndarray, counts: np.ndarray) -> tuple[float, float, float, float]:
    """(observed mean difference, two-sided p, 2.5%, 97.5%) of the mean per-item difference."""
    n_boot, n = counts.shape
    delta = float(diffs.mean())
    boot = counts @ diffs / n
    if np.all(diffs == 0):
        p = 1.0
    else:
        extreme = np.abs(boot - delta) >= abs(delta) - 1e-12 * max(1.0, abs(delta))
        p = float((1 + extreme.sum()) / (n_boot + 1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return delta, p, float(lo), float(hi)


@dataclass
class TaskBoard:
    task: str
    main_metric: str
    higher_is_better: bool
    scores: dict[str, Summary]  # objective -> main score over seeds
    ranks: dict[str, int]
    tests: dict[str, PairedTest]  # objective -> against the baseline (main score)
    metrics: dict[str, dict[str, Summary]]  # metric -> objective -> summary
    metric_tests: dict[str, dict[str, PairedTest]]  # metric -> objective -> t-test against the baseline
    better: dict[str, list[str]]  # objective -> the objectives significantly better than it
    n_items: int = 0

    def to_dict(self) -> dict:
        return {
            "task": self.task, "main_metric": self.main_metric, "higher_is_better": self.higher_is_better,
            "n_items": self.n_items,
            "scores": {o: s.to_dict() for o, s in self.scores.items()}, "ranks": self.ranks,
            "significantly_better": self.better,
            "vs_baseline": {o: t.to_dict() for o, t in self.tests.items()},
            "metrics": {m: {o: s.to_dict() for o, s in d.items()} for m, d in self.metrics.items()},
            "metric_vs_baseline": {m: {o: t.to_dict() for o, t in d.items()} for m, d in self.metric_tests.items()},
        }


@dataclass
class Leaderboard:
    experiment: str
    track: str
    budget_id: str
    baseline: str
    objectives: list[str]  # ordered: mean rank, Borda (desc), name
    tasks: list[str]
    seeds: list[int]
    task_boards: dict[str, TaskBoard]
    mean_rank: dict[str, float | None]
    borda: dict[str, int]
    n_tasks: dict[str, int]
    cost: dict[str, dict[str, Summary]]  # objective -> cost metric -> summary
    loss_curves: dict[str, dict[str, list]]  # objective -> {"step", "mean", "min", "max"}
    runs: list[RunRecord]
    failed: list[RunRecord]
    provenance: dict[str, Any]
    notes: list[str]
    alpha: float = 0.05
    n_boot: int = 1000
    rank_rule: str = "either"
    text: "TextSection | None" = None

    def seeds_of(self, objective: str) -> int:
        return len({r.seed for r in self.runs if r.objective == objective})

    def long_rows(self) -> list[dict[str, Any]]:
        """Long format: one row per (objective, task, metric, seed) value, then the summary rows."""
        rows: list[dict[str, Any]] = []

        def add(kind, objective, task, metric, seed, value, run_id=""):
            rows.append({"track": self.track, "kind": kind, "objective": objective, "task": task, "metric": metric,
                         "seed": "" if seed is None else seed, "value": value, "run_id": run_id})

        for r in sorted(self.runs, key=lambda r: (self.objectives.index(r.objective), r.seed)):
            for task in self.tasks:
                if task not in r.scores:
                    continue
                add("value", r.objective, task, "main_score", r.seed, r.scores[task], r.run_id)
                for m, v in r.metrics[task].items():
                    add("value", r.objective, task, m, r.seed, v, r.run_id)
            for m, v in r.cost.items():
                add("value", r.objective, "cost", m, r.seed, v, r.run_id)
        for task, tb in self.task_boards.items():
            for o in self.objectives:
                if o not in tb.scores:
                    continue
                s = tb.scores[o]
                for kind, v in (("mean", s.mean), ("ci95", s.ci), ("ci_low", s.low), ("ci_high", s.high),
                                ("n", s.n), ("rank", tb.ranks[o])):
                    add(kind, o, task, "main_score", None, v)
                t = tb.tests.get(o)
                if t is not None:
                    for kind, v in (("delta_vs_baseline", t.delta), ("p_ttest", t.p_ttest),
                                    ("p_bootstrap", t.p_bootstrap)):
                        add(kind, o, task, "main_score", None, v)
                for m, d in tb.metrics.items():
                    if o in d:
                        for kind, v in (("mean", d[o].mean), ("ci95", d[o].ci), ("ci_low", d[o].low),
                                        ("ci_high", d[o].high)):
                            add(kind, o, task, m, None, v)
                        mt = tb.metric_tests.get(m, {}).get(o)
                        if mt is not None:
                            add("p_ttest", o, task, m, None, mt.p_ttest)
        for o in self.objectives:
            add("mean_rank", o, "", "", None, self.mean_rank[o])
            add("borda", o, "", "", None, self.borda[o])
            for m, s in self.cost.get(o, {}).items():
                for kind, v in (("mean", s.mean), ("ci95", s.ci), ("ci_low", s.low), ("ci_high", s.high)):
                    add(kind, o, "cost", m, None, v)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "provenance": self.provenance,
            "track": self.track, "budget_id": self.budget_id, "baseline": self.baseline,
            "objectives": self.objectives, "tasks": self.tasks, "seeds": self.seeds,
            "statistics": {"alpha": self.alpha, "n_boot": self.n_boot, "rank_rule": self.rank_rule,
                           "ci": CI_METHOD},
            "summary": {o: {"mean_rank": self.mean_rank[o], "borda": self.borda[o], "n_tasks": self.n_tasks[o],
                            "seeds": self.seeds_of(o),
                            "scores": {t: tb.scores[o].to_dict() for t, tb in self.task_boards.items()
                                       if o in tb.scores},
                            "ranks": {t: tb.ranks[o] for t, tb in self.task_boards.items() if o in tb.ranks},
                            "cost": {m: s.to_dict() for m, s in self.cost.get(o, {}).items()}}
                        for o in self.objectives},
            "task_boards": {t: tb.to_dict() for t, tb in self.task_boards.items()},
            "text": self.text.to_dict() if self.text is not None else None,
            "loss_curves": self.loss_curves,
            "runs": [{"run_id": r.run_id, "objective": r.objective, "seed": r.seed, "status": r.status,
                      "identity": r.identity, "results_artifact": r.results_artifact} for r in self.runs],
            "failed": [{"run_id": r.run_id, "objective": r.objective, "seed": r.seed, "status": r.status,
                        "state": r.state, "reason": r.failure_reason} for r in self.failed],
            "notes": self.notes,
            "rows": self.long_rows(),
        }


@dataclass
class TextSection:
    """Objectives against the STS tasks: per-seed average Spearman over the STS tasks an objective
    has (SimCSE's "Avg."), summarised over seeds with the same statistics as a task (95% Student-t
    CI cut at the range of the tasks' main metrics, paired t-test against the baseline over seeds),
    and the mean rank over the STS tasks."""

    tasks: list[str]
    average: dict[str, Summary]
    tests: dict[str, PairedTest]
    mean_rank: dict[str, float | None]

    def to_dict(self) -> dict:
        return {"tasks": self.tasks, "average": {o: s.to_dict() for o, s in self.average.items()},
                "vs_baseline": {o: t.to_dict() for o, t in self.tests.items()}, "mean_rank": self.mean_rank}


def _text_section(boards_t: dict, runs: list, objectives: list[str], baseline: str) -> TextSection | None:
    tasks = [t for t in boards_t if _family(t) in TEXT_FAMILIES and not _is_diagnostic(t)]
    if not tasks:
        return None
    per_seed: dict[str, dict[int, float]] = {}
    for o in objectives:
        vals: dict[int, float] = {}
        for r in runs:
            if r.objective == o and all(t in r.scores for t in tasks):
                vals[r.seed] = float(np.mean([r.scores[t] for t in tasks]))
        per_seed[o] = vals
    bounds = _hull(metric_bounds(boards_t[t].main_metric) for t in tasks)
    average = {o: s for o in objectives if (s := summarize(per_seed[o], bounds=bounds))}
    tests = {}
    for o in average:
        if o != baseline and baseline in average:
            delta, p, n = paired_ttest(per_seed[o], per_seed[baseline])
            tests[o] = PairedTest(o, baseline, delta=delta, p_ttest=p, n_seeds=n)
    mean_rank = {}
    for o in objectives:
        rs = [boards_t[t].ranks[o] for t in tasks if o in boards_t[t].ranks]
        mean_rank[o] = float(np.mean(rs)) if rs else None
    return TextSection(tasks, average, tests, mean_rank)


def text_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """The text section's table: STS tasks (mean ± CI, rank), the average, its test against the baseline."""
    sec = board.text
    header = ["objective"] + [f"{t} (rank)" for t in sec.tasks] + \
             ["STS avg, 95% CI", f"Δ avg vs {board.baseline}", "p (paired t, seeds)", "mean rank (STS)"]
    rows = []
    order = sorted(board.objectives, key=lambda o: (sec.mean_rank.get(o) is None, sec.mean_rank.get(o) or 0, o))
    for o in order:
        if sec.mean_rank.get(o) is None:
            continue
        cells = [o + (" (baseline)" if o == board.baseline else "")]
        for t in sec.tasks:
            tb = board.task_boards[t]
            cells.append(f"{fmt_summary(tb.scores[o])} ({tb.ranks[o]})" if o in tb.scores else "–")
        t = sec.tests.get(o)
        cells += [fmt_summary(sec.average.get(o)), "(baseline)" if o == board.baseline else
                  fmt_num(t.delta if t else None, 3), fmt_p(t.p_ttest) if t else "", fmt_num(sec.mean_rank[o], 2)]
        rows.append(cells)
    return header, rows


def _significantly_better(b_over_a: dict[str, tuple[float | None, float | None]], hib: bool, alpha: float,
                          rule: str) -> bool:
    """``b_over_a``: test name -> (delta b - a, p). True when b beats a under ``rule``."""
    def sig(name):
        delta, p = b_over_a.get(name, (None, None))
        if delta is None or p is None:
            return None
        return p < alpha and (delta > 0 if hib else delta < 0)

    boot, tt = sig("bootstrap"), sig("ttest")
    available = [x for x in (boot, tt) if x is not None]
    if not available:
        return False
    if rule == "either":
        return any(available)
    if rule == "both":
        return all(available)
    if rule == "bootstrap":
        return boot if boot is not None else tt
    return tt if tt is not None else boot


def _task_seed(boot_seed: int, task: str) -> int:
    return (boot_seed * 1_000_003 + zlib.crc32(task.encode())) % (2**32)


def _task_board(task: str, runs: list[RunRecord], objectives: list[str], baseline: str, alpha: float,
                n_boot: int, boot_seed: int, rule: str) -> TaskBoard | None:
    have = [r for r in runs if task in r.scores]
    objs = [o for o in objectives if any(r.objective == o for r in have)]
    if not objs:
        return None
    hib_votes = Counter(r.higher_is_better[task] for r in have)
    hib = hib_votes.most_common(1)[0][0]
    main_metric = Counter(r.main_metric[task] for r in have).most_common(1)[0][0]
    main = {o: {r.seed: r.scores[task] for r in have if r.objective == o} for o in objs}
    items = {o: {r.seed: np.asarray(r.item_scores[task], dtype=float) for r in have
                 if r.objective == o and task in r.item_scores} for o in objs}
    scores = {o: summarize(main[o], bounds=metric_bounds(main_metric)) for o in objs}
    objs = [o for o in objs if scores[o] is not None]

    counts: dict[int, np.ndarray] = {}

    def boot(a: str, b: str):
        d = _item_diffs(items[a], items[b])
        if d is None:
            return None
        n = len(d)
        if n not in counts:
            counts[n] = bootstrap_counts(n, n_boot, _task_seed(boot_seed, task))
        return paired_bootstrap(d, counts[n]), n

    pair: dict[tuple[str, str], dict[str, tuple]] = {}  # (b, a) -> tests of b - a
    n_items = 0
    for i, a in enumerate(objs):
        for b in objs[i + 1:]:
            d_t, p_t, _ = paired_ttest(main[b], main[a])
            bs = boot(b, a)
            tests = {"ttest": (d_t, p_t)}
            if bs is not None:
                (d_b, p_b, _, _), n_items = bs
                tests["bootstrap"] = (d_b, p_b)
            pair[(b, a)] = tests
            pair[(a, b)] = {k: (None if d is None else -d, p) for k, (d, p) in tests.items()}
    better = {a: [b for b in objs if b != a and _significantly_better(pair[(b, a)], hib, alpha, rule)] for a in objs}
    ranks = {a: 1 + len(better[a]) for a in objs}

    tests: dict[str, PairedTest] = {}
    if baseline in objs:
        for o in objs:
            if o == baseline:
                continue
            d_t, p_t, n_t = paired_ttest(main[o], main[baseline])
            t = PairedTest(o, baseline, delta=d_t, p_ttest=p_t, n_seeds=n_t)
            bs = boot(o, baseline)
            if bs is not None:
                (t.delta_items, t.p_bootstrap, t.boot_low, t.boot_high), t.n_items = bs
            tests[o] = t

    metric_names: list[str] = []
    for r in have:
        for m in r.metrics[task]:
            if m not in metric_names:
                metric_names.append(m)
    metrics: dict[str, dict[str, Summary]] = {}
    metric_tests: dict[str, dict[str, PairedTest]] = {}
    for m in metric_names:
        vals = {o: {r.seed: r.metrics[task][m] for r in have if r.objective == o and m in r.metrics[task]}
                for o in objs}
        metrics[m] = {o: s for o in objs if (s := summarize(vals[o], bounds=metric_bounds(m))) is not None}
        if baseline in objs:
            mt = {}
            for o in objs:
                if o != baseline:
                    d_t, p_t, n_t = paired_ttest(vals[o], vals[baseline])
                    mt[o] = PairedTest(o, baseline, delta=d_t, p_ttest=p_t, n_seeds=n_t)
            metric_tests[m] = mt
    return TaskBoard(task=task, main_metric=main_metric, higher_is_better=hib,
                     scores={o: scores[o] for o in objs}, ranks=ranks, tests=tests, metrics=metrics,
                     metric_tests=metric_tests, better=better, n_items=n_items)


def _loss_curves(runs: list[RunRecord], objectives: list[str]) -> dict[str, dict[str, list]]:
    out = {}
    for o in objectives:
        curves = [dict(r.loss) for r in runs if r.objective == o and r.loss]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if not steps:
            continue
        m = np.array([[c[s] for s in steps] for c in curves])
        out[o] = {"step": steps, "mean": m.mean(0).tolist(), "min": m.min(0).tolist(), "max": m.max(0).tolist(),
                  "n": len(curves)}
    return out


def _select_budget(runs: list[RunRecord], budget_id: str | None, where: str) -> tuple[list[RunRecord], str]:
    counts = Counter(r.budget_id for r in runs)
    if budget_id:
        matches = [b for b in counts if b == budget_id] or [b for b in counts if b.startswith(budget_id)]
        if len(matches) != 1:
            listing = ", ".join(f"{b} ({n} runs)" for b, n in counts.most_common())
            problem = "matches several" if matches else "matches none of"
            raise NoRunsError(f"--budget-id {budget_id!r} {problem} the budget ids of the finished runs in "
                              f"{where}: {listing}")
        return [r for r in runs if r.budget_id == matches[0]], matches[0]
    if len(counts) > 1:
        lines = []
        for b, n in counts.most_common():
            objs = sorted({r.objective for r in runs if r.budget_id == b})
            lines.append(f"  {b}: {n} finished run(s) ({', '.join(objs)})")
        raise MixedBudgetsError(
            f"the finished runs in {where} were trained under {len(counts)} different budgets, and runs under "
            f"different budgets are never ranked side by side:\n" + "\n".join(lines) +
            f"\nselect one with --budget-id ID (for example --budget-id {counts.most_common(1)[0][0]})",
            dict(counts))
    return runs, next(iter(counts))


def _distinct(runs: Iterable[RunRecord], tag: str) -> list[str]:
    return sorted({r.tags[tag] for r in runs if r.tags.get(tag)})


def build(collected: Collected, *, budget_id: str | None = None, baseline: str | None = None,
          alpha: float = 0.05, n_boot: int = 1000, boot_seed: int = 0, rank_rule: str = "either") -> list[Leaderboard]:
    """One :class:`Leaderboard` per track (``default`` first), from one budget.

    Raises :class:`MixedBudgetsError` when the runs carry several budget ids and ``budget_id`` is
    None, :class:`NoRunsError` when nothing is left, :class:`LeaderboardError` for an unknown
    ``baseline`` or ``rank_rule``.
    """
    if rank_rule not in RANK_RULES:
        raise LeaderboardError(f"unknown rank rule {rank_rule!r}; one of {', '.join(RANK_RULES)}")
    where = (f"comparison {collected.parent_run_id}" if collected.parent_run_id
             else f"experiment {collected.experiment!r}")
    if not collected.runs:
        raise NoRunsError(f"no FINISHED run to rank in {where}")
    runs, budget = _select_budget(collected.runs, budget_id, where)
    failed = [r for r in collected.failed if r.budget_id in (budget, "unknown")]
    declared = [o.strip() for o in collected.parent_tags.get("harness.objectives", "").split(",") if o.strip()]
    tracks = sorted({r.track for r in runs}, key=lambda t: (t != "default", t))
    boards = []
    for track in tracks:
        truns = [r for r in runs if r.track == track]
        present = {r.objective for r in truns}
        objectives = [o for o in declared if o in present] + sorted(present - set(declared))
        if baseline is not None and baseline not in present:
            raise LeaderboardError(f"baseline {baseline!r} has no finished run on track {track!r} under budget "
                                   f"{budget}; objectives there: {', '.join(objectives)}")
        base = baseline or ("clip" if "clip" in present else objectives[0])
        tasks: list[str] = []
        for r in truns:
            for t in r.scores:
                if t not in tasks:
                    tasks.append(t)
        boards_t = {}
        for t in tasks:
            tb = _task_board(t, truns, objectives, base, alpha, n_boot, boot_seed, rank_rule)
            if tb is not None:
                boards_t[t] = tb
        mean_rank, borda, n_tasks = {}, {}, {}
        # diagnostic tasks (geometry) are shown but never part of the aggregate ranking
        ranked = {t: tb for t, tb in boards_t.items() if not _is_diagnostic(t)}
        for o in objectives:
            rs = [tb.ranks[o] for tb in ranked.values() if o in tb.ranks]
            mean_rank[o] = float(np.mean(rs)) if rs else None
            n_tasks[o] = len(rs)
            borda[o] = sum(sum(1 for p, rp in tb.ranks.items() if p != o and rp > tb.ranks[o])
                           for tb in ranked.values() if o in tb.ranks)
        objectives.sort(key=lambda o: (mean_rank[o] if mean_rank[o] is not None else math.inf, -borda[o], o))
        cost = {}
        for o in objectives:
            keys = sorted({k for r in truns if r.objective == o for k in r.cost})
            per_key = {k: {r.seed: r.cost[k] for r in truns if r.objective == o and k in r.cost} for k in keys}
            cost[o] = {k: s for k in keys if (s := summarize(per_key[k], bounds=metric_bounds(k)))}
        seeds = sorted({r.seed for r in truns})
        tfailed = [r for r in failed if r.track == track]
        notes = list(collected.notes) + _board_notes(collected, truns, tfailed, track, budget)
        for tag, label in (("harness.dataset_fingerprint", "dataset fingerprints"), ("harness.git_sha", "git commits"),
                           ("harness.version", "harness versions")):
            vals = _distinct(truns, tag)
            if len(vals) > 1:
                notes.append(f"the runs span {len(vals)} {label}: {', '.join(vals)}")
        missing = [f"{o} ({n_tasks[o]}/{len(boards_t)} tasks)" for o in objectives if n_tasks[o] < len(boards_t)]
        if missing:
            notes.append("not every objective has every task; mean ranks cover different tasks: " + ", ".join(missing))
        pt = collected.parent_tags
        provenance = {
            "experiment": collected.experiment, "experiment_id": collected.experiment_id,
            "tracking_uri": collected.tracking_uri, "parent_run_id": collected.parent_run_id,
            "budget_id": budget, "budget_preset": pt.get("harness.budget_preset") or
            ", ".join(_distinct(truns, "harness.budget_preset")),
            "track": track, "seeds": seeds, "objectives": objectives, "tasks": tasks,
            "command": pt.get("harness.command"), "compare_key": pt.get("harness.compare_key"),
            "harness_version": ", ".join(_distinct(truns, "harness.version")),
            "git_sha": ", ".join(_distinct(truns, "harness.git_sha")),
            "dataset_fingerprint": ", ".join(_distinct(truns, "harness.dataset_fingerprint")),
            "model": ", ".join(_distinct(truns, "harness.model")),
            "n_runs": len(truns), "n_failed": len(tfailed),
            "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        boards.append(Leaderboard(
            experiment=collected.experiment, track=track, budget_id=budget, baseline=base, objectives=objectives,
            tasks=list(boards_t), seeds=seeds, task_boards=boards_t, mean_rank=mean_rank, borda=borda,
            n_tasks=n_tasks, cost=cost, loss_curves=_loss_curves(truns, objectives), runs=truns,
            failed=tfailed, provenance=provenance, notes=notes, alpha=alpha,
            n_boot=n_boot, rank_rule=rank_rule, text=_text_section(boards_t, truns, objectives, base)))
    return boards


def leaderboard(experiment: str = "harness", parent_run_id: str | None = None, track: str | None = None,
                tracking_uri: str | None = None, **build_kw) -> list[Leaderboard]:
    """:func:`collect` then :func:`build`."""
    return build(collect(experiment, parent_run_id, track, tracking_uri), **build_kw)


# -- formatting -------------------------------------------------------------------------------------
def fmt_num(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_summary(s: Summary | None, digits: int = 3) -> str:
    if s is None:
        return "n/a"
    if s.ci is None:
        return f"{s.mean:.{digits}f} ± n/a"
    if s.symmetric:
        return f"{s.mean:.{digits}f} ± {s.ci:.{digits}f}"
    return f"{s.mean:.{digits}f} [{s.low:.{digits}f}, {s.high:.{digits}f}]"  # cut at the metric's range


#: how a score cell reads, for captions
CELL = "mean ± 95% CI over seeds, or mean [low, high] where the interval is cut at the metric's range"


def _err(s: Summary | None) -> tuple[float, float]:
    """(below, above) the mean: error bar lengths of the (possibly asymmetric) interval."""
    if s is None or s.ci is None:
        return 0.0, 0.0
    return s.mean - s.low, s.high - s.mean


COST_COLUMNS = [  # (key, header, scale, digits)
    ("wall_seconds", "wall s", 1.0, 1),
    ("samples_per_second", "samples/s", 1.0, 0),
    ("peak_memory_mb", "peak MB", 1.0, 0),
    ("flops_per_step", "GFLOPs/step", 1e-9, 2),
]


def _cost_cell(board: Leaderboard, o: str, key: str, scale: float, digits: int) -> str:
    s = board.cost.get(o, {}).get(key)
    return "n/a" if s is None else f"{s.mean * scale:.{digits}f}"


def summary_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """The main table: header and rows of strings (shared by the terminal, Markdown and HTML)."""
    header = ["objective"] + [f"{t} (rank)" for t in board.tasks] + ["mean rank", "Borda", "seeds"] + \
             [h for _, h, _, _ in COST_COLUMNS]
    rows = []
    for o in board.objectives:
        cells = [o + (" (baseline)" if o == board.baseline else "")]
        for t in board.tasks:
            tb = board.task_boards[t]
            cells.append(f"{fmt_summary(tb.scores[o])} ({tb.ranks[o]})" if o in tb.scores else "–")
        cells += [fmt_num(board.mean_rank[o], 2), str(board.borda[o]), str(board.seeds_of(o))]
        cells += [_cost_cell(board, o, k, sc, d) for k, _, sc, d in COST_COLUMNS]
        rows.append(cells)
    return header, rows


def task_rows(board: Leaderboard, task: str) -> tuple[list[str], list[list[str]]]:
    tb = board.task_boards[task]
    header = ["objective", "mean, 95% CI", "rank", f"Δ vs {board.baseline}", "p (paired t, seeds)",
              "p (paired bootstrap, items)", "bootstrap 95% CI of Δ", "seeds", "significantly better"]
    rows = []
    for o in board.objectives:
        if o not in tb.scores:
            continue
        t = tb.tests.get(o)
        rows.append([
            o, fmt_summary(tb.scores[o]), str(tb.ranks[o]),
            "(baseline)" if o == board.baseline else fmt_num(t.delta if t else None, 4),
            fmt_p(t.p_ttest) if t else "", fmt_p(t.p_bootstrap) if t else "",
            f"[{fmt_num(t.boot_low, 4)}, {fmt_num(t.boot_high, 4)}]" if t and t.boot_low is not None else "",
            str(tb.scores[o].n), ", ".join(tb.better[o]) or "none"])
    return header, rows


def metric_rows(board: Leaderboard, task: str) -> tuple[list[str], list[list[str]]]:
    """Every metric of a task: mean and CI per objective; ``*``: paired t-test p < alpha vs the baseline."""
    tb = board.task_boards[task]
    objs = [o for o in board.objectives if o in tb.scores]
    rows = []
    for m, d in tb.metrics.items():
        cells = [m]
        for o in objs:
            t = tb.metric_tests.get(m, {}).get(o)
            star = "*" if t is not None and t.p_ttest is not None and t.p_ttest < board.alpha else ""
            cells.append(fmt_summary(d.get(o), 4) + star)
        rows.append(cells)
    return ["metric"] + objs, rows


def failed_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Runs not ranked: status is the state shown (FAILED, KILLED, running, interrupted, SCHEDULED)."""
    return (["objective", "seed", "status", "run", "reason"],
            [[r.objective, str(r.seed), r.state, r.run_id, (r.failure_reason or "").splitlines()[0][:300]
              if r.failure_reason else ""] for r in board.failed])


def method_lines(board: Leaderboard) -> list[str]:
    rule = {"either": "the paired bootstrap over items or the paired t-test over seeds has p < alpha",
            "both": "every available test (paired bootstrap over items, paired t-test over seeds) has p < alpha",
            "bootstrap": "the paired bootstrap over items has p < alpha (the t-test where items are missing)",
            "ttest": "the paired t-test over seeds has p < alpha (the bootstrap where seeds are too few)"}
    return [
        ("Scores: mean over seeds and a 95% Student-t confidence interval (mean ± t(0.975, n-1) sd / "
         "sqrt(n)), cut at the metric's range (recall and accuracy [0, 1], STS Spearman x100 [-100, 100], "
         "ranks >= 1, cost >= 0; an unknown metric is unbounded): shown mean ± half-width, or mean "
         "[low, high] where an end was cut (± n/a: one seed)."),
        f"Rank per task: 1 + the number of objectives significantly better, where B is significantly better than A "
        f"when the difference favours B and {rule[board.rank_rule]} (alpha = {board.alpha}); objectives that cannot "
        f"be told apart share a rank. Without any test (one seed, no item scores) objectives share a rank.",
        "Paired t-test: scipy.stats.ttest_rel over the seeds both objectives have (two or more).",
        f"Paired bootstrap: the per-item differences of the item scores (matched by item index and seed), averaged "
        f"over the common seeds; items resampled with replacement {board.n_boot} times (seeded numpy Generator); "
        f"two-sided p = (1 + #|d* - d| >= |d|) / (B + 1).",
        "Mean rank: over the tasks an objective has, diagnostic tasks (geometry) and aggregates (sts-avg) excluded. Borda count: per task, the number of objectives with a "
        "strictly worse rank, summed over tasks. Order: mean rank, then Borda count, then name.",
        "Cost columns: means over seeds of cost/wall_seconds, cost/samples_per_second, cost/peak_memory_mb and "
        "cost/flops_per_step (GFLOPs, forward + backward, one step).",
        ("Not ranked: runs that did not finish, by state: FAILED and KILLED (MLflow's status), running "
         "(RUNNING with a fresh harness.heartbeat), interrupted (RUNNING without a heartbeat for over "
         f"{_duration(STALE_AFTER_S)}: the process was killed before it could end the run)."),
    ]


def render_table(board: Leaderboard):
    """The leaderboard as a rich Table (terminal)."""
    header, rows = summary_rows(board)
    title = (f"{board.experiment} | track {board.track} | budget {board.budget_id} | seeds "
             f"{', '.join(map(str, board.seeds))} | baseline {board.baseline}")
    if board.provenance.get("parent_run_id"):
        title += f" | comparison {board.provenance['parent_run_id'][:8]}"
    return _rich_table(title, f"score: {CELL} (rank); shared rank = not significantly different",
                       header, rows)


def _rich_table(title: str, caption: str, header: list[str], rows: list[list[str]]):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left", caption=caption, caption_justify="left")
    for i, h in enumerate(header):
        table.add_column(escape(h), justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    return table


def render_text_table(board: Leaderboard):
    """The text section (objectives against STS tasks) as a rich Table."""
    n = len(board.text.tasks)
    return _rich_table(f"text section (STS, {n} task{'' if n == 1 else 's'})",
                       f"STS avg: per-seed mean Spearman x100 over the STS tasks; {CELL}",
                       *text_rows(board))


def render_failed_table(board: Leaderboard):
    from rich.markup import escape
    from rich.table import Table

    header, rows = failed_rows(board)
    table = Table(title=f"not ranked: {len(rows)} run(s): {_by_state(board.failed)}", title_justify="left")
    for h in header:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    return table


_MD_SPECIAL = re.compile(r"([\\|*`]|<(?=[A-Za-z/!?]))")  # GFM: '_' inside words and '<' before a digit are literal
_TEXT_COLUMNS = {"objective", "metric", "status", "run", "reason", "significantly better"}


def md_escape(s: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", str(s))


def md_unescape(s: str) -> str:
    return re.sub(r"\\([\\|*`<])", r"\1", s)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(md_escape(h) for h in header) + " |",
           "| " + " | ".join("---" if i == 0 or h in _TEXT_COLUMNS else "---:" for i, h in enumerate(header)) + " |"]
    out += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return out


def provenance_items(board: Leaderboard) -> list[tuple[str, str]]:
    p = board.provenance
    items = [("experiment", f"{p['experiment']} (id {p['experiment_id']})"),
             ("tracking URI", p["tracking_uri"]),
             ("comparison (parent run)", p["parent_run_id"] or "none: every run of the experiment"),
             ("budget id", p["budget_id"] + (f" (preset {p['budget_preset']})" if p.get("budget_preset") else "")),
             ("track", p["track"]),
             ("seeds", ", ".join(map(str, p["seeds"]))),
             ("baseline", board.baseline),
             ("objectives", ", ".join(p["objectives"])),
             ("tasks", ", ".join(p["tasks"])),
             ("runs", f"{p['n_runs']} finished, {p['n_failed']} not finished")]
    for key, label in (("command", "command"), ("model", "model"), ("dataset_fingerprint", "dataset fingerprint"),
                       ("harness_version", "harness version"), ("git_sha", "git commit"),
                       ("compare_key", "compare key")):
        if p.get(key):
            items.append((label, str(p[key])))
    items.append(("generated", p["generated"]))
    return items


def render_markdown(board: Leaderboard) -> str:
    lines = [f"# Leaderboard: {md_escape(board.experiment)}, track {md_escape(board.track)}", "",
             "## Provenance", ""]
    for k, v in provenance_items(board):
        lines.append(f"- {k}: `{v}`" if k in ("command", "tracking URI") else f"- {k}: {md_escape(v)}")
    lines += ["", "## Leaderboard", ""]
    lines += _md_table(*summary_rows(board))
    lines += ["", f"Score cells: {CELL}, then the rank on that task in parentheses.", ""]
    if board.text is not None:
        lines += ["## Text (STS)", ""] + _md_table(*text_rows(board)) + [
            "", "STS avg: per seed, the mean Spearman x100 over these STS tasks (SimCSE's Avg.), then the "
                f"{CELL}; p: paired t-test over seeds against the baseline.", ""]
    for t, tb in board.task_boards.items():
        arrow = "higher is better" if tb.higher_is_better else "lower is better"
        lines += [f"## Task {md_escape(t)}", "",
                  f"Main metric `{tb.main_metric}` ({arrow}); {tb.n_items or 'no'} test items in the bootstrap.", ""]
        lines += _md_table(*task_rows(board, t))
        lines += ["", f"All metrics of {md_escape(t)} ({CELL}; \\* paired t-test p < {board.alpha} against "
                      f"{md_escape(board.baseline)}):", ""]
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
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([md_unescape(c.strip()) for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif rows:
            break
    header, body = rows[0], rows[2:]
    return [dict(zip(header, r)) for r in body]


def render_csv(board: Leaderboard, header: bool = True) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LONG_FIELDS, lineterminator="\n")
    if header:
        w.writeheader()
    for row in board.long_rows():
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def render_json(board: Leaderboard) -> str:
    return json.dumps(_jsonable(board.to_dict()), indent=1, allow_nan=False)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# -- figures ----------------------------------------------------------------------------------------
def _colors(objectives: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(objectives) <= 10 else "tab20"]
    return {o: cmap(i % cmap.N) for i, o in enumerate(objectives)}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n: int, width: float = 4.2, height: float = 3.2, max_cols: int = 3):
    from matplotlib.figure import Figure

    cols = max(1, min(n, max_cols))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def plot_scores(board: Leaderboard) -> str | None:
    if not board.tasks:
        return None
    colors = _colors(board.objectives)
    fig, axes = _grid(len(board.tasks))
    for ax, t in zip(axes, board.tasks):
        tb = board.task_boards[t]
        objs = [o for o in board.objectives if o in tb.scores]
        for i, o in enumerate(objs):
            s = tb.scores[o]
            below, above = _err(s)
            ax.errorbar([i], [s.mean], yerr=[[below], [above]], fmt="o", color=colors[o], capsize=4)
            ax.scatter([i] * s.n, list(s.values.values()), s=10, color=colors[o], alpha=0.4)
        ax.set_xticks(range(len(objs)), [f"{o}\n#{tb.ranks[o]}" for o in objs], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{t}\n{tb.main_metric} ({'higher' if tb.higher_is_better else 'lower'} is better)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("main score per task: mean and 95% CI over seeds, within the metric's range (dots: seeds)",
                 fontsize=10)
    return _png(fig)


def plot_loss(board: Leaderboard) -> str | None:
    if not board.loss_curves:
        return None
    from matplotlib.figure import Figure

    colors = _colors(board.objectives)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for o in board.objectives:
        c = board.loss_curves.get(o)
        if not c:
            continue
        ax.plot(c["step"], c["mean"], color=colors[o], label=f"{o} (n={c['n']})")
        if c["n"] > 1:
            ax.fill_between(c["step"], c["min"], c["max"], color=colors[o], alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("train/loss")
    ax.set_title("training loss: mean over seeds (band: min to max)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


_COMP = re.compile(r"^(test|heldout)/([^/]+)/acc$")


def compositionality_data(board: Leaderboard) -> dict[str, dict[str, dict[str, Summary]]]:
    """split -> negative type -> objective -> accuracy summary (``test/<type>/acc``, ``heldout/<type>/acc``)."""
    tb = board.task_boards.get(COMPOSITIONALITY)
    out: dict[str, dict[str, dict[str, Summary]]] = defaultdict(dict)
    if tb is None:
        return {}
    for m, d in tb.metrics.items():
        hit = _COMP.match(m)
        if hit and hit.group(2) != "all":
            out[hit.group(1)][hit.group(2)] = d
    return dict(out)


def plot_compositionality(board: Leaderboard) -> str | None:
    data = compositionality_data(board)
    if not data:
        return None
    colors = _colors(board.objectives)
    splits = [s for s in ("test", "heldout") if s in data]
    fig, axes = _grid(len(splits), width=5.5, height=3.5)
    for ax, split in zip(axes, splits):
        types = list(data[split])
        objs = [o for o in board.objectives if any(o in data[split][t] for t in types)]
        width = 0.8 / max(1, len(objs))
        for j, o in enumerate(objs):
            xs = [i + (j - (len(objs) - 1) / 2) * width for i in range(len(types))]
            s = [data[split][t].get(o) for t in types]
            ax.bar(xs, [x.mean if x else 0 for x in s], width, color=colors[o], label=o,
                   yerr=np.array([_err(x) for x in s]).T, capsize=2)
        ax.set_xticks(range(len(types)), types, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{COMPOSITIONALITY}: {split} split, by negative type", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_cost(board: Leaderboard) -> str | None:
    if not board.tasks or not any("wall_seconds" in board.cost.get(o, {}) for o in board.objectives):
        return None
    colors = _colors(board.objectives)
    fig, axes = _grid(len(board.tasks))
    for ax, t in zip(axes, board.tasks):
        tb = board.task_boards[t]
        for o in board.objectives:
            w = board.cost.get(o, {}).get("wall_seconds")
            s = tb.scores.get(o)
            if w is None or s is None:
                continue
            ax.errorbar([w.mean], [s.mean], xerr=np.array([_err(w)]).T, yerr=np.array([_err(s)]).T,
                        fmt="o", color=colors[o], capsize=3)
            ax.annotate(o, (w.mean, s.mean), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.margins(0.15)
        ax.set_xlabel("wall seconds (training)")
        ax.set_ylabel(tb.main_metric)
        ax.set_title(t, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("cost against score: mean and 95% CI over seeds, within each metric's range", fontsize=10)
    return _png(fig)


# -- HTML -------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}h3{font-size:1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:.9em}dt{font-weight:600}dd{margin:0}
code{background:#f6f6f6;padding:1px 3px}img{max-width:100%}.note{color:#666;font-size:.9em}
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="num">{e(c)}</td>' if i else f"<td>{e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def _img(png: str | None, alt: str, missing: str) -> str:
    if png is None:
        return f'<p class="note">{html.escape(missing)}</p>'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


def render_html(board: Leaderboard) -> str:
    """One self-contained page: inline CSS, figures as base64 PNG, no script, no external resource."""
    e = html.escape
    title = f"Leaderboard: {board.experiment}, track {board.track}"
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             f"<h1>{e(title)}</h1>",
             '<section id="provenance">', "<h2>Provenance</h2>", "<dl>"]
    for k, v in provenance_items(board):
        value = f"<code>{e(v)}</code>" if k in ("command", "tracking URI") else e(v)
        parts.append(f"<dt>{e(k)}</dt><dd>{value}</dd>")
    parts += ["</dl>", "</section>",
              '<section id="leaderboard">', "<h2>Leaderboard</h2>", _html_table(*summary_rows(board)),
              f'<p class="note">Score cells: {e(CELL)}, then the rank on that task in parentheses.</p>',
              "</section>"]
    if board.text is not None:
        parts += ['<section id="text">', "<h2>Text (STS)</h2>", _html_table(*text_rows(board)),
                  '<p class="note">STS avg: per seed, the mean Spearman x100 over these STS tasks (SimCSE\'s Avg.), '
                  f"then the {e(CELL)}; p: paired t-test over seeds against the baseline.</p>", "</section>"]
    parts += ['<section id="tasks">', "<h2>Per task</h2>"]
    for t, tb in board.task_boards.items():
        arrow = "higher is better" if tb.higher_is_better else "lower is better"
        parts += [f"<h3>{e(t)}</h3>",
                  f'<p class="note">Main metric <code>{e(tb.main_metric)}</code> ({arrow}); '
                  f"{tb.n_items or 'no'} test items in the bootstrap.</p>",
                  _html_table(*task_rows(board, t)),
                  f"<details><summary>all metrics of {e(t)} (* paired t-test p &lt; {board.alpha} against "
                  f"{e(board.baseline)})</summary>", _html_table(*metric_rows(board, t)), "</details>"]
    parts += ["</section>",
              '<section id="scores">', "<h2>Scores per task</h2>",
              _img(plot_scores(board), "main score per task with 95% CI", "no task scores"), "</section>",
              '<section id="loss">', "<h2>Training loss</h2>",
              _img(plot_loss(board), "training loss curves", "no train/loss history in these runs"), "</section>",
              '<section id="compositionality">', "<h2>Compositionality by negative type</h2>",
              _img(plot_compositionality(board), "compositionality accuracy by negative type",
                   f"no {COMPOSITIONALITY} results in these runs"), "</section>",
              '<section id="cost">', "<h2>Cost against score</h2>",
              _img(plot_cost(board), "wall seconds against main score", "no cost metrics in these runs"),
              "</section>", '<section id="failed">', "<h2>Not ranked</h2>"]
    parts.append(_html_table(*failed_rows(board)) if board.failed else '<p class="note">every run finished.</p>')
    parts.append("</section>")
    if board.notes:
        parts += ['<section id="notes">', "<h2>Notes</h2>", "<ul>"] + [f"<li>{e(n)}</li>" for n in board.notes] + \
                 ["</ul>", "</section>"]
    parts += ['<section id="method">', "<h2>Method</h2>", "<ul>"] + [f"<li>{e(m)}</li>" for m in method_lines(board)]
    parts += ["</ul>", "</section>", "</body>", "</html>", ""]
    return "\n".join(parts)


# -- files and MLflow -------------------------------------------------------------------------------
def render_all(board: Leaderboard, out_dir: str | Path) -> dict[str, Path]:
    """Write leaderboard.{md,html,json,csv} into ``out_dir``; returns {"md": path, ...}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "leaderboard.md", "html": out / "leaderboard.html",
             "json": out / "leaderboard.json", "csv": out / "leaderboard.csv"}
    paths["md"].write_text(render_markdown(board), encoding="utf-8")
    paths["html"].write_text(render_html(board), encoding="utf-8")
    paths["json"].write_text(render_json(board), encoding="utf-8")
    paths["csv"].write_text(render_csv(board), encoding="utf-8")
    return paths


def log_to_mlflow(paths: dict[str, Path] | Iterable[Path], run_id: str, tracking_uri: str | None = None,
                  artifact_path: str = "leaderboard") -> None:
    """Attach the rendered files to a run (the comparison's parent run) under ``artifact_path``."""
    client, _ = _client(tracking_uri)
    files = paths.values() if isinstance(paths, dict) else paths
    for p in files:
        client.log_artifact(run_id, str(p), artifact_path)


def summarize_comparison(experiment: str, parent_run_id: str, tracking_uri: str | None = None,
                         out_dir: str | Path | None = None, baseline: str | None = None, log: bool = True,
                         **build_kw) -> Leaderboard:
    """For ``harness compare``: rank one comparison, write the files (``out_dir``) and log them on the
    parent run. A comparison has one track and one budget, so this is one board."""
    boards = build(collect(experiment, parent_run_id, None, tracking_uri), baseline=baseline, **build_kw)
    board = boards[0]
    if out_dir is not None:
        paths = render_all(board, out_dir)
        if log:
            log_to_mlflow(paths, parent_run_id, tracking_uri)
    return board


# -- command line -----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``harness leaderboard``; the subparser calls :func:`main` with the namespace."""
    p.add_argument("--experiment", default="harness", help="MLflow experiment (default: harness)")
    p.add_argument("--parent", metavar="RUN_ID",
                   help="rank one comparison: its parent run id (a unique prefix, or 'latest'); "
                        "default: every run of the experiment")
    p.add_argument("--track", choices=["default", "tuned"], help="only this track (default: one board per track)")
    p.add_argument("--budget-id", metavar="ID", help="rank the runs of this budget (needed when runs span budgets)")
    p.add_argument("--baseline", metavar="NAME", help="objective the paired tests compare against "
                                                      "(default: clip if present, else the first)")
    p.add_argument("--rank-rule", choices=RANK_RULES, default="either",
                   help="which paired tests must be significant for a rank difference (default: either)")
    p.add_argument("--out", metavar="DIR", help="write leaderboard.{md,html,json,csv} there")
    p.add_argument("--log", action="store_true", help="with --parent and --out: attach the files to the parent run")
    p.add_argument("--format", choices=FORMATS, default="table", help="what to print on stdout (default: table)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                                          "sqlite:///<output-dir>/mlflow.db)")
    p.add_argument("--output-dir", default=".harness", help="where the default store lives (default .harness)")


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
        path = Path(uri[len("sqlite:///"):])
        if uri.startswith("sqlite:////"):
            path = Path("/" + uri[len("sqlite:////"):])
        if not path.exists():
            return uri, f"no MLflow store at {path}: nothing has been run yet (run `harness compare` first, or " \
                        f"pass --tracking-uri / --output-dir)"
    return uri, None


def main(args: argparse.Namespace, reporter) -> int:
    """``harness leaderboard``: 0 ok, 2 nothing to rank (no store, experiment or finished run; mixed budgets)."""
    import sys

    uri, problem = _store_uri(args)
    if problem:
        reporter.error(problem)
        return 2
    try:
        collected = collect(getattr(args, "experiment", None) or "harness", getattr(args, "parent", None),
                            getattr(args, "track", None), uri)
        boards = build(collected, budget_id=getattr(args, "budget_id", None),
                       baseline=getattr(args, "baseline", None), rank_rule=getattr(args, "rank_rule", None) or "either")
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
        docs = [_jsonable(b.to_dict()) for b in boards]
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
