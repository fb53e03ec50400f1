"""`harness compare --executor ray`: on a local 2-CPU Ray instance, a Ray comparison records what an
in-process one records (identities, parent and child runs, tags, artifacts, leaderboard), resumes,
isolates a failed run; bad executor input exits 2 before any run is created."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import runs

from harness.cli.main import main
from objectives import OBJECTIVES, Objective

ray = pytest.importorskip("ray")

HERE = Path(__file__).resolve().parent


class BrokenOnRay(Objective):
    """Fails in its first training step (after its run started): recorded FAILED."""

    name = "broken-ray"
    requires = frozenset({"image", "text"})

    def loss(self, batch):
        raise RuntimeError("boom on a worker")


@pytest.fixture
def broken():
    OBJECTIVES.register(BrokenOnRay.name)(BrokenOnRay)
    yield
    OBJECTIVES.unregister(BrokenOnRay.name)


@pytest.fixture(scope="module")
def local_ray(shared_cache):
    """One local Ray instance (2 CPUs) for the module; its workers can import this test module (the
    broken objective travels by reference) and read the shared shapes cache."""
    path = [str(HERE), str(HERE.parent)]
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={
            "env_vars": {
                "PYTHONPATH": ":".join(path),
                "HARNESS_CACHE": str(shared_cache),
                "OMP_NUM_THREADS": "1",
            }
        },
    )
    yield
    ray.shutdown()


def compare_args(out, *extra):
    return [
        "-q",
        "compare",
        "--budget",
        "smoke",
        "--output-dir",
        str(out),
        "--no-checkpoint",
        "--tasks",
        "shapes-retrieval,shapes-compositionality",
        "--seeds",
        "1",
        "--objectives",
        "clip,siglip,broken-ray",
        *extra,
    ]


def _board(out: Path) -> dict:
    (path,) = list((out / "leaderboards").glob("*/leaderboard.json"))
    summary = json.loads(path.read_text())["summary"]
    return {
        obj: {
            "ranks": s["ranks"],
            "mean_rank": s["mean_rank"],
            "borda": s["borda"],
            "scores": {t: v["values"] for t, v in s["scores"].items()},
        }
        for obj, s in summary.items()
    }


def _children(out: Path) -> dict:
    return {
        r.data.tags["harness.objective"]: r for r in runs(out) if r.data.tags.get("harness.role") == "run"
    }


def test_ray_compare_records_what_in_process_records(workdir, tmp_path, local_ray, broken, monkeypatch):
    import mlflow

    def sweep(out: Path, *extra: str) -> int:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow sets it in this process
        return main(compare_args(out, *extra))

    # on Ray: clip and siglip finish, broken-ray fails in its own run and the sweep goes on (exit 1)
    assert sweep(workdir, "--executor", "ray", "--cpus-per-run", "1") == 1
    parents = [r for r in runs(workdir) if r.data.tags.get("harness.role") == "compare"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    pid = parents[0].info.run_id
    kids = _children(workdir)
    assert set(kids) == {"clip", "siglip", "broken-ray"}
    assert all(k.data.tags["mlflow.parentRunId"] == pid for k in kids.values())
    assert kids["clip"].info.status == kids["siglip"].info.status == "FINISHED"
    assert kids["broken-ray"].info.status == "FAILED"
    assert "boom on a worker" in kids["broken-ray"].data.tags["harness.failure_reason"]
    for k in kids.values():
        assert k.data.tags["harness.compare_key"] == parents[0].data.tags["harness.compare_key"]
        assert k.data.tags["harness.track"] == "default"
    client = mlflow.MlflowClient()
    assert {"config.yaml"} <= {a.path for a in client.list_artifacts(kids["clip"].info.run_id)}
    assert any(a.path.endswith(".json") for a in client.list_artifacts(kids["clip"].info.run_id))
    assert {a.path for a in client.list_artifacts(pid, "leaderboard")} >= {"leaderboard/leaderboard.json"}
    pairs = json.loads(Path(client.download_artifacts(pid, "pairs.json", str(tmp_path))).read_text())
    assert [(p["objective"], p["status"]) for p in pairs["pairs"]] == [
        ("clip", "FINISHED"),
        ("siglip", "FINISHED"),
        ("broken-ray", "FAILED"),
    ]

    # in-process, in another store: the same identities and the same leaderboard (metrics, ranks)
    here = tmp_path / "here"
    here.mkdir()
    assert sweep(here) == 1
    local = _children(here)
    assert {o: r.data.tags["harness.identity"] for o, r in local.items()} == {
        o: r.data.tags["harness.identity"] for o, r in kids.items()
    }
    assert _board(here) == _board(workdir)

    # resume on Ray: the finished runs are skipped, the failed one runs again
    assert sweep(workdir, "--executor", "ray") == 1
    again = [r for r in runs(workdir) if r.data.tags.get("harness.role") == "run"]
    assert sorted(r.data.tags["harness.objective"] for r in again) == [
        "broken-ray",
        "broken-ray",
        "clip",
        "siglip",
    ]


def test_bad_executor_input_exits_2_before_any_run(workdir, local_ray, broken, monkeypatch, capsys):
    def refused(*extra) -> str:
        assert main(compare_args(workdir, "--executor", "ray", *extra)) == 2
        assert runs(workdir) == []
        return " ".join(capsys.readouterr().err.split())

    err = refused("--gpus-per-run", "1")
    assert "--gpus-per-run 1 is more than any node" in err
    err = refused("--ray-address", "127.0.0.1:1")
    assert "cannot reach the Ray cluster" in err
    err = refused("--ray-address", "10.255.255.1:6379")  # remote workers, a SQLite file: refused
    assert "mlflow server" in err and "--tracking-uri http://" in err
    assert main(compare_args(workdir, "--gpus-per-run", "1")) == 2  # local executor
    monkeypatch.setitem(sys.modules, "ray", None)
    err = refused()
    assert 'pip install -e ".[ray]"' in err


def test_ctrl_c_cancels_outstanding_tasks(workdir, local_ray, monkeypatch):
    """Ctrl-C while Ray tasks train: they are cancelled, their runs and the parent end KILLED."""
    import time

    from harness.run import executors

    def interrupted(self, refs):
        deadline = time.time() + 120
        while time.time() < deadline:  # until a task's child run has started
            if any(
                r.info.status == "RUNNING" for r in runs(workdir) if r.data.tags.get("harness.role") == "run"
            ):
                raise KeyboardInterrupt
            time.sleep(0.5)
        raise AssertionError("no Ray task started its run")
        yield

    monkeypatch.setattr(executors.RayExecutor, "as_completed", interrupted)
    args = compare_args(workdir, "--executor", "ray", "--steps", "200")
    args[args.index("clip,siglip,broken-ray")] = "clip,siglip"
    assert main(args) == 130
    recorded = runs(workdir)
    parent = [r for r in recorded if r.data.tags.get("harness.role") == "compare"]
    kids = [r for r in recorded if r.data.tags.get("harness.role") == "run"]
    assert [p.info.status for p in parent] == ["KILLED"]
    assert kids and all(k.info.status == "KILLED" for k in kids)
    assert all(k.data.tags["harness.failure_reason"] == "interrupted (KeyboardInterrupt)" for k in kids)


def test_tune_trials_on_ray_share_one_study_with_an_exact_budget(workdir, local_ray, monkeypatch):
    import optuna

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["-q", "tune", "--budget", "smoke", "--output-dir", str(workdir), "--no-checkpoint"]
    args += ["--task", "shapes-retrieval", "--set", "budget.steps=4", "--validate-every", "2"]
    assert main([*args, "--objective", "clip", "--trials", "3", "--executor", "ray"]) == 0
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    st = optuna.load_study(study_name=name, storage=storage)
    assert len(st.trials) == 3  # N requested = N run
    assert st.trials[0].params == {"temperature": 0.07, "label_smoothing": 0.0}  # paper defaults first
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in st.trials)
    recorded = runs(workdir)
    parent = [r for r in recorded if r.data.tags.get("harness.role") == "study"]
    trials = [r for r in recorded if r.data.tags.get("harness.role") == "trial"]
    assert len(parent) == 1 and len(trials) == 3
    assert all(t.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for t in trials)
    assert all(t.data.tags["harness.evaluation"] == "validation" for t in trials)
    assert "best_value" in parent[0].data.metrics
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main([*args, "--objective", "clip", "--trials", "4", "--executor", "ray"]) == 0  # resumes
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 4
