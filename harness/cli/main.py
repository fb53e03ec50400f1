"""``harness`` command line: run, list, validate.

Exit codes: 0 success, 1 the run failed (recorded FAILED in MLflow when the run had started),
2 bad input (nothing written), 130 interrupted by Ctrl-C and 143 terminated by SIGTERM (both
recorded KILLED with the reason).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any

from rich.markup import escape
from rich.table import Table

from harness.config import BUDGET_PRESETS, ConfigError, resolve_config
from harness.core.errors import UserError
from harness.run.console import Reporter
from harness.tracking import Terminated

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143


def _recorded(e: BaseException) -> str:
    """What MLflow holds of a run that raised: said only when it is true."""
    run_id, status = getattr(e, "harness_run_id", None), getattr(e, "harness_status", None)
    if run_id:
        return f"recorded as {status} in MLflow (run {run_id})"
    return "nothing was recorded in MLflow (the run had not started)"


def _interrupted(rep: Reporter, e: KeyboardInterrupt, resume: str = "") -> int:
    """Ctrl-C (exit 130) or SIGTERM (exit 143): the run that was open is recorded KILLED."""
    rep.error(f"{e if isinstance(e, Terminated) else 'interrupted'}; {_recorded(e)}{resume}")
    return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (strict: unknown keys fail)")
    p.add_argument(
        "--budget",
        choices=sorted(BUDGET_PRESETS),
        default=None,
        help="budget preset (default: 'default', the embedded default on a 2-core CPU)",
    )
    p.add_argument("--objective", "-o", help="objective or weighted sum, e.g. 'clip + 0.1*tic'")
    p.add_argument(
        "--task",
        "-t",
        action="append",
        dest="tasks",
        help="task to evaluate (repeatable, or comma-separated)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--model", help="harness preset or open_clip architecture")
    p.add_argument("--pretrained", help="open_clip pretrained tag or local checkpoint")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--experiment", help="MLflow experiment name (default: harness)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///.harness/mlflow.db)",
    )
    p.add_argument("--run-name")
    p.add_argument("--output-dir", help="where the cache, checkpoints and results go (default .harness)")
    p.add_argument("--no-checkpoint", action="store_true")
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="read a real dataset from a local path: NAME is a task (coco-retrieval) or a "
        "dataset id (repeatable)",
    )
    p.add_argument(
        "--train-data",
        help="training data (see `harness list train-data`); default: what the "
        "first task implies (coco-retrieval: coco, stsb: nli, shapes tasks: shapes)",
    )
    p.add_argument("--train-samples", type=int, help="use only the first N samples of a real training set")
    p.add_argument(
        "--select-on",
        metavar="TASK",
        help="checkpoint selection: evaluate TASK's validation "
        "split every --select-every steps and keep the best state (SimCSE: stsb)",
    )
    p.add_argument("--select-every", type=int, default=None, help="steps between selection evaluations (125)")
    p.add_argument(
        "--strict-images",
        action="store_true",
        default=None,
        help="an undecodable image is an error (default: skipped and counted)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set budget.warmup_steps=10 (repeatable)",
    )


def _flags(a: argparse.Namespace) -> dict[str, Any]:
    tasks = None
    if a.tasks:
        tasks = [t.strip() for item in a.tasks for t in item.split(",") if t.strip()]
    selection = (
        {"task": a.select_on, **({"every": a.select_every} if a.select_every else {})}
        if a.select_on
        else None
    )
    return {
        "objective": a.objective,
        "tasks": tasks,
        "seed": a.seed,
        "train_data": a.train_data,
        "train_samples": a.train_samples,
        "selection": selection,
        "budget": {
            k: v
            for k, v in {"steps": a.steps, "batch_size": a.batch_size, "lr": a.lr, "device": a.device}.items()
            if v is not None
        },
        "model": {k: v for k, v in {"name": a.model, "pretrained": a.pretrained}.items() if v is not None},
        "data": {
            k: v for k, v in {"paths": _data_paths(a.data), "strict_images": a.strict_images}.items() if v
        },
        "tracking": {
            k: v
            for k, v in {
                "experiment": a.experiment,
                "tracking_uri": a.tracking_uri,
                "run_name": a.run_name,
                "output_dir": a.output_dir,
                "checkpoint": False if a.no_checkpoint else None,
            }.items()
            if v is not None
        },
    }


def _data_paths(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--data expects NAME=PATH (e.g. coco-retrieval=/data/coco), got {item!r}")
        out[name.strip()] = path.strip()
    return out


def cmd_run(a: argparse.Namespace, rep: Reporter) -> int:
    from harness.run.runner import budget_notice, execute, prepare

    cfg = resolve_config(a.budget, a.config, _flags(a), a.set)
    plan = prepare(cfg)  # every check, before MLflow is touched
    notice = budget_notice(cfg, chosen=bool(a.budget or a.config))
    if notice:
        rep.info(notice)
    outcome = execute(cfg, rep, plan)
    from harness.engine.distributed import is_main

    if not is_main():  # torchrun: rank 0 prints and records
        return 0
    tr = outcome.train
    title = (
        f"{cfg.objective} | seed {cfg.seed} | {cfg.budget_preset} budget | "
        f"{tr.wall_seconds:.0f}s train, {tr.samples_per_second:.0f} samples/s"
    )
    rep.print(rep.results_table(outcome.results, title))
    rep.info(f"MLflow run {outcome.run_id} ({outcome.status}); results: {outcome.results_path}")
    return 0


def cmd_eval(a: argparse.Namespace, rep: Reporter) -> int:
    from harness.run.runner import evaluate_only, prepare_eval

    cfg = resolve_config(a.budget, a.config, _flags(a), a.set)
    prepare_eval(cfg)
    outcome = evaluate_only(cfg, rep)
    from harness.engine.models import HF_TEXT_PREFIX, MINILM

    bundled = cfg.model.name == MINILM or cfg.model.name.startswith(HF_TEXT_PREFIX)
    weights = cfg.model.pretrained or ("Hugging Face weights" if bundled else "random init")
    rep.print(rep.results_table(outcome.results, f"{cfg.model.name} ({weights})"))
    rep.info(f"MLflow run {outcome.run_id} ({outcome.status}); results: {outcome.results_path}")
    return 0


def cmd_compare(a: argparse.Namespace, rep: Reporter) -> int:
    from harness.run.compare import CompareError, compare, parse_tuned_on, tuned_parameters

    objectives = [o.strip() for o in (a.objectives or "").split(",") if o.strip()]
    if not objectives:
        raise CompareError(
            "no objectives given: pass --objectives NAME[,NAME...] (see `harness list objectives`)"
        )
    flags = _flags(a)
    flags["objective"] = objectives[0]
    cfg = resolve_config(a.budget, a.config, flags, a.set)
    executor = _executor(a)
    if a.sweep:
        if a.tuned:
            raise CompareError("--sweep runs the paper-defaults track; it cannot be combined with --tuned")
        from harness.run.sweep import parse_sweep, run_sweep

        axis, values = parse_sweep(a.sweep)
        sid, outcomes = run_sweep(cfg, objectives, a.seeds, axis, values, rep, a.lr_rule, executor)
        rep.info(
            f"sweep {sid}: {len(outcomes)} comparisons in experiment {cfg.tracking.experiment!r}; "
            f"`harness leaderboard --sweep {sid} --out DIR` draws it"
        )
        return EXIT_FAILED if any(o.failed for o in outcomes) else 0
    tuning = None
    if a.tuned:
        from harness.run.runner import expand_tasks

        tune_on = parse_tuned_on(a.tuned_on or expand_tasks(cfg.tasks)[0].name, objectives)
        # the studies' own budget: the comparison's, or the shorter one they were tuned under
        tune_cfg = resolve_config(a.budget, a.config, flags, a.set + a.tuning_set) if a.tuning_set else cfg
        tuning = tuned_parameters(tune_cfg, objectives, tune_on, a.storage)
    elif a.tuning_set or a.tuned_on:
        raise CompareError("--tuned-on and --tuning-set apply to --tuned only")
    # compare() validates every pair before MLflow is touched; a pair's own failure is recorded
    # inside it and the sweep goes on
    outcome = compare(cfg, objectives, a.seeds, rep, executor=executor, tuning=tuning)
    rep.info(f"comparison run {outcome.parent_run_id} in experiment {outcome.experiment!r}")
    return EXIT_FAILED if outcome.failed else 0


def cmd_tune(a: argparse.Namespace, rep: Reporter) -> int:
    from harness.run.tune import TuneError, tune

    objectives = [o.strip() for o in (a.objectives or a.objective or "").split(",") if o.strip()]
    tasks = [t.strip() for item in (a.tasks or []) for t in item.split(",") if t.strip()]
    if len(tasks) != 1:
        raise TuneError("tune needs exactly one --task (the task whose validation score is optimised)")
    flags = _flags(a)
    flags["objective"] = objectives[0] if objectives else None
    cfg = resolve_config(a.budget, a.config, flags, a.set)
    executor = _executor(a)
    summaries = tune(
        cfg,
        objectives,
        tasks[0],
        a.trials,
        rep,
        storage=a.storage,
        study=a.study,
        workers=a.workers,
        tune_lr=a.tune_lr,
        validate_every=a.validate_every,
        seed=a.sampler_seed,
        executor=executor,
    )
    table = Table(title="tuning (validation split)", title_justify="left")
    for c in ("objective", "study", "trials", "states", "best value", "best parameters"):
        table.add_column(c, overflow="fold")
    for s in summaries:
        best = "-" if s.best_value is None else f"{s.best_value:.4f}"
        table.add_row(
            escape(s.objective),
            escape(s.study_name),
            str(s.n_trials),
            escape(json.dumps(s.states)),
            best,
            escape(json.dumps(s.best_params)),
        )
    rep.print(table)
    return 0


def cmd_list(a: argparse.Namespace, rep: Reporter) -> int:
    """``harness list``: objectives and tasks come from the catalogue (harness/cli/catalogue.py), cached so
    that listing does not import them (nor torch) while nothing they depend on changed."""
    fmt = "json" if a.json else a.format
    a.json = fmt == "json"
    if fmt == "md" and a.what == "train-data":
        raise UserError("--format md is for `harness list objectives` and `harness list tasks`")
    if a.what == "train-data":
        from harness.data.train_sets import TRAIN_SETS

        rows = [cls.describe() for _, cls in TRAIN_SETS.items()]
        if a.json:
            print(
                json.dumps(
                    {
                        "entries": rows,
                        "failed": [vars(f) | {"traceback": None} for f in TRAIN_SETS.failures.values()],
                    },
                    indent=1,
                )
            )
            return 0
        table = Table(title=f"{len(rows)} training sets", title_justify="left")
        cols = ("name", "kind", "dataset", "provides", "license", "doc")
        for c in cols:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*[escape(", ".join(r[c]) if isinstance(r[c], list) else str(r[c])) for c in cols])
        rep.print(table)
        for f in TRAIN_SETS.failures.values():
            rep.error(f"plugin {f.name!r} ({f.source}) failed to load and was skipped: {f.error}")
        return 0
    from harness.cli import catalogue

    cat = catalogue.load(a.what, refresh=a.refresh)
    rows = cat.rows
    if fmt == "json":
        print(json.dumps({"entries": rows, "failed": cat.failed}, indent=1))
        return 0
    if fmt == "md":
        print(catalogue.markdown(a.what, rows), end="")
        for f in cat.failed:
            rep.error(f"plugin {f['name']!r} ({f['source']}) failed to load and was skipped: {f['error']}")
        return 0
    table = Table(title=f"{len(rows)} {a.what}", title_justify="left")
    if a.what == "objectives":
        cols = ("name", "family", "modality", "requires", "distributed", "citation")
    else:
        cols = ("name", "family", "modality", "main_score", "dataset", "default_train_data", "license")
    for c in cols:
        table.add_column(c, overflow="fold", no_wrap=c == "name")
    for r in rows:
        table.add_row(*[escape(", ".join(r[c]) if isinstance(r[c], list) else str(r[c])) for c in cols])
    rep.print(table)
    for f in cat.failed:
        rep.error(f"plugin {f['name']!r} ({f['source']}) failed to load and was skipped: {f['error']}")
    return 0


def cmd_validate(a: argparse.Namespace, rep: Reporter) -> int:
    from harness.run.runner import prepare

    cfg = resolve_config(a.budget, a.config, None, a.set)
    prepare(cfg)
    rep.info(
        f"[green]valid[/]: objective {escape(cfg.objective)}, tasks {', '.join(cfg.tasks)}, "
        f"{cfg.budget.steps} steps x {cfg.budget.batch_size}, identity {cfg.identity}"
    )
    return 0


#: what to say after an interruption, per command
RESUME = {
    "compare": "; rerun the same command to resume",
    "tune": "; rerun the same command to resume the study",
}


def dispatch(a: argparse.Namespace, rep: Reporter) -> int:
    """Run one command with the one error policy of every command.

    * :class:`~harness.core.errors.UserError` (bad input): its message, exit 2; nothing was written
      when it came before the run started (the usual case), else the message says what was.
    * Ctrl-C / SIGTERM: exit 130 / 143, the open run recorded KILLED with the reason.
    * anything else: the run failed (exit 1); the message says whether and how it was recorded, and
      ``--verbose`` shows the traceback.
    """
    try:
        return a.fn(a, rep)
    except UserError as e:
        if getattr(e, "harness_run_id", None):
            rep.error(f"{e}; {_recorded(e)}")
            return EXIT_FAILED
        rep.error(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        return _interrupted(rep, e, RESUME.get(a.command, ""))
    except Exception as e:
        what = "run failed" if getattr(e, "harness_run_id", None) else "error"
        hint = "" if a.verbose else " (rerun with --verbose for the traceback)"
        rep.error(f"{what} ({type(e).__name__}: {e}); {_recorded(e)}{hint}")
        if a.verbose:
            raise
        return EXIT_FAILED


def _output_args(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--quiet", "-q", action="store_true", default=default, help="no progress output")
    p.add_argument("--verbose", "-v", action="store_true", default=default, help="show tracebacks")


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="where each run executes: in this process (default) or as a Ray task",
    )
    p.add_argument(
        "--ray-address",
        help="join this Ray cluster (HOST:PORT or ray://HOST:PORT; default: start a local instance)",
    )
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each Ray task asks for (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each Ray task asks for (default 0)")


def _executor(a: argparse.Namespace):
    from harness.run.executors import ExecutorSpec

    spec = ExecutorSpec(a.executor, a.ray_address, a.cpus_per_run, a.gpus_per_run)
    spec.check()
    return spec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", description="Benchmark contrastive objectives under identical budgets."
    )
    _output_args(parser, False)
    # -q / -v are accepted after the subcommand too; SUPPRESS keeps an absent flag from resetting
    # one given before it
    common = argparse.ArgumentParser(add_help=False)
    _output_args(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", parents=[common], help="train one objective and evaluate its tasks")
    _add_config_args(p)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser(
        "eval",
        parents=[common],
        help="evaluate an open_clip model (pretrained tag or checkpoint) without training",
    )
    _add_config_args(p)
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser(
        "compare", parents=[common], help="train every objective x seed under one budget and rank them"
    )
    _add_config_args(p)
    p.add_argument("--objectives", help="comma-separated objectives, e.g. clip,siglip,supcon")
    p.add_argument("--tasks", dest="tasks", action="append", help="tasks or suites (comma-separated)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per objective (default 3)")
    p.add_argument(
        "--tuned",
        action="store_true",
        help="retrain each objective's best tuned "
        "configuration (from `harness tune`), as the 'tuned' leaderboard track",
    )
    p.add_argument(
        "--tuned-on",
        help="the task the studies optimised (default: the first task); OBJ=TASK for one objective, "
        "e.g. shapes-retrieval,supcon=shapes-linear",
    )
    p.add_argument(
        "--tuning-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the --set overrides the studies were tuned under when that budget was shorter than "
        "the comparison's (e.g. --tuning-set budget.steps=150); they name the studies",
    )
    p.add_argument("--storage", help="Optuna storage of the studies (default .harness/optuna.db)")
    p.add_argument(
        "--sweep",
        metavar="AXIS=V1,V2,...",
        help="run the comparison at each value of one budget axis, e.g. budget.batch_size=64,256,1024 "
        "(samples seen held constant; see --lr-rule)",
    )
    p.add_argument(
        "--lr-rule",
        choices=["sqrt", "linear", "constant"],
        default="sqrt",
        help="with --sweep budget.batch_size: how the learning rate follows the batch (default sqrt)",
    )
    _executor_args(p)
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser(
        "tune", parents=[common], help="equal-budget Optuna tuning of objectives on the validation split"
    )
    _add_config_args(p)
    p.add_argument("--objectives", help="several objectives, each given the same number of trials")
    p.add_argument(
        "--trials",
        type=int,
        default=20,
        help="trials per objective, counted study-wide including pruned and failed ones (default 20)",
    )
    p.add_argument(
        "--storage",
        help="Optuna storage: sqlite:///PATH (default .harness/optuna.db), "
        "journal:PATH (default with --workers), or a database URL",
    )
    p.add_argument("--study", help="study name (default OBJECTIVE__TASK__BUDGETID)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--tune-lr", action="store_true", help="also tune the shared learning rate")
    p.add_argument("--validate-every", type=int, help="steps between validation reports to the pruner")
    p.add_argument("--sampler-seed", type=int, default=0)
    _executor_args(p)
    p.set_defaults(fn=cmd_tune)
    p = sub.add_parser(
        "leaderboard",
        parents=[common],
        help="rank objectives from MLflow: terminal, Markdown, HTML, JSON, CSV",
    )
    from harness import leaderboard

    leaderboard.add_arguments(p)
    p.set_defaults(fn=leaderboard.main)
    p = sub.add_parser("list", parents=[common], help="list registered objectives, tasks or training sets")
    p.add_argument("what", choices=["objectives", "tasks", "train-data"])
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument(
        "--format",
        choices=["table", "json", "md"],
        default="table",
        help="a terminal table (default), JSON, or the docs' Markdown table (objectives, tasks)",
    )
    p.add_argument(
        "--refresh",
        action="store_true",
        help="rebuild the cached list of objectives or tasks "
        "(it is rebuilt by itself when an installed plugin or a module of theirs changes)",
    )
    p.set_defaults(fn=cmd_list)
    p = sub.add_parser("validate", parents=[common], help="check a config file without running it")
    p.add_argument("config")
    p.add_argument("--budget", choices=sorted(BUDGET_PRESETS), default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(fn=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if "RANK" in os.environ or "torch.distributed" in sys.modules:
        from harness.engine.distributed import cleanup, init_from_env, is_main

        _, world = init_from_env()  # under torchrun: one process group; a no-op otherwise
    else:  # no process group can exist: torch is not imported for it (`harness list` stays fast)
        world, cleanup, is_main = 1, (lambda: None), (lambda: True)
    if world > 1 and a.command in ("compare", "tune"):
        print(
            f"error: `harness {a.command}` runs in one process; launch each training run with "
            "`torchrun ... -m harness run` instead",
            file=sys.stderr,
        )
        return EXIT_USAGE
    rep = Reporter(quiet=a.quiet or not is_main())
    previous = _handle_sigterm()
    try:
        return dispatch(a, rep)
    finally:
        cleanup()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signal.Signals(signum).name)


def _handle_sigterm():
    """SIGTERM (``timeout``, Slurm's and Kubernetes' stop) is handled as Ctrl-C is: the open run
    ends KILLED with the reason, and the command exits 143. Returns the handler it replaced."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (harness.cli.main.main called from a thread): leave it
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
