"""`harness compare --sweep`: one comparison per value of a budget axis, samples seen held constant
along the batch size with one learning-rate rule for all, and the sweep's leaderboard."""

import json
import math

import pytest
from conftest import runs

from harness.cli.main import main
from harness.config import RunConfig, resolve_config
from harness.run.sweep import SweepError, parse_sweep, sweep_points


def test_batch_size_points_hold_samples_seen_and_apply_one_lr_rule():
    base = resolve_config("default")  # 450 steps x 256, lr 2e-3, warmup 40
    pts = sweep_points(base, "budget.batch_size", [64, 256, 1024], "sqrt")
    assert [p.config.budget.steps for p in pts] == [1800, 450, 112]  # 115,200 / b, rounded
    assert [p.config.budget.warmup_steps for p in pts] == [160, 40, 10]
    assert [p.config.budget.lr for p in pts] == pytest.approx([1e-3, 2e-3, 4e-3])
    assert all(abs(p.config.budget.samples_seen - 115200) / 115200 < 0.005 for p in pts)
    assert "114,688 samples seen" in pts[2].rule and "sqrt rule" in pts[2].rule
    lin = sweep_points(base, "budget.batch_size", [64, 1024], "linear")
    assert [p.config.budget.lr for p in lin] == pytest.approx([5e-4, 8e-3])
    const = sweep_points(base, "budget.batch_size", [64, 1024], "constant")
    assert [p.config.budget.lr for p in const] == pytest.approx([2e-3, 2e-3])
    # everything else identical: the points differ in the budget only, and in nothing but b/steps/lr/warmup
    a, b = (p.config.model_dump() for p in pts[:2])
    assert {k for k in a if a[k] != b[k]} == {"budget"}
    assert {k for k in a["budget"] if a["budget"][k] != b["budget"][k]} == {
        "batch_size",
        "steps",
        "lr",
        "warmup_steps",
    }
    # another axis is set as given, nothing adjusted
    (p1, p2) = sweep_points(base, "model.text_dropout", [0.0, 0.1])
    assert (p2.config.model.text_dropout, p2.config.budget.steps) == (0.1, 450)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("budget.batch_size", "expects AXIS=V1,V2"),
        ("budget.batch_size=64", "at least two values"),
        ("budget.batch_size=64,64", "twice"),
    ],
)
def test_bad_sweep_specs(spec, message):
    with pytest.raises(SweepError, match=message):
        parse_sweep(spec)


def test_bad_axes_and_values():
    base = RunConfig()
    with pytest.raises(SweepError, match="Extra inputs"):
        sweep_points(base, "budget.bogus", [1, 2])
    with pytest.raises(SweepError, match="objectives, seeds and tasks"):
        sweep_points(base, "seed", [1, 2])
    with pytest.raises(SweepError, match="not a batch size"):
        sweep_points(base, "budget.batch_size", [64, 1.5])
    with pytest.raises(SweepError, match="lr-rule"):
        sweep_points(base, "budget.batch_size", [64, 128], "cubic")


def _sweep(out, *extra, spec="budget.batch_size=16,32", tasks="shapes-retrieval,shapes-zeroshot"):
    return main(
        [
            "-q", "compare", "--budget", "smoke", "--output-dir", str(out), "--no-checkpoint",
            "--tasks", tasks, "--objectives", "clip,siglip", "--seeds", "2", "--sweep", spec, *extra,
        ]
    )  # fmt: skip


def test_sweep_runs_each_value_and_the_leaderboard_draws_it(workdir, capsys):
    assert _sweep(workdir) == 0
    children = [r for r in runs(workdir) if r.data.tags.get("harness.role") == "run"]
    parents = [r for r in runs(workdir) if r.data.tags.get("harness.role") == "compare"]
    assert len(children) == 8 and len(parents) == 2
    assert len({p.data.tags["harness.sweep"] for p in parents}) == 1
    assert sorted(p.data.tags["harness.sweep_value"] for p in parents) == ["16", "32"]
    seen = {(int(r.data.params["budget.batch_size"]), int(r.data.params["budget.steps"])) for r in children}
    assert seen == {(16, 16), (32, 8)}  # smoke: 8 x 32 samples seen at both values
    lrs = {int(r.data.params["budget.batch_size"]): float(r.data.params["budget.lr"]) for r in children}
    assert lrs[16] == pytest.approx(1e-3 * math.sqrt(0.5)) and lrs[32] == pytest.approx(1e-3)

    # rerunning the same sweep resumes it: every run is skipped, nothing trains
    assert _sweep(workdir) == 0
    assert len([r for r in runs(workdir) if r.data.tags.get("harness.role") == "run"]) == 8
    capsys.readouterr()

    out = workdir / "sweep-board"
    args = ["leaderboard", "--output-dir", str(workdir), "--sweep", "latest", "--out", str(out)]
    assert main(args) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Sweep: budget.batch_size over 16, 32, paper defaults")
    assert "| siglip - clip |" in md and "## shapes-retrieval: " in md
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["axis"] == "budget.batch_size" and doc["values"] == [16, 32]
    scores = doc["tasks"]["shapes-retrieval"]["scores"]
    assert set(scores) == {"clip", "siglip"} and all(len(v) == 2 and v[0]["n"] == 2 for v in scores.values())
    # each point's board is the comparison's own board
    for v, parent in zip(doc["values"], doc["comparisons"]):
        board = json.loads((out / f"batch_size-{v}" / "leaderboard.json").read_text())
        assert board["provenance"]["parent_run_id"] == parent
        assert board["task_boards"]["shapes-retrieval"]["scores"]["clip"]["mean"] == pytest.approx(
            scores["clip"][doc["values"].index(v)]["mean"]
        )
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (out / "sweep.html").read_text()


def test_sweep_refusals_before_anything_runs(workdir, capsys):
    assert _sweep(workdir, "--tuned") == 2
    assert "cannot be combined with --tuned" in capsys.readouterr().err
    # a value that fails validation at the second point: nothing of the first point ran either
    assert _sweep(workdir, spec="budget.batch_size=16,1", tasks="shapes-retrieval") == 2
    assert runs(workdir) == []
    assert main(["leaderboard", "--output-dir", str(workdir), "--sweep", "latest"]) == 2
