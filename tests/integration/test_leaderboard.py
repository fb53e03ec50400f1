"""`harness leaderboard`: rebuilt from a fake MLflow store (3 objectives x 3 seeds, no training)."""

import argparse
import base64
import csv
import html
import io
import json
import math
import shutil
import subprocess
import time
from html.parser import HTMLParser

import numpy as np
import pytest
import torch.nn.functional as F
from rich.console import Console
from scipy import stats

from harness import leaderboard as lb
from harness.run.console import Reporter
from harness.tracking import HEARTBEAT_TAG, metric_key
from tasks.base import Task, breakdown_of, task_meta

T975_2 = 4.302652729749462  # scipy.stats.t.ppf(0.975, 2), by hand from a t table: 4.303
BUDGET = "budget0123456789"
OBJECTIVES = ("clip", "siglip", "weak")
SEEDS = (0, 1, 2)
TYPES = ("color", "size", "relation")
ERROR = {"clip": [0.30, 0.32, 0.31], "siglip": [0.31, 0.30, 0.32], "weak": [0.10, 0.13, 0.11]}
WALL = {"clip": [10.0, 12.0, 14.0], "siglip": [20.0, 20.0, 20.0], "weak": [5.0, 6.0, 7.0]}


def retrieval_items(objective: str, seed: int) -> np.ndarray:
    """clip and siglip: the same items up to a few flips (indistinguishable); weak: far below."""
    rng = np.random.default_rng(100 + seed)
    clip = (rng.random(200) < 0.6).astype(float)
    if objective == "clip":
        return clip
    if objective == "weak":
        return (np.random.default_rng(200 + seed).random(200) < 0.3).astype(float)
    s = clip.copy()
    ones, zeros = np.flatnonzero(clip == 1), np.flatnonzero(clip == 0)
    up, down = {0: (2, 2), 1: (3, 1), 2: (1, 3)}[seed]  # net change 0, +2, -2 items
    s[zeros[:up]] = 1
    s[ones[:down]] = 0
    return s


def comp_ok(objective: str, seed: int, split: str) -> np.ndarray:
    p = {"clip": 0.9, "siglip": 0.7, "weak": 0.5}[objective] - (0.1 if split == "heldout" else 0.0)
    rng = np.random.default_rng(1000 * OBJECTIVES.index(objective) + 10 * seed + (split == "heldout"))
    return (rng.random((120, 3)) < p).astype(float)


def task_docs(objective: str, seed: int) -> dict:
    i = SEEDS.index(seed)
    items = retrieval_items(objective, seed)
    ret = {
        "metrics": {
            "mean_recall@1": float(items.mean()),
            "image_retrieval_recall@5": float(min(1, items.mean() + 0.3)),
        },
        "main_score": float(items.mean()),
        "main_metric": "mean_recall@1",
        "higher_is_better": True,
        "item_scores": items.tolist(),
        "n_items": 200,
    }
    comp_metrics = {}
    for split in ("test", "heldout"):
        ok = comp_ok(objective, seed, split)
        for j, t in enumerate(TYPES):
            comp_metrics[f"{split}/{t}/acc"] = float(ok[:, j].mean())
        comp_metrics[f"{split}/all/acc"] = float(ok.all(axis=1).mean())
        comp_metrics[f"{split}/macro_acc"] = float(np.mean([comp_metrics[f"{split}/{t}/acc"] for t in TYPES]))
        comp_metrics[f"{split}/single/color/acc"] = 0.5
    test_items = comp_ok(objective, seed, "test").mean(axis=1)
    # what Task.result records of the task: its family and the breakdown of its metrics for the plots
    comp = {
        "metrics": comp_metrics,
        "main_score": comp_metrics["test/macro_acc"],
        "main_metric": "test/macro_acc",
        "higher_is_better": True,
        "item_scores": test_items.tolist(),
        "n_items": 120,
        "family": "compositionality",
        "diagnostic": False,
        "breakdown": breakdown_of("{split}/{negative:color|size|relation}/acc", comp_metrics),
    }
    err = {
        "metrics": {"error": ERROR[objective][i]},
        "main_score": ERROR[objective][i],
        "main_metric": "error",
        "higher_is_better": False,
        "item_scores": None,
        "n_items": 0,
    }
    return {"shapes-retrieval": ret, "shapes-compositionality": comp, "fake-error": err}


