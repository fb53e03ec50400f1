"""`harness tune`: equal trial budgets, paper defaults first, validation split only, pruning,
failures, storage, resumption, and the tuned compare track."""

import optuna
import pytest
from conftest import runs

import harness.data.shapes as shapes_mod
from harness.cli.main import main
from objectives import OBJECTIVES
from objectives.infonce import CLIP


def tune_args(out, *extra):
    return [
        "-q",
        "tune",
        "--budget",
        "smoke",
        "--output-dir",
        str(out),
        "--no-checkpoint",
        "--task",
        "shapes-retrieval",
        "--set",
        "budget.steps=6",
        "--validate-every",
        "3",
        *extra,
    ]


def study(out, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")


@pytest.fixture
def no_test_split(monkeypatch):
    """Any read of a test split during tuning fails the trial."""
    real = shapes_mod.ShapesWorld.split

    def guarded(self, name):
        if name in ("test", "heldout", "zeroshot"):
            raise AssertionError(f"tuning read the {name} split")
        return real(self, name)

    monkeypatch.setattr(shapes_mod.ShapesWorld, "split", guarded)


def test_study_defaults_first_validation_only_and_mlflow_layout(workdir, no_test_split):
    assert main(tune_args(workdir, "--objective", "clip", "--trials", "3")) == 0
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{workdir / 'optuna.db'}")]
    st = study(workdir, name)
    assert name.startswith("clip__shapes-retrieval__")
    assert len(st.trials) == 3
    assert all(t.state.name == "COMPLETE" for t in st.trials)  # no trial touched a test split
    first = st.trials[0]
    assert first.params == {"temperature": 0.07, "label_smoothing": 0.0}
    assert first.user_attrs["harness.paper_defaults"] is True
    all_runs = runs(workdir)
    parent = [r for r in all_runs if r.data.tags.get("harness.role") == "study"]
    trials = [r for r in all_runs if r.data.tags.get("harness.role") == "trial"]
    assert len(parent) == 1 and len(trials) == 3
    assert all(t.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for t in trials)
    assert "best_value" in parent[0].data.metrics and "best.temperature" in parent[0].data.params
    arts = {
        a.path for a in __import__("mlflow").MlflowClient().list_artifacts(parent[0].info.run_id, "optuna")
    }
    assert "optuna/optimization_history.png" in arts
    # validation scores were reported during training, under val/
    assert any(k.startswith("val/shapes-retrieval/") for k in trials[0].data.metrics)
    # resuming: the same study grows to the new cap, nothing is redone
    assert main(tune_args(workdir, "--objective", "clip", "--trials", "4")) == 0
    assert len(study(workdir, name).trials) == 4


def test_pruned_trials_end_killed_and_count_toward_the_cap(workdir, monkeypatch):
    monkeypatch.setattr(
        optuna.pruners, "MedianPruner", lambda **kw: optuna.pruners.ThresholdPruner(lower=2.0)
    )  # prune everything
    assert main(tune_args(workdir, "--objective", "siglip", "--trials", "2")) == 0
    trials = [r for r in runs(workdir) if r.data.tags.get("harness.role") == "trial"]
    assert len(trials) == 2
    assert all(r.info.status == "KILLED" and r.data.tags["harness.pruned"] == "true" for r in trials)


class BadSpace(CLIP):
    """Its search space proposes an invalid temperature after the first trial."""

    name = "bad-space"

    @classmethod
    def search_space(cls, trial):
        return {"temperature": trial.suggest_float("temperature", -1.0, -0.5)}


def test_invalid_configuration_fails_that_trial_and_the_study_goes_on(workdir):
    OBJECTIVES.register(BadSpace.name)(BadSpace)
    try:
        assert main(tune_args(workdir, "--objective", "bad-space", "--trials", "3")) == 0
    finally:
        OBJECTIVES.unregister(BadSpace.name)
    (s,) = optuna.get_all_study_summaries(f"sqlite:///{workdir / 'optuna.db'}")
    st = study(workdir, s.study_name)
    states = [t.state.name for t in st.trials]
    assert states == ["COMPLETE", "FAIL", "FAIL"]  # the enqueued paper default is valid
    assert "temperature" in st.trials[1].user_attrs["harness.failure_reason"]


def test_several_objectives_get_the_same_trial_count(workdir):
    assert main(tune_args(workdir, "--objectives", "clip,siglip", "--trials", "2")) == 0
    counts = {
        s.study_name.split("__")[0]: s.n_trials
        for s in optuna.get_all_study_summaries(f"sqlite:///{workdir / 'optuna.db'}")
    }
    assert counts == {"clip": 2, "siglip": 2}


def test_journal_storage_with_two_workers(workdir):
    assert main(tune_args(workdir, "--objective", "clip", "--trials", "3", "--workers", "2")) == 0
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(workdir / "optuna-journal.log")))
    (s,) = optuna.get_all_study_summaries(storage)
    st = optuna.load_study(study_name=s.study_name, storage=storage)
    assert 3 <= len(st.trials) <= 4  # the study-wide cap; a worker may overshoot by its one running trial


def test_bad_storage_and_bad_counts_fail_before_training(workdir, capsys):
    assert main(tune_args(workdir, "--objective", "clip", "--storage", "postgresql://u@127.0.0.1:1/x")) == 2
    assert "cannot open Optuna storage" in capsys.readouterr().err.replace("\n", " ")
    assert main(tune_args(workdir, "--objective", "clip", "--trials", "0")) == 2
    assert (
        main(
            tune_args(
                workdir, "--objective", "clip", "--workers", "2", "--storage", f"sqlite:///{workdir}/x.db"
            )
        )
        == 2
    )
    assert runs(workdir) == []


