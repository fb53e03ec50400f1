"""Semantic textual similarity on the real STS sets, evaluated as SimCSE (Gao et al. 2021, Table 5).

The seven sets of SimCSE's main table: STS12-16 (SemEval 2012-2016 STS tasks; Agirre et al.),
the STS Benchmark (Cer et al. 2017) and SICK-Relatedness (Marelli et al. 2014). Each pair of
sentences is encoded by the text tower; the score is the Spearman (and Pearson) correlation, x100,
of the cosine similarity of the two embeddings against the gold similarity (SentEval's unsupervised
``STSEval`` / ``STSBenchmarkEval`` / ``SICKRelatednessEval`` as bundled with SimCSE: cosine, no
trained regressor; MTEB's ``cosine_spearman``, which MTEB stores as a fraction, not x100). The
metric itself is :func:`tasks.sts.sts_metrics`, shared with the shapes-world STS task.

The "all" setting. SimCSE reports ``results[task]['all']['spearman']['all']`` for STS12-16: every
sub-dataset of a year (e.g. STS12: MSRpar, MSRvid, SMTeuroparl, OnWN, SMTnews) is concatenated and
one correlation is computed over the pooled pairs, not the (weighted) mean of per-subset
correlations (SentEval's ``mean`` / ``wmean``). MTEB's ``mteb/stsNN-sts`` test files are exactly
those pooled test sets (one file per year, no subset column is needed), so a single correlation
over the whole file *is* the "all" setting. For STS-B and SICK-R SimCSE reports the test split.

Data (Hugging Face ids and MTEB's pinned revisions; a local copy in the same format is read
through ``--data <task>=DIR``):

* ``stsb``: ``sentence-transformers/stsb`` (parquet ``data/{train,validation,test}-*.parquet``,
  ``score`` = gold / 5 in [0, 1]); the MTEB layout ``mteb/stsbenchmark-sts``
  (``{train,validation,test}.jsonl.gz``, score in [0, 5]) is accepted too, as a path or under
  ``$HARNESS_DATA_DIR/mteb/stsbenchmark-sts``. Spearman and Pearson are invariant to the linear
  rescaling, so both layouts give the same numbers. Its ``validation`` split (STS-B dev, 1,500
  pairs) is what SimCSE selects checkpoints on; under ``ctx.validation`` only that split is read.
* ``sickr``: ``mteb/sickr-sts`` test. Caveat (not verified here): SimCSE's SentEval reads
  ``SICK_test_annotated.txt`` (4,927 pairs), while the MTEB file is reported to hold the whole SICK
  set (9,927 pairs): numbers are MTEB's SICK-R, close to but not the same pair set as SimCSE's.
* ``sts12`` ... ``sts16``: ``mteb/stsNN-sts`` test (pooled sub-datasets, see above).

STS12-16 and SICK-R have no validation split here, so they refuse to run under validation (tuning,
checkpoint selection): only ``stsb`` can select checkpoints, as in SimCSE.

``sts`` is the suite of the seven; ``sts-avg`` evaluates the seven and reports each
``<task>/spearman`` and their unweighted mean ``avg`` (SimCSE's "Avg."), reading the embeddings the
seven tasks put in the shared cache, so running ``sts`` and ``sts-avg`` together encodes every
sentence once.
"""

from __future__ import annotations

import hashlib
import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from harness.data.sources import DataError, DataOptions, HubSource

from .base import DatasetTask, EvalContext, Suite, Task
from .sts import sts_metrics

SIMCSE_CITATION = (
    "Gao et al. 2021, SimCSE: Simple Contrastive Learning of Sentence Embeddings (STS "
    "protocol: cosine, Spearman x100, 'all' setting); Conneau & Kiela 2018 (SentEval); "
    "Muennighoff et al. 2023 (MTEB STS)"
)
SEMEVAL_LICENSE = "research use; see SemEval task pages (unverified)"


class InvalidPairError(DataError):
    """A row of an STS table whose sentence or gold score is missing or empty."""


def sts_pairs_from_table(table, what: str) -> tuple[list[str], list[str], np.ndarray]:
    """``(sentence1, sentence2, gold)`` of an STS table; sentences are stripped. A missing or empty
    sentence, or a missing / non-finite score, raises :class:`InvalidPairError` naming the row."""
    s1, s2, gold = table["sentence1"], table["sentence2"], table["score"]
    out1, out2, g = [], [], np.empty(len(gold), dtype=np.float64)
    for i, (a, b, y) in enumerate(zip(s1, s2, gold)):
        for col, s in (("sentence1", a), ("sentence2", b)):
            if s is None or not isinstance(s, str) or not s.strip():
                raise InvalidPairError(f"dataset {what}: row {i} has an empty or missing {col} ({s!r})")
        if y is None or not math.isfinite(float(y)):
            raise InvalidPairError(f"dataset {what}: row {i} has no finite gold score ({y!r})")
        out1.append(a.strip())
        out2.append(b.strip())
        g[i] = float(y)
    return out1, out2, g


