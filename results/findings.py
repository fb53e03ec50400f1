"""The figures of results/README.md's "Published findings", recomputed from a comparison's store.

Per objective, the mean over seeds of the compositionality swap accuracies, the linear probe, the
modality gap and the final temperature; and Spearman's rho between each image-text run's final
temperature and its modality gap. Reads the MLflow SQLite store that `harness compare` wrote::

    python results/findings.py OUT/mlflow.db 94ddd1d3    # OUT: the compare's --output-dir

(the second argument: the comparison's parent run id, or a unique prefix of it).
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
from collections import defaultdict

from scipy.stats import spearmanr

KEYS = (
    "shapes-compositionality/test/relation_swap/acc",
    "shapes-compositionality/heldout/relation_swap/acc",
    "shapes-compositionality/test/attribute_swap/acc",
    "shapes-linear/acc1",
    "shapes-geometry/modality_gap",
    "train/temperature",
)


def main(db: str, parent: str) -> None:
    con = sqlite3.connect(db)
    runs = [
        r[0]
        for r in con.execute(
            "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'mlflow.parentRunId' and t.value like ? and r.status = 'FINISHED'",
            (parent + "%",),
        )
    ]

    def value(run: str, table: str, key: str):
        row = con.execute(f"select value from {table} where run_uuid = ? and key = ?", (run, key)).fetchone()
        return row[0] if row else None

    by_objective: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        by_objective[value(run, "tags", "harness.objective")].append(run)
    print("runs per objective:", {k: len(v) for k, v in sorted(by_objective.items())})
    for key in KEYS:
        means = {}
        for objective, rs in sorted(by_objective.items()):
            vs = [v for v in (value(r, "latest_metrics", key) for r in rs) if v is not None]
            if vs:
                means[objective] = round(statistics.mean(vs), 4)
        print(f"{key}: {means}")
    temperature, gap = "train/temperature", "shapes-geometry/modality_gap"
    pairs = [(value(r, "latest_metrics", temperature), value(r, "latest_metrics", gap)) for r in runs]
    pairs = [(t, g) for t, g in pairs if t is not None and g is not None]
    rho = spearmanr([t for t, _ in pairs], [g for _, g in pairs])
    n = len(pairs)
    print(f"temperature vs modality gap over {n} runs: Spearman rho {rho.statistic:.2f}, p {rho.pvalue:.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
