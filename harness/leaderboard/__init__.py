"""``harness leaderboard``: rank objectives from what MLflow holds, with seeds, CIs and paired tests.

Everything is rebuilt from the MLflow store alone: run tags, metrics, the ``train/loss`` history and
the results JSON artifact of each run (for the per-item scores). Nothing is read from the local
``.harness/results`` copies, and nothing from the installed task registry: a task's family, main
metric, direction, whether it is a diagnostic (shown, never ranked: geometry, aggregates such as
sts-avg) and how its metrics group for plots are what each run recorded, in its
``harness.task_meta`` tag or else its results JSON (:mod:`.runs`). Uninstalling a task does not
change a board rebuilt from the same runs.

Modules: :mod:`.runs` (reading MLflow: :func:`collect`), :mod:`.stats` (numpy and scipy only),
:mod:`.board` (:func:`build`), :mod:`.task_board` (one task's :class:`TaskBoard`), :mod:`.ranking`
(ranks of the means, letters, Friedman and Nemenyi), :mod:`.verdict` (the verdict lines), :mod:`.render`
(one module per format), :mod:`.cli`.

Which runs
    ``collect(experiment, parent_run_id=...)`` takes the members of one comparison: the child runs
    of the parent (``mlflow.parentRunId``), plus the earlier FINISHED runs that a resumed comparison
    reused instead of retraining (found through the parent's ``pairs.json`` artifact when there is
    one, and through the ``harness.compare_key`` tag). Without a parent it takes every
    ``harness.role = "run"`` run of the experiment. Only FINISHED runs are ranked; the others are
    listed under "Not ranked" by state: ``FAILED`` and ``KILLED`` (MLflow's status, with the
    ``harness.failure_reason`` tag), ``running`` (MLflow says RUNNING and the run's
    ``harness.heartbeat`` is fresh) and ``interrupted`` (RUNNING, but no heartbeat for longer than
    :data:`harness.tracking.STALE_AFTER_S`, or no heartbeat tag and a start that old: the process
    was killed, SIGKILL or a lost node, before it could end the run; see
    :func:`harness.tracking.is_stale`). When one (track, budget, objective, seed) has several
    FINISHED runs, the newest is used (a direct child of the parent first) and the others are
    counted in the notes; a run that did not finish and that a later FINISHED run of the same pair
    superseded is not listed. Notes count the runs of the board shown (its track and budget) only.

Budgets and tracks
    Runs with different ``harness.budget_id`` are never ranked side by side: :func:`build` raises
    :class:`MixedBudgetsError` unless ``budget_id=`` selects one (an unambiguous prefix is enough).
    Tracks (``default``, ``tuned``) are never mixed either: :func:`build` returns one
    :class:`Leaderboard` per track.

Statistics (``alpha`` = 0.05 by default)
    * Mean over seeds and a 95% Student-t confidence interval, ``mean ± t.ppf(0.975, n-1) * sd /
      sqrt(n)`` with the sample standard deviation (ddof 1), cut at the metric's range (its
      intersection with :data:`METRIC_BOUNDS`, found by the metric's name; an unknown metric is
      unbounded). The mean lies in the range, so the cut interval keeps the t-interval's coverage
      and claims no impossible value. Shown ``mean ± half-width`` when nothing was cut, ``mean
      [low, high]`` when it was. One seed: no interval (``± n/a``). See
      docs/leaderboard-statistics.md.
    * Against the baseline objective (``clip`` when present, else the first objective): the
      paired t-test over seeds (``scipy.stats.ttest_rel`` on the seeds both objectives have; at
      least two), for the main score and for every metric; and, for the main score, the paired
      bootstrap over test items: per seed both objectives have, the per-item differences of the
      ``item_scores`` (matched by item index), averaged over those seeds into one difference per
      item; the items are resampled with replacement ``n_boot`` = 1000 times (a numpy Generator
      seeded from ``boot_seed`` and the task name; every pair of objectives of one task sees the
      same resamples); the two-sided p-value is ``(1 + #{|d* - d| >= |d|}) / (n_boot + 1)``, where
      ``d`` is the observed mean difference and ``d*`` a resampled one (the bootstrap distribution
      shifted to the null). The 2.5/97.5 percentiles of ``d*`` give a CI of the difference.
    * Rank per task: the rank of the mean main score over seeds (1 = best, ``higher_is_better``
      respected; equal means share the first rank). Beside it, significance groups as a compact letter
      display (:func:`compact_letters`): objectives sharing a letter are not significantly different.
      "B is significantly better than A" means the difference favours B and, under the default rule
      ``either``, the paired bootstrap over items or the paired t-test over seeds has p < alpha. Other
      rules: ``both`` (every available test), ``bootstrap`` (the bootstrap, the t-test where items are
      missing), ``ttest`` (the t-test, the bootstrap where seeds are too few). When no test is possible
      (one seed and no item scores) objectives cannot be told apart. Every pair of objectives is
      tested, not only pairs with the baseline. Each task gets a verdict line (:mod:`.verdict`).
    * Across tasks, diagnostic tasks left out: mean rank (the ranks of the means with ties averaged,
      over the tasks the objective has) and the Borda count (per task, the number of objectives with a
      strictly worse mean, summed over tasks). The leaderboard is ordered by mean rank, then Borda
      count (descending), then name. The Friedman test (chi2_F, Iman-Davenport's F_F) over the tasks
      every objective has, then the Nemenyi critical difference (:mod:`.ranking`, Demsar 2006), a
      critical-difference diagram in the HTML, and one verdict line for the board.
    * Cost per objective: means over seeds of ``cost/wall_seconds``, ``cost/samples_per_second``,
      ``cost/peak_memory_mb`` and ``cost/flops_per_step``.

Outputs: a rich table (:func:`render_table`), Markdown, CSV, JSON (long rows: objective, task,
metric, seed, value, plus summary rows) and one self-contained HTML page with the plots embedded as
base64 PNG, a bar chart per task that recorded a breakdown (:func:`render_all`); :func:`log_to_mlflow`
attaches the files to the parent run.
"""