class RealSTS(DatasetTask):
    """One STS set: cosine of the two sentence embeddings vs gold, Spearman / Pearson x100 over
    all pairs of the split (see the module docstring for the protocol and the "all" setting).

    Metrics: ``spearman`` (main), ``pearson``. Predictions: one per pair (``sentence1``,
    ``sentence2``, ``gold``, ``cosine``). ``item_scores`` is None: a correlation is not a mean of
    per-pair values (as in ``shapes-sts``), so paired bootstrap over items does not apply.
    Sentences are encoded once each (the distinct sentences of both columns, through the shared
    text cache).
    """

    family = "sts"
    version = "1"
    main_score = "spearman"
    metrics = ("spearman", "pearson")
    modality = "text"
    columns = ("sentence1", "sentence2", "score")
    validation_split = None
    default_train_data = "wiki1m"
    citation = SIMCSE_CITATION

    def score(self, ctx: EvalContext, split: str):
        table = self.table(ctx, split)
        s1, s2, gold = sts_pairs_from_table(
            table, f"{self.name} ({self.source_for(ctx.data).repo}, split {split})"
        )
        if len(gold) < 2:
            raise InvalidPairError(
                f"dataset {self.name}, split {split}: {len(gold)} pair(s); a correlation needs at least 2"
            )
        distinct = list(dict.fromkeys(s1 + s2))
        emb = self.text_embeddings(ctx, table, "sentences", distinct)
        pos = {s: i for i, s in enumerate(distinct)}
        e1 = emb[torch.tensor([pos[s] for s in s1])]
        e2 = emb[torch.tensor([pos[s] for s in s2])]
        metrics = sts_metrics(e1, e2, gold)
        cos = (F.normalize(e1.double(), dim=-1) * F.normalize(e2.double(), dim=-1)).sum(-1).tolist()
        preds = [
            {"pair": i, "sentence1": a, "sentence2": b, "gold": float(y), "cosine": float(c)}
            for i, (a, b, y, c) in enumerate(zip(s1, s2, gold, cos))
        ]
        prov = self.provenance(table)
        prov["dataset"] = f"{prov['dataset']} [{split}]"
        return metrics, dict(predictions=preds, n_items=len(gold), **prov)


class STSB(RealSTS):
    """STS Benchmark (Cer et al. 2017), test split, 1,379 pairs; ``validation`` (1,500) for
    checkpoint selection, as SimCSE (``--metric_for_best_model stsb_spearman``)."""

    source = HubSource(
        "sentence-transformers/stsb", split="test", revision="d999f12281623b0925506817d9bd85e88289218a"
    )
    alternatives = (
        HubSource("mteb/stsbenchmark-sts", split="test", revision="b0fddb56ed78048fa8b90373c8a3cfc37b684831"),
    )
    validation_split = "validation"
    dataset = "sentence-transformers/stsb"
    license = "CC BY-SA 4.0 (derived; see sentence-transformers/stsb)"
    citation = "Cer et al. 2017, SemEval-2017 Task 1 (STS Benchmark); " + SIMCSE_CITATION


class SICKR(RealSTS):
    """SICK-Relatedness (Marelli et al. 2014), gold relatedness in [1, 5]; test only."""

    source = HubSource("mteb/sickr-sts", split="test", revision="20a6d6f312dd54037fe07a32d58e5e168867909d")
    dataset = "mteb/sickr-sts"
    license = "CC BY-NC-SA 3.0"
    citation = "Marelli et al. 2014, SICK; " + SIMCSE_CITATION


def _semeval(year: int, revision: str, reference: str) -> type[RealSTS]:
    """The class of SemEval 20``year``'s STS set, named ``STS<year>`` in this module (its entry point
    names the task ``sts<year>`` when the class is defined)."""
    source = HubSource(f"mteb/sts{year}-sts", split="test", revision=revision)
    return type(RealSTS)(
        f"STS{year}",
        (RealSTS,),
        {
            "__module__": __name__,
            "__qualname__": f"STS{year}",
            "source": source,
            "dataset": source.repo,
            "__doc__": (
                f"SemEval 20{year} STS ({reference}), test split: every sub-dataset pooled into one "
                "correlation (the 'all' setting of SimCSE / SentEval); test only."
            ),
            "license": SEMEVAL_LICENSE,
            "citation": f"{reference}; " + SIMCSE_CITATION,
        },
    )


