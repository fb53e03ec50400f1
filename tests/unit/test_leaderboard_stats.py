"""The leaderboard's statistics, unit-tested on plain numbers: no MLflow store, no runs, no registry."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import harness.leaderboard as package
from harness.leaderboard import stats as st
from harness.leaderboard.render.cells import fmt_summary

T975_2 = 4.302652729749462  # scipy.stats.t.ppf(0.975, 2), by hand from a t table: 4.303


def test_the_statistics_need_no_mlflow_and_no_part_of_the_package_reads_the_task_registry():
    assert not re.search(r"\bmlflow\b", Path(st.__file__).read_text())
    for path in Path(package.__file__).parent.rglob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+tasks\b", path.read_text(), re.M), path


def test_paired_bootstrap_is_seeded_and_two_sided():
    counts = st.bootstrap_counts(50, 1000, seed=3)
    assert counts.shape == (1000, 50) and np.all(counts.sum(axis=1) == 50)
    assert np.array_equal(counts, st.bootstrap_counts(50, 1000, seed=3))
    d = np.r_[np.ones(30), np.zeros(20)] * 0.1
    delta, p, lo, hi = st.paired_bootstrap(d, counts)
    delta2, p2, lo2, hi2 = st.paired_bootstrap(-d, counts)
    assert delta == pytest.approx(0.06) and delta2 == pytest.approx(-0.06)
    assert p == pytest.approx(p2) and p < 0.01
    assert lo < delta < hi and lo2 == pytest.approx(-hi)
    assert st.paired_bootstrap(np.zeros(50), counts)[1] == 1.0
    noise = np.random.default_rng(0).normal(size=50)
    assert st.paired_bootstrap(noise - noise.mean(), counts)[1] > 0.9


def test_metric_bounds_come_from_the_metric_name():
    inf = math.inf
    cases = {
        "image_retrieval_recall@5": (0, 1),
        "text_retrieval_recall_at_10": (0, 1),
        "mean_recall@1": (0, 1),
        "recall@5": (0, 1),
        "test/color/acc": (0, 1),
        "test/macro_acc": (0, 1),
        "acc/spatial": (0, 1),
        "shape/val_acc1": (0, 1),
        "shape/weight_decay": (0, inf),
        "shape/acc1": (0, 1),
        "acc5": (0, 1),
        "mean_per_class_recall": (0, 1),
        "map": (0, 1),
        "group_score": (0, 1),
        "text_score/Noun": (0, 1),
        "ndcg_at_10": (0, 1),
        "spearman": (-100, 100),
        "stsb/pearson": (-100, 100),
        "avg": (-100, 100),
        "cosine_spearman": (-1, 1),
        "mean_cosine_positive": (-1, 1),
        "negative/mean_cosine": (-1, 1),
        "image_retrieval_mean_rank": (1, inf),
        "median_rank": (1, inf),
        "rsum": (0, inf),
        "modality_gap": (0, 2),
        "alignment": (0, 4),
        "uniformity_text": (-8, 0),
        "effective_rank_image": (0, inf),
        "n_undecodable": (0, inf),
        "wall_seconds": (0, inf),
        "peak_memory_mb": (0, inf),
        "flops_per_step": (0, inf),
        "samples_per_second": (0, inf),
    }
    for name, bounds in cases.items():
        assert st.metric_bounds(name) == bounds, name
    for name in (
        "error",
        "final_loss",
        "main_score",
        "spearmanish",
        "loss/acc_like",
        "shape/log10_weight_decay",
    ):
        assert st.metric_bounds(name) is None, name


def test_an_interval_that_crossed_the_range_is_cut_there_with_hand_computed_ends():
    # recall 0.98, 1, 1: mean 0.99333, sd 0.011547, half-width t(0.975, 2) * sd / sqrt(3)
    # = 4.302653 * 0.0066667 = 0.028684; the plain t-interval [0.964649, 1.022018] crosses 1, the bounded
    # one stops at 1
    old = st.summarize({0: 0.98, 1: 1.0, 2: 1.0})
    assert old.high == pytest.approx(1.022018, abs=1e-6) and old.low == pytest.approx(0.964649, abs=1e-6)
    s = st.summarize({0: 0.98, 1: 1.0, 2: 1.0}, bounds=(0.0, 1.0))
    assert s.ci == pytest.approx(0.028684, abs=1e-6)
    assert (s.low, s.high) == (pytest.approx(0.964649, abs=1e-6), 1.0) and not s.symmetric
    assert fmt_summary(s) == "0.993 [0.965, 1.000]"
    # recall 0, 0, 0.06: mean 0.02, sd 0.034641, half-width 4.302653 * 0.02 = 0.086053: [-0.066053, 0.106053]
    s = st.summarize({0: 0.0, 1: 0.0, 2: 0.06}, bounds=st.metric_bounds("mean_recall@1"))
    assert (s.low, s.high) == (0.0, pytest.approx(0.106053, abs=1e-6))
    # wall seconds 10, 12, 60: mean 27.333, sd 28.3078, half-width 4.302653 * 16.3435 = 70.3206:
    # [-42.99, 97.65] becomes [0, 97.65]
    s = st.summarize({0: 10.0, 1: 12.0, 2: 60.0}, bounds=st.metric_bounds("wall_seconds"))
    assert s.ci == pytest.approx(70.3206, abs=1e-3) and s.low == 0.0
    assert s.high == pytest.approx(97.6539, abs=1e-3)
    assert fmt_summary(s, 1) == "27.3 [0.0, 97.7]"
    # an interval inside the range is the plain t-interval, shown as mean ± half-width
    s = st.summarize({0: 0.5, 1: 0.6, 2: 0.7}, bounds=(0.0, 1.0))
    assert s.symmetric and (s.low, s.high) == pytest.approx(
        (0.6 - T975_2 * 0.1 / math.sqrt(3), 0.6 + T975_2 * 0.1 / math.sqrt(3))
    )
    assert fmt_summary(s) == f"0.600 ± {T975_2 * 0.1 / math.sqrt(3):.3f}"
    # values outside the table's range mean the table does not describe this metric: no bound is claimed
    s = st.summarize({0: 1.5, 1: 2.0, 2: 2.5}, bounds=(0.0, 1.0))
    assert s.bounds is None and s.symmetric and s.low == pytest.approx(2.0 - T975_2 * 0.5 / math.sqrt(3))


# -- tests, significance and ranks --------------------------------------------------------------------
def test_paired_ttest_over_the_common_seeds():
    a, b = {0: 0.5, 1: 0.7, 2: 0.6, 3: 0.9}, {0: 0.4, 1: 0.5, 2: 0.55}  # seed 3: baseline has none
    delta, p, n = st.paired_ttest(a, b)
    assert n == 3 and delta == pytest.approx(np.mean([0.1, 0.2, 0.05]))
    assert p == pytest.approx(stats.ttest_rel([0.5, 0.7, 0.6], [0.4, 0.5, 0.55]).pvalue)
    assert st.paired_ttest({0: 1.0}, {0: 0.5}) == (0.5, None, 1)  # one seed: no p
    assert st.paired_ttest({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}) == (0.0, 1.0, 2)
    assert st.paired_ttest({0: 1.0}, {1: 1.0}) == (None, None, 0)


@pytest.mark.parametrize(
    "rule, boot_only, ttest_only, both_disagree",
    [
        ("either", True, True, True),
        ("both", True, True, False),
        ("bootstrap", True, True, True),
        ("ttest", True, True, False),
    ],
)
def test_significance_under_each_rank_rule(rule, boot_only, ttest_only, both_disagree):
    sig, ns = (0.1, 0.001), (0.1, 0.5)
    assert st.significantly_better({"bootstrap": sig}, True, 0.05, rule) is boot_only
    assert st.significantly_better({"ttest": sig}, True, 0.05, rule) is ttest_only
    assert st.significantly_better({"bootstrap": sig, "ttest": ns}, True, 0.05, rule) is both_disagree
    assert st.significantly_better({"bootstrap": sig}, False, 0.05, rule) is False  # lower is better
    assert st.significantly_better({"ttest": (0.1, None)}, True, 0.05, rule) is False  # no test possible


def test_ranks_count_the_objectives_significantly_better():
    objs = ["a", "b", "c"]
    sig = {
        ("a", "c"): {"ttest": (0.3, 0.001)},
        ("b", "c"): {"ttest": (0.2, 0.01)},
        ("a", "b"): {"ttest": (0.1, 0.4)},
    }
    tests = {**sig, **{(y, x): {k: (-d, p) for k, (d, p) in t.items()} for (x, y), t in sig.items()}}
    better, ranks = st.significance_ranks(objs, tests, True, 0.05, "either")
    assert ranks == {"a": 1, "b": 1, "c": 3} and better == {"a": [], "b": [], "c": ["a", "b"]}
    better, ranks = st.significance_ranks(objs, tests, False, 0.05, "either")  # lower is better
    assert ranks == {"a": 2, "b": 2, "c": 1} and better == {"a": ["c"], "b": ["c"], "c": []}


def test_mean_rank_borda_and_order_by_hand():
    task_ranks = [{"a": 1, "b": 1, "c": 3}, {"a": 2, "b": 1, "c": 3}, {"a": 1, "c": 2}]
    mean_rank, borda, n_tasks = st.mean_rank_and_borda(task_ranks, ["a", "b", "c", "d"])
    assert mean_rank.pop("d") is None and mean_rank == pytest.approx({"a": 4 / 3, "b": 1.0, "c": 8 / 3})
    assert borda == {"a": 1 + 1 + 1, "b": 1 + 2, "c": 0, "d": 0}
    assert n_tasks == {"a": 3, "b": 2, "c": 3, "d": 0}
    assert st.board_order(["d", "c", "a", "b"], {**mean_rank, "d": None}, borda) == ["b", "a", "c", "d"]
    assert st.board_order(["y", "x"], {"x": 1.5, "y": 1.5}, {"x": 2, "y": 3}) == ["y", "x"]  # Borda, then
    assert st.board_order(["y", "x"], {"x": 1.5, "y": 1.5}, {"x": 2, "y": 2}) == ["x", "y"]  # the name


def test_item_differences_and_the_task_seed():
    a = {0: np.array([1.0, 0.0, 1.0]), 1: np.array([1.0, 1.0, 1.0])}
    b = {0: np.array([0.0, 0.0, 1.0]), 1: np.array([0.0, 1.0, 0.0]), 2: np.zeros(3)}
    assert st.item_diffs(a, b).tolist() == [1.0, 0.0, 0.5]
    assert st.item_diffs(a, {0: np.zeros(4)}) is None and st.item_diffs(a, {5: np.zeros(3)}) is None
    assert st.task_seed(0, "x") == st.task_seed(0, "x") != st.task_seed(0, "y") != st.task_seed(1, "y")
    assert st.hull([(0.0, 1.0), (-1.0, 0.5)]) == (-1.0, 1.0) and st.hull([(0.0, 1.0), None]) is None


def test_linear_probe_keys_are_bounded():
    from harness.leaderboard.stats import metric_bounds

    for key in (
        "lp_acc1",
        "lp_acc5",
        "lp_mean_per_class_recall",
        "probe_converged",
        "colour/probe_converged",
    ):
        assert metric_bounds(key) == (0.0, 1.0), key
    assert metric_bounds("probe_iterations") == (0.0, float("inf"))
