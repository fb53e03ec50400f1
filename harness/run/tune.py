"""``harness tune``: equal-budget Optuna tuning, on validation data only.

Protocol (Musgrave et al. 2020, "A Metric Learning Reality Check"; Sivaprasad et al. 2020):
every objective gets the same number of trials, counted study-wide and including pruned and failed
ones; the same seeded TPE sampler and median pruner; the same per-trial training budget; the
objective's paper defaults are the first trial. Every trial trains and evaluates on the ``val``
split (``EvalContext(validation=True)``): the test splits are never read. The best configuration
is then retrained with several seeds by ``harness compare --tuned``, in its own leaderboard track.

Storage: SQLite at ``.harness/optuna.db`` by default; ``--workers N`` on one machine uses a
journal file (SQLite is unsafe for concurrent writers); any RDB URL serves workers on several
machines. A study is named ``<objective>__<task>__<budget id>`` and resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.core.errors import UserError
from harness.core.objective import OBJECTIVES
from harness.core.task import TASKS
from harness.run.console import Reporter
from harness.run.executors import (
    ExecutorSpec,
    RayExecutor,
    absolute_tracking,
    interruption_reason,
    is_remote,
    kill_running_children,
)
from harness.run.runner import execute, prepare, resolve_train_data
from harness.tracking import MlflowRun, tracking_uri, versions

log = logging.getLogger(__name__)

#: shared optimiser parameters a study may include (``--tune-lr``)
SHARED_SPACE = {"budget.lr": (1e-4, 1e-2, True)}


class TuneError(UserError):
    """A study that cannot start (storage, names, trial count)."""


@dataclass
class StudySummary:
    objective: str
    study_name: str
    n_trials: int
    states: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any]
    parent_run_id: str | None


def storage_url(url: str | None, output_dir: str | Path, workers: int) -> str:
    if url:
        return url
    root = Path(output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"journal:{root / 'optuna-journal.log'}" if workers > 1 else f"sqlite:///{root / 'optuna.db'}"


def open_storage(url: str):
    """An Optuna storage for ``url`` (``journal:PATH`` or an RDB URL), or a clear TuneError."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    try:
        if url.startswith("journal:"):
            path = Path(url[len("journal:") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        kwargs = {"connect_args": {"timeout": 30.0}} if url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:
        raise TuneError(
            f"cannot open Optuna storage {url!r}: {type(e).__name__}: {e}. Use "
            "sqlite:///PATH, journal:PATH, or a reachable database URL"
        ) from None


def study_name(objective: str, task: str, budget_id: str) -> str:
    return f"{objective}__{task}__{budget_id}"


def paper_defaults(objective_cls, base: RunConfig, tune_lr: bool) -> dict[str, Any]:
    """The first trial: the objective's paper defaults for every parameter of its search space."""
    names: list[str] = []

    class Recorder:
        def suggest_float(self, name, low, high, **kw):
            names.append(name)
            return low

        def suggest_int(self, name, low, high, **kw):
            names.append(name)
            return low

        def suggest_categorical(self, name, choices):
            names.append(name)
            return choices[0]

    objective_cls.search_space(Recorder())
    out = {n: objective_cls.hparams[n].default for n in names if n in objective_cls.hparams}
    if tune_lr:
        out["budget.lr"] = base.budget.lr
    return out


def trial_config(base: RunConfig, objective: str, task: str, params: dict[str, Any]) -> RunConfig:
    budget = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("budget.")}
    own = {k: v for k, v in params.items() if not k.startswith("budget.")}
    data = base.model_dump()
    # scored on the validation split: the identity says so, so a trial never shares the identity of
    # the tuned configuration's test run
    data.update(objective=objective, objective_params=own, tasks=[task], evaluation="validation")
    data["budget"].update(budget)
    return RunConfig.model_validate(data)


def _suggest(trial, objective_cls, tune_lr: bool) -> dict[str, Any]:
    params = dict(objective_cls.search_space(trial))
    if tune_lr:
        lo, hi, logscale = SHARED_SPACE["budget.lr"]
        params["budget.lr"] = trial.suggest_float("budget.lr", lo, hi, log=logscale)
    return params


def _make_study(storage, name: str, seed: int, direction: str):
    import optuna

    return optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction,
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )


