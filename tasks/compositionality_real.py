"""Compositionality on real data: SugarCrepe, ARO and Winoground.

Every task scores an image against its true caption and hard-negative captions with the encoder's
normalised embeddings (cosine similarity) and counts an item correct only when the true caption
scores *strictly* higher (:func:`tasks.compositionality.caption_scores`). SugarCrepe's
``main_eval.py`` uses the same strict ``pos_score > neg_score``; CLIP_benchmark's
``image_caption_selection`` and ARO's ``evaluate_scores`` take an ``argmax``, which resolves an
exact tie by index order (CLIP_benchmark: true caption first, so a tie counts as correct; ARO
VG-R/VG-A: ``[false, true]``, so a tie counts as wrong; ARO Order: original first, a tie counts as
correct). Here a tie is always wrong: a model that cannot tell the captions apart has not chosen
(:data:`tasks.compositionality.TIES`, recorded in each result's ``protocol``; docs/compositionality.md).
Ties are exact: the true and negative captions (Winoground: both captions, and both images) are
embedded in one encoder call, which embeds each distinct input once, so equal inputs get equal
scores. ``n_ties`` counts the items a tie decided (correct under an argmax with the true caption
first), so CLIP_benchmark's SugarCrepe accuracy is ``acc + n_ties / n_items``.

None of these datasets has a validation split: under ``ctx.validation`` (tuning, checkpoint
selection) every task refuses. An image that does not decode drops its item (``n_undecodable``
counts the dropped items), or raises under ``--strict-images``.

This module holds SugarCrepe and the caption-choice base shared with ARO; ARO is in
:mod:`tasks.aro`, Winoground in :mod:`tasks.winoground`.

* **SugarCrepe** (Hsieh et al., NeurIPS 2023 D&B, arXiv 2306.14610; ``RAIVNLab/sugar-crepe``):
  seven categories, each on ``HuggingFaceM4/SugarCrepe_<category>`` (split ``test``; columns
  ``image``, ``tested_labels`` = [caption, negative_caption], ``true_label`` = a ``ClassLabel``
  whose names are the captions, decoded with ``int2str``; the negative is the other element of
  ``tested_labels``). Metric: accuracy (chance 0.5). The suite ``sugarcrepe`` runs all seven; the
  paper's overall number is the micro-average over categories (sugar-crepe issue #3), which the
  harness leaves to the report. The official JSON layout (``filename`` / ``caption`` /
  ``negative_caption`` + a COCO val2017 folder) is not read: convert it to the Hub layout.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from harness.data.sources import DataError, HubSource, load_table

from .base import DatasetTask, EvalContext, Suite
from .compositionality import TIES, caption_scores

# ------------------------------------------------------------------------------ metric helpers


def sugarcrepe_captions(table) -> tuple[list[str], list[str]]:
    """(positive, negative) caption of every row of a ``HuggingFaceM4/SugarCrepe_*`` table.

    The HF push script builds ``tested_labels = [caption, negative_caption]`` and
    ``true_label = ClassLabel(names=<all captions>)`` encoding the caption; the positive is
    ``int2str(true_label)`` and the negative the other element of ``tested_labels``."""
    decode = _true_label_decoder(table)
    pos, neg = [], []
    for i, (labels, t) in enumerate(zip(table["tested_labels"], table["true_label"])):
        labels = [str(x) for x in labels]
        true = decode(t)
        if len(labels) != 2 or true not in labels:
            raise DataError(
                f"SugarCrepe row {i}: tested_labels must hold the true caption {true!r} and one "
                f"negative, got {labels!r}"
            )
        others = [x for j, x in enumerate(labels) if j != labels.index(true)]
        pos.append(true)
        neg.append(others[0])
    return pos, neg


def _true_label_decoder(table):
    import datasets

    feature = table.features.get("true_label")
    if isinstance(feature, datasets.ClassLabel):
        return lambda v: feature.int2str(int(v))
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return str
    raise DataError(
        f"SugarCrepe column 'true_label' must be a ClassLabel whose names are the captions (as in "
        f"HuggingFaceM4/SugarCrepe_*) or the caption text; found {feature!r}. Keep the dataset's "
        "features when copying it (parquet files written by `datasets` carry them)."
    )


# ------------------------------------------------------------------------------------ tasks


class _CaptionChoice(DatasetTask):
    """One image against its true caption and k negatives; shared by SugarCrepe and ARO. :meth:`score`
    reads the pairs of :meth:`captions` and reports ``acc`` (the true caption strictly above every
    negative), ``n_undecodable`` and ``n_ties``."""

    #: image-text tasks on real photographs train on COCO captions by default (--train-data overrides)
    default_train_data = "coco"

    family: ClassVar[str] = "compositionality"
    modality: ClassVar[str] = "image-text"
    version: ClassVar[str] = "1"
    main_score = "acc"
    metrics = ("acc", "n_undecodable", "n_ties")
    validation_split: ClassVar[str | None] = None
    image_column: ClassVar[str] = "image"

    def captions(self, table) -> tuple[list[str], list[list[str]]]:
        """The true caption and the negatives of every row."""
        raise NotImplementedError

    def score(self, ctx: EvalContext, split: str):
        table = self.table(ctx, split)
        true, negatives = self.captions(table)
        rows, correct, scores, bad, ties = self._choose(ctx, table, true, negatives)
        metrics = {"acc": float(correct.mean()), "n_undecodable": float(bad), "n_ties": float(ties)}
        return metrics, dict(
            predictions=self._predictions(rows, true, negatives, scores, correct),
            item_scores=correct.astype(float).tolist(),
            n_items=len(rows),
            protocol={"ties": TIES},
            **self.provenance(table),
        )

    def _choose(self, ctx: EvalContext, table, true: list[str], negatives: list[list[str]], crop=None):
        """Scores (true caption first), strict correctness and the number of tied items (the true
        caption equal to its best negative: correct under an argmax, wrong here) of the items whose
        image decoded. True and negative captions are embedded in one call, so a negative equal to
        its true caption gets the same embedding and score."""
        column = self.images(ctx, table, self.image_column, crop=crop)
        img, ok = self.image_embeddings(ctx, column, table)
        n, k = len(true), len(negatives[0]) if negatives else 0
        texts = list(true) + [c for row in negatives for c in row]
        emb = self.text_embeddings(ctx, table, "true+negatives", texts)
        rows = torch.nonzero(ok).flatten()
        if len(rows) == 0:
            raise DataError(f"task {self.name!r}: none of the {n} images could be decoded")
        candidates = torch.cat([emb[:n, None], emb[n:].view(n, k, -1)], dim=1)[rows]
        scores = caption_scores(img[rows], candidates)
        correct = (scores[:, :1] > scores[:, 1:]).all(dim=1)
        ties = int((scores[:, 0] == scores[:, 1:].max(dim=1).values).sum())
        return rows.tolist(), correct.numpy(), scores.numpy(), int(n - len(rows)), ties

    @staticmethod
    def _predictions(rows, true, negatives, scores, correct, **extra) -> list[dict[str, Any]]:
        return [
            {
                "item": r,
                "caption": true[r],
                "negatives": list(negatives[r]),
                "scores": [float(s) for s in scores[j]],
                "correct": bool(correct[j]),
                **{k: v[r] for k, v in extra.items()},
            }
            for j, r in enumerate(rows)
        ]


class SugarCrepe(_CaptionChoice):
    """SugarCrepe (Hsieh et al. 2023): a COCO val2017 image, its caption and one ChatGPT-generated,
    human-validated hard negative (``main_eval.py``: correct iff ``cos(image, pos) > cos(image, neg)``).
    Metric ``acc`` (chance 0.5); ``n_undecodable``. Predictions: per item the two captions, their
    scores and correctness; item scores: 0/1 correctness (mean = ``acc``)."""

    category: ClassVar[str] = ""
    columns = ("image", "tested_labels", "true_label")
    license = (
        "SugarCrepe annotations MIT; images COCO val2017 (COCO annotations CC BY 4.0, "
        "images under the Flickr terms of use)"
    )
    citation = (
        "Hsieh et al., SugarCrepe: Fixing Hackable Benchmarks for Vision-Language "
        "Compositionality, NeurIPS 2023 Datasets and Benchmarks (arXiv 2306.14610)"
    )

    def check_data(self, options) -> None:
        table = load_table(self.name, self.source, options, self.columns)
        _true_label_decoder(table)

    def captions(self, table):
        pos, neg = sugarcrepe_captions(table)
        return pos, [[c] for c in neg]


def _sugarcrepe(category: str) -> type[SugarCrepe]:
    """The class of one SugarCrepe category, named ``SugarCrepe<Category>`` in this module (its entry
    point names the task ``sugarcrepe-<category>`` when the class is defined)."""
    name = "SugarCrepe" + category.title().replace("_", "")
    source = HubSource(f"HuggingFaceM4/SugarCrepe_{category}", split="test")
    return type(SugarCrepe)(
        name,
        (SugarCrepe,),
        {
            "__module__": __name__,
            "__qualname__": name,
            "category": category,
            "source": source,
            "dataset": source.repo,
            "__doc__": f"SugarCrepe ``{category}``. " + SugarCrepe.__doc__,
        },
    )


SugarCrepeAddObj = _sugarcrepe("add_obj")
SugarCrepeAddAtt = _sugarcrepe("add_att")
SugarCrepeReplaceObj = _sugarcrepe("replace_obj")
SugarCrepeReplaceAtt = _sugarcrepe("replace_att")
SugarCrepeReplaceRel = _sugarcrepe("replace_rel")
SugarCrepeSwapObj = _sugarcrepe("swap_obj")
SugarCrepeSwapAtt = _sugarcrepe("swap_att")


class SugarCrepeSuite(Suite):
    """All seven SugarCrepe categories (Hsieh et al. 2023): add / replace / swap of objects,
    attributes and relations."""

    default_train_data = "coco"
    dataset = "HuggingFaceM4/SugarCrepe_*"
    members = (
        "sugarcrepe-add-obj",
        "sugarcrepe-add-att",
        "sugarcrepe-replace-obj",
        "sugarcrepe-replace-att",
        "sugarcrepe-replace-rel",
        "sugarcrepe-swap-obj",
        "sugarcrepe-swap-att",
    )