def log_run(
    client,
    exp_id,
    objective,
    seed,
    *,
    budget=BUDGET,
    track="default",
    parent=None,
    status="FINISHED",
    tasks=None,
    wall=1.0,
    reason=None,
    compare_key=None,
    start_time=None,
    role="run",
):
    from mlflow.entities import Metric

    tags = {
        "harness.role": role,
        "harness.objective": objective,
        "harness.seed": str(seed),
        "harness.identity": f"id-{objective}-{seed}-{track}",
        "harness.budget_id": budget,
        "harness.track": track,
        "harness.tasks": "shapes",
        "harness.dataset_fingerprint": "fp1",
        "mlflow.runName": f"{objective}-s{seed}",
    }
    if parent:
        tags["mlflow.parentRunId"] = parent
    if compare_key:
        tags["harness.compare_key"] = compare_key
    if reason:
        tags["harness.failure_reason"] = reason
    run = client.create_run(exp_id, start_time=start_time, tags=tags)
    rid = run.info.run_id
    if status == "FINISHED":
        tasks = tasks if tasks is not None else task_docs(objective, seed)
        ms = []
        for task, t in tasks.items():
            ms.append(Metric(f"{task}/main_score", t["main_score"], 0, 0))
            ms += [Metric(metric_key(f"{task}/{k}"), v, 0, 0) for k, v in t["metrics"].items()]
        ms += [
            Metric("cost/wall_seconds", wall, 0, 0),
            Metric("cost/samples_per_second", 1000.0 / wall, 0, 0),
            Metric("cost/peak_memory_mb", 500.0, 0, 0),
            Metric("cost/flops_per_step", 2e9, 0, 0),
            Metric("cost/samples_seen", 1000.0, 0, 0),
        ]
        ms += [
            Metric(
                "train/loss",
                5.0 - step / 10 - 0.1 * seed - 0.5 * OBJECTIVES.index(objective)
                if objective in OBJECTIVES
                else 1.0,
                step,
                step,
            )
            for step in (0, 10, 20)
        ]
        client.log_batch(rid, metrics=ms)
        doc = {
            "run_id": rid,
            "tasks": {k: {"task": k, **v} for k, v in tasks.items()},
            "config": {},
            "train": {},
        }
        client.log_dict(rid, doc, f"{tags['harness.identity']}-{rid[:8]}.json")
        client.log_dict(rid, {"seed": seed}, "config.yaml")
    client.set_terminated(rid, status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory, template_db):
    from mlflow.tracking import MlflowClient

    d = tmp_path_factory.mktemp("lb")
    shutil.copy(template_db, d / "mlflow.db")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    art = (d / "artifacts").as_uri()
    exp = client.create_experiment("harness", artifact_location=art)
    parent_tags = {
        "harness.role": "compare",
        "harness.objectives": "clip,siglip,weak",
        "harness.tasks": "shapes",
        "harness.seeds": "3",
        "harness.budget_id": BUDGET,
        "harness.track": "default",
        "harness.compare_key": "key1",
        "harness.command": "harness compare --objectives clip,siglip,weak",
    }
    parent = client.create_run(exp, tags=parent_tags).info.run_id
    # an earlier failure of clip seed 2, superseded by the finished child below
    log_run(
        client, exp, "clip", 2, parent=parent, status="FAILED", reason="RuntimeError: flaky", start_time=1000
    )
    ids = {}
    for o in OBJECTIVES:
        for s in SEEDS:
            ids[(o, s)] = log_run(client, exp, o, s, parent=parent, wall=WALL[o][s], compare_key="key1")
    log_run(
        client, exp, "broken", 0, parent=parent, status="FAILED", reason="RuntimeError: boom\ntraceback..."
    )
    client.set_terminated(parent, "FINISHED")
    # a resumed comparison: every pair was already finished, so it has no children of its own
    resumed = client.create_run(exp, tags={**parent_tags}).info.run_id
    client.set_terminated(resumed, "FINISHED")
    # a comparison without children or compare key that lists the runs it reused in pairs.json
    later = int(time.time() * 1000) + 60_000  # the newest comparison ("latest")
    listed = client.create_run(
        exp, start_time=later, tags={"harness.role": "compare", "harness.objectives": "weak,siglip"}
    ).info.run_id
    client.log_dict(
        listed,
        {
            "pairs": [
                {"objective": o, "seed": s, "run_id": ids[(o, s)], "status": "SKIPPED"}
                for o, s in (("weak", 0), ("weak", 1), ("siglip", 2))
            ]
        },
        "pairs.json",
    )
    client.set_terminated(listed, "FINISHED")
    # a single `harness run` on the tuned track (never mixed with the default track)
    log_run(client, exp, "clip", 0, track="tuned", wall=9.0)

    mixed = client.create_experiment("mixed", artifact_location=art)
    log_run(client, mixed, "clip", 0, budget="aaaa1111")
    log_run(client, mixed, "clip", 1, budget="aaaa1111")
    log_run(client, mixed, "siglip", 0, budget="bbbb2222")
    nothing = client.create_experiment("nothing", artifact_location=art)
    log_run(client, nothing, "clip", 0, status="FAILED", reason="ValueError: bad")
    return {"uri": uri, "parent": parent, "resumed": resumed, "listed": listed, "ids": ids, "dir": d}


@pytest.fixture(scope="module")
def board(store):
    boards = lb.build(lb.collect("harness", store["parent"], tracking_uri=store["uri"]))
    assert len(boards) == 1
    return boards[0]


def main_values(task: str, objective: str) -> list[float]:
    return [task_docs(objective, s)[task]["main_score"] for s in SEEDS]


# -- collection ---------------------------------------------------------------------------------------
def test_collect_reads_children_metrics_items_and_history(store):
    col = lb.collect("harness", store["parent"], tracking_uri=store["uri"])
    assert col.parent_run_id == store["parent"]
    assert {(r.objective, r.seed) for r in col.runs} == {(o, s) for o in OBJECTIVES for s in SEEDS}
    clip0 = next(r for r in col.runs if (r.objective, r.seed) == ("clip", 0))
    assert clip0.run_id == store["ids"][("clip", 0)]
    # metric names come back with '@' (from '_at_' via the results JSON)
    assert clip0.metrics["shapes-retrieval"]["mean_recall@1"] == pytest.approx(
        retrieval_items("clip", 0).mean()
    )
    assert clip0.item_scores["shapes-retrieval"] == retrieval_items("clip", 0).tolist()
    assert "fake-error" not in clip0.item_scores and clip0.higher_is_better["fake-error"] is False
    assert clip0.loss == [(0, 5.0), (10, 4.0), (20, 3.0)]
    assert clip0.cost["wall_seconds"] == 10.0 and clip0.results_artifact.endswith(f"-{clip0.run_id[:8]}.json")
    # the superseded failure is dropped, the real one listed with its reason
    assert [(r.objective, r.status) for r in col.failed] == [("broken", "FAILED")]
    assert col.failed[0].failure_reason.startswith("RuntimeError: boom") and col.failed[0].state == "FAILED"
    (board,) = lb.build(col)
    assert (
        "1 run(s) that did not finish (1 FAILED) are not listed: a FINISHED run of the same (objective, "
        "seed) is ranked instead"
    ) in board.notes


def test_a_resumed_comparison_finds_the_runs_it_reused(store):
    col = lb.collect("harness", store["resumed"], tracking_uri=store["uri"])
    assert len(col.runs) == 9 and len(col.reused) == 9
    notes = lb.build(col)[0].notes
    assert "9 run(s) reused by this comparison from earlier runs (resumed), not its children" in notes
    assert (
        lb.collect("harness", store["parent"][:10], tracking_uri=store["uri"]).parent_run_id
        == store["parent"]
    )
    assert lb.collect("harness", "latest", tracking_uri=store["uri"]).parent_run_id == store["listed"]


def test_experiment_wide_gives_one_board_per_track(store):
    boards = lb.build(lb.collect("harness", tracking_uri=store["uri"]))
    assert [b.track for b in boards] == ["default", "tuned"]
    assert len(boards[0].runs) == 9 and [r.objective for r in boards[1].runs] == ["clip"]
    only = lb.build(lb.collect("harness", track="tuned", tracking_uri=store["uri"]))
    assert [b.track for b in only] == ["tuned"] and only[0].seeds == [0]


def test_no_finished_runs(store):
    with pytest.raises(lb.NoRunsError, match="no FINISHED run.*1 run"):
        lb.collect("nothing", tracking_uri=store["uri"])
    with pytest.raises(lb.NoRunsError, match="no MLflow experiment 'nope'.*harness, mixed, nothing"):
        lb.collect("nope", tracking_uri=store["uri"])
    assert issubclass(lb.NoRunsError, ValueError)


def test_mixed_budget_ids_are_refused_unless_one_is_selected(store):
    col = lb.collect("mixed", tracking_uri=store["uri"])
    with pytest.raises(lb.MixedBudgetsError) as e:
        lb.build(col)
    msg = str(e.value)
    assert (
        "aaaa1111: 2 finished run(s)" in msg and "bbbb2222: 1 finished run(s)" in msg and "--budget-id" in msg
    )
    assert e.value.budget_ids == {"aaaa1111": 2, "bbbb2222": 1}
    (a,) = lb.build(col, budget_id="aaaa")  # a prefix is enough
    assert a.budget_id == "aaaa1111" and a.objectives == ["clip"] and a.seeds == [0, 1]
    (b,) = lb.build(col, budget_id="bbbb2222")
    s = b.task_boards["shapes-retrieval"].scores["siglip"]
    assert s.n == 1 and s.ci is None and lb.fmt_summary(s).endswith("± n/a")
    with pytest.raises(lb.NoRunsError, match="matches none"):
        lb.build(col, budget_id="cccc")