# revisions: MTEB's task metadata (mteb/tasks/STS/eng/STS1xSTS.py)
STS12 = _semeval(12, "a0d554a64d88156834ff5ae9920b964011b16384", "Agirre et al. 2012, SemEval-2012 Task 6")
STS13 = _semeval(13, "7e90230a92c190f1bf69ae9002b8cea547a64cca", "Agirre et al. 2013, *SEM 2013 shared task")
STS14 = _semeval(14, "6031580fec1f6af667f0bd2da0a551cf4f0b2375", "Agirre et al. 2014, SemEval-2014 Task 10")
STS15 = _semeval(15, "ae752c7c21bf194d8b67fd573edf7ae58183cbe3", "Agirre et al. 2015, SemEval-2015 Task 2")
STS16 = _semeval(16, "4d8694f8f0e0100860b497b999b3dbed754a0513", "Agirre et al. 2016, SemEval-2016 Task 1")

#: SimCSE Table 5's seven sets, in its column order
STS_TASKS: dict[str, type[RealSTS]] = {
    "sts12": STS12,
    "sts13": STS13,
    "sts14": STS14,
    "sts15": STS15,
    "sts16": STS16,
    "stsb": STSB,
    "sickr": SICKR,
}


class STSSuite(Suite):
    """SimCSE's STS evaluation (Table 5): STS12-16, STS-B and SICK-R. For SimCSE's "Avg." column
    run ``sts-avg`` too (it reuses these tasks' embeddings)."""

    default_train_data = "wiki1m"
    dataset = "STS12-16, STS-B, SICK-R"
    members = tuple(STS_TASKS)


class STSAverage(Task):
    """SimCSE's "Avg.": the unweighted mean of the Spearman x100 of the seven STS sets.

    Evaluates each member task (:data:`STS_TASKS`) on the same context, so their sentence
    embeddings come from (or go into) the shared cache: with the ``sts`` suite in the same run
    nothing is encoded twice. Metrics: ``<task>/spearman``, ``<task>/pearson``, ``avg`` (main) and
    ``avg_pearson``. Test splits only: under validation it refuses (use ``stsb``, STS-B dev, to
    select checkpoints, as SimCSE does).
    """

    family = "sts"
    version = "1"
    main_score = "avg"
    metrics = ("{task:" + "|".join(STS_TASKS) + "}/{metric:spearman|pearson}", "avg", "avg_pearson")
    aggregate = True
    modality = "text"
    dataset = ", ".join(STS_TASKS)
    default_train_data = "wiki1m"
    license = "per member: see stsb, sickr, sts12-sts16"
    citation = SIMCSE_CITATION
    members: ClassVar[tuple[str, ...]] = tuple(STS_TASKS)

    @classmethod
    def has_validation(cls) -> bool:
        return False  # an average of test splits

    def check_data(self, options: DataOptions) -> None:
        for name in self.members:
            STS_TASKS[name]().check_data(options)

    def score(self, ctx: EvalContext, split: str):
        if ctx.validation:
            refuse = [n for n in self.members if STS_TASKS[n].validation_split is None]
            raise ValueError(
                f"task {self.name!r} averages test splits; {', '.join(refuse)} have no "
                "validation split, so it cannot be used for tuning or checkpoint "
                "selection (use 'stsb', STS-B dev, as SimCSE does)"
            )
        metrics: dict[str, float] = {}
        preds, fps, n = [], [], 0
        for name in self.members:
            r = STS_TASKS[name]().evaluate(ctx)
            metrics[f"{name}/spearman"] = r.metrics["spearman"]
            metrics[f"{name}/pearson"] = r.metrics["pearson"]
            preds.append(
                {
                    "task": name,
                    "spearman": r.metrics["spearman"],
                    "pearson": r.metrics["pearson"],
                    "n_pairs": r.n_items,
                    "dataset": r.dataset,
                }
            )
            fps.append(f"{name}:{r.dataset_fingerprint}")
            n += r.n_items
        metrics["avg"] = float(np.mean([metrics[f"{m}/spearman"] for m in self.members]))
        metrics["avg_pearson"] = float(np.mean([metrics[f"{m}/pearson"] for m in self.members]))
        return metrics, dict(
            predictions=preds,
            n_items=n,
            dataset=self.dataset,
            dataset_fingerprint=hashlib.sha256("|".join(fps).encode()).hexdigest()[:16],
        )
