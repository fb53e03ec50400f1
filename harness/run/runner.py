"""One run: resolve -> data -> model -> train -> evaluate -> record.

Everything that can be wrong with the input (names, hyperparameters, what the objective needs, the
model) is checked in :func:`prepare`, before MLflow is touched and before any training.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from harness.config import BUDGET_PRESETS, RunConfig, flatten
from harness.core.errors import UserError
from harness.core.objective import build_objective
from harness.core.registry import UnknownNameError
from harness.core.task import TASKS, EvalContext, Suite, task_meta
from harness.data import train_sets as train_data
from harness.data.shapes import ShapesWorld, default_cache_dir, vocabulary
from harness.data.sources import DataError, DatasetUnavailableError
from harness.engine.distributed import is_main, world_info
from harness.engine.models import Encoder, ModelConfig, build_model, checkpoint_words, harness_checkpoint
from harness.engine.trainer import TrainResult, resolve_device, seed_everything, train
from harness.leaderboard import TASK_META_TAG
from harness.run.console import Reporter
from harness.tracking import MlflowRun, NullRun, tracking_uri, versions


@dataclass
class Plan:
    cfg: RunConfig
    objective: Any
    tasks: list
    device: torch.device


@dataclass
class RunOutcome:
    run_id: str | None
    status: str
    identity: str
    results: list = field(default_factory=list)
    train: TrainResult | None = None
    results_path: Path | None = None
    checkpoint_path: Path | None = None


def expand_tasks(names: list[str], modality: str = "image-text", objective: str = "") -> list:
    """Instantiate tasks, expanding suites into their members (each task once, in order).

    A suite keeps the members that evaluate towers the objective trains (a text-only objective
    gets the suite's text tasks); a task named explicitly must match, or it is an error.
    """
    out: dict[str, object] = {}
    trained = TOWERS[modality]
    for name in names:
        cls = TASKS.get(name)
        if issubclass(cls, Suite):
            members = [TASKS.get(m) for m in cls.members]
            members = [m for m in members if TOWERS[m.modality] <= trained]
            if not members:
                raise UserError(
                    f"suite {name!r} has no task for the {modality} tower(s) that "
                    f"objective {objective!r} trains"
                )
        else:
            check_modalities(objective, modality, [cls])
            members = [cls]
        for m in members:
            out.setdefault(m.name, m())
    return list(out.values())


TOWERS = {"image-text": {"image", "text"}, "image": {"image"}, "text": {"text"}}


def check_modalities(name: str, modality: str, tasks: list) -> None:
    """A task may only evaluate towers the objective trains (text-only objective on an image-text
    task, or the reverse, is an error before training)."""
    trained = TOWERS[modality]
    for task in tasks:
        needed = TOWERS[task.modality]
        if not needed <= trained:
            raise UserError(
                f"objective {name!r} trains the {modality} tower(s) only, but task {task.name!r} "
                f"evaluates {task.modality} embeddings; pick a {modality} task or an image-text objective"
            )


def check_selection(cfg: RunConfig, objective) -> None:
    """The selection task must evaluate trained towers and have a validation split."""
    cls = TASKS.get(cfg.selection.task)
    if issubclass(cls, Suite):
        raise UserError(f"checkpoint selection needs one task, not the suite {cfg.selection.task!r}")
    check_modalities(cfg.objective, objective.modality, [cls])
    if not cls.has_validation():
        raise UserError(
            f"task {cls.name!r} has no validation split: it cannot select checkpoints "
            "(SimCSE selects on stsb, the STS-B validation split)"
        )
    cls().check_data(cfg.data.options())
    if cfg.selection.every > cfg.budget.steps:
        raise UserError(f"selection.every ({cfg.selection.every}) exceeds budget.steps ({cfg.budget.steps})")


def check_task_data(tasks: list, cfg: RunConfig, objective=None) -> None:
    """Check every dataset the command needs in one pass, before MLflow is touched or anything is
    trained: each task's data (local copy or Hub) and, given the ``objective``, the training data.

    A missing, gated or malformed dataset raises; every problem found is reported in one message
    (not one per try). Then the scored split and fingerprint of each real dataset, and the version
    of each task past its first, are recorded in the run identity (:meth:`RunConfig.set_eval_data`)."""
    options = cfg.data.options()
    if cfg.evaluation == "validation":
        for t in tasks:
            if not t.has_validation():
                raise UserError(
                    f"evaluation=validation, but task {t.name!r} has no validation split "
                    "(its only split is the test split); drop --set evaluation=validation or pick a task "
                    "that has one (stsb, the CIFAR tasks, any shapes task)"
                )
    checks: list[Callable[[], None]] = [functools.partial(t.check_data, options) for t in tasks]
    if objective is not None:
        checks.append(
            functools.partial(
                train_data.check,
                cfg.train_data,
                objective,
                cfg.objective,
                options,
                cfg.train_samples,
                model=cfg.model,
                batch_size=cfg.budget.batch_size,
                cache_dir=default_cache_dir(Path(cfg.tracking.output_dir)),
            )
        )
    problems: list[DataError] = []
    for check in checks:
        try:
            check()
        except DataError as e:
            problems.append(e)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        missing = [e for e in problems if isinstance(e, DatasetUnavailableError)]
        kind = DatasetUnavailableError if len(missing) == len(problems) else DataError
        raise kind(
            f"{len(problems)} datasets this command needs cannot be used:\n\n"
            + "\n\n".join(f"{i}. {e}" for i, e in enumerate(problems, 1))
        )
    validation = cfg.evaluation == "validation"
    eval_data = {}
    for t in tasks:
        entry = dict(t.data_identity(options, validation) or {})
        if str(t.version) != "1":  # a task whose protocol changed scores differently: another run
            entry["version"] = str(t.version)
        if entry:
            eval_data[t.name] = entry
    cfg.set_eval_data(eval_data)


def check_checkpoint(cfg: RunConfig, tasks: list, train_data_name: str, adopt: bool = False) -> None:
    """A ``harness run`` checkpoint given as ``model.pretrained`` brings its own architecture and
    tokenizer. ``adopt`` (``harness eval``) takes its model config; either way, one trained with
    the shapes world's word vocabulary cannot read real text, which is refused here, before
    anything runs."""
    state = harness_checkpoint(cfg.model.pretrained)
    if state is None:
        return
    if adopt:
        trained = state["config"].get("model", {})
        cfg.model = ModelConfig.model_validate({**trained, "pretrained": cfg.model.pretrained})
    words = checkpoint_words(state)
    if words and not train_data.uses_shapes_vocabulary(train_data_name, tasks):
        real = [t.name for t in tasks if getattr(t, "dataset", "") != "shapes-world"] or [train_data_name]
        raise UserError(
            f"checkpoint {cfg.model.pretrained} was trained with the shapes world's word vocabulary "
            f"({len(words)} words), so it cannot read the text of {', '.join(real)}; train a model that "
            "can with `harness run ... --set model.tokenizer=open_clip` (open_clip's tokenizer), or "
            "evaluate this one on shapes tasks"
        )


def prepare_eval(cfg: RunConfig) -> list:
    """``harness eval``'s checks, before MLflow is touched: the tasks, the checkpoint, the data."""
    resolve_train_data(cfg)
    tasks = expand_tasks(cfg.tasks)
    check_checkpoint(cfg, tasks, "shapes", adopt=True)
    check_task_data(tasks, cfg)
    return tasks


def budget_notice(cfg: RunConfig, chosen: bool) -> str | None:
    """One line when a CUDA machine would silently get a CPU budget: the user chose no budget
    (``chosen`` False), the preset does not ask for CUDA, and CUDA is available. Names the budget in
    use and the GPU presets to choose instead."""
    if chosen or cfg.budget.device == "cuda" or not torch.cuda.is_available():
        return None
    gpu = [n for n, p in BUDGET_PRESETS.items() if p.get("budget", {}).get("device") == "cuda"]
    return (
        f"budget {cfg.budget_preset!r} ({cfg.model.name}, "
        f"{cfg.budget.steps} steps x {cfg.budget.batch_size}) "
        f"is the CPU default, although CUDA is available; choose a GPU budget with "
        f"{' or '.join('--budget ' + n for n in gpu)} (see docs/configuration.md)"
    )


def resolve_train_data(cfg: RunConfig) -> RunConfig:
    """``train_data: auto`` becomes what the first task declares it implies (shapes tasks: shapes,
    coco-retrieval: coco, stsb: wiki1m), so the identity and the budget id name the data. Every
    command resolves it as soon as the config is read."""
    if cfg.train_data == "auto":
        try:
            cfg.train_data = TASKS.get(cfg.tasks[0]).default_train_data
        except UnknownNameError:  # reported, with suggestions, when the run is prepared
            cfg.train_data = "shapes"
    if cfg.train_data not in train_data.TRAIN_DATA:
        raise UserError(
            f"unknown training data {cfg.train_data!r}; valid: auto, {', '.join(train_data.TRAIN_DATA)} "
            "(see `harness list train-data`)"
        )
    train_data.spec(cfg.train_data)  # loaded now: the batch fields it declares are known to objectives
    return cfg


def prepare(cfg: RunConfig) -> Plan:
    """Resolve and validate everything; raises before any expensive work or MLflow write."""
    resolve_train_data(cfg)
    objective = build_objective(cfg.objective, cfg.objective_params)
    terms = getattr(objective, "terms", None) or [objective]
    cfg.set_objective_versions({type(t).name: str(getattr(type(t), "version", "1")) for t in terms})
    if cfg.budget.batch_size < objective.min_batch_size:
        raise UserError(
            f"objective {cfg.objective!r} needs a batch of at least {objective.min_batch_size}, "
            f"got budget.batch_size {cfg.budget.batch_size}"
        )
    tasks = expand_tasks(cfg.tasks, objective.modality, cfg.objective)
    check_checkpoint(cfg, tasks, cfg.train_data)
    check_task_data(tasks, cfg, objective)
    if cfg.selection is not None:
        check_selection(cfg, objective)
    device = resolve_device(cfg.budget.device)
    _, world = world_info()
    if world > 1:
        if objective.distributed == "unsupported":
            raise UserError(
                f"objective {cfg.objective!r} does not support torch.distributed; run it in one process"
            )
        if cfg.budget.batch_size % world:
            raise UserError(
                f"budget.batch_size {cfg.budget.batch_size} (the global batch) must be a "
                f"multiple of the {world} processes"
            )
    return Plan(cfg, objective, tasks, device)


_WORLDS: dict[tuple[str, str], ShapesWorld] = {}


def shapes_world(spec, cache_dir: Path, reporter: Reporter) -> ShapesWorld:
    """One ShapesWorld per (spec, cache) per process: a sweep renders/loads each split once."""
    key = (spec.fingerprint(), str(Path(cache_dir).resolve()))
    if key not in _WORLDS:
        _WORLDS[key] = ShapesWorld(spec, cache_dir, progress=reporter.info)
    return _WORLDS[key]


def execute(
    cfg: RunConfig,
    reporter: Reporter | None = None,
    plan: Plan | None = None,
    extra_tags: dict[str, str] | None = None,
    nested: bool = False,
    validation: bool = False,
    on_validation: Callable[[int, float], None] | None = None,
    validate_every: int = 0,
) -> RunOutcome:
    """Train and evaluate one configuration as one MLflow run (a child run when ``nested``).

    ``validation=True`` evaluates every task on the ``val`` split instead of test (tuning).
    ``on_validation(step, main_score)`` receives the first task's validation score every
    ``validate_every`` steps during training (Optuna's pruner is fed from there).
    """
    reporter = reporter or Reporter(quiet=True)
    plan = plan or prepare(cfg)
    validation = validation or cfg.evaluation == "validation"
    out_dir = Path(cfg.tracking.output_dir)

    # data and model (deterministic from the seed)
    world = shapes_world(cfg.shapes, default_cache_dir(out_dir), reporter)
    seed_everything(cfg.seed)
    words = vocabulary() if train_data.uses_shapes_vocabulary(cfg.train_data, plan.tasks) else None
    model, tokenizer, image_size, mean, std = build_model(cfg.model, words=words)
    encoder = Encoder(
        model,
        tokenizer,
        image_size,
        mean,
        std,
        device=plan.device,
        batch_size=cfg.budget.eval_batch_size,
        precision=cfg.budget.precision,
    )
    data = train_data.build(
        cfg.train_data,
        world=world,
        tokenizer=tokenizer,
        seed=cfg.seed,
        options=cfg.data.options(),
        image_size=image_size,
        preprocess_cfg=getattr(model.visual, "preprocess_cfg", None),
        cache_dir=default_cache_dir(out_dir),
        max_samples=cfg.train_samples,
        loader_workers=cfg.budget.loader_workers,
    )

    tags = {
        "harness.identity": cfg.identity,
        "harness.budget_id": cfg.budget_id,
        "harness.objective": cfg.objective,
        "harness.tasks": ",".join(cfg.tasks),
        "harness.seed": str(cfg.seed),
        "harness.budget_preset": cfg.budget_preset,
        "harness.train_data": cfg.train_data,
        "harness.model": cfg.model.name,
        "harness.dataset_fingerprint": getattr(data, "fingerprint", world.fingerprint),
        "harness.role": "run",
        "harness.track": "default",
        **eval_tags(cfg, validation),
        **versions(),
        **(extra_tags or {}),
    }
    run_name = cfg.tracking.run_name or f"{cfg.objective.replace(' ', '')}-s{cfg.seed}"
    uri = tracking_uri(cfg.tracking.tracking_uri, out_dir)
    main = is_main()
    recorder = (
        MlflowRun(
            uri, cfg.tracking.experiment, run_name, tags, artifact_root=out_dir / "artifacts", nested=nested
        )
        if main
        else NullRun()
    )
    outcome = RunOutcome(run_id=None, status="RUNNING", identity=cfg.identity)
    try:
        with recorder:
            outcome.run_id = recorder.run_id
            resolved = cfg.model_dump(mode="json")
            recorder.log_params(
                {
                    **flatten({k: v for k, v in resolved.items() if k != "tracking"}),
                    **{f"objective.{k}": v for k, v in plan.objective.params.items()},
                    "budget.samples_seen": cfg.budget.samples_seen,
                }
            )
            recorder.log_dict(resolved, "config.yaml")

            reporter.info(
                f"training [bold]{cfg.objective}[/] on {cfg.train_data}: {cfg.budget.steps} steps x "
                f"{cfg.budget.batch_size} on {plan.device.type} (identity {cfg.identity})"
            )
            selector = (
                Selector(cfg, model, plan.objective, encoder, world, recorder, reporter)
                if cfg.selection is not None
                else None
            )
            validate = None
            if on_validation is not None or selector is not None:

                def validate(step: int) -> None:
                    if selector is not None and step % selector.every == 0:
                        selector(step)
                    if on_validation is not None and validate_every and step % validate_every == 0:
                        score = (
                            plan.tasks[0]
                            .evaluate(
                                EvalContext(
                                    encoder=encoder, world=world, validation=True, data=cfg.data.options()
                                )
                            )
                            .main_score
                        )
                        recorder.log_metrics({f"val/{plan.tasks[0].name}/main_score": score}, step=step)
                        on_validation(step, score)

            every = math.gcd(validate_every or 0, selector.every if selector else 0) or validate_every
            with reporter.training(cfg.budget.steps, f"{cfg.objective} seed {cfg.seed}") as update:
                result = train(
                    model,
                    plan.objective,
                    encoder,
                    data,
                    cfg.budget,
                    cfg.seed,
                    plan.device,
                    on_log=lambda step, m: recorder.log_metrics(m, step=step),
                    on_step=lambda step, loss: update(step, loss, cfg.budget.batch_size),
                    validate=validate,
                    validate_every=every,
                )
            outcome.train = result
            recorder.log_metrics({**result.cost(), "train/final_loss": result.final_loss})
            if selector is not None:
                selector(cfg.budget.steps)
                selector.restore()

            if not main:  # torchrun: rank 0 alone checkpoints, evaluates and records
                return outcome
            if cfg.tracking.checkpoint:
                outcome.checkpoint_path = save_checkpoint(
                    cfg, model, plan.objective, tokenizer, out_dir / "checkpoints", recorder.run_id
                )
                recorder.log_artifact(outcome.checkpoint_path, "checkpoint")

            ctx = EvalContext(encoder=encoder, world=world, validation=validation, data=cfg.data.options())
            evaluate_and_record(cfg, plan.tasks, ctx, recorder, reporter, outcome, tags)
    finally:
        outcome.status = recorder.status or "FAILED"
    return outcome


class Selector:
    """Checkpoint selection on a task's validation split (SimCSE: STS-B dev every 125 steps): keeps
    the state of the best evaluation (ties: the earlier step) and restores it before testing."""

    def __init__(self, cfg: RunConfig, model, objective, encoder, world, recorder, reporter: Reporter):
        self.task = TASKS.get(cfg.selection.task)()
        self.every = cfg.selection.every
        self.model, self.objective, self.encoder, self.world = model, objective, encoder, world
        self.recorder, self.reporter, self.options = recorder, reporter, cfg.data.options()
        self.best_score: float | None = None
        self.best_step = -1
        self.best_state: dict | None = None

    def __call__(self, step: int) -> None:
        res = self.task.evaluate(
            EvalContext(encoder=self.encoder, world=self.world, validation=True, data=self.options)
        )
        score = res.main_score if self.task.higher_is_better else -res.main_score
        self.recorder.log_metrics({f"selection/{self.task.name}/val_main_score": res.main_score}, step=step)
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_step = score, step
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.model.train()

    def restore(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        best = self.best_score if self.task.higher_is_better else -self.best_score
        self.recorder.log_metrics(
            {
                "selection/best_step": float(self.best_step),
                f"selection/{self.task.name}/best_val_main_score": best,
            }
        )
        self.reporter.info(
            f"checkpoint selection: step {self.best_step} of the best {self.task.name} "
            f"validation score {best:.4f}"
        )


def eval_tags(cfg: RunConfig, validation: bool) -> dict[str, str]:
    """The split every task was scored on and, for real datasets, what data it was."""
    tags = {"harness.evaluation": "validation" if validation else "test"}
    if cfg.eval_data:
        tags["harness.eval_data"] = json.dumps(cfg.eval_data, sort_keys=True)
    return tags


def evaluate_and_record(
    cfg: RunConfig, tasks: list, ctx, recorder, reporter: Reporter, outcome: RunOutcome, tags: dict
) -> None:
    """Evaluate every task (embeddings shared through ``ctx.cache``), log the metrics, and write
    and log the results JSON."""
    for task in tasks:
        reporter.info(f"evaluating {task.name}")
        res = task.evaluate(ctx)
        outcome.results.append(res)
        recorder.log_metrics({f"{task.name}/{k}": v for k, v in res.metrics.items()})
        recorder.log_metrics({f"{task.name}/main_score": res.main_score})
    # what the leaderboard needs about each task (family, direction, diagnostic, breakdown), recorded
    # with the run so a board never asks the installed registry
    recorder.set_tags({TASK_META_TAG: json.dumps(task_meta(outcome.results), separators=(",", ":"))})
    doc = results_document(cfg, outcome, ctx.world, tags)
    path = Path(cfg.tracking.output_dir) / "results" / f"{cfg.identity}-{recorder.run_id[:8]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    outcome.results_path = path
    recorder.log_artifact(path)


def evaluate_only(cfg: RunConfig, reporter: Reporter | None = None) -> RunOutcome:
    """``harness eval``: evaluate an open_clip model (a pretrained tag or a local checkpoint) on
    the configured tasks, with no training, as one MLflow run (``harness.role=eval``)."""
    reporter = reporter or Reporter(quiet=True)
    tasks = prepare_eval(cfg)
    device = resolve_device(cfg.budget.device)
    out_dir = Path(cfg.tracking.output_dir)
    world = shapes_world(cfg.shapes, default_cache_dir(out_dir), reporter)
    words = vocabulary() if train_data.uses_shapes_vocabulary("shapes", tasks) else None
    model, tokenizer, image_size, mean, std = build_model(cfg.model, words=words)
    model.to(device)
    encoder = Encoder(
        model,
        tokenizer,
        image_size,
        mean,
        std,
        device=device,
        batch_size=cfg.budget.eval_batch_size,
        precision=cfg.budget.precision,
    )
    tags = {
        "harness.role": "eval",
        "harness.model": cfg.model.name,
        "harness.pretrained": str(cfg.model.pretrained),
        "harness.tasks": ",".join(cfg.tasks),
        "harness.dataset_fingerprint": world.fingerprint,
        "harness.identity": cfg.identity,
        **eval_tags(cfg, cfg.evaluation == "validation"),
        **versions(),
    }
    name = cfg.tracking.run_name or f"eval-{cfg.model.name}"
    recorder = MlflowRun(
        tracking_uri(cfg.tracking.tracking_uri, out_dir),
        cfg.tracking.experiment,
        name,
        tags,
        artifact_root=out_dir / "artifacts",
    )
    outcome = RunOutcome(run_id=None, status="RUNNING", identity=cfg.identity)
    try:
        with recorder:
            outcome.run_id = recorder.run_id
            recorder.log_params({f"model.{k}": v for k, v in cfg.model.model_dump().items()})
            ctx = EvalContext(
                encoder=encoder,
                world=world,
                data=cfg.data.options(),
                validation=cfg.evaluation == "validation",
            )
            evaluate_and_record(cfg, tasks, ctx, recorder, reporter, outcome, tags)
    finally:
        outcome.status = recorder.status or "FAILED"
    return outcome


def results_document(cfg: RunConfig, outcome: RunOutcome, world, tags) -> dict:
    return {
        "run_id": outcome.run_id,
        "identity": cfg.identity,
        "budget_id": cfg.budget_id,
        "config": cfg.model_dump(mode="json"),
        "eval_data": cfg.eval_data,
        "provenance": {**tags, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "train": None
        if outcome.train is None
        else {
            **outcome.train.cost(),
            "final_loss": outcome.train.final_loss,
            "loss_curve": outcome.train.loss_curve,
        },
        "tasks": {r.task: r.to_dict() for r in outcome.results},
    }


def save_checkpoint(cfg: RunConfig, model, objective, tokenizer, directory: Path, run_id: str) -> Path:
    """A checkpoint of plain tensors and JSON-like values: ``torch.load(..., weights_only=True)``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{cfg.identity}-{run_id[:8]}.pt"
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "objective": {k: v.detach().cpu() for k, v in objective.state_dict().items()},
        "config": json.loads(json.dumps(cfg.model_dump(mode="json"))),
        "identity": cfg.identity,
        "vocabulary": list(getattr(tokenizer, "itos", [])),
    }
    torch.save(state, path)
    return path