# -- statistics ---------------------------------------------------------------------------------------
def test_means_and_confidence_intervals(board):
    w = board.cost["clip"]["wall_seconds"]
    assert w.mean == pytest.approx(12.0) and w.std == pytest.approx(2.0)
    assert w.ci == pytest.approx(T975_2 * 2.0 / math.sqrt(3))  # 4.968
    assert board.cost["siglip"]["wall_seconds"].ci == pytest.approx(0.0)
    err = board.task_boards["fake-error"].scores["weak"]
    assert err.mean == pytest.approx(0.34 / 3)
    assert err.ci == pytest.approx(T975_2 * np.std([0.10, 0.13, 0.11], ddof=1) / math.sqrt(3))
    for o in OBJECTIVES:
        v = main_values("shapes-retrieval", o)
        s = board.task_boards["shapes-retrieval"].scores[o]
        assert s.mean == pytest.approx(np.mean(v))
        assert (s.low, s.high) == pytest.approx(stats.t.interval(0.95, 2, loc=np.mean(v), scale=stats.sem(v)))
    m = board.task_boards["shapes-compositionality"].metrics["test/color/acc"]["weak"]
    assert m.mean == pytest.approx(
        np.mean([task_docs("weak", s)["shapes-compositionality"]["metrics"]["test/color/acc"] for s in SEEDS])
    )


def test_paired_tests_against_the_baseline(board):
    assert board.baseline == "clip"
    for task in ("shapes-retrieval", "shapes-compositionality", "fake-error"):
        for o in ("siglip", "weak"):
            t = board.task_boards[task].tests[o]
            ref = stats.ttest_rel(main_values(task, o), main_values(task, "clip"))
            assert t.n_seeds == 3
            assert t.p_ttest == pytest.approx(1.0 if math.isnan(ref.pvalue) else ref.pvalue)
            assert t.delta == pytest.approx(
                np.mean(main_values(task, o)) - np.mean(main_values(task, "clip"))
            )
    ret = board.task_boards["shapes-retrieval"].tests
    assert ret["siglip"].p_bootstrap > 0.5 and ret["siglip"].delta_items == pytest.approx(0.0, abs=1e-12)
    assert ret["weak"].p_bootstrap < 0.01 and ret["weak"].boot_high < 0 and ret["weak"].n_items == 200
    assert board.task_boards["fake-error"].tests["weak"].p_bootstrap is None  # no item scores
    # every metric gets a t-test against the baseline
    mt = board.task_boards["shapes-compositionality"].metric_tests["test/size/acc"]["weak"]
    vals = {
        o: [task_docs(o, s)["shapes-compositionality"]["metrics"]["test/size/acc"] for s in SEEDS]
        for o in ("weak", "clip")
    }
    assert mt.p_ttest == pytest.approx(stats.ttest_rel(vals["weak"], vals["clip"]).pvalue)


def test_shared_and_distinct_ranks(board):
    tb = board.task_boards
    assert tb["shapes-retrieval"].ranks == {"clip": 1, "siglip": 1, "weak": 3}  # clip ~ siglip
    assert tb["shapes-compositionality"].ranks == {"clip": 1, "siglip": 2, "weak": 3}  # all separated
    assert tb["fake-error"].ranks == {"weak": 1, "clip": 2, "siglip": 2}  # lower is better
    assert tb["shapes-retrieval"].better["weak"] == ["clip", "siglip"]
    assert not tb["fake-error"].higher_is_better


def test_mean_rank_borda_and_order(board):
    # fractional ranks of the means: clip and siglip tie on shapes-retrieval (1.5) and fake-error (2.5)
    assert board.mean_rank == pytest.approx({"clip": 5 / 3, "siglip": 2.0, "weak": 7 / 3})
    assert board.borda == {"clip": 3, "siglip": 2, "weak": 2}
    assert board.objectives == ["clip", "siglip", "weak"]
    assert board.n_tasks == {"clip": 3, "siglip": 3, "weak": 3}


def test_rank_of_mean_fractional_ranks_and_groups(board):
    tb = board.task_boards
    assert tb["shapes-retrieval"].fractional_ranks == {"clip": 1.5, "siglip": 1.5, "weak": 3.0}
    assert tb["fake-error"].fractional_ranks == {"clip": 2.5, "siglip": 2.5, "weak": 1.0}
    assert tb["shapes-retrieval"].groups == {"clip": "a", "siglip": "a", "weak": "b"}
    assert tb["shapes-compositionality"].groups == {"clip": "a", "siglip": "b", "weak": "c"}
    assert tb["fake-error"].groups == {"weak": "a", "clip": "b", "siglip": "b"}


def test_friedman_and_verdicts(board):
    fr = board.friedman
    assert fr.tasks == ["shapes-retrieval", "shapes-compositionality", "fake-error"] and fr.k == 3
    # 12 N / (k (k + 1)) (sum R_j^2 - k (k + 1)^2 / 4) = 3 (110 / 9 - 12) = 2 / 3
    assert fr.chi2 == pytest.approx(2 / 3) and fr.p_chi2 == pytest.approx(stats.chi2.sf(2 / 3, 2))
    assert fr.ff == pytest.approx(2 * (2 / 3) / (3 * 2 - 2 / 3)) and not fr.significant
    assert fr.cd == pytest.approx(2.343 * math.sqrt(3 * 4 / 18)) and fr.differ == []
    assert board.task_boards["shapes-retrieval"].verdict.startswith(
        "clip and siglip lead shapes-retrieval; indistinguishable at alpha 0.05 over 3 seeds"
    )
    assert "weak is 0.295 behind clip, p < 0.001 (paired bootstrap over items)" in (
        board.task_boards["shapes-retrieval"].verdict
    )
    assert board.task_boards["fake-error"].verdict.startswith(
        "weak leads fake-error, significantly ahead of every other objective"
    )
    assert board.verdict.startswith("clip leads on mean rank (1.67) over 3 tasks")
    assert "Friedman: chi2_F = 0.67 (p = 0.717)" in board.verdict
    assert board.verdict.endswith("cannot be told apart across tasks (no post-hoc test)")


def test_rank_rules_and_baseline_choice(store):
    col = lb.collect("harness", store["parent"], tracking_uri=store["uri"])
    (strict,) = lb.build(col, rank_rule="both", baseline="weak")
    assert strict.baseline == "weak" and "weak" not in strict.task_boards["fake-error"].tests
    assert strict.task_boards["shapes-retrieval"].ranks["siglip"] == 1
    (a,), (b,) = lb.build(col), lb.build(col)
    assert (
        a.task_boards["shapes-retrieval"].tests["weak"].p_bootstrap
        == b.task_boards["shapes-retrieval"].tests["weak"].p_bootstrap
    )
    with pytest.raises(lb.LeaderboardError, match="baseline 'nope'"):
        lb.build(col, baseline="nope")


