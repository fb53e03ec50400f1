"""Faults and bad input (issue 12): run identities that cover the evaluated data, harness
checkpoints in `harness eval`, concurrent writers on a fresh store, SIGTERM, honest failure
messages, and heartbeats of runs that work."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import runs, smoke_args

from harness.cli.main import main
from harness.config import resolve_config
from harness.run.runner import prepare, resolve_train_data
from harness.tracking import HEARTBEAT_TAG, MlflowRun, is_stale

ROOT = Path(__file__).resolve().parents[2]
STSB_FEATURES = datasets.Features(
    {
        "sentence1": datasets.Value("string"),
        "sentence2": datasets.Value("string"),
        "score": datasets.Value("float64"),
    }
)


def write_stsb(root: Path, seed: int) -> Path:
    """sentence-transformers/stsb layout: data/{split}-00000-of-00001.parquet, score in [0, 1]."""
    rng = np.random.default_rng(seed)
    (root / "data").mkdir(parents=True)
    for split in ("train", "validation", "test"):
        rows = {
            "sentence1": [f"first {split} {i} {seed}" for i in range(12)],
            "sentence2": [f"second {split} {i}" for i in range(12)],
            "score": [float(v) for v in rng.random(12).round(2)],
        }
        datasets.Dataset.from_dict(rows, features=STSB_FEATURES).to_parquet(
            str(root / "data" / f"{split}-00000-of-00001.parquet")
        )
    return root


# --------------------------------------------------------------------------- run identity


@pytest.mark.parametrize(
    "flags, sets, identity",
    [
        # the quick start (README): its identity must never move
        ({"objective": "siglip", "tasks": ["shapes-retrieval"]}, [], "08101489035b7ac2"),
        ({"objective": "clip", "tasks": ["shapes"], "seed": 2}, [], "07f07f951528d615"),
        ({"objective": "clip", "tasks": ["coco-retrieval"]}, [], "ca1b609b61658214"),
        ({"objective": "simcse", "tasks": ["stsb"], "selection": {"task": "stsb"}}, [], "dd5f3ad2f4ad81d5"),
    ],
)
def test_configuration_identities_are_pinned(flags, sets, identity):
    """Identities of configurations recorded before this work: keys added since leave them alone.
    Every command resolves ``train_data: auto`` as soon as it reads the config."""
    assert resolve_train_data(resolve_config(None, None, flags, sets)).identity == identity


def test_identity_covers_the_evaluated_dataset_and_split(tmp_path):
    a, b = write_stsb(tmp_path / "a", 0), write_stsb(tmp_path / "b", 1)

    def identity(path, *sets):
        cfg = resolve_config(
            "smoke",
            None,
            {
                "objective": "clip",
                "tasks": ["stsb"],
                "train_data": "shapes",
                "data": {"paths": {"stsb": str(path)}},
            },
            list(sets),
        )
        prepare(cfg)
        return cfg

    ca, cb, ca2 = identity(a), identity(b), identity(a)
    assert ca.identity != cb.identity  # other data, other run
    assert ca.identity == ca2.identity  # same data, same run
    assert ca.eval_data["stsb"]["split"] == "test"
    assert ca.budget_id == cb.budget_id  # the training budget did not change
    val = identity(a, "evaluation=validation")
    assert val.identity != ca.identity and val.eval_data["stsb"]["split"] == "validation"


def test_a_tuning_trial_never_shares_the_tuned_test_runs_identity():
    from harness.run.tune import trial_config

    base = resolve_config("smoke", None, {"objective": "clip"}, [])
    trial = trial_config(base, "clip", "shapes-retrieval", {"temperature": 0.05})
    test_run = resolve_config(
        "smoke", None, {"objective": "clip", "objective_params": {"temperature": 0.05}}, []
    )
    assert trial.evaluation == "validation"
    assert trial.identity != test_run.identity


def test_validation_evaluation_refuses_a_test_only_task():
    cfg = resolve_config(
        "smoke",
        None,
        {"objective": "clip", "tasks": ["sts12"], "train_data": "shapes"},
        ["evaluation=validation"],
    )
    with pytest.raises(ValueError, match="no validation split"):
        prepare(cfg)


# --------------------------------------------------------------------------- harness checkpoints


def test_eval_loads_the_harness_own_checkpoint(workdir):
    """train with `harness run`, evaluate on more tasks with `harness eval`: same weights, same scores."""
    assert main(smoke_args(workdir, "--objective", "clip", "--task", "shapes-retrieval")) == 0
    (ckpt,) = (workdir / "checkpoints").glob("*.pt")
    (trained,) = runs(workdir)
    rc = main(
        [
            "-q",
            "eval",
            "--budget",
            "smoke",
            "--output-dir",
            str(workdir),
            "--pretrained",
            str(ckpt),
            "--task",
            "shapes-retrieval,shapes-zeroshot",
        ]
    )
    assert rc == 0
    ev = [r for r in runs(workdir) if r.data.tags["harness.role"] == "eval"][0]
    assert ev.info.status == "FINISHED"
    key = "shapes-retrieval/main_score"
    assert ev.data.metrics[key] == pytest.approx(trained.data.metrics[key], abs=1e-6)
    assert ev.data.params["model.name"] == "harness-micro"  # the checkpoint's own architecture


def test_a_word_vocabulary_checkpoint_is_refused_on_real_text(workdir, tmp_path, capsys):
    assert main(smoke_args(workdir, "--objective", "clip", "--task", "shapes-retrieval")) == 0
    (ckpt,) = (workdir / "checkpoints").glob("*.pt")
    before = len(runs(workdir))
    stsb = write_stsb(tmp_path / "stsb", 0)
    rc = main(
        [
            "-q",
            "eval",
            "--budget",
            "smoke",
            "--output-dir",
            str(workdir),
            "--pretrained",
            str(ckpt),
            "--task",
            "stsb",
            "--data",
            f"stsb={stsb}",
        ]
    )
    assert rc == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps at 80 columns
    assert "word vocabulary" in err and "model.tokenizer=open_clip" in err
    assert len(runs(workdir)) == before  # nothing written


# --------------------------------------------------------------------------- concurrent writers

CHILD = textwrap.dedent("""
    import sys, time
    from harness.tracking import MlflowRun
    start = float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.005)
    with MlflowRun(sys.argv[1], "harness", "r", {"harness.role": "run"}) as r:
        r.log_metrics({"m": 1.0}, step=0)
    print("ok", r.status)
