"""Reading runs from MLflow: which runs a board ranks, and what each recorded.

Everything comes from the MLflow store alone: run tags, metrics, the ``train/loss`` history and the
results JSON artifact of each run (for the per-item scores). Nothing is read from the local
``.harness/results`` copies, and nothing from the installed task registry: what a board needs to know
about a task (its family, main metric, direction, whether it is a diagnostic, how its metrics group
for plots) is what the run recorded, in the ``harness.task_meta`` tag (see
:func:`tasks.base.task_meta`) or else in its results JSON's task entries. A run that recorded
neither gets family ``""``, is ranked (not a diagnostic), and higher is better unless the results
JSON says otherwise.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from harness.tracking import HEARTBEAT_TAG, heartbeat_time, is_stale, metric_key, open_store

from .errors import LeaderboardError, NoRunsError

NOT_TASKS = {"cost", "train", "compare", "system", "eval"}
#: run tag: JSON ``{task: {"family", "main_metric", "higher_is_better", "diagnostic", "aggregate",
#: "breakdown"}}``, what the board reads about each task without downloading an artifact
TASK_META_TAG = "harness.task_meta"
#: the order in which counts of states are written ("1 FAILED, 1 KILLED, 1 running, 2 interrupted")
STATES = ("FAILED", "KILLED", "running", "interrupted", "SCHEDULED")


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
    family: dict[str, str] = field(default_factory=dict)  # task -> family, as recorded
    diagnostic: dict[str, bool] = field(default_factory=dict)  # task -> shown but never ranked
    breakdown: dict[str, dict] = field(default_factory=dict)  # task -> metrics grouped for plots
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


def _search(
    client,
    experiment_id: str,
    filter_string: str,
    order_by: list[str] | None = None,
    max_results: int | None = None,
) -> list:
    from mlflow.entities import ViewType

    out, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=min(max_results or 1000, 1000),
            order_by=order_by,
            page_token=token,
        )
        out.extend(page)
        token = page.token
        if not token or (max_results and len(out) >= max_results):
            return out


def _resolve_parent(client, experiment_id: str, parent: str):
    """A full run id, a unique prefix of a comparison's run id, or ``latest``."""
    from mlflow.exceptions import MlflowException

    if parent == "latest":
        found = _search(
            client,
            experiment_id,
            "tags.`harness.role` = 'compare'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not found:
            raise NoRunsError(
                "no comparison (harness.role = 'compare') in this experiment; run `harness compare` first"
            )
        return found[0]
    if len(parent) < 32:
        found = [
            r
            for r in _search(client, experiment_id, "tags.`harness.role` = 'compare'")
            if r.info.run_id.startswith(parent)
        ]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise LeaderboardError(
                f"run id prefix {parent!r} matches {len(found)} comparisons: "
                f"{', '.join(r.info.run_id for r in found)}; give more characters"
            )
    try:
        return client.get_run(parent)
    except MlflowException as e:
        raise NoRunsError(f"no MLflow run {parent!r} (--parent): {str(e).splitlines()[0]}") from None


def _int(v: Any, default: int = 0) -> int:
    try:
        return int(str(v))
    except (TypeError, ValueError):
        return default


def duration(seconds: float) -> str:
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
        return status, {
            "KILLED": "stopped (Ctrl-C or a signal) with no reason recorded",
            "SCHEDULED": "never started",
        }.get(status, "no failure reason recorded")
    beat = tags.get(HEARTBEAT_TAG)
    last = heartbeat_time(tags)
    started = start_time_ms / 1000.0 if start_time_ms else None
    if is_stale(status, tags, start_time_ms, now):
        killed = (
            "the process was killed (SIGKILL, a lost node) without ending the run; "
            "rerunning the comparison trains this pair again"
        )
        if last is not None:
            return "interrupted", f"no heartbeat for {duration(now - last)}: {killed}"
        return "interrupted", f"no heartbeat since it started {duration(now - started)} ago: {killed}"
    if last is not None:
        return "running", f"still running (last heartbeat {duration(now - last)} ago)"
    if beat is not None:
        return "running", f"still running as far as can be told (unreadable {HEARTBEAT_TAG} tag {beat!r})"
    return "running", "still running" + (
        f" (started {duration(now - started)} ago, no heartbeat yet)" if started else ""
    )


def _record(run, now: float | None = None) -> RunRecord:
    tags = dict(run.data.tags)
    reason = tags.get("harness.failure_reason")
    state = run.info.status
    if state != "FINISHED":
        state, default = _state(state, tags, run.info.start_time, time.time() if now is None else now)
        reason = reason or default
    return RunRecord(
        run_id=run.info.run_id,
        objective=tags.get("harness.objective", "?"),
        seed=_int(tags.get("harness.seed", run.data.params.get("seed"))),
        status=run.info.status,
        track=tags.get("harness.track") or "default",
        budget_id=tags.get("harness.budget_id") or "unknown",
        identity=tags.get("harness.identity", ""),
        start_time=run.info.start_time or 0,
        parent_run_id=tags.get("mlflow.parentRunId"),
        tags=tags,
        failure_reason=reason,
        state=state,
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


def _task_meta_tag(tags: dict[str, str]) -> dict[str, dict]:
    """The ``harness.task_meta`` tag, or {} when absent or unreadable."""
    try:
        meta = json.loads(tags.get(TASK_META_TAG) or "{}")
    except ValueError:
        return {}
    return {t: m for t, m in meta.items() if isinstance(m, dict)} if isinstance(meta, dict) else {}


def _recorded(key: str, *sources: dict, default: Any = None) -> Any:
    """The first recorded (not None) value of ``key`` in ``sources``, else ``default``."""
    return next((s[key] for s in sources if s.get(key) is not None), default)


def _load_finished(client, run, rec: RunRecord, with_artifacts: bool, with_history: bool) -> None:
    metrics = dict(run.data.metrics)
    doc, rec.results_artifact = _results_document(client, rec.run_id) if with_artifacts else (None, None)
    doc_tasks = (doc or {}).get("tasks") or {}
    tag_meta = _task_meta_tag(rec.tags)
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
                values[names.get(k, k[len(task) + 1 :])] = float(v)
        for m, v in (td.get("metrics") or {}).items():
            values.setdefault(m, float(v))
        main = metrics.get(f"{task}/main_score", td.get("main_score"))
        if main is None:
            continue
        meta = tag_meta.get(task, {})  # the tag first, then the results JSON's entry
        rec.scores[task] = float(main)
        rec.metrics[task] = values
        rec.main_metric[task] = _recorded("main_metric", meta, td) or "main_score"
        rec.higher_is_better[task] = bool(_recorded("higher_is_better", meta, td, default=True))
        rec.family[task] = str(_recorded("family", meta, td, default=""))
        rec.diagnostic[task] = bool(_recorded("diagnostic", meta, td, default=False))
        breakdown = _recorded("breakdown", meta, td, default={})
        rec.breakdown[task] = breakdown if isinstance(breakdown, dict) else {}
        items = td.get("item_scores")
        if items:
            rec.item_scores[task] = [float(x) for x in items]
    rec.cost = {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("cost/")}
    if "train/final_loss" in metrics:
        rec.cost["final_loss"] = float(metrics["train/final_loss"])
    if with_history:
        hist: dict[int, float] = {}
        history = client.get_metric_history(rec.run_id, "train/loss")
        for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
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


def collect(
    experiment: str = "harness",
    parent_run_id: str | None = None,
    track: str | None = None,
    tracking_uri: str | None = None,
    *,
    with_artifacts: bool = True,
    with_history: bool = True,
    now: float | None = None,
) -> Collected:
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
        raise NoRunsError(
            f"no MLflow experiment {experiment!r} in {uri} (experiments there: "
            f"{', '.join(known) or 'none'}); run `harness compare` or `harness run` first, "
            f"or pick one with --experiment"
        )
    if parent_run_id:
        parent = _resolve_parent(client, exp.experiment_id if exp else "0", parent_run_id)
        if exp is None or parent.info.experiment_id != exp.experiment_id:
            exp = client.get_experiment(parent.info.experiment_id)
            notes.append(f"parent run {parent.info.run_id} belongs to experiment {exp.name!r}; that is used")
        if parent.data.tags.get("harness.role") not in (None, "compare"):
            notes.append(
                f"run {parent.info.run_id} is not a comparison (harness.role = "
                f"{parent.data.tags.get('harness.role')!r})"
            )
        pid = parent.info.run_id
        runs = {
            r.info.run_id: r for r in _search(client, exp.experiment_id, f"tags.mlflow.parentRunId = '{pid}'")
        }
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
            for r in _search(
                client,
                exp.experiment_id,
                f"tags.`harness.compare_key` = '{key}' and attributes.status = 'FINISHED'",
            ):
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
        fails = f"; {len(failed)} run(s) did not finish ({by_state(failed)})" if failed else ""
        raise NoRunsError(
            f"no FINISHED run to rank in {where}{what} ({uri}){fails}; "
            f"run `harness compare --objectives ...` first"
        )
    for rec in finished.values():
        with _quiet_downloads():
            _load_finished(client, runs[rec.run_id], rec, with_artifacts, with_history)
    order = sorted(finished.values(), key=lambda r: (r.track, r.objective, r.seed, r.start_time))
    return Collected(
        experiment=exp.name,
        experiment_id=exp.experiment_id,
        tracking_uri=uri,
        parent_run_id=parent.info.run_id if parent else None,
        parent_tags=dict(parent.data.tags) if parent else {},
        runs=order,
        failed=sorted(failed, key=lambda r: (r.track, r.objective, r.seed)),
        notes=notes,
        duplicates=duplicates,
        superseded=superseded,
        reused=reused,
        with_artifacts=with_artifacts,
    )


def by_state(runs: Iterable[RunRecord]) -> str:
    """``1 FAILED, 1 KILLED, 2 interrupted``: counts of the runs' states, in :data:`STATES` order."""
    counts = Counter(r.state for r in runs)
    order = [s for s in STATES if s in counts] + sorted(set(counts) - set(STATES))
    return ", ".join(f"{counts[s]} {s}" for s in order)


def log_to_mlflow(
    paths: dict[str, Path] | Iterable[Path],
    run_id: str,
    tracking_uri: str | None = None,
    artifact_path: str = "leaderboard",
) -> None:
    """Attach the rendered files to a run (the comparison's parent run) under ``artifact_path``."""
    client, _ = _client(tracking_uri)
    files = paths.values() if isinstance(paths, dict) else paths
    for p in files:
        client.log_artifact(run_id, str(p), artifact_path)