def test_loss_curves_and_costs(board):
    c = board.loss_curves["clip"]
    assert c["step"] == [0, 10, 20] and c["mean"] == pytest.approx([4.9, 3.9, 2.9]) and c["n"] == 3
    assert board.cost["weak"]["flops_per_step"].mean == 2e9
    header, rows = lb.summary_rows(board)
    assert header[-4:] == ["wall s", "samples/s", "peak MB", "GFLOPs/step"]
    assert rows[0][-4:] == ["12.0", f"{np.mean([100, 1000 / 12, 1000 / 14]):.0f}", "500", "2.00"]


# -- rendering ----------------------------------------------------------------------------------------
class Checker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.ids, self.imgs, self.tags, self.refs = [], [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a)
        for k in ("src", "href", "srcset", "action", "data"):
            if k in a:
                self.refs.append(a[k])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def test_html_is_self_contained_and_well_formed(board, tmp_path):
    paths = lb.render_all(board, tmp_path)
    assert set(paths) == {"md", "html", "json", "csv"} and all(p.exists() for p in paths.values())
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    c = Checker()
    c.feed(page)
    c.close()
    assert not c.errors and not c.stack
    for section in (
        "provenance",
        "verdict",
        "leaderboard",
        "friedman",
        "tasks",
        "scores",
        "loss",
        "breakdowns",
        "cost",
        "failed",
        "method",
    ):
        assert section in c.ids
    # the critical-difference diagram, scores, loss, the breakdown shapes-compositionality recorded, cost
    assert len(c.imgs) == 5 and c.imgs[0]["alt"] == "critical-difference diagram"
    assert html.escape(board.verdict) in page
    assert html.escape(board.task_boards["fake-error"].verdict) in page
    breakdowns = page.split('<section id="breakdowns">')[1].split("</section>")[0]
    assert "<h3>shapes-compositionality</h3>" in breakdowns
    for img in c.imgs:
        assert img["src"].startswith("data:image/png;base64,") and img.get("alt")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(r.startswith("data:") or r.startswith("#") for r in c.refs)
    assert not {"script", "link", "iframe", "object", "embed"} & set(c.tags)
    assert "url(" not in page and "@import" not in page and "http://" not in page and "https://" not in page
    assert store_parent_in(page, board) and "RuntimeError: boom" in page and BUDGET in page


def store_parent_in(text, board):
    return board.provenance["parent_run_id"] in text


def test_html_without_breakdowns_or_history_says_so(store):
    col = lb.collect("mixed", tracking_uri=store["uri"], with_history=False)
    for r in col.runs:
        r.scores.pop("shapes-compositionality")
    (b,) = lb.build(col, budget_id="aaaa1111")
    page = lb.render_html(b)
    assert "no train/loss history" in page and "no task in these runs recorded a breakdown" in page
    assert page.count("<img ") == 2


def test_markdown_round_trip(board):
    md = lb.render_markdown(board)
    for needle in (
        board.provenance["parent_run_id"],
        BUDGET,
        "seeds: 0, 1, 2",
        "`harness compare --objectives clip,siglip,weak`",
        "experiment: harness",
    ):
        assert needle in md
    rows = lb.parse_markdown_table(md, "## Leaderboard")
    assert [r["objective"] for r in rows] == ["clip (baseline)", "siglip", "weak"]
    tb = board.task_boards["shapes-retrieval"]
    assert rows[0]["shapes-retrieval (rank group)"] == f"{lb.fmt_summary(tb.scores['clip'])} (1 a)"
    assert rows[2]["fake-error (rank group)"].endswith("(1 a)")
    assert [(r["mean rank"], r["Borda"], r["seeds"]) for r in rows] == [
        ("1.67", "3", "3"),
        ("2.00", "2", "3"),
        ("2.33", "2", "3"),
    ]
    task = lb.parse_markdown_table(md, "## Task shapes-retrieval")
    assert [r["rank"] for r in task] == ["1", "1", "3"] and [r["group"] for r in task] == ["a", "a", "b"]
    assert f"Verdict: {lb.md_escape(tb.verdict)}." in md
    verdict = md.split("## Verdict\n\n")[1].split("\n\n")[0].splitlines()
    assert verdict[0] == f"- overall: {lb.md_escape(board.verdict)}" and len(verdict) == 4
    friedman = md.split("## Across tasks: Friedman and Nemenyi\n\n")[1].split("\n\n")[0]
    assert "- Friedman chi2_F: 0.667, p = 0.717 (chi2, 2 df)" in friedman
    assert "not applied: the Friedman test does not reject" in friedman
    assert task[2]["p (paired bootstrap, items)"] == lb.fmt_p(tb.tests["weak"].p_bootstrap)
    failed = lb.parse_markdown_table(md, "## Not ranked")
    assert failed[0]["objective"] == "broken" and failed[0]["reason"] == "RuntimeError: boom"
    assert [r["objective"] for r in lb.parse_markdown_table(md, "## Task shapes-compositionality")] == list(
        OBJECTIVES
    )
    assert "| test/relation/acc |" in md


def test_csv_round_trip(board):
    rows = list(csv.DictReader(io.StringIO(lb.render_csv(board))))
    assert list(rows[0]) == lb.LONG_FIELDS
    vals = [
        r
        for r in rows
        if r["kind"] == "value"
        and r["objective"] == "clip"
        and r["task"] == "shapes-retrieval"
        and r["metric"] == "main_score"
    ]
    expected = list(zip(SEEDS, main_values("shapes-retrieval", "clip")))
    assert [(int(r["seed"]), float(r["value"])) for r in vals] == expected
    assert [r["run_id"] for r in vals] == [r.run_id for r in board.runs if r.objective == "clip"]
    mean = next(
        r
        for r in rows
        if r["kind"] == "mean"
        and r["objective"] == "weak"
        and r["task"] == "fake-error"
        and r["metric"] == "main_score"
    )
    assert float(mean["value"]) == pytest.approx(0.34 / 3) and mean["seed"] == ""
    ranks = {r["objective"]: float(r["value"]) for r in rows if r["kind"] == "mean_rank"}
    assert ranks == pytest.approx(board.mean_rank)
    at = [r for r in rows if r["metric"] == "image_retrieval_recall@5" and r["kind"] == "value"]
    assert len(at) == 9


