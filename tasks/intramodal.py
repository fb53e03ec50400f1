"""Intra-modal retrieval: image->image and text->text ("Cross the Gap", Mistretta et al. 2025)."""

from __future__ import annotations

import numpy as np
import torch

from .base import EvalContext, ShapesTask
from .retrieval import first_positive_rank


def average_precision(scores: torch.Tensor, positives: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Average precision of every query row of ``scores`` (Q x N) over the whole gallery.

    ``AP = (1 / |P|) * sum over positives p of precision@rank(p)``, the gallery ranked by
    decreasing score with ties broken by index order (stable sort, as in
    :func:`first_positive_rank`). Every query needs at least one positive.
    """
    out = []
    for i in range(0, scores.shape[0], chunk):
        s, p = scores[i : i + chunk], positives[i : i + chunk].bool()
        n_pos = p.sum(dim=1)
        if not bool((n_pos > 0).all()):
            raise ValueError("every retrieval query needs at least one positive")
        order = torch.argsort(s, dim=1, descending=True, stable=True)
        hit = p.gather(1, order).double()
        precision = hit.cumsum(dim=1) / torch.arange(1, s.shape[1] + 1, dtype=torch.float64)
        out.append((precision * hit).sum(dim=1) / n_pos)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def intra_modal_metrics(
    scores: torch.Tensor, positives: torch.Tensor, ks=(1, 5, 10)
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """``recall@k`` (a hit if any positive is in the top k), ``map``, ``mean_rank`` and
    ``median_rank`` of the first positive, over queries that all have a positive.
    Returns (metrics, first-positive ranks, average precisions)."""
    ranks = first_positive_rank(scores, positives)
    ap = average_precision(scores, positives)
    m = {f"recall@{k}": float((ranks <= k).float().mean()) for k in ks}
    m["map"] = float(ap.mean())
    m["mean_rank"] = float(ranks.float().mean())
    m["median_rank"] = float(ranks.float().median())
    return m, ranks, ap


class _IntraModal(ShapesTask):
    """Shared by ``shapes-i2i`` and ``shapes-t2t``: :meth:`score` ranks a gallery for the queries
    that :meth:`search` returns."""

    family = "intra_modal_retrieval"
    version = "1"
    main_score = "map"
    metrics = ("recall@{k:1|5|10}", "map", "mean_rank", "median_rank", "n_queries", "n_skipped")
    citation = "Mistretta et al. 2025 (Cross the Gap: intra-modal retrieval with CLIP-like models)"

    def search(self, ctx: EvalContext, split: str, sp):
        """(scores, positives, query ids, query texts or None) of ``split``."""
        raise NotImplementedError

    def score(self, ctx: EvalContext, split: str):
        scores, positives, query_ids, texts = self.search(ctx, split, ctx.world.split(split))
        n_all = scores.shape[0]
        if len(query_ids):
            metrics, ranks, ap = intra_modal_metrics(scores[query_ids], positives[query_ids])
        else:  # no query has a positive: nothing can be measured
            metrics = {
                k: float("nan")
                for k in ("recall@1", "recall@5", "recall@10", "map", "mean_rank", "median_rank")
            }
            ranks, ap = torch.empty(0), torch.empty(0)
        metrics["n_queries"] = float(len(query_ids))
        metrics["n_skipped"] = float(n_all - len(query_ids))
        preds = [
            {
                "item": int(q),
                **({"query": str(texts[q])} if texts is not None else {}),
                "n_positives": int(positives[q].sum()),
                "rank": int(r),
                "ap": float(a),
            }
            for q, r, a in zip(query_ids.tolist(), ranks.tolist(), ap.tolist())
        ]
        return metrics, dict(
            predictions=preds, item_scores=ap.tolist(), n_items=len(query_ids), **self.provenance(ctx, split)
        )


class ShapesI2I(_IntraModal):
    """Image-to-image retrieval on the ``test`` split: every image queries all other test images
    (itself excluded); the positives are the images with the same label (the same complete
    description). Queries without another image of their label are skipped (``n_queries`` are
    used, ``n_skipped`` are not; in the shapes world most used queries are single-object scenes,
    whose descriptions repeat). Metrics: ``recall@1/5/10``, ``map`` (mean average precision over
    the whole gallery), ``mean_rank`` / ``median_rank`` of the first positive. Main score ``map``:
    with several positives per query it scores the whole ranking, where recall@k saturates.
    """

    modality = "image"

    def search(self, ctx: EvalContext, split: str, sp):
        img = self.image_embeddings(ctx, split, sp.images).float()
        labels = torch.from_numpy(sp.labels)
        n = len(labels)
        scores = img @ img.T
        eye = torch.eye(n, dtype=torch.bool)
        scores[eye] = float("-inf")  # the query itself ranks last and is no positive
        positives = (labels[:, None] == labels[None, :]) & ~eye
        return scores, positives, torch.nonzero(positives.any(dim=1)).flatten(), None


class ShapesT2T(_IntraModal):
    """Text-to-text retrieval on the ``test`` split: each complete caption queries the gallery of
    the split's alternative captions (the same facts in the other mention order, or "the" for "a");
    the positives are the alternative captions with the same label, so every query has at least
    its own. Metrics and main score as for ``shapes-i2i``.
    """

    modality = "text"

    def search(self, ctx: EvalContext, split: str, sp):
        q = self.text_embeddings(ctx, split, "captions", sp.full_captions).float()
        g = self.text_embeddings(ctx, split, "alt_captions", sp.alt_captions).float()
        labels = torch.from_numpy(sp.labels)
        positives = labels[:, None] == labels[None, :]
        return q @ g.T, positives, torch.arange(len(labels)), np.asarray(sp.full_captions)