from __future__ import annotations

from .board import LONG_FIELDS, TEXT_FAMILIES, Leaderboard, TextSection, build, leaderboard
from .cli import FORMATS, add_arguments, main, print_wide, summarize_comparison
from .errors import LeaderboardError, MixedBudgetsError, NoRunsError
from .ranking import Friedman, compact_letters, friedman, nemenyi_cd, q_alpha, rank_of_means
from .render import (
    CELL,
    COST_COLUMNS,
    breakdown_data,
    failed_rows,
    fmt_num,
    fmt_p,
    fmt_summary,
    md_escape,
    md_unescape,
    method_lines,
    metric_rows,
    parse_markdown_table,
    plot_breakdown,
    plot_cost,
    plot_loss,
    plot_scores,
    provenance_items,
    render_all,
    render_csv,
    render_failed_table,
    render_html,
    render_json,
    render_markdown,
    render_table,
    render_text_table,
    summary_rows,
    task_rows,
    text_rows,
)
from .runs import NOT_TASKS, STATES, TASK_META_TAG, Collected, RunRecord, collect, log_to_mlflow
from .stats import (
    CI_METHOD,
    METRIC_BOUNDS,
    RANK_RULES,
    PairedTest,
    Summary,
    bootstrap_counts,
    metric_bounds,
    paired_bootstrap,
    paired_ttest,
    summarize,
)
from .task_board import TaskBoard

__all__ = [
    "CELL",
    "CI_METHOD",
    "COST_COLUMNS",
    "FORMATS",
    "LONG_FIELDS",
    "METRIC_BOUNDS",
    "NOT_TASKS",
    "RANK_RULES",
    "STATES",
    "TASK_META_TAG",
    "TEXT_FAMILIES",
    "Collected",
    "Friedman",
    "Leaderboard",
    "LeaderboardError",
    "MixedBudgetsError",
    "NoRunsError",
    "PairedTest",
    "RunRecord",
    "Summary",
    "TaskBoard",
    "TextSection",
    "add_arguments",
    "bootstrap_counts",
    "breakdown_data",
    "build",
    "collect",
    "compact_letters",
    "failed_rows",
    "fmt_num",
    "fmt_p",
    "fmt_summary",
    "friedman",
    "leaderboard",
    "log_to_mlflow",
    "main",
    "md_escape",
    "md_unescape",
    "method_lines",
    "metric_bounds",
    "metric_rows",
    "nemenyi_cd",
    "paired_bootstrap",
    "paired_ttest",
    "parse_markdown_table",
    "plot_breakdown",
    "plot_cost",
    "plot_loss",
    "plot_scores",
    "print_wide",
    "provenance_items",
    "q_alpha",
    "rank_of_means",
    "render_all",
    "render_csv",
    "render_failed_table",
    "render_html",
    "render_json",
    "render_markdown",
    "render_table",
    "render_text_table",
    "summarize",
    "summarize_comparison",
    "summary_rows",
    "task_rows",
    "text_rows",
]
