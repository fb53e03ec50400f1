"""End to end through the CLI on the smoke budget, checked in MLflow."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import runs, smoke_args

from harness.cli.main import main
from objectives import OBJECTIVES, Objective

TASKS2 = "shapes-retrieval,shapes-zeroshot,shapes-compositionality"


def test_smoke_run_is_recorded_finished_with_metrics(workdir):
    assert main(smoke_args(workdir, "--objective", "clip", "--task", TASKS2)) == 0
    (run,) = runs(workdir)
    assert run.info.status == "FINISHED"
    m, tags, params = run.data.metrics, run.data.tags, run.data.params
    for key in [
        "shapes-retrieval/image_retrieval_recall_at_5",
        "shapes-retrieval/text_retrieval_recall_at_1",
        "shapes-retrieval/main_score",
        "shapes-zeroshot/shape/acc1",
        "shapes-zeroshot/colour/mean_per_class_recall",
        "shapes-compositionality/heldout/relation_swap/acc",
        "train/loss",
        "train/lr",
        "train/temperature",
        "cost/wall_seconds",
        "cost/samples_per_second",
        "cost/peak_memory_mb",
        "cost/flops_per_step",
    ]:
        assert key in m, key
    assert m["cost/flops_per_step"] > 0
    for key in [
        "harness.identity",
        "harness.version",
        "harness.torch_version",
        "harness.open_clip_version",
        "harness.git_sha",
        "harness.dataset_fingerprint",
        "harness.budget_id",
    ]:
        assert tags.get(key), key
    assert params["budget.steps"] == "8" and params["objective.temperature"] == "0.07"
    client = __import__("mlflow").MlflowClient()
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) >= 4
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in arts and any(a.endswith(".json") for a in arts) and "checkpoint" in arts
    result = json.loads(next((workdir / "results").glob("*.json")).read_text())
    assert result["identity"] == tags["harness.identity"]
    assert len(result["tasks"]["shapes-retrieval"]["predictions"]) == 128
    ckpt = torch.load(next((workdir / "checkpoints").glob("*.pt")), weights_only=True)
    assert "model" in ckpt and ckpt["config"]["objective"] == "clip" and ckpt["vocabulary"][-1] == "<eot>"


def test_same_seed_gives_identical_metrics(workdir):
    args = smoke_args(workdir, "--objective", "siglip", "--task", TASKS2, "--no-checkpoint")
    assert main(args) == 0 and main(args) == 0
    a, b = runs(workdir)
    keys = [k for k in a.data.metrics if not k.startswith("cost/") and "samples_per_second" not in k]
    assert keys and all(a.data.metrics[k] == b.data.metrics[k] for k in keys)
    assert a.data.tags["harness.identity"] == b.data.tags["harness.identity"]
    assert (
        main(smoke_args(workdir, "--objective", "siglip", "--task", TASKS2, "--no-checkpoint", "--seed", "1"))
        == 0
    )
    c = [r for r in runs(workdir) if r.data.tags["harness.seed"] == "1"][0]
    assert any(c.data.metrics[k] != a.data.metrics[k] for k in keys)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objective", "clipp"], "Did you mean 'clip'"),
        (["--task", "shapes-retrival"], "Did you mean 'shapes-retrieval'"),
        (["--steps", "0"], "budget.steps"),
        (["--batch-size", "1"], "budget.batch_size"),
        (["--lr", "-1"], "budget.lr"),
        (["--set", "budget.stepz=3"], "unknown key 'budget.stepz'"),
        (["--objective", "clip", "--set", "objective_params.temperature=-1"], "temperature"),
        (["--objective", "clip +"], "cannot parse objective term"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(workdir, capsys, args, message):
    assert main(smoke_args(workdir, *args)) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert runs(workdir) == []


class NeedsMagic(Objective):
    name = "needs-magic"
    requires = frozenset({"image", "text", "audio"})


class Exploding(Objective):
    """Loss is finite for two steps, then NaN."""

    name = "exploding"
    requires = frozenset({"image", "text"})

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def loss(self, batch):
        self.calls += 1
        out = (self.w * (batch.image * batch.text).sum(-1)).mean()
        from harness.core.batch import LossOutput

        return LossOutput(out * (float("nan") if self.calls > 2 else 1.0))


class Interrupting(Exploding):
    name = "interrupting"

    def loss(self, batch):
        raise KeyboardInterrupt


class HardNegOnly(Objective):
    name = "hardneg-probe"
    requires = frozenset(
        {"image", "text", "hard_negative_text", "labels", "index", "image_view", "text_view"}
    )

    def __init__(self):
        super().__init__()
        self.seen = []

    def loss(self, batch):
        from harness.core.batch import LossOutput

        b = batch.size
        assert batch.hard_negative_text.shape[:2] == (b, 3) and batch.image_view.shape == batch.image.shape
        assert batch.labels.shape == (b,) and batch.index.shape == (b,)
        return LossOutput(
            ((batch.image - batch.image_view) ** 2).sum(-1).mean()
            + (batch.text * batch.text_view).sum(-1).mean()
        )


@pytest.fixture
def extra_objectives():
    for cls in (NeedsMagic, Exploding, Interrupting, HardNegOnly):
        OBJECTIVES.register(cls.name)(cls)
    yield
    for cls in (NeedsMagic, Exploding, Interrupting, HardNegOnly):
        OBJECTIVES.unregister(cls.name)


def test_objective_needs_checked_before_training(workdir, capsys, extra_objectives):
    from harness.core import batch

    batch.FIELDS["audio"] = "an audio track"
    try:
        assert main(smoke_args(workdir, "--objective", "needs-magic")) == 2
    finally:
        del batch.FIELDS["audio"]
    err = capsys.readouterr().err.replace("\n", " ")
    assert "needs audio" in err and "does not supply" in err
    assert runs(workdir) == []


def test_all_batch_fields_are_supplied(workdir, extra_objectives):
    assert main(smoke_args(workdir, "--objective", "hardneg-probe", "--no-checkpoint")) == 0


def test_nan_loss_fails_the_run_with_step_and_reason(workdir, extra_objectives):
    assert main(smoke_args(workdir, "--objective", "exploding", "--no-checkpoint")) == 1
    (run,) = runs(workdir)
    assert run.info.status == "FAILED"
    assert "non-finite loss" in run.data.tags["harness.failure_reason"]
    assert run.data.tags["harness.failure_step"] == "2"


def test_ctrl_c_ends_the_run_killed(workdir, extra_objectives):
    assert main(smoke_args(workdir, "--objective", "interrupting", "--no-checkpoint")) == 130
    (run,) = runs(workdir)
    assert run.info.status == "KILLED"


def test_tracking_uri_env_is_honoured(workdir, tmp_path, monkeypatch):
    db = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert main(smoke_args(workdir, "--objective", "clip", "--no-checkpoint", "--experiment", "envtest")) == 0
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    assert len(mlflow.search_runs(experiment_names=["envtest"])) == 1


def test_list_and_validate(workdir, tmp_path, capsys):
    assert main(["list", "objectives", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["entries"]
    clip = next(r for r in rows if r["name"] == "clip")
    assert (
        clip["family"] == "softmax"
        and clip["requires"] == ["image", "text"]
        and "Radford" in clip["citation"]
    )
    assert main(["list", "tasks"]) == 0
    assert "shapes-zeroshot" in capsys.readouterr().out
    good = tmp_path / "good.yaml"
    good.write_text("objective: clip\ntasks: [shapes-retrieval]\nbudget:\n  steps: 10\n")
    assert main(["validate", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: clip\nbudgett:\n  steps: 10\n")
    assert main(["validate", str(bad)]) == 2
    assert "unknown key 'budgett'" in capsys.readouterr().err


def test_console_script_plain_output(workdir):
    """The installed `harness` entry point, with stdout not a terminal: plain lines."""
    exe = [sys.executable, "-m", "harness"]
    proc = subprocess.run(
        [*exe, *smoke_args(workdir, "--objective", "clip", "--no-checkpoint")[1:]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "step 8/8" in proc.stderr and "image_retrieval_recall@5" in proc.stdout


class ImageOnly(Objective):
    name = "image-only-probe"
    modality = "image"
    requires = frozenset({"image", "image_view"})

    def loss(self, batch):
        from harness.core.batch import LossOutput

        return LossOutput(((batch.image - batch.image_view) ** 2).sum(-1).mean())


def test_single_tower_objective_on_an_image_text_task_is_refused(workdir, capsys):
    OBJECTIVES.register(ImageOnly.name)(ImageOnly)
    try:
        assert main(smoke_args(workdir, "--objective", "image-only-probe", "--task", "shapes-retrieval")) == 2
    finally:
        OBJECTIVES.unregister(ImageOnly.name)
    err = capsys.readouterr().err.replace("\n", " ")
    assert "trains the image tower(s) only" in err and "shapes-retrieval" in err
    assert runs(workdir) == []


def test_eval_a_local_open_clip_checkpoint_without_training(workdir, tmp_path):
    import open_clip

    from harness.engine.models import register_presets

    register_presets()
    torch.manual_seed(0)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": open_clip.create_model("harness-micro").state_dict()}, path)
    args = [
        "-q",
        "eval",
        "--budget",
        "smoke",
        "--output-dir",
        str(workdir),
        "--model",
        "harness-micro",
        "--pretrained",
        str(path),
        "--set",
        "model.tokenizer=open_clip",
        "--task",
        "shapes-retrieval,shapes-zeroshot",
    ]
    assert main(args) == 0
    (run,) = runs(workdir)
    assert run.info.status == "FINISHED" and run.data.tags["harness.role"] == "eval"
    assert "shapes-zeroshot/main_score" in run.data.metrics and not any(
        k.startswith("train/") for k in run.data.metrics
    )
    assert main(args) == 0  # same weights, same numbers
    a, b = runs(workdir)
    assert a.data.metrics == b.data.metrics
    assert (
        main(["-q", "eval", "--budget", "smoke", "--output-dir", str(workdir), "--task", "shapes-nope"]) == 2
    )
