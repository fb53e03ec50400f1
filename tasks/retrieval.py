"""Image-text retrieval (CLIP_benchmark's definitions and key names)."""

from __future__ import annotations

import time

import numpy as np
import torch

from . import register
from .base import EvalContext, Task, TaskResult


def first_positive_rank(scores: torch.Tensor, positives: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """1-based rank of the best-ranked positive for every query row of ``scores`` (Q x N).

    Ties are broken by index order (stable sort). Processed in row chunks to bound memory.
    """
    ranks = []
    for i in range(0, scores.shape[0], chunk):
        s, p = scores[i : i + chunk], positives[i : i + chunk]
        if not bool(p.any(dim=1).all()):
            raise ValueError("every retrieval query needs at least one positive")
        order = torch.argsort(s, dim=1, descending=True, stable=True)
        ranks.append(p.gather(1, order).float().argmax(dim=1) + 1)
    return torch.cat(ranks)


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, positives: torch.Tensor,
                      ks=(1, 5, 10)) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """CLIP_benchmark's zero-shot retrieval metrics.

    ``positives`` is a (N_texts x N_images) boolean matrix. ``image_retrieval_recall@k`` is
    text->image: the share of texts whose top k images include a positive;
    ``text_retrieval_recall@k`` is image->text: the share of images with any positive caption in
    their top k (the "CLIP paper" recall, a hit if ANY correct caption is retrieved). Also the mean
    and median rank of the first positive. Returns (metrics, t2i ranks, i2t ranks).
    """
    scores = text_emb.float() @ image_emb.float().T
    positives = positives.bool()
    t2i = first_positive_rank(scores, positives)
    i2t = first_positive_rank(scores.T, positives.T)
    m: dict[str, float] = {}
    for k in ks:
        m[f"image_retrieval_recall@{k}"] = float((t2i <= k).float().mean())
        m[f"text_retrieval_recall@{k}"] = float((i2t <= k).float().mean())
    for name, r in (("image_retrieval", t2i), ("text_retrieval", i2t)):
        m[f"{name}_mean_rank"] = float(r.float().mean())
        m[f"{name}_median_rank"] = float(r.float().median())
    for k in ks:
        m[f"mean_recall@{k}"] = (m[f"image_retrieval_recall@{k}"] + m[f"text_retrieval_recall@{k}"]) / 2
    m["rsum"] = 100 * sum(m[f"{d}_retrieval_recall@{k}"] for d in ("image", "text") for k in ks)
    return m, t2i, i2t


@register("shapes-retrieval")
class ShapesRetrieval(Task):
    """Image-text retrieval on the shapes world's ``test`` split (scenes never seen in training).

    Each image has its complete caption; an image and a caption are a positive pair when the
    caption is true of the image, i.e. the two scenes have the same complete description (several
    single-object scenes share one). Main score: the mean of text->image and image->text R@1
    (R@5 sits near its ceiling under the default budget, R@1 separates objectives).
    """

    family = "retrieval"
    version = "1"
    main_score = "mean_recall@1"
    dataset = "shapes-world"
    citation = "CLIP_benchmark zero-shot retrieval (LAION-AI/CLIP_benchmark)"
    license = "generated"
    split = "test"

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        t0 = time.perf_counter()
        split = ctx.split(self.split)
        sp = ctx.world.split(split)
        img = ctx.cache.image(ctx.encoder, "shapes", split, sp.images)
        txt = ctx.cache.text(ctx.encoder, "shapes", split, "captions", sp.full_captions)
        labels = torch.from_numpy(sp.labels)
        positives = labels[:, None] == labels[None, :]
        metrics, t2i, i2t = retrieval_metrics(img, txt, positives)
        preds = [
            {"item": i, "caption": str(sp.full_captions[i]), "t2i_rank": int(t2i[i]), "i2t_rank": int(i2t[i])}
            for i in range(len(sp))
        ]
        # each scene is one image and one caption: its R@1 hits in both directions, averaged
        items = (((t2i <= 1).float() + (i2t <= 1).float()) / 2).tolist()
        return self.result(metrics, predictions=preds, item_scores=items, dataset=f"shapes-world/{split}",
                           dataset_fingerprint=ctx.world.fingerprint, n_items=len(sp),
                           seconds=time.perf_counter() - t0)
