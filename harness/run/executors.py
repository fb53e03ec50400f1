"""Where the runs of a sweep execute: in this process (``local``), or as Ray tasks (``ray``).

With ``--executor ray`` every (objective, seed) run of ``harness compare`` becomes one Ray task that
asks for ``--cpus-per-run`` CPUs and ``--gpus-per-run`` GPUs. Without ``--ray-address`` a local Ray
instance is started; with one, the sweep joins that cluster. The driver (this process) validates
every run, opens the MLflow parent run, skips finished runs and ranks the leaderboard exactly as
in-process; a task trains one validated plan and records its own child run, which names the parent
by the ``mlflow.parentRunId`` tag.

Everything that can be wrong with the executor is checked before any run is created: Ray not
installed, an address that cannot be reached, more GPUs per run than any node has, and a
local-file store that workers on other machines could not write (:func:`check_remote_store`).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from harness.core.errors import UserError
from harness.engine.trainer import resolve_device
from harness.run.console import Reporter
from harness.run.runner import execute
from harness.tracking import Terminated, check_remote_store

EXECUTORS = ("local", "ray")
RAY_EXTRA = 'pip install -e ".[ray]"'
#: environment variables a Ray task needs as the driver has them (cache, store, threads)
PASSED_ENV = ("HARNESS_CACHE", "MLFLOW_TRACKING_URI", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class ExecutorError(UserError):
    """An executor that cannot be used (Ray missing, unreachable, too few GPUs): exit 2."""


@dataclass
class ExecutorSpec:
    kind: str = "local"
    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0

    def check(self) -> None:
        if self.kind not in EXECUTORS:
            raise ExecutorError(f"unknown executor {self.kind!r}; valid: {', '.join(EXECUTORS)}")
        if self.cpus_per_run <= 0:
            raise ExecutorError(f"--cpus-per-run must be positive, got {self.cpus_per_run}")
        if self.gpus_per_run < 0:
            raise ExecutorError(f"--gpus-per-run must be at least 0, got {self.gpus_per_run}")
        if self.kind == "local" and (self.address or self.gpus_per_run):
            raise ExecutorError("--ray-address and --gpus-per-run need --executor ray")


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a Ray address (``ray://host:10001`` or ``host:6379``); None for ``auto``."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ExecutorError(f"--ray-address expects HOST:PORT or ray://HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def is_remote(address: str | None) -> bool:
    """Whether workers may run on other machines (an address whose host is not this machine)."""
    hp = _host_port(address) if address else None
    if hp is None:
        return False
    host = hp[0]
    return host not in ("localhost", "127.0.0.1", "::1", "0.0.0.0", socket.gethostname())


def import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def _run_plan(cfg, plan, extra_tags: dict[str, str], threads: int) -> dict[str, Any]:
    """One Ray task: train and evaluate a validated plan as one child run (never raises)."""
    import torch

    torch.set_num_threads(max(1, threads))
    plan.device = resolve_device(cfg.budget.device)  # this worker's device, not the driver's
    t0 = time.perf_counter()
    out: dict[str, Any] = {"status": "FAILED", "run_id": None, "error": None}
    try:
        run = execute(cfg, Reporter(quiet=True), plan, nested=True, extra_tags=extra_tags)
        out.update(status=run.status, run_id=run.run_id)
    except Exception as e:  # recorded FAILED in its own run; the sweep goes on
        out.update(run_id=getattr(e, "harness_run_id", None), error=f"{type(e).__name__}: {e}")
    out["seconds"] = time.perf_counter() - t0
    return out


class RayExecutor:
    """Runs plans as Ray tasks; :meth:`start` does every check before anything is recorded."""

    def __init__(self, spec: ExecutorSpec):
        self.spec = spec
        self.ray = None
        self._fn = None
        self._remote: dict = {}
        self.started_here = False

    def start(self, uri: str) -> None:
        spec = self.spec
        spec.check()
        ray = import_ray()
        if spec.address and is_remote(spec.address):
            check_remote_store(uri, f"--ray-address {spec.address}")
        hp = _host_port(spec.address) if spec.address else None
        if hp is not None:
            try:
                socket.create_connection(hp, timeout=5).close()
            except OSError as e:
                raise ExecutorError(
                    f"cannot reach the Ray cluster at {spec.address!r} ({e}); start one with "
                    "`ray start --head` and pass its address, or leave --ray-address out for a local instance"
                ) from None
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
            try:
                ray.init(
                    address=spec.address,
                    runtime_env={"env_vars": env} if env else None,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except Exception as e:
                raise ExecutorError(
                    f"cannot start or join Ray at {spec.address or 'a local instance'}: {e}"
                ) from None
            self.started_here = True
        offered = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        most_gpus = max((r.get("GPU", 0.0) for r in offered), default=0.0)
        most_cpus = max((r.get("CPU", 0.0) for r in offered), default=0.0)
        if spec.gpus_per_run > most_gpus:
            self.stop()
            raise ExecutorError(
                f"--gpus-per-run {spec.gpus_per_run:g} is more than any node of the Ray cluster offers "
                f"(at most {most_gpus:g} GPUs on one node)"
            )
        if spec.cpus_per_run > most_cpus:
            self.stop()
            raise ExecutorError(
                f"--cpus-per-run {spec.cpus_per_run:g} is more than any node of the Ray cluster offers "
                f"(at most {most_cpus:g} CPUs on one node)"
            )
        self.ray = ray
        self._fn = ray.remote(max_retries=0)(_run_plan)

    def submit(self, cfg, plan, extra_tags: dict[str, str]):
        threads = int(self.spec.cpus_per_run) or 1
        return self._fn.options(num_cpus=self.spec.cpus_per_run, num_gpus=self.spec.gpus_per_run).remote(
            cfg, plan, extra_tags, threads
        )

    def submit_call(self, fn, *args):
        """``fn(*args, threads)`` as a Ray task with the resources of one run."""
        threads = int(self.spec.cpus_per_run) or 1
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(max_retries=0)(fn)
        return (
            self._remote[fn]
            .options(num_cpus=self.spec.cpus_per_run, num_gpus=self.spec.gpus_per_run)
            .remote(*args, threads)
        )

    def slots(self) -> int:
        """How many runs the cluster can hold at once (at least 1)."""
        total = self.ray.cluster_resources()
        n = int(total.get("CPU", 1) // self.spec.cpus_per_run)
        if self.spec.gpus_per_run:
            n = min(n, int(total.get("GPU", 0) // self.spec.gpus_per_run))
        return max(1, n)

    def as_completed(self, refs: dict) -> Iterator[tuple[Any, dict]]:
        """(key, result) in the order the tasks finish; ``refs`` maps an object ref to its key."""
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            for ref in done:
                yield refs[ref], self.ray.get(ref)

    def cancel(self, refs) -> None:
        for ref in refs:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished
                pass

    def stop(self) -> None:
        """Shut down the Ray instance this executor started (one it joined is left running)."""
        if self.started_here:
            import_ray().shutdown()
        self.started_here = False


def interruption_reason(e: KeyboardInterrupt) -> str:
    """The reason recorded with a run that Ctrl-C or SIGTERM stopped (as :class:`MlflowRun` does)."""
    return f"terminated ({e})" if isinstance(e, Terminated) else "interrupted (KeyboardInterrupt)"


def kill_running_children(uri: str, parent_run_id: str, reason: str) -> None:
    """After cancelling a sweep's tasks: its child runs still RUNNING end KILLED with the reason."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(parent_run_id)
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    for child in children:
        client.set_tag(child.info.run_id, "harness.failure_reason", reason)
        client.set_terminated(child.info.run_id, status="KILLED")


def absolute_tracking(cfg, uri: str):
    """A copy of ``cfg`` whose store and output directory do not depend on a worker's directory
    (bookkeeping only: the identity is unchanged)."""
    data = cfg.model_copy(deep=True)
    data.tracking.tracking_uri = uri
    data.tracking.output_dir = str(Path(cfg.tracking.output_dir).resolve())
    return data