def test_compare_tuned_retrains_the_best_configuration(workdir):
    assert main(tune_args(workdir, "--objective", "clip", "--trials", "2")) == 0
    st = study(workdir, optuna.get_all_study_summaries(f"sqlite:///{workdir / 'optuna.db'}")[0].study_name)
    best = st.best_params
    assert (
        main(
            [
                "-q",
                "compare",
                "--budget",
                "smoke",
                "--output-dir",
                str(workdir),
                "--no-checkpoint",
                "--tasks",
                "shapes-retrieval",
                "--set",
                "budget.steps=6",
                "--objectives",
                "clip",
                "--seeds",
                "2",
                "--tuned",
            ]
        )
        == 0
    )
    tuned = [
        r
        for r in runs(workdir)
        if r.data.tags.get("harness.track") == "tuned" and r.data.tags.get("harness.role") == "run"
    ]
    assert len(tuned) == 2
    assert all(
        float(r.data.params["objective.temperature"]) == pytest.approx(best["temperature"]) for r in tuned
    )
    # without a study for an objective: a clear error before training
    assert (
        main(
            [
                "-q",
                "compare",
                "--budget",
                "smoke",
                "--output-dir",
                str(workdir),
                "--objectives",
                "siglip",
                "--tasks",
                "shapes-retrieval",
                "--set",
                "budget.steps=6",
                "--tuned",
            ]
        )
        == 2
    )


def test_tuned_compare_with_a_shorter_tuning_budget_and_an_image_task_for_supcon(workdir):
    """The studies ran at 4 steps, the comparison at 6 (--tuning-set names the studies' budget);
    supcon (image tower only) was tuned on shapes-linear; each tuned run records its study, and the
    board states the tuning and the tuned parameters."""
    short = ["--set", "budget.steps=4"]
    base = tune_args(workdir, "--objective", "clip", "--trials", "2")
    assert main(base[: base.index("--set")] + short + base[base.index("--set") + 2 :]) == 0
    sup = tune_args(workdir, "--objective", "supcon", "--trials", "2")
    sup[sup.index("shapes-retrieval")] = "shapes-linear"
    assert main(sup[: sup.index("--set")] + short + sup[sup.index("--set") + 2 :]) == 0

    def compare(*extra):
        return main(
            [
                "-q",
                "compare",
                "--budget",
                "smoke",
                "--output-dir",
                str(workdir),
                "--no-checkpoint",
                "--tasks",
                "shapes",  # the suite: supcon gets its image tasks only
                "--set",
                "budget.steps=6",
                "--objectives",
                "clip,supcon",
                "--seeds",
                "1",
                *extra,
            ]
        )

    # the comparison's own budget names no study: refused before training
    assert compare("--tuned", "--tuned-on", "shapes-retrieval,supcon=shapes-linear") == 2
    assert compare("--tuned-on", "shapes-retrieval") == 2  # --tuned-on without --tuned
    assert (
        compare(
            "--tuned", "--tuned-on", "shapes-retrieval,siglip=shapes-linear", "--tuning-set", "budget.steps=4"
        )
        == 2
    )
    assert [r for r in runs(workdir) if r.data.tags.get("harness.track") == "tuned"] == []
    assert (
        compare(
            "--tuned", "--tuned-on", "shapes-retrieval,supcon=shapes-linear", "--tuning-set", "budget.steps=4"
        )
        == 0
    )
    tuned = [
        r
        for r in runs(workdir)
        if r.data.tags.get("harness.track") == "tuned" and r.data.tags.get("harness.role") == "run"
    ]
    assert sorted(r.data.tags["harness.objective"] for r in tuned) == ["clip", "supcon"]
    import json

    for r in tuned:
        src = json.loads(r.data.tags["harness.tuned_from"])
        obj = r.data.tags["harness.objective"]
        assert src["task"] == ("shapes-linear" if obj == "supcon" else "shapes-retrieval")
        assert src["trials"] == 2 and src["budget"]["steps"] == 4
        assert set(src["defaults"]) == set(src["params"])  # the paper defaults the study started from
        assert src["defaults"]["temperature"] == pytest.approx(
            0.1 if obj == "supcon" else 1 / 14.2857, rel=1e-3
        )
        assert src["params"]["temperature"] == pytest.approx(float(r.data.params["objective.temperature"]))
        assert r.data.params["budget.steps"] == "6"  # the final runs keep the comparison's budget
    parent = next(r for r in runs(workdir) if r.data.tags.get("harness.role") == "compare")
    assert parent.data.tags["harness.tuning"].startswith(
        "2 Optuna trials per objective, validation split, on shapes-retrieval; supcon on shapes-linear; "
        "tuning budget 4 steps x 32"
    )
    from harness.leaderboard import leaderboard
    from harness.leaderboard.render import render_markdown

    (board,) = leaderboard(
        parent_run_id=parent.info.run_id, tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}"
    )
    assert board.provenance["track_label"] == "equal tuning"
    assert set(board.provenance["tuned_from"]) == {"clip", "supcon"}
    md = render_markdown(board)
    assert "# Leaderboard: harness, equal tuning" in md and "> equal tuning: 2 Optuna trials" not in md
    assert "> equal tuning: each objective's best configuration from harness tune: 2 Optuna trials" in md
    assert "- tuned supcon: temperature=" in md and "on shapes-linear validation" in md