""")


def test_processes_starting_together_on_a_fresh_store_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    (tmp_path / "fresh").mkdir()
    start = time.time() + 6  # every child has imported mlflow by then
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, uri, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "ok FINISHED" in out, err[-2000:]


# --------------------------------------------------------------------------- signals and messages


def test_sigterm_ends_the_run_killed_with_its_reason_and_exit_143(workdir):
    args = [
        sys.executable,
        "-m",
        "harness",
        *smoke_args(workdir, "--objective", "clip", "--steps", "100000", "--task", "shapes-retrieval"),
    ]
    proc = subprocess.Popen(
        args,
        cwd=workdir.parent,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(r.info.status == "RUNNING" for r in runs(workdir)):
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    err = " ".join(err.split())
    (run,) = runs(workdir)
    assert run.info.status == "KILLED"
    assert run.data.tags["harness.failure_reason"] == "terminated (terminated by SIGTERM)"
    assert "terminated by SIGTERM" in err and "recorded as KILLED" in err


def test_a_failure_before_the_run_exists_does_not_claim_a_record(workdir, capsys, monkeypatch):
    import harness.run.runner as runner

    def broken(*a, **k):
        raise OSError("the store cannot be opened")

    monkeypatch.setattr(runner, "MlflowRun", broken)
    assert main(smoke_args(workdir, "--objective", "clip", "--task", "shapes-retrieval")) == 1
    err = " ".join(capsys.readouterr().err.split())  # rich wraps at 80 columns
    assert "recorded as FAILED" not in err and "nothing was recorded in MLflow" in err


def test_a_failed_run_names_its_record(workdir, capsys, monkeypatch):
    import harness.run.runner as runner

    def broken(*a, **k):
        raise RuntimeError("boom in training")

    monkeypatch.setattr(runner, "train", broken)
    assert main(smoke_args(workdir, "--objective", "clip", "--task", "shapes-retrieval")) == 1
    (run,) = runs(workdir)
    err = " ".join(capsys.readouterr().err.split())  # rich wraps at 80 columns
    assert run.info.status == "FAILED" and f"recorded as FAILED in MLflow (run {run.info.run_id})" in err


def test_a_negative_seed_is_refused_before_anything_is_written(workdir, capsys):
    assert main(smoke_args(workdir, "--objective", "clip", "--seed", "-1")) == 2
    assert "seed" in capsys.readouterr().err
    assert runs(workdir) == []


@pytest.mark.parametrize("flag", ["-q", "--quiet", "-v", "--verbose"])
def test_output_flags_are_accepted_after_the_subcommand(flag):
    from harness.cli.main import build_parser

    a = build_parser().parse_args(["run", "--objective", "clip", flag])
    assert (a.quiet if flag in ("-q", "--quiet") else a.verbose) is True
    b = build_parser().parse_args([flag, "list", "objectives"])  # before it, as before
    assert (b.quiet if flag in ("-q", "--quiet") else b.verbose) is True
    c = build_parser().parse_args(["list", "objectives"])
    assert c.quiet is False and c.verbose is False


# --------------------------------------------------------------------------- heartbeats


def test_a_working_run_beats_and_a_silent_one_goes_stale(tmp_path, template_db):
    import shutil

    import mlflow

    shutil.copy(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rec = MlflowRun(uri, "harness", "beating", {"harness.role": "run"})
    rec.heartbeat_interval = 0.2
    with rec:
        first = float(mlflow.MlflowClient(uri).get_run(rec.run_id).data.tags[HEARTBEAT_TAG])
        time.sleep(1.3)
        run = mlflow.MlflowClient(uri).get_run(rec.run_id)
        beat = float(run.data.tags[HEARTBEAT_TAG])
        assert beat >= first + 1
        assert not is_stale(run.info.status, run.data.tags, run.info.start_time)
        assert is_stale(run.info.status, run.data.tags, run.info.start_time, now=beat + 601)
    assert not rec._beat.is_alive()
    assert not is_stale("KILLED", {}, 0, now=1e12)
    assert is_stale("RUNNING", {}, 1000.0, now=1000.0)  # an old run without heartbeats: its start counts


def test_compare_finds_runs_whose_process_was_killed(tmp_path, template_db):
    import shutil

    import mlflow

    from harness.run.compare import interrupted_runs

    shutil.copy(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("harness")
    old = f"{time.time() - 3600:.0f}"
    dead = client.create_run(
        exp, tags={"harness.role": "run", "harness.identity": "dead", HEARTBEAT_TAG: old}
    )
    alive = client.create_run(
        exp, tags={"harness.role": "run", "harness.identity": "alive", HEARTBEAT_TAG: f"{time.time():.0f}"}
    )
    client.create_run(exp, tags={"harness.role": "run", "harness.identity": "garbled", HEARTBEAT_TAG: "?"})
    found = interrupted_runs(uri, "harness")  # an unreadable heartbeat is no evidence of death
    assert set(found) == {"dead"} and found["dead"][0] == dead.info.run_id and found["dead"][1] > 3500
    assert alive.info.status == "RUNNING"


def test_every_missing_dataset_is_listed_in_one_message():
    """Two evaluation sets and the training set, all missing: one error names the three."""
    from harness.data.sources import DatasetUnavailableError

    cfg = resolve_config(None, None, {"objective": "clip", "tasks": ["winoground", "coco-retrieval"]}, [])
    t0 = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as e:
        prepare(cfg)
    message = str(e.value)
    assert message.startswith("3 datasets this command needs cannot be used")
    for name in ("'winoground'", "'coco-retrieval'", "'coco'", "hf download"):
        assert name in message
    assert time.perf_counter() - t0 < 30  # no retry loop per dataset (24 s each before)


def test_a_bug_is_not_reported_as_bad_input(workdir, capsys, monkeypatch):
    """An internal error while preparing (here a KeyError) exits 1 with a hint to rerun with
    --verbose; before, any ValueError/RuntimeError there was shown as bad input (exit 2)."""
    import harness.run.runner as runner

    def bug(cfg):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(runner, "prepare", bug)
    assert main(smoke_args(workdir, "--objective", "clip")) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "RuntimeError: an internal bug" in err and "--verbose" in err and "nothing was recorded" in err
    with pytest.raises(RuntimeError):
        main(smoke_args(workdir, "--objective", "clip", "-v"))


def test_a_batch_below_the_objectives_minimum_is_refused_before_training(monkeypatch):
    from objectives.weighting import MACL

    monkeypatch.setattr(MACL, "min_batch_size", 3)
    cfg = resolve_config("smoke", None, {"objective": "clip + 0.1*macl"}, ["budget.batch_size=2"])
    with pytest.raises(ValueError, match="at least 3"):
        prepare(cfg)


def test_a_task_whose_protocol_changed_is_another_run():
    """shapes-linear is version 2 (a converging probe): its runs must not resume version-1 runs."""
    retrieval = resolve_config("smoke", None, {"objective": "clip", "tasks": ["shapes-retrieval"]}, [])
    linear = resolve_config("smoke", None, {"objective": "clip", "tasks": ["shapes-linear"]}, [])
    before = linear.identity
    prepare(retrieval), prepare(linear)
    assert retrieval.eval_data == {}  # version 1, generated data: the identity is unchanged
    assert linear.eval_data == {"shapes-linear": {"version": "2"}} and linear.identity != before


def test_a_cuda_machine_is_told_which_budget_it_got(monkeypatch):
    import torch

    from harness.run.runner import budget_notice

    cfg = resolve_config(None, None, {"objective": "clip"}, [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    notice = budget_notice(cfg, chosen=False)
    assert "'default'" in notice and "--budget gpu" in notice
    assert budget_notice(cfg, chosen=True) is None  # the user chose it
    assert budget_notice(resolve_config("gpu", None, {"objective": "clip"}, []), chosen=False) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert budget_notice(cfg, chosen=False) is None  # a CPU machine: the default is the right budget


def test_an_objective_past_its_first_version_is_another_run(monkeypatch):
    """An objective whose defaults or computation changed carries version 2: its runs must not
    resume version-1 runs; every other objective's identity is unchanged."""
    from objectives import OBJECTIVES

    clip = resolve_config("smoke", None, {"objective": "clip + 0.1*tic"}, [])
    prepare(clip)
    before = clip.identity
    monkeypatch.setattr(OBJECTIVES.get("tic"), "version", "2", raising=False)
    again = resolve_config("smoke", None, {"objective": "clip + 0.1*tic"}, [])
    prepare(again)
    assert again.identity != before and again.budget_id == clip.budget_id


def test_two_runs_in_one_process_write_to_their_own_stores(tmp_path, shared_cache, template_db, monkeypatch):
    """mlflow.set_tracking_uri leaves MLFLOW_TRACKING_URI in os.environ; the harness must not then
    send a later run with another output directory into the first run's store."""
    import shutil

    from conftest import runs

    monkeypatch.setenv("HARNESS_CACHE", str(shared_cache))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        shutil.copy(template_db, d / "mlflow.db")
    assert main(smoke_args(a, "--objective", "clip", "--no-checkpoint", "--steps", "2")) == 0
    assert os.environ.get("MLFLOW_TRACKING_URI") is None
    assert main(smoke_args(b, "--objective", "clip", "--no-checkpoint", "--steps", "2")) == 0
    assert len(runs(a)) == 1 and len(runs(b)) == 1