def test_json_round_trip(board):
    doc = json.loads(lb.render_json(board))
    assert doc["provenance"]["parent_run_id"] == board.provenance["parent_run_id"]
    assert doc["provenance"]["command"] == "harness compare --objectives clip,siglip,weak"
    assert doc["objectives"] == ["clip", "siglip", "weak"] and doc["seeds"] == [0, 1, 2]
    assert doc["summary"]["clip"]["borda"] == 3 and doc["summary"]["weak"]["ranks"]["fake-error"] == 1
    assert doc["summary"]["weak"]["groups"] == {
        "shapes-retrieval": "b",
        "shapes-compositionality": "c",
        "fake-error": "a",
    }
    ret = doc["task_boards"]["shapes-retrieval"]
    assert (
        ret["groups"] == {"clip": "a", "siglip": "a", "weak": "b"}
        and ret["verdict"] == doc["verdicts"]["shapes-retrieval"]
    )
    assert ret["fractional_ranks"] == {"clip": 1.5, "siglip": 1.5, "weak": 3.0}
    assert doc["verdict"] == board.verdict and doc["friedman"]["chi2_f"] == pytest.approx(2 / 3)
    assert doc["friedman"]["df_f"] == [2, 4] and doc["friedman"]["significant"] is False
    assert doc["task_boards"]["shapes-retrieval"]["scores"]["weak"]["values"]["1"] == pytest.approx(
        main_values("shapes-retrieval", "weak")[1]
    )
    assert doc["failed"][0]["reason"].startswith("RuntimeError: boom")
    assert len([r for r in doc["rows"] if r["kind"] == "value"]) == len(
        [r for r in board.long_rows() if r["kind"] == "value"]
    )
    assert doc["statistics"] == {
        "alpha": 0.05,
        "n_boot": 1000,
        "rank_rule": "either",
        "ci": "95% Student-t over seeds, cut at the metric's range",
    }


def test_summarize_comparison_writes_and_logs_on_the_parent(store, tmp_path):
    from mlflow.tracking import MlflowClient

    b = lb.summarize_comparison("harness", store["resumed"], store["uri"], out_dir=tmp_path)
    assert b.objectives == ["clip", "siglip", "weak"] and (tmp_path / "leaderboard.html").exists()
    names = {
        f.path
        for f in MlflowClient(tracking_uri=store["uri"]).list_artifacts(store["resumed"], "leaderboard")
    }
    assert names == {f"leaderboard/leaderboard.{x}" for x in ("md", "html", "json", "csv")}


def test_a_parent_pairs_json_lists_reused_runs(store):
    col = lb.collect("harness", store["listed"], tracking_uri=store["uri"])
    assert {(r.objective, r.seed) for r in col.runs} == {("weak", 0), ("weak", 1), ("siglip", 2)}


def test_terminal_table(board):
    con = Console(file=io.StringIO(), width=250, color_system=None)
    con.print(lb.render_table(board))
    out = con.file.getvalue()
    assert "clip (baseline)" in out and "mean rank" in out and BUDGET in out
    assert lb.fmt_summary(board.task_boards["fake-error"].scores["weak"]) + " (1 a)" in out
    flat = " ".join(out.split())
    assert "overall: clip leads on mean rank (1.67)" in flat
    assert "fake-error: weak leads fake-error" in flat


# -- command line -------------------------------------------------------------------------------------
def cli(store, *argv):
    p = argparse.ArgumentParser()
    lb.add_arguments(p)
    args = p.parse_args(["--tracking-uri", store["uri"], *argv])
    err = io.StringIO()
    rep = Reporter(quiet=False, console=Console(file=err, width=300, color_system=None))
    return lb.main(args, rep), err.getvalue()


