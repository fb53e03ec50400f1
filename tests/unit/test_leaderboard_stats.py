"""The leaderboard's statistics, unit-tested on plain numbers: no MLflow store, no runs, no registry."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import harness.leaderboard as package
from harness.leaderboard import ranking as rk
from harness.leaderboard import stats as st
from harness.leaderboard import verdict as vd
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


# -- rank of the mean, significance groups, Friedman and Nemenyi, verdicts ----------------------------
def test_demsar_worked_example_friedman_and_cd():
    """Demsar (JMLR 2006), section 3.2.4: four classifiers on 14 data sets, mean ranks 3.143, 2.000,
    2.893, 1.964. By hand: sum R^2 = 26.104, minus k(k+1)^2/4 = 25 gives 1.104, times 12 N / (k(k+1)) =
    8.4 gives chi2_F = 9.28; F_F = 13 * 9.28 / (42 - 9.28) = 3.69; CD = 2.569 sqrt(20 / 84) = 1.25."""
    chi2, ff = rk.friedman_stats([3.143, 2.000, 2.893, 1.964], 14)
    assert chi2 == pytest.approx(9.28, abs=0.005) and ff == pytest.approx(3.69, abs=0.005)
    assert rk.nemenyi_cd(4, 14, 0.05) == pytest.approx(1.25, abs=0.005)
    assert rk.q_alpha(4, 0.05) == 2.569 and rk.q_alpha(3, 0.10) == 2.052
    for k in range(2, 11):  # Demsar's table against the Studentized range over sqrt(2)
        ref = stats.studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2)
        assert rk.q_alpha(k, 0.05) == pytest.approx(ref, abs=0.002)
    assert rk.q_alpha(12, 0.05) == pytest.approx(stats.studentized_range.ppf(0.95, 12, np.inf) / math.sqrt(2))


def test_friedman_on_task_ranks_by_hand():
    # four tasks rank a < b < c alike: mean ranks 1, 2, 3; chi2_F = 12*4/12 (14 - 12) = 8 = N (k - 1), where
    # F_F's denominator vanishes (perfect agreement): F_F None, chi2_F's p decides
    fr = rk.friedman({t: {"a": 1.0, "b": 2.0, "c": 3.0} for t in "wxyz"}, ["a", "b", "c"], 0.05)
    assert fr.chi2 == pytest.approx(8.0) and fr.p_chi2 == pytest.approx(stats.chi2.sf(8.0, 2))
    assert fr.ff is None and fr.p_ff == fr.p_chi2 == pytest.approx(0.0183, abs=1e-4) and fr.significant
    assert fr.cd == pytest.approx(2.343 * math.sqrt(12 / 24))  # 1.657: only a and c differ
    assert fr.differ == [("a", "c")] and rk.cd_cliques(fr.mean_ranks, fr.cd) == [["a", "b"], ["b", "c"]]
    # a task missing an objective is left out; the ranks are re-ranked among the objectives compared
    fr = rk.friedman(
        {"w": {"a": 1.5, "b": 1.5, "c": 3.0}, "x": {"a": 2.0, "b": 1.0, "c": 3.0}, "y": {"a": 1.0}},
        ["a", "b", "c"],
        0.05,
    )
    assert fr.tasks == ["w", "x"] and fr.mean_ranks == {"a": 1.75, "b": 1.25, "c": 3.0}
    # 12*2/12 (1.75^2 + 1.25^2 + 9 - 12) = 2 * 1.625 = 3.25; F_F = 1 * 3.25 / (4 - 3.25)
    assert fr.chi2 == pytest.approx(3.25) and fr.ff == pytest.approx(3.25 / 0.75)
    assert fr.p_ff == pytest.approx(stats.f.sf(3.25 / 0.75, 2, 2))
    assert rk.friedman({"w": {"a": 1.0, "b": 2.0}}, ["a", "b"], 0.05) is None  # one task
    # c has one task of three: dropping c keeps 2 x 3 cells, dropping tasks 3 x 1
    fracs = {"w": {"a": 1.0, "b": 2.0, "c": 3.0}, "x": {"a": 1.0, "b": 2.0}, "y": {"a": 2.0, "b": 1.0}}
    fr = rk.friedman(fracs, ["a", "b", "c"], 0.05)
    assert fr.objectives == ["a", "b"] and fr.tasks == ["w", "x", "y"]
    assert fr.mean_ranks == pytest.approx({"a": 4 / 3, "b": 5 / 3})


def test_compact_letter_display():
    # a-c, a-d and b-d differ: the groups {a, b}, {b, c}, {c, d}
    diff = {frozenset(p) for p in (("a", "c"), ("a", "d"), ("b", "d"))}
    assert rk.compact_letters(list("abcd"), diff) == {"a": "a", "b": "ab", "c": "bc", "d": "c"}
    # not transitive: a and b differ, c differs from neither
    assert rk.compact_letters(list("abc"), {frozenset("ab")}) == {"a": "a", "b": "b", "c": "ab"}
    assert rk.compact_letters(list("abc"), set()) == {"a": "a", "b": "a", "c": "a"}
    every = {frozenset(p) for p in (("a", "b"), ("a", "c"), ("b", "c"))}
    assert rk.compact_letters(list("abc"), every) == {"a": "a", "b": "b", "c": "c"}


def test_rank_of_the_mean_not_of_significance_shapes_sts():
    """shapes-sts: dcl 69.6 ± 12.7 (noisy, so nothing is significantly better than it) was ranked 1 by
    "1 + the number significantly better", and hn-nce 80.7 ± 0.8 ranked 4 behind three tighter ones."""
    means = {"cua": 84.0, "clip": 83.0, "siglip": 82.0, "hn-nce": 80.7, "dcl": 69.6}
    sig = {(b, "hn-nce"): {"ttest": (means[b] - 80.7, 0.001)} for b in ("cua", "clip", "siglip")}
    objs = list(means)
    tests = {(b, a): {"ttest": (means[b] - means[a], 0.5)} for a in objs for b in objs if a != b}
    tests.update(sig)
    better, old = st.significance_ranks(objs, tests, True, 0.05, "either")
    assert old["dcl"] == 1 and old["hn-nce"] == 4  # the rule that was replaced
    ranks, frac = rk.rank_of_means(means, True)
    assert ranks == {"cua": 1, "clip": 2, "siglip": 3, "hn-nce": 4, "dcl": 5} and frac == ranks
    order = sorted(objs, key=ranks.get)
    groups = rk.compact_letters(order, {frozenset((a, b)) for a in objs for b in better[a]})
    assert groups == {"cua": "a", "clip": "a", "siglip": "a", "hn-nce": "b", "dcl": "ab"}
    # equal means share the first rank; the fractional rank averages the places; lower is better
    assert rk.rank_of_means({"a": 0.5, "b": 0.5, "c": 0.2}, True) == (
        {"a": 1, "b": 1, "c": 3},
        {"a": 1.5, "b": 1.5, "c": 3.0},
    )
    assert rk.rank_of_means({"a": 0.5, "b": 0.5, "c": 0.2}, False)[0] == {"a": 2, "b": 2, "c": 1}


def _summary(mean, n=3):
    return st.Summary({s: mean for s in range(n)}, mean, 0.0, 0.0, n)


def test_verdict_lines_for_a_constructed_board():
    scores = {"clip": _summary(0.91), "hn-nce": _summary(0.90), "siglip": _summary(0.76), "x": _summary(0.5)}
    order = ["clip", "hn-nce", "siglip", "x"]
    better = {"clip": [], "hn-nce": [], "siglip": ["clip", "hn-nce"], "x": ["clip", "hn-nce", "siglip"]}
    pair = {("clip", "siglip"): {"ttest": (0.15, 0.02), "bootstrap": (0.15, 0.007)}}
    text = vd.task_verdict("shapes-retrieval", order, scores, better, pair, True, 0.05, "either")
    assert text == (
        "clip and hn-nce lead shapes-retrieval; indistinguishable at alpha 0.05 over 3 seeds (paired "
        "bootstrap over items or paired t-test over seeds); siglip is 0.15 behind clip, p = 0.007 (paired "
        "bootstrap over items); 1 more trails further"
    )
    both = vd.task_verdict("t", order, scores, better, pair, True, 0.05, "both")
    assert "p = 0.020 (paired t-test over seeds)" in both  # the larger p decides under "both"
    alone = vd.task_verdict(
        "t", order[:1] + order[2:3], scores, {"clip": [], "siglip": ["clip"]}, pair, True, 0.05, "ttest"
    )
    assert alone.startswith("clip leads t, significantly ahead of every other objective at alpha 0.05")
    assert alone.endswith("siglip is 0.15 behind clip, p = 0.020 (paired t-test over seeds)")
    same = vd.task_verdict("t", order[:2], scores, {"clip": [], "hn-nce": []}, {}, True, 0.05, "either")
    assert same.startswith("clip and hn-nce cannot be told apart on t at alpha 0.05 over 3 seeds")

    mean_rank = {"cua": 2.29, "clip": 2.57, "hn-nce": 2.57, "siglip": 3.0, "x": 4.57}
    fr = rk.Friedman(
        list(mean_rank), list("abcdefg"), mean_rank, 12.3, 0.015, 3.9, 0.01, 2.31, 0.05, [("cua", "x")]
    )
    overall = vd.overall_verdict(list(mean_rank), mean_rank, 7, fr, 0.05)
    assert overall == (
        "cua, clip and hn-nce lead on mean rank (2.29, 2.57, 2.57) over 7 tasks; Friedman: chi2_F = 12.30 "
        "(p = 0.015), Iman-Davenport F_F = 3.90 (p = 0.010), k = 5, N = 7; the Nemenyi CD at alpha 0.05 "
        "is 2.31, so only cua and x differ"
    )
    fr.p_ff = 0.2
    assert vd.overall_verdict(list(mean_rank), mean_rank, 8, fr, 0.05).endswith(
        "at alpha 0.05 the objectives cannot be told apart across tasks (no post-hoc test)"
    )
    fr.objectives = ["cua", "clip", "hn-nce", "siglip"]
    assert "Friedman without x (not on every task): " in vd.overall_verdict(
        list(mean_rank), mean_rank, 7, fr, 0.05
    )
    fr.objectives = list(mean_rank)
    assert "over the 7 tasks every objective has" in vd.overall_verdict(
        list(mean_rank), mean_rank, 8, fr, 0.05
    )
    # fewer objectives, fewer leaders; ties with the last leader lead too; F_F undefined
    assert vd.overall_verdict(list("abc"), {"a": 1.0, "b": 1.0, "c": 3.0}, 2, None, 0.05).startswith(
        "a and b lead on mean rank (1.00, 1.00) over 2 tasks"
    )
    fr.ff, fr.p_ff = None, 0.135
    assert (
        "chi2_F = 12.30 (p = 0.015), Iman-Davenport F_F undefined (every task ranks the objectives "
        "alike), k = 5" in (vd.overall_verdict(list(mean_rank), mean_rank, 7, fr, 0.05))
    )
    assert vd.overall_verdict(["a"], {"a": 1.0}, 1, None, 0.05).endswith(
        "no Friedman test (it needs 2 objectives that share 2 ranked tasks)"
    )


def test_overall_verdict_never_crowns_an_objective_ranked_on_fewer_tasks():
    # an image-only objective (supcon) ranked 1st on its 2 tasks has mean rank 1.0 there: it does
    # not lead a board of 7 tasks; the verdict says how many it is ranked on
    mean_rank = {"supcon": 1.0, "dcl": 1.71, "clip": 2.29}
    n_tasks = {"supcon": 2, "dcl": 7, "clip": 7}
    text = vd.overall_verdict(list(mean_rank), mean_rank, 7, None, 0.05, n_tasks)
    assert text.startswith("dcl leads on mean rank (1.71) over 7 tasks; supcon is ranked on 2 of 7 tasks")
    assert "(mean rank 1.00 there)" in text
    # without the task counts (older callers) the order decides, as before
    assert vd.overall_verdict(list(mean_rank), mean_rank, 7, None, 0.05).startswith("supcon leads")
