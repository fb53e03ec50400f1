"""`harness compare`: pairs, nesting, resumption, failure isolation, bad input."""

import pytest
from conftest import runs

from harness.cli.main import main
from objectives import OBJECTIVES, Objective


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
        *extra,
    ]


class Broken(Objective):
    name = "broken-compare"
    requires = frozenset({"image", "text"})

    def loss(self, batch):
        raise RuntimeError("boom")


@pytest.fixture
def broken():
    OBJECTIVES.register(Broken.name)(Broken)
    yield
    OBJECTIVES.unregister(Broken.name)


def test_compare_trains_each_pair_once_and_resumes(workdir):
    assert main(compare_args(workdir, "--objectives", "clip,siglip", "--seeds", "2")) == 0
    all_runs = runs(workdir)
    parents = [r for r in all_runs if r.data.tags.get("harness.role") == "compare"]
    children = [r for r in all_runs if r.data.tags.get("harness.role") == "run"]
    assert len(parents) == 1 and len(children) == 4
    pid = parents[0].info.run_id
    assert all(c.data.tags["mlflow.parentRunId"] == pid for c in children)
    assert {(c.data.tags["harness.objective"], c.data.tags["harness.seed"]) for c in children} == {
        ("clip", "0"),
        ("clip", "1"),
        ("siglip", "0"),
        ("siglip", "1"),
    }
    assert len({c.data.tags["harness.budget_id"] for c in children}) == 1
    assert all(c.info.status == "FINISHED" for c in children)
    assert parents[0].data.tags["harness.objectives"] == "clip,siglip"
    import mlflow

    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(pid, "leaderboard")}
    assert {
        "leaderboard/leaderboard.md",
        "leaderboard/leaderboard.html",
        "leaderboard/leaderboard.json",
        "leaderboard/leaderboard.csv",
    } <= arts
    # same command again: every pair is already finished, nothing is retrained
    assert main(compare_args(workdir, "--objectives", "clip,siglip", "--seeds", "2")) == 0
    assert len([r for r in runs(workdir) if r.data.tags.get("harness.role") == "run"]) == 4
    # the second comparison reuses the runs and still ranks all of them, from MLflow alone
    assert main(["leaderboard", "--output-dir", str(workdir), "--parent", "latest", "--format", "json"]) == 0


def test_leaderboard_of_an_empty_experiment_exits_2(workdir, capsys):
    assert main(["leaderboard", "--output-dir", str(workdir), "--experiment", "nothing-here"]) == 2
    assert "no" in capsys.readouterr().err.lower()


def test_a_failing_pair_is_recorded_and_the_sweep_goes_on(workdir, broken):
    assert main(compare_args(workdir, "--objectives", "broken-compare,clip", "--seeds", "1")) == 1
    children = {
        r.data.tags["harness.objective"]: r for r in runs(workdir) if r.data.tags.get("harness.role") == "run"
    }
    assert children["broken-compare"].info.status == "FAILED"
    assert "boom" in children["broken-compare"].data.tags["harness.failure_reason"]
    assert children["clip"].info.status == "FINISHED"
    # a rerun retries the failed pair only
    assert main(compare_args(workdir, "--objectives", "broken-compare,clip", "--seeds", "1")) == 1
    kids = [r for r in runs(workdir) if r.data.tags.get("harness.role") == "run"]
    assert sorted(r.data.tags["harness.objective"] for r in kids) == [
        "broken-compare",
        "broken-compare",
        "clip",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objectives", ""], "no objectives given"),
        (["--objectives", "clip,nope"], "unknown objective 'nope'"),
        (["--objectives", "clip", "--seeds", "0"], "--seeds must be at least 1"),
        (["--objectives", "clip,clip"], "listed twice"),
    ],
)
def test_bad_input_fails_before_anything_runs(workdir, capsys, args, message):
    assert main(compare_args(workdir, *args)) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert runs(workdir) == []