def _optimize(
    base: RunConfig,
    objective: str,
    task: str,
    n_trials: int,
    storage_spec: str,
    name: str,
    seed: int,
    direction: str,
    tune_lr: bool,
    validate_every: int,
    parent_run_id: str | None,
    quiet: bool,
) -> None:
    """One worker: runs trials until the study holds ``n_trials`` of any state."""
    import optuna
    from optuna.study import MaxTrialsCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    reporter = Reporter(quiet=quiet)
    storage = open_storage(storage_spec)
    study = _make_study(storage, name, seed, direction)
    objective_cls = OBJECTIVES.get(objective)

    def fn(trial) -> float:
        params = _suggest(trial, objective_cls, tune_lr)
        try:
            cfg = trial_config(base, objective, task, params)
            plan = prepare(cfg)
        except Exception as e:  # an invalid configuration: this trial fails, the study goes on
            trial.set_user_attr("harness.failure_reason", f"{type(e).__name__}: {e}")
            raise

        def report(step: int, score: float) -> None:
            trial.report(score, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation score {score:.4f} at step {step}")

        tags = {"harness.role": "trial", "harness.study": name, "harness.trial": str(trial.number)}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        try:
            out = execute(
                cfg,
                reporter,
                plan,
                extra_tags=tags,
                validation=True,
                on_validation=report,
                validate_every=validate_every,
            )
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("harness.failure_reason", f"{type(e).__name__}: {e}")
            raise
        trial.set_user_attr("mlflow_run_id", out.run_id)
        return out.results[0].main_score

    started = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]
    study.optimize(
        fn,
        callbacks=[MaxTrialsCallback(n_trials, states=None)],
        catch=(Exception,),
        n_trials=max(0, n_trials - len(started)),
    )


def _ray_trial(
    base_json, objective, task, params, storage_spec, name, seed, direction, trial_id, every, parent, threads
):
    """One trial as a Ray task: trains and scores ``params`` in its own nested MLflow run, reporting
    validation scores to the shared study's pruner. Returns the state for the driver to tell."""
    import optuna
    import torch

    torch.set_num_threads(max(1, threads))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _make_study(open_storage(storage_spec), name, seed, direction)
    trial = optuna.trial.Trial(study, trial_id)

    def report(step: int, score: float) -> None:
        trial.report(score, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"validation score {score:.4f} at step {step}")

    tags = {"harness.role": "trial", "harness.study": name, "harness.trial": str(trial.number)}
    tags["mlflow.parentRunId"] = parent
    try:
        cfg = trial_config(RunConfig.model_validate(base_json), objective, task, params)
        out = execute(
            cfg,
            Reporter(quiet=True),
            prepare(cfg),
            extra_tags=tags,
            validation=True,
            on_validation=report,
            validate_every=every,
        )
    except optuna.TrialPruned:
        return {"state": "PRUNED"}
    except Exception as e:
        trial.set_user_attr("harness.failure_reason", f"{type(e).__name__}: {e}")
        return {"state": "FAIL"}
    trial.set_user_attr("mlflow_run_id", out.run_id)
    return {"state": "COMPLETE", "value": out.results[0].main_score}


def _optimize_on_ray(
    ex: RayExecutor,
    storage,
    base: RunConfig,
    uri: str,
    objective,
    task,
    n_trials,
    storage_spec,
    name,
    seed,
    direction,
    tune_lr,
    validate_every,
    parent_run_id,
    quiet,
) -> None:
    """Trials as Ray tasks sharing one study: this process asks the sampler for each trial and tells
    the result, keeping as many in flight as the cluster holds, so exactly ``n_trials`` are run."""
    import optuna
    from optuna.trial import TrialState

    study = _make_study(storage, name, seed, direction)
    objective_cls = OBJECTIVES.get(objective)
    left = max(0, n_trials - len([t for t in study.trials if t.state != TrialState.WAITING]))
    base_json = absolute_tracking(base, uri).model_dump(mode="json")
    width, pending = ex.slots(), {}
    try:
        while left or pending:
            while left and len(pending) < width:
                trial, left = study.ask(), left - 1
                try:
                    params = _suggest(trial, objective_cls, tune_lr)
                    prepare(trial_config(base, objective, task, params))
                except Exception as e:  # an invalid configuration: this trial fails, the study goes on
                    trial.set_user_attr("harness.failure_reason", f"{type(e).__name__}: {e}")
                    study.tell(trial, state=TrialState.FAIL)
                    continue
                args = (base_json, objective, task, params, storage_spec, name, seed, direction)
                ref = ex.submit_call(_ray_trial, *args, trial._trial_id, validate_every, parent_run_id)
                pending[ref] = trial
            if not pending:
                continue
            done, _ = ex.ray.wait(list(pending), num_returns=1)
            for ref in done:
                trial, res = pending.pop(ref), ex.ray.get(ref)
                if res["state"] == "COMPLETE":
                    study.tell(trial, res["value"])
                else:
                    study.tell(trial, state=TrialState[res["state"]])
    except KeyboardInterrupt as e:  # cancel the trials in flight; their runs end KILLED
        ex.cancel(list(pending))
        kill_running_children(uri, parent_run_id, interruption_reason(e))
        for trial in pending.values():
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise


def _worker(kwargs: dict) -> None:  # a spawned worker process
    kwargs["base"] = RunConfig.model_validate(kwargs["base"])
    _optimize(**kwargs)


def tune(
    base: RunConfig,
    objectives: list[str],
    task: str,
    n_trials: int,
    reporter: Reporter | None = None,
    storage: str | None = None,
    study: str | None = None,
    workers: int = 1,
    tune_lr: bool = False,
    validate_every: int | None = None,
    seed: int = 0,
    executor: ExecutorSpec | None = None,
) -> list[StudySummary]:
    """Tune each objective with the same number of trials; returns one summary per study.
    ``executor`` (default: worker processes on this machine) may run each trial as a Ray task."""
    spec = executor or ExecutorSpec()
    spec.check()
    import optuna

    reporter = reporter or Reporter(quiet=True)
    resolve_train_data(base)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if n_trials < 1:
        raise TuneError(f"--trials must be at least 1, got {n_trials}")
    if workers < 1:
        raise TuneError(f"--workers must be at least 1, got {workers}")
    if not objectives:
        raise TuneError("no objectives given: pass --objective NAME or --objectives a,b,c")
    if study and len(objectives) > 1:
        raise TuneError("--study names one study; it cannot be used with several objectives")
    task_cls = TASKS.get(task)
    if not task_cls.has_validation():
        raise TuneError(
            f"task {task!r} has no validation split, and tuning never reads test data; tune on a "
            "task with one (e.g. stsb for STS, flickr30k-retrieval from the full nlphuji/flickr30k "
            "table, CIFAR tasks, or any shapes task)"
        )
    for obj in objectives:  # resolve and validate everything before any training
        prepare(trial_config(base, obj, task, {}))
        OBJECTIVES.get(obj)
    url = storage_url(storage, base.tracking.output_dir, workers)
    if workers > 1 and url.startswith("sqlite"):
        raise TuneError(
            "SQLite cannot serve several worker processes safely; use a journal file "
            "(the default with --workers) or a database server URL"
        )
    storage_obj = open_storage(url)  # fails early on an unreachable storage; reused below
    ray_ex = None
    if spec.kind == "ray":  # every check of the executor, before any run is created
        if workers > 1:
            raise TuneError("--workers is for --executor local; on Ray the cluster's CPUs decide")
        if is_remote(spec.address) and not url.split(":", 1)[0].startswith(("postgresql", "mysql")):
            raise TuneError(
                f"Optuna storage {url!r} is a file on this machine, but --ray-address {spec.address} "
                "runs trials on other machines: pass --storage with a database server URL"
            )
        ray_ex = RayExecutor(spec)
        ray_ex.start(tracking_uri(base.tracking.tracking_uri, base.tracking.output_dir))
    direction = "maximize" if task_cls.higher_is_better else "minimize"
    every = validate_every or max(1, base.budget.steps // 4)
    uri = tracking_uri(base.tracking.tracking_uri, base.tracking.output_dir)
    summaries = []
    try:
        for obj in objectives:
            name = study or study_name(obj, task, base.budget_id)
            st = _make_study(storage_obj, name, seed, direction)
            defaults = paper_defaults(OBJECTIVES.get(obj), base, tune_lr)
            if not st.trials:
                st.enqueue_trial(defaults, user_attrs={"harness.paper_defaults": True})
            tags = {
                "harness.role": "study",
                "harness.study": name,
                "harness.objective": obj,
                "harness.tasks": task,
                "harness.trials": str(n_trials),
                "harness.storage": url.split("@")[-1],
                "harness.budget_id": base.budget_id,
                **versions(),
            }
            reporter.info(
                f"tuning [bold]{obj}[/] on {task} (validation split): study {name!r}, "
                f"{len(st.trials)}/{n_trials} trials so far, storage {url.split('@')[-1]}"
            )
            parent = MlflowRun(
                uri,
                base.tracking.experiment,
                f"tune-{obj}",
                tags,
                artifact_root=Path(base.tracking.output_dir) / "artifacts",
            )
            with parent:
                kwargs = dict(
                    objective=obj,
                    task=task,
                    n_trials=n_trials,
                    storage_spec=url,
                    name=name,
                    seed=seed,
                    direction=direction,
                    tune_lr=tune_lr,
                    validate_every=every,
                    parent_run_id=parent.run_id,
                    quiet=reporter.quiet,
                )
                procs = []
                if ray_ex is not None:
                    _optimize_on_ray(ray_ex, storage_obj, base, uri, **kwargs)
                    summaries.append(_summarise(storage_obj, name, obj, parent.run_id, reporter))
                    continue
                if workers > 1:
                    ctx = mp.get_context("spawn")
                    for w in range(workers - 1):
                        p = ctx.Process(
                            target=_worker,
                            args=(
                                {
                                    **kwargs,
                                    "base": base.model_dump(mode="json"),
                                    "seed": seed + w + 1,
                                    "quiet": True,
                                },
                            ),
                        )
                        p.start()
                        procs.append(p)
                _optimize(base=base, **kwargs)
                for p in procs:
                    p.join()
                summaries.append(_summarise(storage_obj, name, obj, parent.run_id, reporter))
    finally:
        if ray_ex is not None:
            ray_ex.stop()
    return summaries


def _summarise(storage, name: str, objective: str, parent_run_id: str, reporter: Reporter) -> StudySummary:
    import mlflow
    import optuna

    st = optuna.load_study(study_name=name, storage=storage)
    states: dict[str, int] = {}
    for t in st.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best_value, best_params = None, {}
    if complete:
        best_value, best_params = st.best_value, dict(st.best_params)
        mlflow.log_params({f"best.{k}": v for k, v in best_params.items()})
        mlflow.log_metric("best_value", best_value)
        mlflow.set_tag("harness.best_trial", str(st.best_trial.number))
    mlflow.log_metrics({f"trials_{k.lower()}": v for k, v in states.items()})
    mlflow.log_dict(
        {
            "study": name,
            "best_value": best_value,
            "best_params": best_params,
            "states": states,
            "trials": [
                {
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value,
                    "params": t.params,
                    "user_attrs": t.user_attrs,
                }
                for t in st.trials
            ],
        },
        "study.json",
    )
    _log_plots(st, len(complete))
    reporter.info(f"study {name!r}: {states}; best {best_value} with {json.dumps(best_params)}")
    return StudySummary(objective, name, len(st.trials), states, best_value, best_params, parent_run_id)


def _log_plots(st, n_complete: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    import mlflow
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    plots = [("optuna/optimization_history.png", ovm.plot_optimization_history)]
    if n_complete >= 2 and st.best_params:
        plots.append(("optuna/param_importances.png", ovm.plot_param_importances))
    for name, fn in plots:
        try:
            ax = fn(st)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            mlflow.log_figure(fig, name)
            plt.close(fig)
        except Exception as e:  # a plot is a convenience; the study is recorded either way
            log.warning("could not plot %s: %s", name, e)


def best_params(objective: str, task: str, base: RunConfig, storage: str | None = None) -> dict[str, Any]:
    """The best parameters of a finished study (for ``harness compare --tuned``)."""
    return tuned_study(objective, task, base, storage)["params"]


def tuned_study(objective: str, task: str, base: RunConfig, storage: str | None = None) -> dict[str, Any]:
    """What ``harness compare --tuned`` takes from a finished study and records beside its runs:
    the best parameters, the study's name, task, budget id, trial count and states, the best
    validation value and whether the best trial was the enqueued paper defaults."""
    import optuna

    url = storage_url(storage, base.tracking.output_dir, 1)
    name = study_name(objective, task, base.budget_id)
    try:
        st = optuna.load_study(study_name=name, storage=open_storage(url))
        best = st.best_trial
    except (KeyError, ValueError) as e:
        raise TuneError(
            f"no finished tuning study {name!r} in {url}: run `harness tune --objective "
            f"{objective} --task {task}` with the same budget first (or name the tuning budget with "
            f"`--tuning-set KEY=VALUE`) ({e})"
        ) from None
    states: dict[str, int] = {}
    for t in st.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {
        "params": dict(best.params),
        "study": name,
        "task": task,
        "budget_id": base.budget_id,
        "budget": {k: v for k, v in base.budget.model_dump(mode="json").items() if k in _BUDGET_SHOWN},
        "trials": len(st.trials),
        "states": states,
        "best_value": best.value,
        "best_trial": best.number,
        "best_is_paper_defaults": bool(best.user_attrs.get("harness.paper_defaults")),
        # the enqueued first trial: what the tuned parameters moved from
        "defaults": next(
            (dict(t.params) for t in st.trials if t.user_attrs.get("harness.paper_defaults")), {}
        ),
    }


#: the budget fields a tuned board states for its tuning budget
_BUDGET_SHOWN = ("steps", "batch_size", "lr", "warmup_steps")