def test_cli_exit_codes(store, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, err = cli(store, "--experiment", "nothing")
    assert code == 2 and "no FINISHED run" in err
    code, err = cli(store, "--experiment", "mixed")
    assert code == 2 and "--budget-id" in err and "aaaa1111" in err
    p = argparse.ArgumentParser()
    lb.add_arguments(p)
    args = p.parse_args(["--output-dir", str(tmp_path / "none")])
    err = io.StringIO()
    assert lb.main(args, Reporter(console=Console(file=err, width=300))) == 2
    assert "no MLflow store" in err.getvalue() and not (tmp_path / "none").exists()


def test_cli_formats_and_out(store, tmp_path, capsys):
    code, _ = cli(store, "--parent", store["parent"], "--format", "json")
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["objectives"] == ["clip", "siglip", "weak"]
    code, _ = cli(store, "--format", "csv")  # experiment-wide: two tracks, one CSV
    out = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and {r["track"] for r in rows} == {"default", "tuned"} and out.count("track,kind") == 1
    code, err = cli(store, "--parent", store["parent"][:8], "--format", "table")
    out = capsys.readouterr().out
    assert code == 0 and "clip (baseline)" in out and "broken" in out and "RuntimeError: boom" in out
    assert max(len(line) for line in out.splitlines()) > 100  # not squeezed into 80 columns when piped
    code, err = cli(store, "--out", str(tmp_path / "w"), "--format", "md")
    assert code == 0 and (tmp_path / "w" / "tuned" / "leaderboard.md").exists()
    out = capsys.readouterr().out
    # the tracks are named for what they are, each with its one-line caveat
    assert "# Leaderboard: harness, equal tuning" in out and "# Leaderboard: harness, paper defaults" in out
    assert "> paper defaults: each objective trains with its published hyperparameters" in out
    assert "docs/objective-defaults.md" in out


@pytest.mark.skipif(
    shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
    reason="headless Chromium not installed",
)
def test_html_renders_in_headless_chromium(board, tmp_path):
    path = lb.render_all(board, tmp_path)["html"]
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    out = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and 'id="breakdowns"' in out.stdout


def test_text_section_averages_sts_tasks_per_seed_with_ci_and_paired_test():
    """Two objectives x 3 seeds on one STS task (shapes-sts) and one image-text task: the text
    section holds only the STS task, its per-seed average, a Student-t CI and a paired t-test."""
    sts = {"clip": [70.0, 72.0, 74.0], "simcse": [80.0, 81.0, 85.0]}
    runs = []
    for o in sts:
        for i, seed in enumerate(SEEDS):
            runs.append(
                lb.RunRecord(
                    run_id=f"{o}{seed}",
                    objective=o,
                    seed=seed,
                    status="FINISHED",
                    track="default",
                    budget_id=BUDGET,
                    scores={"shapes-sts": sts[o][i], "shapes-retrieval": 0.5},
                    metrics={
                        "shapes-sts": {"spearman": sts[o][i]},
                        "shapes-retrieval": {"mean_recall@1": 0.5},
                    },
                    main_metric={"shapes-sts": "spearman", "shapes-retrieval": "mean_recall@1"},
                    higher_is_better={"shapes-sts": True, "shapes-retrieval": True},
                    family={"shapes-sts": "sts", "shapes-retrieval": "retrieval"},
                )
            )
    (board,) = lb.build(lb.Collected("e", "0", "sqlite://", None, {}, runs, []))
    sec = board.text
    assert sec.tasks == ["shapes-sts"]
    assert sec.average["simcse"].mean == pytest.approx(82.0)
    assert sec.average["clip"].ci == pytest.approx(T975_2 * 2.0 / math.sqrt(3))  # sd of 70, 72, 74 is 2
    d = np.array([80 - 70, 81 - 72, 85 - 74], dtype=float)  # paired differences 10, 9, 11
    assert sec.tests["simcse"].delta == pytest.approx(10.0)
    assert sec.tests["simcse"].p_ttest == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    header, rows = lb.text_rows(board)
    assert rows[0][0] == "simcse" and "shapes-sts (rank)" in header
    md = lb.render_markdown(board)
    assert "## Text (STS)" in md and "82.000 ±" in md
    assert '<section id="text">' in lb.render_html(board)
    assert lb.render_json(board) and board.to_dict()["text"]["tasks"] == ["shapes-sts"]


def test_no_text_section_without_sts_tasks():
    runs = [
        lb.RunRecord(
            run_id="a",
            objective="clip",
            seed=0,
            status="FINISHED",
            track="default",
            budget_id=BUDGET,
            scores={"shapes-retrieval": 0.5},
            metrics={"shapes-retrieval": {}},
            main_metric={"shapes-retrieval": "mean_recall@1"},
            higher_is_better={"shapes-retrieval": True},
        )
    ]
    (board,) = lb.build(lb.Collected("e", "0", "sqlite://", None, {}, runs, []))
    assert board.text is None and "Text (STS)" not in lb.render_markdown(board)


def test_aggregate_task_is_shown_but_not_ranked_or_averaged():
    """sts-avg repeats its members' scores: it gets a task board, but neither the text section's
    average nor the mean rank counts it (that would count the STS sets twice). Both the family and
    the diagnostic flag are what the runs recorded."""
    runs = [
        lb.RunRecord(
            run_id=f"{o}{s}",
            objective=o,
            seed=s,
            status="FINISHED",
            track="default",
            budget_id=BUDGET,
            scores={"stsb": v + s, "sts-avg": 10.0 * (o == "clip")},
            metrics={"stsb": {}, "sts-avg": {}},
            main_metric={"stsb": "spearman", "sts-avg": "avg"},
            higher_is_better={"stsb": True, "sts-avg": True},
            family={"stsb": "sts", "sts-avg": "sts"},
            diagnostic={"stsb": False, "sts-avg": True},
        )
        for o, v in (("clip", 50.0), ("simcse", 80.0))
        for s in SEEDS
    ]
    (board,) = lb.build(lb.Collected("e", "0", "sqlite://", None, {}, runs, []))
    assert "sts-avg" in board.task_boards and board.text.tasks == ["stsb"]
    assert board.text.average["simcse"].mean == pytest.approx(81.0)
    assert board.mean_rank["simcse"] == 1.0 and board.n_tasks["simcse"] == 1
    assert board.to_dict()["task_boards"]["sts-avg"]["diagnostic"] is True
    assert not [n for n in board.notes if "not every objective" in n]  # a diagnostic is missing from no one


# -- intervals within the metric's range (issue 12, item 16) -----------------------------------------
def bounded_runs():
    """clip near the top of recall (0.98, 1, 1), siglip near the bottom (0, 0, 0.06), wall 10, 12, 60 s."""
    vals = {"clip": [0.98, 1.0, 1.0], "siglip": [0.0, 0.0, 0.06]}
    return [
        lb.RunRecord(
            run_id=f"{o}{s}",
            objective=o,
            seed=s,
            status="FINISHED",
            track="default",
            budget_id=BUDGET,
            scores={"shapes-retrieval": vals[o][s]},
            metrics={"shapes-retrieval": {"image_retrieval_recall@5": vals[o][s], "error": vals[o][s]}},
            main_metric={"shapes-retrieval": "mean_recall@1"},
            higher_is_better={"shapes-retrieval": True},
            cost={"wall_seconds": [10.0, 12.0, 60.0][s], "final_loss": [1.0, 1.1, 0.9][s]},
        )
        for o in vals
        for s in SEEDS
    ]


def test_board_intervals_stay_within_the_metric_range_in_every_output():
    (board,) = lb.build(lb.Collected("e", "0", "sqlite://", None, {}, bounded_runs(), []))
    tb = board.task_boards["shapes-retrieval"]
    for o in ("clip", "siglip"):
        for s in (tb.scores[o], tb.metrics["image_retrieval_recall@5"][o]):
            assert 0.0 <= s.low <= s.mean <= s.high <= 1.0
    assert tb.metrics["error"]["siglip"].low < 0  # unknown metric: unbounded
    wall = board.cost["clip"]["wall_seconds"]
    assert wall.low == 0.0 and board.cost["clip"]["final_loss"].bounds is None
    md = lb.render_markdown(board)
    rows = lb.parse_markdown_table(md, "## Leaderboard")
    assert rows[0]["shapes-retrieval (rank group)"] == "0.993 [0.965, 1.000] (1 a)"
    assert "0.0200 [0.0000, 0.1061]" in md and "-0.06" not in md
    doc = json.loads(lb.render_json(board))
    sc = doc["task_boards"]["shapes-retrieval"]["scores"]["siglip"]
    assert sc["low"] == 0.0 and sc["bounds"] == [0.0, 1.0] and sc["ci95"] == pytest.approx(0.086053, abs=1e-6)
    csv_rows = list(csv.DictReader(io.StringIO(lb.render_csv(board))))
    lows = [
        float(r["value"])
        for r in csv_rows
        if r["kind"] == "ci_low" and r["task"] == "shapes-retrieval" and r["metric"] != "error"
    ]
    assert len(lows) == 4 and min(lows) == 0.0
    assert "<!DOCTYPE html>" in lb.render_html(board)  # the plots draw the asymmetric error bars


def test_text_section_average_is_bounded_by_the_sts_range():
    vals = {"clip": [99.0, 100.0, 100.0], "simcse": [80.0, 81.0, 85.0]}
    runs = [
        lb.RunRecord(
            run_id=f"{o}{s}",
            objective=o,
            seed=s,
            status="FINISHED",
            track="default",
            budget_id=BUDGET,
            scores={"shapes-sts": vals[o][s]},
            metrics={"shapes-sts": {"spearman": vals[o][s]}},
            main_metric={"shapes-sts": "spearman"},
            higher_is_better={"shapes-sts": True},
            family={"shapes-sts": "sts"},
        )
        for o in vals
        for s in SEEDS
    ]
    (board,) = lb.build(lb.Collected("e", "0", "sqlite://", None, {}, runs, []))
    avg = board.text.average["clip"]
    assert (
        avg.high == 100.0
        and avg.bounds == (-100.0, 100.0)
        and avg.low == pytest.approx(99.6667 - 1.4342, abs=1e-3)
    )


# -- run statuses: FAILED, KILLED, running, interrupted (issue 12, items 16 and 17) -------------------
NOW = 1_900_000_000.0


def status_run(
    client,
    exp,
    objective,
    seed,
    status,
    *,
    budget=BUDGET,
    track="default",
    heartbeat=None,
    started=None,
    reason=None,
):
    """A run left in ``status``; RUNNING runs are never terminated, as after a SIGKILL."""
    tags = {
        "harness.role": "run",
        "harness.objective": objective,
        "harness.seed": str(seed),
        "harness.budget_id": budget,
        "harness.track": track,
    }
    if heartbeat is not None:
        tags[HEARTBEAT_TAG] = str(heartbeat)
    if reason:
        tags["harness.failure_reason"] = reason
    rid = client.create_run(
        exp, start_time=int((started if started is not None else NOW - 60) * 1000), tags=tags
    ).info.run_id
    if status == "FINISHED":
        client.log_batch(rid, metrics=[_metric("shapes-retrieval/main_score", 0.5 + 0.01 * seed)])
    if status != "RUNNING":
        client.set_terminated(rid, status)
    return rid


def _metric(key, value):
    from mlflow.entities import Metric

    return Metric(key, value, 0, 0)


@pytest.fixture(scope="module")
def status_store(tmp_path_factory, template_db):
    from mlflow.tracking import MlflowClient

    d = tmp_path_factory.mktemp("lb-status")
    shutil.copy(template_db, d / "mlflow.db")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("status", artifact_location=(d / "artifacts").as_uri())
    status_run(client, exp, "clip", 1, "KILLED", started=NOW - 7200)  # superseded by the FINISHED run below
    for o, s in (("clip", 0), ("clip", 1), ("siglip", 0)):
        status_run(client, exp, o, s, "FINISHED")
    ids = {
        "killed": status_run(client, exp, "siglip", 1, "KILLED"),
        "failed": status_run(client, exp, "dcl", 0, "FAILED", reason="RuntimeError: boom"),
        "running": status_run(client, exp, "dcl", 1, "RUNNING", heartbeat=NOW - 20, started=NOW - 3600),
        "stale": status_run(client, exp, "dcl", 2, "RUNNING", heartbeat=NOW - 43 * 60, started=NOW - 7200),
        "old": status_run(client, exp, "supcon", 0, "RUNNING", started=NOW - 3 * 3600),
    }
    # another track and another budget, each with a failure of its own
    status_run(client, exp, "clip", 0, "FINISHED", track="tuned")
    status_run(client, exp, "clip", 1, "FAILED", track="tuned", reason="ValueError: tuned")
    status_run(client, exp, "clip", 0, "FINISHED", budget="other000")
    status_run(client, exp, "clip", 1, "RUNNING", budget="other000", started=NOW - 5 * 3600)
    return {"uri": uri, "ids": ids}


def status_boards(status_store):
    col = lb.collect("status", tracking_uri=status_store["uri"], now=NOW)
    return {b.track: b for b in lb.build(col, budget_id=BUDGET)}


def test_running_and_interrupted_runs_are_told_apart(status_store):
    board = status_boards(status_store)["default"]
    by_id = {r.run_id: r for r in board.failed}
    ids = status_store["ids"]
    assert set(by_id) == set(ids.values())
    assert {k: by_id[v].state for k, v in ids.items()} == {
        "killed": "KILLED",
        "failed": "FAILED",
        "running": "running",
        "stale": "interrupted",
        "old": "interrupted",
    }
    assert by_id[ids["stale"]].status == "RUNNING"  # what MLflow says is kept
    assert by_id[ids["stale"]].failure_reason.startswith("no heartbeat for 43 min: the process was killed")
    assert by_id[ids["old"]].failure_reason.startswith("no heartbeat since it started 3 h ago")
    assert by_id[ids["running"]].failure_reason == "still running (last heartbeat 20 s ago)"
    assert by_id[ids["failed"]].failure_reason == "RuntimeError: boom"
    header, rows = lb.failed_rows(board)
    status = {r[header.index("run")]: r[header.index("status")] for r in rows}
    assert status[ids["stale"]] == "interrupted" and status[ids["running"]] == "running"
    assert status[ids["killed"]] == "KILLED"
    md = lb.render_markdown(board)
    assert {r["status"] for r in lb.parse_markdown_table(md, "## Not ranked")} == {
        "FAILED",
        "KILLED",
        "running",
        "interrupted",
    }
    doc = board.to_dict()
    assert {f["run_id"]: f["state"] for f in doc["failed"]}[ids["old"]] == "interrupted"
    con = Console(file=io.StringIO(), width=250, color_system=None)
    con.print(lb.render_failed_table(board))
    assert "5 run(s): 1 FAILED, 1 KILLED, 1 running, 2 interrupted" in con.file.getvalue()


def test_notes_count_only_the_runs_of_the_board_shown(status_store):
    boards = status_boards(status_store)
    notes = " | ".join(boards["default"].notes)
    assert "5 run(s) not ranked: 1 FAILED, 1 KILLED, 1 running, 2 interrupted" in notes
    assert "1 run(s) still running (dcl seed 1)" in notes
    assert "2 run(s) interrupted (dcl seed 2, supcon seed 0)" in notes
    assert "1 run(s) that did not finish (1 KILLED) are not listed: a FINISHED run" in notes
    assert "failed" not in notes  # FAILED is a status; KILLED, running and interrupted runs are not "failed"
    tuned = " | ".join(boards["tuned"].notes)
    assert "1 run(s) not ranked: 1 FAILED" in tuned
    assert "interrupted" not in tuned and "running" not in tuned and "did not finish" not in tuned
    assert [r.state for r in boards["tuned"].failed] == ["FAILED"]
    (other,) = lb.build(
        lb.collect("status", track="default", tracking_uri=status_store["uri"], now=NOW), budget_id="other000"
    )
    assert [r.state for r in other.failed] == ["interrupted"]
    assert "1 run(s) not ranked: 1 interrupted" in " | ".join(other.notes)


def test_no_finished_run_message_names_each_status(status_store, template_db, tmp_path):
    from mlflow.tracking import MlflowClient

    shutil.copy(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("none", artifact_location=(tmp_path / "a").as_uri())
    status_run(client, exp, "clip", 0, "KILLED")
    status_run(client, exp, "clip", 1, "RUNNING", heartbeat=NOW - 3600)
    with pytest.raises(lb.NoRunsError, match=r"2 run\(s\) did not finish \(1 KILLED, 1 interrupted\)"):
        lb.collect("none", tracking_uri=uri, now=NOW)


# -- a board is rebuilt from what the runs recorded, not from what is installed (issue 13, item 2) ----
class PluginCosine(Task):
    """A plugin-like diagnostic (family geometry): per test scene, the cosine of the image and its caption."""

    family = "geometry"
    main_score = "mean_cosine_positive"

    def evaluate(self, ctx):
        split = ctx.split("test")
        sp = ctx.world.split(split)
        img = F.normalize(ctx.cache.image(ctx.encoder, "shapes", split, sp.images).double(), dim=-1)
        txt = ctx.cache.text(ctx.encoder, "shapes", split, "captions", sp.full_captions)
        cos = (img * F.normalize(txt.double(), dim=-1)).sum(-1)
        return self.result(
            {"mean_cosine_positive": float(cos.mean())}, item_scores=cos.tolist(), n_items=len(cos)
        )


def rendered(out):
    """The latest comparison's board, as Markdown and JSON bytes (the clock-stamped field fixed)."""
    (board,) = lb.build(lb.collect("harness", "latest", tracking_uri=f"sqlite:///{out / 'mlflow.db'}"))
    board.provenance["generated"] = "2000-01-01T00:00:00Z"
    return board, lb.render_markdown(board).encode(), lb.render_json(board).encode()


def test_a_board_rebuilt_after_uninstalling_a_task_is_byte_identical(workdir):
    """A diagnostic task registered only while the runs ran: once it is uninstalled, the board rebuilt from
    the same runs is the same bytes (it used to rank the task then, changing n_tasks, mean rank and Borda)."""
    from harness.cli import main
    from tasks import TASKS

    TASKS.register("plugin-cosine")(PluginCosine)
    try:
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
                    "shapes-retrieval,plugin-cosine",
                    "--objectives",
                    "clip,siglip",
                    "--seeds",
                    "1",
                ]
            )
            == 0
        )
        board, md, js = rendered(workdir)
    finally:
        TASKS.unregister("plugin-cosine")
    assert "plugin-cosine" not in TASKS
    assert "plugin-cosine" in board.task_boards  # shown, not ranked:
    assert board.n_tasks == {"clip": 1, "siglip": 1}
    assert json.loads(js)["task_boards"]["plugin-cosine"]["diagnostic"] is True
    again, md2, js2 = rendered(workdir)
    assert (again.mean_rank, again.borda, again.n_tasks) == (board.mean_rank, board.borda, board.n_tasks)
    assert md2 == md and js2 == js


