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
import threading
import time
from pathlib import Path
from typing import Any

from harness import __version__
from harness.core.errors import UserError

log = logging.getLogger(__name__)

#: tag holding the Unix time (seconds, as a string) of a run's last sign of life: written when the
#: run starts and at least every :data:`HEARTBEAT_INTERVAL_S` seconds while it trains or evaluates
HEARTBEAT_TAG = "harness.heartbeat"
HEARTBEAT_INTERVAL_S = 60.0
#: a RUNNING run whose last heartbeat (or start, for runs recorded before heartbeats) is older than
#: this is shown as interrupted: its process was killed (SIGKILL, a lost node) before it could say so
STALE_AFTER_S = 600.0


def heartbeat_time(tags: dict[str, str]) -> float | None:
    """The Unix time of a run's last heartbeat, or None (no tag, or an unreadable one)."""
    try:
        return float(tags[HEARTBEAT_TAG])
    except (KeyError, TypeError, ValueError):
        return None


def last_sign_of_life(tags: dict[str, str], start_time_ms: int | float | None) -> float | None:
    """The last heartbeat, or the start for runs recorded before heartbeats existed."""
    beat = heartbeat_time(tags)
    if beat is None and HEARTBEAT_TAG not in tags and start_time_ms:
        return float(start_time_ms) / 1000.0
    return beat


def is_stale(
    status: str,
    tags: dict[str, str],
    start_time_ms: int | float | None,
    now: float | None = None,
    stale_after: float = STALE_AFTER_S,
) -> bool:
    """Whether a run that MLflow still calls RUNNING has stopped beating (interrupted)."""
    if status != "RUNNING":
        return False
    now = time.time() if now is None else now
    last = last_sign_of_life(tags, start_time_ms)
    return last is not None and now - last > stale_after


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, Slurm, Kubernetes) turned into an interruption: the run ends KILLED with
    this reason, as on Ctrl-C, and the command exits 143."""

    def __init__(self, signal_name: str = "SIGTERM"):
        super().__init__(f"terminated by {signal_name}")
        self.signal_name = signal_name


_STORES_READY: set[str] = set()


def open_store(uri: str) -> None:
    """Create or migrate a SQLite store once, under an exclusive file lock beside the database.

    MLflow builds a fresh SQLite store's schema (and migrates an old one) when a process first opens
    it; two processes doing that at the same moment collide (``duplicate column name: step``).
    With the lock, the first process builds the schema and the others find it built. Other stores
    (a tracking server, a database server) handle their own concurrency."""
    if uri in _STORES_READY:
        return
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        db.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            fcntl = None
        from mlflow.tracking import MlflowClient

        with open(db.with_name(db.name + ".lock"), "a") as fh:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                MlflowClient(uri)._tracking_client.store  # noqa: B018 - builds/migrates the schema
            finally:
                if fcntl is not None:
                    fcntl.flock(fh, fcntl.LOCK_UN)
    _STORES_READY.add(uri)


def use_store(uri: str) -> None:
    """Point MLflow's fluent API at ``uri`` for this process, without leaving it in the environment.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into ``os.environ``; since
    :func:`tracking_uri` honours that variable, a second run in the same process with another
    output directory would otherwise write into the first run's store."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def tracking_uri(configured: str | None, output_dir: str | Path) -> str:
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def check_remote_store(uri: str, where: str) -> None:
    """Refuse a store that only this machine can write (a SQLite file, a local directory) when
    runs may execute on other machines (``where``, e.g. ``--ray-address HOST:6379``): their runs
    would be lost or written to another disk. Raises before anything runs, with the fix."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in ("", "file", "sqlite"):
        return
    raise UserError(
        f"the MLflow store {uri!r} is a file on this machine, but {where} runs workers on other "
        "machines that cannot write it. Start a tracking server that every node can reach, e.g. "
        "`mlflow server --backend-store-uri sqlite:///$PWD/.harness/mlflow.db "
        "--artifacts-destination $PWD/.harness/artifacts --host 0.0.0.0 --port 5000`, and pass "
        "`--tracking-uri http://<this host>:5000` (or set MLFLOW_TRACKING_URI)"
    )


def metric_key(key: str) -> str:
    """MLflow names allow ``[/\\w.\\- :]`` only: CLIP_benchmark's ``recall@5`` becomes ``recall_at_5``."""
    return re.sub(r"[^/\w.\- :]", "_", key.replace("@", "_at_"))


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """The commit of the code this process loaded (read once: a sweep keeps one sha)."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        sha = out.stdout.strip()
        if out.returncode == 0 and sha:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def versions() -> dict[str, str]:
    import open_clip
    import torch

    return {
        "harness.version": __version__,
        "harness.torch_version": torch.__version__,
        "harness.open_clip_version": open_clip.__version__,
        "harness.git_sha": git_sha(),
    }


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
    """Context manager around one MLflow run; ends it FINISHED, FAILED (reason tag) or KILLED.

    While the run is open a daemon thread writes :data:`HEARTBEAT_TAG` every
    :data:`HEARTBEAT_INTERVAL_S` seconds, so a run whose process was killed outright (SIGKILL, a
    lost node) can be told from one still working. An exception leaving the run carries
    ``harness_run_id`` and ``harness_status``: what was recorded, for the error message."""

    heartbeat_interval: float = HEARTBEAT_INTERVAL_S

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str | None,
        tags: dict[str, str],
        artifact_root: Path | None = None,
        nested: bool = False,
    ):
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.tags, self.artifact_root, self.nested = tags, artifact_root, nested
        self.run_id: str | None = None
        self.status: str | None = None

    def __enter__(self) -> "MlflowRun":
        import mlflow

        open_store(self.uri)
        use_store(self.uri)
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
        tags = {**self.tags, HEARTBEAT_TAG: f"{time.time():.0f}"}
        run = mlflow.start_run(experiment_id=exp_id, run_name=self.run_name, tags=tags, nested=nested)
        self.run_id = run.info.run_id
        self._stop = threading.Event()
        self._beat = threading.Thread(
            target=self._heartbeat, name=f"heartbeat-{self.run_id[:8]}", daemon=True
        )
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        while not self._stop.wait(self.heartbeat_interval):
            try:
                client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
            except Exception as e:  # a store hiccup must not kill the run; the next beat retries
                log.debug("heartbeat of run %s failed: %s", self.run_id, e)

    def __exit__(self, exc_type, exc, tb) -> bool:
        import mlflow

        self._stop.set()
        self._beat.join(timeout=5)
        if exc_type is None:
            self.status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            self.status = "KILLED"
            reason = (
                f"terminated ({exc})" if isinstance(exc, Terminated) else "interrupted (KeyboardInterrupt)"
            )
            mlflow.set_tag("harness.failure_reason", reason)
        elif exc_type.__name__ == "TrialPruned":  # optuna's pruner stopped this trial
            self.status = "KILLED"
            mlflow.set_tags({"harness.pruned": "true", "harness.failure_reason": f"pruned by Optuna: {exc}"})
        else:
            self.status = "FAILED"
            mlflow.set_tag("harness.failure_reason", f"{exc_type.__name__}: {exc}"[:4900])
            step = getattr(exc, "step", None)
            if step is not None:
                mlflow.set_tag("harness.failure_step", str(step))
        mlflow.set_tag(HEARTBEAT_TAG, f"{time.time():.0f}")
        mlflow.end_run(status=self.status)
        if exc is not None:
            try:
                exc.harness_run_id, exc.harness_status = self.run_id, self.status
            except AttributeError:  # an exception type without a __dict__
                pass
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
