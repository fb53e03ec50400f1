"""harness.leaderboard.contrast: two boards side by side, checked on a hand-computed case."""

import json
import math

import pytest

from harness.leaderboard import contrast as ct


def _board(scores, better=None, diagnostic=(), tuned_from=None):
    """scores: task -> objective -> mean (higher is better)."""
    objs = list(next(iter(scores.values())))
    return {
        "budget_id": "b",
        "objectives": objs,
        "tasks": list(scores),
        "provenance": {"tuned_from": tuned_from or {}},
        "task_boards": {
            t: {
                "main_metric": "m",
                "higher_is_better": True,
                "diagnostic": t in diagnostic,
                "scores": {o: {"mean": v} for o, v in s.items()},
                "significantly_better": (better or {}).get(t, {o: [] for o in s}),
            }
            for t, s in scores.items()
        },
    }


def test_contrast_on_a_hand_computed_case(tmp_path, capsys):
    a = _board(
        {
            "t1": {"x": 0.9, "y": 0.5, "z": 0.7},
            "t2": {"x": 80.0, "y": 60.0, "z": 70.0},  # another scale (STS x100)
            "t3": {"x": 0.4, "y": 0.2, "z": 0.3},
            "geo": {"x": 1.0, "y": 0.0, "z": 0.5},
        },
        better={"t1": {"x": [], "y": ["x", "z"], "z": []}},  # x, z above y; x and z apart: no
    )
    b = _board(
        {
            "t1": {"x": 0.8, "y": 0.7, "z": 0.9},
            "t2": {"x": 75.0, "y": 70.0, "z": 72.0},
            "t3": {"x": 0.35, "y": 0.3, "z": 0.32},
            "geo": {"x": 1.0, "y": 0.0, "z": 0.5},
        },
        better={"t1": {"x": [], "y": [], "z": []}},
        diagnostic=("geo",),
        tuned_from={
            "y": {
                "params": {"temperature": 0.05, "tau_plus": 0.1},
                "defaults": {"temperature": 0.5, "tau_plus": 0.1},
            }
        },
    )
    c = ct.contrast(a, b)
    assert list(c["tasks"]) == ["t1", "t2", "t3"]  # the diagnostic is left out
    t1 = c["tasks"]["t1"]
    assert (t1["spread_a"], t1["spread_b"]) == pytest.approx((0.4, 0.2))
    assert t1["sd_a"] == pytest.approx(0.2) and t1["sd_b"] == pytest.approx(0.1)
    assert (t1["leader_a"], t1["leader_b"]) == ("x", "z")
    # orders x>z>y and z>x>y: one discordant pair of three -> tau = (2 - 1) / 3
    assert t1["kendall_tau"] == pytest.approx(1 / 3)
    assert (t1["told_apart_a"], t1["told_apart_b"]) == (pytest.approx(2 / 3), 0.0)
    # gap ratios 0.2/0.4, 5/20, 0.05/0.2 = 0.5, 0.25, 0.25: all shrank;
    # the exact two-sided Wilcoxon with n = 3, all of one sign: 2/8
    assert c["spread_shrank_on"] == 3 and c["median_spread_ratio"] == pytest.approx(0.25)
    assert c["wilcoxon"]["p"] == pytest.approx(0.25)
    assert c["verdict"] == (
        "the best-to-worst gap between objectives shrank on 3 of 3 tasks under equal tuning (median "
        "ratio of the gaps, equal tuning over paper defaults: 0.25); Wilcoxon signed-rank over the 3 "
        "tasks' log ratios: p = 0.250, not significant at alpha 0.05"
    )
    # mean ranks over the 3 tasks: x 1,1,1 -> 2,1,1; y 3,3,3 -> 3,3,3
    assert c["mean_rank"]["x"] == pytest.approx((1.0, 4 / 3)) and c["mean_rank"]["y"] == (3.0, 3.0)
    (tau, temp) = c["moved"]["y"]  # sorted by name
    assert temp["factor"] == pytest.approx(-10.0) and tau["factor"] == pytest.approx(1.0)
    md = ct.render_markdown(c)
    assert "| y | temperature | 0.5 | 0.05 | /10.00 |" in md
    assert "| t1 | m | 0.400 -> 0.200 | 0.200 -> 0.100 | x -> z | 0.33 | 67% -> 0% |" in md
    # the command line writes the Markdown and the JSON
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert ct.main([str(pa), str(pb), "--out", str(tmp_path / "c.md")]) == 0
    assert (tmp_path / "c.md").read_text() == md
    assert json.loads((tmp_path / "c.json").read_text())["spread_shrank_on"] == 3
    assert math.isclose(json.loads((tmp_path / "c.json").read_text())["wilcoxon"]["p"], 0.25)


def test_contrast_leaves_out_what_the_boards_do_not_measure_alike():
    a = _board({"t1": {"x": 0.9, "y": 0.5, "z": 0.7}, "t2": {"x": 0.4, "y": 0.2, "z": 0.3}})
    b = _board({"t1": {"x": 0.8, "y": 0.7, "z": 0.9}, "t2": {"x": 0.35, "y": 0.3, "z": 0.32}})
    c = ct.contrast(a, b, drop_tasks=("t2",), drop_objectives=("y",))
    assert list(c["tasks"]) == ["t1"] and c["tasks"]["t1"]["objectives"] == ["x", "z"]
    assert c["tasks"]["t1"]["spread_a"] == pytest.approx(0.2)
    assert "Left out (not measured alike on the two boards): t2, y." in ct.render_markdown(c)