def test_a_task_result_records_what_a_board_needs():
    class Geo(Task):
        name, family, main_score, higher_is_better = "geo-x", "geometry", "gap", False

    class Comp(Task):
        name, family, main_score = "comp-x", "compositionality", "test/macro_acc"
        breakdown = "{split}/{neg:a|b}/acc"

    class Avg(Task):
        name, family, main_score, aggregate = "avg-x", "sts", "avg", True

    geo, avg = Geo().result({"gap": 0.2}), Avg().result({"avg": 70.0})
    comp = Comp().result(
        {
            "test/a/acc": 1.0,
            "test/all/acc": 0.0,
            "test/macro_acc": 0.5,
            "heldout/b/acc": 0.0,
            "test/single/a/acc": 1.0,
        }
    )
    assert (geo.family, geo.diagnostic, geo.aggregate, geo.breakdown) == ("geometry", True, False, {})
    assert (avg.family, avg.diagnostic, avg.aggregate) == ("sts", True, True)
    assert not comp.diagnostic and comp.breakdown == {
        "pattern": "{split}/{neg:a|b}/acc",
        "levels": ["split", "neg"],
        "metrics": {"test/a/acc": ["test", "a"], "heldout/b/acc": ["heldout", "b"]},
    }
    meta = task_meta([geo, comp])
    assert json.loads(json.dumps(meta)) == meta and meta["geo-x"] == {
        "family": "geometry",
        "main_metric": "gap",
        "higher_is_better": False,
        "diagnostic": True,
        "aggregate": False,
        "breakdown": {},
    }
    assert meta["comp-x"]["breakdown"] == comp.breakdown and comp.to_dict()["family"] == "compositionality"
    from tasks.compositionality import ShapesCompositionality

    found = breakdown_of(
        ShapesCompositionality.breakdown,
        {"test/relation_swap/acc": 1.0, "test/all/acc": 1.0, "heldout/attribute_swap/acc": 1.0},
    )
    assert found["metrics"] == {
        "test/relation_swap/acc": ["test", "relation_swap"],
        "heldout/attribute_swap/acc": ["heldout", "attribute_swap"],
    }


