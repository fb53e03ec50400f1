"""The figures of results/README.md's "Published findings", recomputed from a comparison's store.

Per objective, the mean over seeds of the compositionality swap accuracies, the linear probe, the
modality gap and the final temperature; and Spearman's rho between each image-text run's final
temperature and its modality gap. Reads the runs the leaderboard ranks (``collect``: FINISHED, one
per objective and seed) from the MLflow store that `harness compare` wrote::

    python results/findings.py OUT 94ddd1d3    # OUT: the compare's --output-dir

(the second argument: the comparison's parent run id, a unique prefix of it, or ``latest``).
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from mlflow import MlflowClient
from scipy.stats import spearmanr

from harness.leaderboard.runs import collect

TASK_METRICS = (
    ("shapes-compositionality", "test/relation_swap/acc"),
    ("shapes-compositionality", "heldout/relation_swap/acc"),
    ("shapes-compositionality", "test/attribute_swap/acc"),
    ("shapes-linear", "acc1"),
    ("shapes-geometry", "modality_gap"),
)
TEMPERATURE = "train/temperature"  # a training metric, not a task's: read from the run itself


def main(out: str, parent: str) -> None:
    uri = f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"
    runs = collect("harness", parent, tracking_uri=uri, with_artifacts=False, with_history=False).runs
    client = MlflowClient(uri)
    temperature = {r.run_id: client.get_run(r.run_id).data.metrics.get(TEMPERATURE) for r in runs}
    by_objective: dict[str, list] = defaultdict(list)
    for r in runs:
        by_objective[r.objective].append(r)
    print("runs per objective:", {k: len(v) for k, v in sorted(by_objective.items())})

    def means(value) -> dict[str, float]:
        out = {}
        for objective, rs in sorted(by_objective.items()):
            vs = [v for v in map(value, rs) if v is not None]
            if vs:
                out[objective] = round(statistics.mean(vs), 4)
        return out

    for task, metric in TASK_METRICS:
        print(f"{task}/{metric}: {means(lambda r, t=task, m=metric: r.metrics.get(t, {}).get(m))}")
    print(f"{TEMPERATURE}: {means(lambda r: temperature[r.run_id])}")
    pairs = [(temperature[r.run_id], r.metrics.get("shapes-geometry", {}).get("modality_gap")) for r in runs]
    pairs = [(t, g) for t, g in pairs if t is not None and g is not None]
    rho = spearmanr([t for t, _ in pairs], [g for _, g in pairs])
    n = len(pairs)
    print(f"temperature vs modality gap over {n} runs: Spearman rho {rho.statistic:.2f}, p {rho.pvalue:.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
