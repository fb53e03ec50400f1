"""Sweep scaling: the same small ``harness compare`` in this process against Ray with 2 workers.

What is measured
----------------
One comparison (4 objectives x 1 seed on ``shapes-retrieval``, the smoke budget with ``--steps``
steps) runs twice, each into its own fresh MLflow store, with the shapes world rendered beforehand
into a shared cache (neither side pays for rendering):

* **in-process**: ``--executor local``, the runs one after the other, torch on ``--threads``
  threads (default 2: the CPUs the Ray side uses in all);
* **ray**: ``--executor ray`` on a local Ray instance of 2 CPUs: 2 workers running one run each
  at a time, 1 thread each (``--cpus-per-run 1``).

Reported: the wall time of each sweep (Ray's without and with starting the Ray instance), the
ratio ray/in-process, and the per-run overhead of Ray: ``(ray wall x workers - sum of in-process
run seconds) / runs``, the worker-seconds a Ray run costs beyond the same run in this process
(pickling the plan, a fresh worker importing torch, loading the world from the cache, MLflow
connections). The two leaderboards are also checked to rank the same (equal work).

It is a measurement, not a test: the exit code is 0 whatever the ratio. ``--tiny`` runs the same
code with 2 objectives and 2 steps so the test suite can check that the benchmark still runs;
its figures mean nothing.

Run::

    python bench/sweep_scaling.py                 # 4 objectives, 40 steps
    python bench/sweep_scaling.py --steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OBJECTIVES = ["clip", "siglip", "dcl", "focal"]
TINY_OBJECTIVES = OBJECTIVES[:2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--tiny",
        action="store_true",
        help="2 objectives, 2 steps: checks the bench runs, figures mean nothing",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 40; tiny 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the in-process sweep")
    a = p.parse_args(argv)
    steps = a.steps or (2 if a.tiny else 40)
    workers = 2
    objectives = TINY_OBJECTIVES if a.tiny else OBJECTIVES
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    tmp = Path(tempfile.mkdtemp(prefix="sweep_scaling-"))
    os.environ["HARNESS_CACHE"] = str(tmp / "cache")
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    import logging

    import torch

    logging.getLogger("alembic").setLevel(logging.WARNING)
    from harness.config import resolve_config
    from harness.data.shapes import SPLITS, default_cache_dir
    from harness.run.compare import compare
    from harness.run.console import Reporter
    from harness.run.executors import ExecutorSpec
    from harness.run.runner import shapes_world

    def config(out: Path):
        flags = {
            "objective": objectives[0],
            "tasks": ["shapes-retrieval"],
            "budget": {"steps": steps},
            "tracking": {"output_dir": str(out), "checkpoint": False},
        }
        return resolve_config("smoke", None, flags, [])

    print(f"sweep_scaling{': TINY' if a.tiny else ''}")
    print(f"{len(objectives)} objectives x 1 seed ({', '.join(objectives)}), smoke budget, {steps} steps")
    t0 = time.perf_counter()
    cfg = config(tmp / "warm")
    world = shapes_world(cfg.shapes, default_cache_dir(Path(cfg.tracking.output_dir)), Reporter(quiet=True))
    for split in SPLITS:
        world.split(split)
    print(f"shapes world rendered into the shared cache in {time.perf_counter() - t0:.1f} s (not timed)")

    torch.set_num_threads(a.threads)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    here = compare(config(tmp / "local"), objectives, 1, Reporter(quiet=True), command="bench")
    local_wall = time.perf_counter() - t0

    import ray

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # mlflow set it to the in-process store
    t0 = time.perf_counter()
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"HARNESS_CACHE": os.environ["HARNESS_CACHE"], "OMP_NUM_THREADS": "1"}},
    )
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    spec = ExecutorSpec("ray", cpus_per_run=1.0)
    on_ray = compare(config(tmp / "ray"), objectives, 1, Reporter(quiet=True), command="bench", executor=spec)
    ray_wall = time.perf_counter() - t0
    ray.shutdown()

    ok = all(p.status == "FINISHED" for p in here.pairs + on_ray.pairs)
    run_s = sum(p.seconds for p in here.pairs)
    ray_run_s = sum(p.seconds for p in on_ray.pairs)
    n = len(objectives)
    print()
    print("sweep                      | wall s | sum of run s")
    print(f"in-process ({a.threads} threads)      | {local_wall:6.1f} | {run_s:6.1f}")
    print(f"ray ({workers} workers x 1 thread) | {ray_wall:6.1f} | {ray_run_s:6.1f}", end="")
    print(f"   (+ {init_s:.1f} s ray.init)")
    print()
    with_init = (ray_wall + init_s) / local_wall
    print(f"ratio ray/in-process = {ray_wall / local_wall:.2f} (with ray.init: {with_init:.2f})")
    print(f"per-run overhead of Ray = {(ray_wall * workers - run_s) / n:.2f} worker-seconds per run")
    same = {k: v["ranks"] for k, v in (here.leaderboard or {}).items()} == {
        k: v["ranks"] for k, v in (on_ray.leaderboard or {}).items()
    }
    scores = {k: v["scores"] for k, v in (here.leaderboard or {}).items()}
    same_scores = scores == {k: v["scores"] for k, v in (on_ray.leaderboard or {}).items()}
    print(f"all runs finished: {ok}; identical ranks: {same}; identical scores: {same_scores}")
    print(json.dumps({"local_s": local_wall, "ray_s": ray_wall, "ray_init_s": init_s, "runs": n}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
