"""MLflow: one run per training run, with identity tags, step metrics, task metrics and artifacts.

Default store: ``sqlite:///.harness/mlflow.db`` (absolute path) with artifacts under
``.harness/artifacts``; ``MLFLOW_TRACKING_URI`` (or ``tracking.tracking_uri``) wins when set. A run
that raises ends FAILED with a ``harness.failure_reason`` tag; Ctrl-C ends it KILLED.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: tag holding the Unix time (seconds, as a string) of a run's last sign of life: written when the
#: run starts and at least every :data:`HEARTBEAT_INTERVAL_S` seconds while it trains or evaluates
HEARTBEAT_TAG = "harness.heartbeat"
HEARTBEAT_INTERVAL_S = 60.0
#: a RUNNING run whose last heartbeat (or start, for runs recorded before heartbeats) is older than
#: this is shown as interrupted: its process was killed (SIGKILL, a lost node) before it could say so
STALE_AFTER_S = 600.0


def is_stale(status: str, tags: dict[str, str], start_time_ms: int | float | None, now: float | None = None,
             stale_after: float = STALE_AFTER_S) -> bool:
    """Whether a run that MLflow still calls RUNNING has stopped beating (interrupted)."""
    import time

    if status != "RUNNING":
        return False
    now = time.time() if now is None else now
    beat = tags.get(HEARTBEAT_TAG)
    try:
        last = float(beat) if beat is not None else (float(start_time_ms) / 1000.0 if start_time_ms else None)
    except ValueError:
        last = None
    return last is not None and now - last > stale_after


def tracking_uri(configured: str | None, output_dir: str | Path) -> str:
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def metric_key(key: str) -> str:
    """MLflow names allow ``[/\\w.\\- :]`` only: CLIP_benchmark's ``recall@5`` becomes ``recall_at_5``."""
    return re.sub(r"[^/\w.\- :]", "_", key.replace("@", "_at_"))


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """The commit of the code this process loaded (read once: a sweep keeps one sha)."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode == 0 and sha:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def versions() -> dict[str, str]:
    import open_clip
    import torch

    from harness import __version__

    return {"harness.version": __version__, "harness.torch_version": torch.__version__,
            "harness.open_clip_version": open_clip.__version__, "harness.git_sha": git_sha()}


class NullRun:
    """What a non-zero torchrun rank records: nothing (only rank 0 talks to MLflow)."""

    run_id = None
    status = "FINISHED"

    def __enter__(self) -> "NullRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.status = "FINISHED" if exc_type is None else "FAILED"
        return False

    def __getattr__(self, name):  # log_params, log_metrics, log_dict, log_artifact, set_tags
        return lambda *a, **k: None


class MlflowRun:
    """Context manager around one MLflow run; ends it FINISHED, FAILED (reason tag) or KILLED."""

    def __init__(self, uri: str, experiment: str, run_name: str | None, tags: dict[str, str],
                 artifact_root: Path | None = None, nested: bool = False):
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.tags, self.artifact_root, self.nested = tags, artifact_root, nested
        self.run_id: str | None = None
        self.status: str | None = None

    def __enter__(self) -> "MlflowRun":
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        exp = mlflow.get_experiment_by_name(self.experiment)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:") and self.artifact_root is not None:
                self.artifact_root.mkdir(parents=True, exist_ok=True)
                location = self.artifact_root.resolve().as_uri()
            try:
                exp_id = mlflow.create_experiment(self.experiment, artifact_location=location)
            except Exception:  # created concurrently by another process
                exp_id = mlflow.get_experiment_by_name(self.experiment).experiment_id
        else:
            exp_id = exp.experiment_id
        nested = self.nested or mlflow.active_run() is not None  # inside a compare/study parent
        run = mlflow.start_run(experiment_id=exp_id, run_name=self.run_name, tags=self.tags, nested=nested)
        self.run_id = run.info.run_id
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        import mlflow

        if exc_type is None:
            self.status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            self.status = "KILLED"
            mlflow.set_tag("harness.failure_reason", "interrupted (KeyboardInterrupt)")
        elif exc_type.__name__ == "TrialPruned":  # optuna's pruner stopped this trial
            self.status = "KILLED"
            mlflow.set_tags({"harness.pruned": "true", "harness.failure_reason": f"pruned by Optuna: {exc}"})
        else:
            self.status = "FAILED"
            mlflow.set_tag("harness.failure_reason", f"{exc_type.__name__}: {exc}"[:4900])
            step = getattr(exc, "step", None)
            if step is not None:
                mlflow.set_tag("harness.failure_step", str(step))
        mlflow.end_run(status=self.status)
        return False

    # -- logging ---------------------------------------------------------------------------------
    @staticmethod
    def log_params(params: dict[str, Any]) -> None:
        import mlflow

        items = {k: (json.dumps(v) if isinstance(v, (list, dict, tuple)) else v) for k, v in params.items()}
        keys = list(items)
        for i in range(0, len(keys), 90):
            mlflow.log_params({k: items[k] for k in keys[i : i + 90]})

    @staticmethod
    def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()}, step=step)

    @staticmethod
    def set_tags(tags: dict[str, str]) -> None:
        import mlflow

        mlflow.set_tags(tags)

    @staticmethod
    def log_dict(d: dict, name: str) -> None:
        import mlflow

        mlflow.log_dict(d, name)

    @staticmethod
    def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path)
