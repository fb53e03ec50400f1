"""``harness compare``: every (objective, seed) trained once under one budget, all tasks evaluated.

The comparison is one MLflow parent run; each (objective, seed) is a child run. It is resumable: a
pair whose run identity already FINISHED in the experiment is skipped (any other status is rerun).
A pair that fails is recorded FAILED with its reason and the sweep goes on. Everything is validated
before the first run starts.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import RunConfig
from harness.core.errors import UserError
from harness.leaderboard import (
    LeaderboardError,
    print_wide,
    render_table,
    render_text_table,
    summarize_comparison,
)
from harness.run.console import Reporter
from harness.run.executors import (
    ExecutorSpec,
    RayExecutor,
    absolute_tracking,
    interruption_reason,
    kill_running_children,
)
from harness.run.runner import Plan, execute, prepare, resolve_train_data
from harness.run.tune import tuned_study
from harness.tracking import (
    MlflowRun,
    is_stale,
    last_sign_of_life,
    open_store,
    tracking_uri,
    use_store,
    versions,
)


class CompareError(UserError):
    """A comparison that cannot start (bad objective list, seeds, tasks)."""


@dataclass
class PairResult:
    objective: str
    seed: int
    identity: str
    status: str  # FINISHED, FAILED, KILLED, SKIPPED (already finished earlier)
    run_id: str | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class CompareOutcome:
    parent_run_id: str | None
    experiment: str
    pairs: list[PairResult] = field(default_factory=list)
    leaderboard: dict | None = None

    @property
    def failed(self) -> list[PairResult]:
        return [p for p in self.pairs if p.status in ("FAILED", "KILLED")]


def plan_pairs(
    base: RunConfig, objectives: list[str], seeds: int, tuned: dict[str, dict] | None = None
) -> list[tuple[RunConfig, Plan]]:
    """One validated config per (objective, seed). Raises before anything runs.

    ``tuned`` maps an objective to its best tuned parameters (``budget.*`` keys set the budget)."""
    if not objectives or any(not o.strip() for o in objectives):
        raise CompareError(
            "no objectives given: pass --objectives NAME[,NAME...] (see `harness list objectives`)"
        )
    if len(set(objectives)) != len(objectives):
        raise CompareError(f"an objective is listed twice in {objectives}")
    if seeds < 1:
        raise CompareError(f"--seeds must be at least 1, got {seeds}")
    base_seed = base.seed
    pairs = []
    for obj in objectives:
        params = {k.split(".", 1)[1]: v for k, v in base.objective_params.items() if k.startswith(obj + ".")}
        budget = {}
        for k, v in (tuned or {}).get(obj, {}).items():
            if k.startswith("budget."):
                budget[k.split(".", 1)[1]] = v
            else:
                params[k] = v
        for s in range(seeds):
            data = base.model_dump()
            data.update(objective=obj, objective_params=params, seed=base_seed + s)
            data["budget"].update(budget)
            cfg = RunConfig.model_validate(data)
            pairs.append((cfg, prepare(cfg)))
    return pairs


def finished_identities(uri: str, experiment: str) -> dict[str, str]:
    """identity -> run id of every FINISHED run in the experiment."""
    import mlflow

    open_store(uri)
    use_store(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = mlflow.MlflowClient().search_runs(
        [exp.experiment_id],
        filter_string="attributes.status = 'FINISHED' and tags.`harness.role` = 'run'",
        max_results=50000,
    )
    return {r.data.tags.get("harness.identity"): r.info.run_id for r in runs}


def interrupted_runs(uri: str, experiment: str) -> dict[str, tuple[str, float]]:
    """identity -> (run id, seconds since its last heartbeat) of the runs MLflow still calls RUNNING
    whose process stopped beating (killed outright: SIGKILL, a lost node). Compare reruns them."""
    import mlflow

    use_store(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    now = time.time()
    runs = mlflow.MlflowClient().search_runs(
        [exp.experiment_id],
        filter_string="attributes.status = 'RUNNING' and tags.`harness.role` = 'run'",
        max_results=50000,
    )
    out = {}
    for r in runs:
        if is_stale(r.info.status, r.data.tags, r.info.start_time, now=now):
            last = last_sign_of_life(r.data.tags, r.info.start_time)
            out[r.data.tags.get("harness.identity")] = (r.info.run_id, now - last)
    return out


def tuned_parameters(
    base: RunConfig, objectives: list[str], task: str | dict[str, str], storage: str | None
) -> dict[str, dict]:
    """Each objective's finished ``harness tune`` study (:func:`harness.run.tune.tuned_study`: its
    best ``params`` and what the board states about the tuning). ``task`` is the task the studies
    optimised, or a map objective -> task (an image-only objective tuned on an image task). ``base``
    is the configuration the studies ran under: its budget id names them."""
    resolve_train_data(base)
    tasks = task if isinstance(task, dict) else dict.fromkeys(objectives, task)
    missing = [o for o in objectives if o not in tasks]
    if missing:
        raise CompareError(f"no tuning task given for {', '.join(missing)}")
    return {obj: tuned_study(obj, tasks[obj], base, storage) for obj in objectives}


def parse_tuned_on(spec: str, objectives: list[str]) -> dict[str, str]:
    """``--tuned-on shapes-retrieval,supcon=shapes-linear`` -> objective -> task (the bare name is
    every other objective's)."""
    default, per = None, {}
    for part in (x.strip() for x in spec.split(",") if x.strip()):
        obj, eq, task = part.partition("=")
        if eq:
            if obj.strip() not in objectives:
                raise CompareError(f"--tuned-on names {obj.strip()!r}, which is not among --objectives")
            per[obj.strip()] = task.strip()
        elif default is not None:
            raise CompareError(f"--tuned-on gives two default tasks ({default!r}, {part!r}); use OBJ=TASK")
        else:
            default = part
    out = {o: per.get(o, default) for o in objectives}
    missing = [o for o, t in out.items() if not t]
    if missing:
        raise CompareError(f"--tuned-on names no task for {', '.join(missing)}")
    return out


def describe_tuning(studies: dict[str, dict]) -> str:
    """One line for the board: trials, split, tuning budget and task(s) of the studies."""
    trials = sorted({st["trials"] for st in studies.values()})
    budgets = sorted(
        {f"{b.get('steps')} steps x {b.get('batch_size')}" for b in (st["budget"] for st in studies.values())}
    )
    ids = sorted({st["budget_id"] for st in studies.values()})
    by_task: dict[str, list[str]] = {}
    for obj, st in studies.items():
        by_task.setdefault(st["task"], []).append(obj)
    main = max(by_task, key=lambda t: len(by_task[t]))
    tasks = [f"on {main}"] + [f"{', '.join(objs)} on {t}" for t, objs in by_task.items() if t != main]
    n_default = sum(st["best_is_paper_defaults"] for st in studies.values())
    return (
        f"{' / '.join(map(str, trials))} Optuna trials per objective, validation split, "
        f"{'; '.join(tasks)}; tuning budget {' / '.join(budgets)} (budget id {', '.join(ids)}); "
        f"paper defaults were the best trial for {n_default} of {len(studies)}"
    )


def tuning_tags(studies: dict[str, dict]) -> dict[str, dict[str, str]]:
    """Per objective, the tag its tuned runs carry: the study it came from (JSON)."""
    return {obj: {"harness.tuned_from": json.dumps(st, sort_keys=True)} for obj, st in studies.items()}


def compare(
    base: RunConfig,
    objectives: list[str],
    seeds: int,
    reporter: Reporter | None = None,
    tuned: dict[str, dict] | None = None,
    command: str | None = None,
    executor: ExecutorSpec | None = None,
    tuning: dict[str, dict] | None = None,
    parent_tags: dict[str, str] | None = None,
) -> CompareOutcome:
    """Run the sweep. With ``tuned`` (from :func:`tuned_parameters`) it is the "tuned" track: each
    objective trains with its tuned parameters, and its runs keep the base budget id.
    ``executor`` (default: in this process) may run each pair as a Ray task. ``tuning`` (from
    :func:`tuned_parameters`) gives the tuned parameters and the studies they came from, which
    each tuned run records (``harness.tuned_from``); it implies ``tuned``."""
    if tuning is not None and tuned is None:
        tuned = {obj: st["params"] for obj, st in tuning.items()}
    reporter = reporter or Reporter(quiet=True)
    spec = executor or ExecutorSpec()
    spec.check()
    resolve_train_data(base)
    track = "tuned" if tuned is not None else "default"
    pairs = plan_pairs(base, objectives, seeds, tuned)
    out_dir = Path(base.tracking.output_dir)
    uri = tracking_uri(base.tracking.tracking_uri, out_dir)
    experiment = base.tracking.experiment
    done = finished_identities(uri, experiment)
    interrupted = interrupted_runs(uri, experiment)
    key = hashlib.sha256(",".join(sorted(c.identity for c, _ in pairs)).encode()).hexdigest()[:12]
    tags = {
        "harness.role": "compare",
        "harness.objectives": ",".join(objectives),
        "harness.tasks": ",".join(base.tasks),
        "harness.seeds": str(seeds),
        "harness.budget_id": base.budget_id,
        "harness.budget_preset": base.budget_preset,
        "harness.track": track,
        "harness.compare_key": key,
        "harness.command": command or " ".join(shlex.quote(a) for a in sys.argv),
        **versions(),
    }
    if tuning:
        tags["harness.tuning"] = describe_tuning(tuning)
    tags.update(parent_tags or {})  # e.g. the sweep this comparison is one point of
    outcome = CompareOutcome(parent_run_id=None, experiment=experiment)
    ray_ex = None
    if spec.kind == "ray":  # every check of the executor, before any run is created
        ray_ex = RayExecutor(spec)
        ray_ex.start(uri)
    parent = MlflowRun(
        uri, experiment, base.tracking.run_name or f"compare-{key}", tags, artifact_root=out_dir / "artifacts"
    )
    total = len(pairs)
    t_start = time.perf_counter()
    child_tags = {
        "harness.track": track,
        "harness.compare_key": key,
        # tuned runs may differ in a tuned learning rate only
        "harness.budget_id": base.budget_id,
    }
    per_obj = tuning_tags(tuning or {})
    try:
        with parent:
            outcome.parent_run_id = parent.run_id
            if ray_ex is not None:
                _run_on_ray(ray_ex, pairs, done, interrupted, outcome, uri, child_tags, per_obj, reporter)
            else:
                _run_here(pairs, done, interrupted, outcome, child_tags, per_obj, reporter)
            _finish(outcome, total, t_start, reporter)
    finally:
        if ray_ex is not None:
            ray_ex.stop()
    outcome.leaderboard = _leaderboard(outcome, uri, out_dir, reporter)
    return outcome


def _run_here(
    pairs, done, interrupted, outcome: CompareOutcome, child_tags: dict, per_obj: dict, reporter: Reporter
) -> None:
    """The in-process executor: one pair after the other."""
    total = len(pairs)
    executed: list[float] = []
    for i, (cfg, plan) in enumerate(pairs):
        left = total - i
        eta = f", eta {_fmt(sum(executed) / len(executed) * left)}" if executed else ""
        n_done = sum(p.status in ("FINISHED", "SKIPPED") for p in outcome.pairs)
        n_failed = len(outcome.failed)
        reporter.info(
            f"[bold]compare[/] {i}/{total} done ({n_done} ok, {n_failed} failed), running "
            f"{cfg.objective} seed {cfg.seed}, {left - 1} left{eta}"
        )
        if _skip(cfg, done, interrupted, outcome, reporter):
            continue
        t0 = time.perf_counter()
        pair = PairResult(cfg.objective, cfg.seed, cfg.identity, "FAILED")
        try:
            tags = {**child_tags, **per_obj.get(cfg.objective, {})}
            run = execute(cfg, reporter, plan, nested=True, extra_tags=tags)
            pair.status, pair.run_id = run.status, run.run_id
        except KeyboardInterrupt:
            pair.status = "KILLED"
            outcome.pairs.append(pair)
            raise
        except Exception as e:  # recorded FAILED in its own run; the sweep goes on
            pair.error = f"{type(e).__name__}: {e}"
            reporter.error(f"{cfg.objective} seed {cfg.seed} failed: {pair.error}")
        pair.seconds = time.perf_counter() - t0
        executed.append(pair.seconds)
        outcome.pairs.append(pair)


def _skip(cfg, done, interrupted, outcome: CompareOutcome, reporter: Reporter) -> bool:
    """A pair that already FINISHED is skipped (True); an interrupted one is said to be rerun."""
    if cfg.identity in done:
        outcome.pairs.append(PairResult(cfg.objective, cfg.seed, cfg.identity, "SKIPPED", done[cfg.identity]))
        reporter.info(
            f"  {cfg.objective} seed {cfg.seed}: already finished (run {done[cfg.identity][:8]}), skipped"
        )
        return True
    if cfg.identity in interrupted:
        run_id, silent = interrupted[cfg.identity]
        reporter.info(
            f"  {cfg.objective} seed {cfg.seed}: run {run_id[:8]} was interrupted (no heartbeat "
            f"for {_fmt(silent)}: its process was killed); running it again"
        )
    return False


def _run_on_ray(
    ex: RayExecutor,
    pairs,
    done,
    interrupted,
    outcome: CompareOutcome,
    uri: str,
    child_tags: dict,
    per_obj: dict,
    reporter,
) -> None:
    """The Ray executor: every pair not yet finished is one task; results are kept in plan order."""
    slots: list[PairResult | None] = []
    refs = {}
    tags = {**child_tags, "mlflow.parentRunId": outcome.parent_run_id}
    for cfg, plan in pairs:
        if _skip(cfg, done, interrupted, outcome, reporter):
            slots.append(outcome.pairs.pop())
            continue
        slots.append(None)
        run_tags = {**tags, **per_obj.get(cfg.objective, {})}
        refs[ex.submit(absolute_tracking(cfg, uri), plan, run_tags)] = len(slots) - 1
    reporter.info(f"[bold]compare[/] {len(refs)} runs submitted to Ray ({len(pairs) - len(refs)} skipped)")
    finished = 0
    try:
        for i, res in ex.as_completed(refs):
            cfg = pairs[i][0]
            pair = PairResult(cfg.objective, cfg.seed, cfg.identity, res["status"], res["run_id"])
            pair.seconds, pair.error = res.get("seconds", 0.0), res.get("error")
            if pair.error:
                reporter.error(f"{cfg.objective} seed {cfg.seed} failed: {pair.error}")
            slots[i] = pair
            finished += 1
            reporter.info(
                f"[bold]compare[/] {finished}/{len(refs)} Ray runs done ({cfg.objective} seed {cfg.seed})"
            )
    except KeyboardInterrupt as e:  # cancel what is left; its runs end KILLED, as in-process
        ex.cancel(list(refs))
        kill_running_children(uri, outcome.parent_run_id, interruption_reason(e))
        for i, slot in enumerate(slots):
            if slot is None:
                cfg = pairs[i][0]
                slots[i] = PairResult(cfg.objective, cfg.seed, cfg.identity, "KILLED")
        outcome.pairs.extend(slots)
        raise
    outcome.pairs.extend(slots)


def _finish(outcome: CompareOutcome, total: int, t_start: float, reporter: Reporter) -> None:
    reporter.info(
        f"[bold]compare[/] {total}/{total} done in {_fmt(time.perf_counter() - t_start)}: "
        f"{sum(p.status == 'FINISHED' for p in outcome.pairs)} trained, "
        f"{sum(p.status == 'SKIPPED' for p in outcome.pairs)} skipped, {len(outcome.failed)} failed"
    )
    MlflowRun.log_metrics(
        {
            "compare/runs_failed": len(outcome.failed),
            "compare/wall_seconds": time.perf_counter() - t_start,
        }
    )
    # every pair of this comparison, reused runs included: the leaderboard reads this list
    MlflowRun.log_dict(
        {
            "pairs": [
                {
                    "objective": p.objective,
                    "seed": p.seed,
                    "run_id": p.run_id,
                    "status": p.status,
                    "identity": p.identity,
                }
                for p in outcome.pairs
            ]
        },
        "pairs.json",
    )


def _leaderboard(outcome: CompareOutcome, uri: str, out_dir: Path, reporter: Reporter) -> dict | None:
    """Rank the comparison from MLflow, write leaderboard.{md,html,json,csv}, attach them to the parent."""
    target = out_dir / "leaderboards" / (outcome.parent_run_id or "compare")
    try:
        board = summarize_comparison(outcome.experiment, outcome.parent_run_id, uri, out_dir=target)
    except LeaderboardError as e:
        reporter.error(f"no leaderboard: {e}")
        return None
    if not reporter.quiet:
        print_wide(render_table(board))
        if board.text is not None:
            print_wide(render_text_table(board))
    reporter.info(f"leaderboard files: {target}")
    return board.to_dict()["summary"]


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
