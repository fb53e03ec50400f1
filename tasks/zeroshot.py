"""Zero-shot classification from prompt-template ensembles (CLIP_benchmark's definitions)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from harness.data.shapes import COLOUR_NAMES, SHAPES

from .base import EvalContext, ShapesTask

#: the keys :func:`classification_metrics` reports (acc5 with at least 5 classes)
CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")


def zeroshot_classifier(encode_text, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(d x C) classifier: per class, the re-normalised mean of its normalised prompt embeddings."""
    texts = [t.format(c=c) for c in classnames for t in templates]
    emb = F.normalize(encode_text(texts).float(), dim=-1).view(len(classnames), len(templates), -1)
    w = F.normalize(emb.mean(dim=1), dim=-1)
    return w.T


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """acc1, acc5 (only with at least 5 classes) and mean per-class recall."""
    n_classes = logits.shape[1]
    pred = logits.argmax(dim=1)
    m = {"acc1": float((pred == target).float().mean())}
    if n_classes >= 5:
        top5 = logits.topk(5, dim=1).indices
        m["acc5"] = float((top5 == target[:, None]).any(dim=1).float().mean())
    m["mean_per_class_recall"] = float(balanced_accuracy_score(target.numpy(), pred.numpy()))
    return m


SHAPE_TEMPLATES = ("a {c}", "a photo of a {c}", "a picture of a {c}", "an image with a {c}")
COLOUR_TEMPLATES = ("a {c} object", "a {c} shape", "a {c} thing", "a photo of a {c} object")


class ShapesZeroShot(ShapesTask):
    """Zero-shot classification of single-object scenes (``zeroshot`` split) by shape (5 classes)
    and by colour (8 classes), each from a prompt-template ensemble. Metrics per attribute are
    CLIP_benchmark's (``shape/acc1``, ``colour/mean_per_class_recall``, ...); the main score
    ``acc1`` is the mean of the two top-1 accuracies.
    """

    family = "zeroshot"
    version = "1"
    main_score = "acc1"
    metrics = (
        "{attribute:shape|colour}/{metric:acc1|acc5|mean_per_class_recall}",
        "acc1",
        "mean_per_class_recall",
    )
    citation = "CLIP_benchmark zero-shot classification (LAION-AI/CLIP_benchmark)"
    splits = ("zeroshot",)

    def score(self, ctx: EvalContext, split: str):
        sp = ctx.world.split(split)
        single = sp.n_objects == 1  # the val split mixes in two-object scenes: classify single ones
        img = self.image_embeddings(ctx, split, sp.images)[torch.from_numpy(single)]
        metrics: dict[str, float] = {}
        preds: dict[str, np.ndarray] = {}
        for attr, classes, templates, target in (
            ("shape", SHAPES, SHAPE_TEMPLATES, sp.shape[single, 0]),
            ("colour", COLOUR_NAMES, COLOUR_TEMPLATES, sp.colour[single, 0]),
        ):
            prompts = lambda t, attr=attr: self.text_embeddings(ctx, "prompts", attr, t)
            w = zeroshot_classifier(prompts, classes, templates)
            logits = 100.0 * img @ w
            m = classification_metrics(logits, torch.from_numpy(target))
            metrics.update({f"{attr}/{k}": v for k, v in m.items()})
            preds[attr] = logits.argmax(1).numpy()
        metrics["acc1"] = (metrics["shape/acc1"] + metrics["colour/acc1"]) / 2
        metrics["mean_per_class_recall"] = (
            metrics["shape/mean_per_class_recall"] + metrics["colour/mean_per_class_recall"]
        ) / 2
        idx = np.flatnonzero(single)
        items = [
            {
                "item": int(i),
                "shape": SHAPES[sp.shape[i, 0]],
                "pred_shape": SHAPES[preds["shape"][r]],
                "colour": COLOUR_NAMES[sp.colour[i, 0]],
                "pred_colour": COLOUR_NAMES[preds["colour"][r]],
            }
            for r, i in enumerate(idx)
        ]
        hits = (
            (preds["shape"] == sp.shape[idx, 0]).astype(float) + (preds["colour"] == sp.colour[idx, 0])
        ) / 2
        return metrics, dict(
            predictions=items, item_scores=hits.tolist(), n_items=len(idx), **self.provenance(ctx, split)
        )