def test_what_a_board_knows_of_a_task_is_what_the_run_recorded(template_db, tmp_path):
    """The harness.task_meta tag first, then the results JSON's entry, then the defaults; never the registry
    (``fake-geo`` is installed nowhere)."""
    from mlflow.tracking import MlflowClient

    shutil.copy(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("meta", artifact_location=(tmp_path / "a").as_uri())
    tag = {
        "fake-geo": {
            "family": "geometry",
            "main_metric": "gap",
            "higher_is_better": False,
            "diagnostic": True,
            "aggregate": False,
            "breakdown": {"levels": ["k"], "metrics": {"gap": ["all"]}},
        }
    }
    doc = {
        "fake-geo": {
            "main_score": 0.5,
            "metrics": {"gap": 0.5},
            "main_metric": "doc_gap",
            "family": "retrieval",
            "higher_is_better": True,
            "diagnostic": False,
        }
    }

    def run(seed, tags, tasks):
        rid = client.create_run(
            exp,
            tags={
                "harness.role": "run",
                "harness.objective": "clip",
                "harness.seed": str(seed),
                "harness.budget_id": BUDGET,
                **tags,
            },
        ).info.run_id
        client.log_batch(rid, metrics=[_metric("fake-geo/main_score", 0.5)])
        if tasks:
            client.log_dict(rid, {"tasks": tasks}, f"id-{rid[:8]}.json")
        client.set_terminated(rid, "FINISHED")
        return rid

    ids = {
        "tag": run(0, {lb.TASK_META_TAG: json.dumps(tag)}, doc),
        "json": run(1, {}, doc),
        "none": run(2, {}, None),
    }
    recs = {r.run_id: r for r in lb.collect("meta", tracking_uri=uri, with_history=False).runs}
    got = {
        k: (
            recs[v].family["fake-geo"],
            recs[v].diagnostic["fake-geo"],
            recs[v].higher_is_better["fake-geo"],
            recs[v].main_metric["fake-geo"],
        )
        for k, v in ids.items()
    }
    assert got == {
        "tag": ("geometry", True, False, "gap"),
        "json": ("retrieval", False, True, "doc_gap"),
        "none": ("", False, True, "main_score"),
    }
    assert recs[ids["tag"]].breakdown["fake-geo"]["levels"] == ["k"]
    assert recs[ids["none"]].breakdown["fake-geo"] == {}
    lean = lb.collect("meta", tracking_uri=uri, with_artifacts=False, with_history=False).runs
    assert {r.run_id: r.diagnostic["fake-geo"] for r in lean} == {  # the tag needs no artifact
        ids["tag"]: True,
        ids["json"]: False,
        ids["none"]: False,
    }
