"""Compositionality: choosing the true caption over generated hard negatives."""

from __future__ import annotations

import numpy as np
import torch

from harness.data.shapes import NEGATIVE_TYPES

from .base import EvalContext, ShapesTask

#: The tie rule of every compositionality task, recorded in each result's ``protocol``: see
#: docs/compositionality.md. A tie is exact (bit-identical scores): the encoder embeds each distinct
#: text and image once, and every score is computed by :func:`caption_scores`.
TIES = (
    "wrong: every comparison is strict (the true caption, or image, must score strictly higher "
    "than the alternative); identical inputs get bit-identical embeddings and scores, so a tie is exact"
)


def caption_scores(image_emb: torch.Tensor, candidates: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(N, m) cosine scores ``image_emb[n] . candidates[n, j]`` of N images against m candidate
    captions each (N x m x d), all by one elementwise product and sum over d, so that bit-identical
    candidates get bit-identical scores (a matrix product may round its output columns
    differently); in chunks of rows to bound the N x m x d product."""
    if len(image_emb) == 0:
        return candidates.new_zeros(candidates.shape[:2])
    return torch.cat(
        [
            (image_emb[i : i + chunk, None, :] * candidates[i : i + chunk]).sum(-1)
            for i in range(0, len(image_emb), chunk)
        ]
    )


def caption_choice(image_emb: torch.Tensor, pos_emb: torch.Tensor, neg_emb: torch.Tensor) -> torch.Tensor:
    """(N x k) bool: does image i score its true caption strictly above negative j?

    CLIP_benchmark's ``image_caption_selection`` takes ``argmax`` over [true, negatives], which counts
    an exact tie as correct; a strict comparison counts it as wrong (a tie means the model cannot
    tell the captions apart). Scores by :func:`caption_scores`.
    """
    scores = caption_scores(image_emb, torch.cat([pos_emb[:, None, :], neg_emb], dim=1))
    return scores[:, :1] > scores[:, 1:]


_NEGATIVE = "{negative:" + "|".join(NEGATIVE_TYPES) + "}"


class ShapesCompositionality(ShapesTask):
    """Binding in the shapes world: for each two-object scene, the true caption against its
    attribute-swapped, relation-swapped and object-replaced twins (2-way choices, chance 0.5), on
    the ``test`` split (seen attribute-shape combinations) and the ``heldout`` split (unseen ones).

    Metrics: ``{split}/{type}/acc`` per negative type, ``{split}/all/acc`` (true caption above all
    three), ``{split}/macro_acc`` (mean over the three types), and the single-object scenes'
    replacement negatives under ``{split}/single/...``. Main score: ``test/macro_acc``. The
    negative types follow ARO / SugarCrepe (Yuksekgonul et al. 2023; Hsieh et al. 2023).

    Ties count as wrong (:data:`TIES`, recorded in ``protocol``); ``{split}/n_ties`` counts the
    (scene, negative) comparisons whose two scores are exactly equal.
    """

    family = "compositionality"
    version = "1"
    main_score = "test/macro_acc"
    metrics = tuple(
        "{split:test|heldout}/" + m
        for m in ("n_ties", _NEGATIVE + "/acc", "all/acc", "macro_acc", "single/{negative}/acc")
    )
    breakdown = "{split}/" + _NEGATIVE + "/acc"  # plots: accuracy by negative type
    citation = "Yuksekgonul et al. 2023 (ARO); Hsieh et al. 2023 (SugarCrepe)"
    splits = ("test", "heldout")

    def score(self, ctx: EvalContext, split: str):
        metrics: dict[str, float] = {}
        preds = []
        item_scores: list[float] = []
        scored = list(dict.fromkeys(ctx.split(s) for s in self.splits))  # under validation: val once
        for split in scored:
            sp = ctx.world.split(split)
            n, k = sp.negatives.shape
            img = self.image_embeddings(ctx, split, sp.images)
            # captions and negatives in one call: a negative equal to its caption gets the same embedding
            texts = np.concatenate([sp.full_captions, sp.negatives.reshape(-1)])
            emb = self.text_embeddings(ctx, split, "captions+negatives", texts)
            scores = caption_scores(img, torch.cat([emb[:n, None], emb[n:].view(n, k, -1)], dim=1))
            ok = (scores[:, :1] > scores[:, 1:]).numpy()
            metrics[f"{split}/n_ties"] = float((scores[:, :1] == scores[:, 1:]).sum())
            two = sp.n_objects == 2
            if split == ctx.split("test"):  # the main score: macro accuracy over two-object scenes
                item_scores = ok[two].mean(axis=1).tolist()
            if two.any():
                for j, t in enumerate(NEGATIVE_TYPES):
                    metrics[f"{split}/{t}/acc"] = float(ok[two, j].mean())
                metrics[f"{split}/all/acc"] = float(ok[two].all(axis=1).mean())
                metrics[f"{split}/macro_acc"] = float(
                    np.mean([metrics[f"{split}/{t}/acc"] for t in NEGATIVE_TYPES])
                )
            for t in np.unique(sp.negative_types[~two]):
                sel = sp.negative_types[~two] == t
                metrics[f"{split}/single/{t}/acc"] = float(ok[~two][sel].mean())
            preds += [
                {
                    "split": split,
                    "item": i,
                    "caption": str(sp.full_captions[i]),
                    **{str(sp.negative_types[i, j]): bool(ok[i, j]) for j in range(k)},
                }
                for i in range(n)
            ]
        if ctx.validation:  # report the main score under its usual name
            metrics = {k.replace("val/", "test/", 1): v for k, v in metrics.items()}
        return metrics, dict(
            predictions=preds,
            item_scores=item_scores,
            n_items=len(preds),
            protocol={"ties": TIES},
            **self.provenance(ctx, "+".join(scored)),
        )
