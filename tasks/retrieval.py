"""Image-text retrieval (CLIP_benchmark's definitions and key names)."""

from __future__ import annotations

import torch

from .base import EvalContext, ShapesTask

#: the keys :func:`metrics_from_ranks` reports for ks = (1, 5, 10)
RETRIEVAL_METRICS = (
    "image_retrieval_recall@{k:1|5|10}",
    "text_retrieval_recall@{k:1|5|10}",
    "image_retrieval_mean_rank",
    "image_retrieval_median_rank",
    "text_retrieval_mean_rank",
    "text_retrieval_median_rank",
    "mean_recall@{k:1|5|10}",
    "rsum",
)


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


def _positive_lists(text_to_image: torch.Tensor, n_images: int) -> torch.Tensor:
    """(N_images x max captions) caption indices of every image, ascending, padded with -1."""
    order = torch.argsort(text_to_image, stable=True)  # caption indices grouped by image, ascending
    counts = torch.bincount(text_to_image, minlength=n_images)
    width = int(counts.max()) if counts.numel() else 0
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(order)) - starts[text_to_image[order]]
    out = torch.full((n_images, max(width, 1)), -1, dtype=torch.long)
    out[text_to_image[order], slot] = order
    return out


def count_ranks(
    scores: torch.Tensor, best: torch.Tensor, first: torch.Tensor, buffer: torch.Tensor | None = None
) -> torch.Tensor:
    """1-based rank of each row's best positive, counted instead of sorted.

    ``best`` is the row's best positive score and ``first`` the lowest column index holding a
    positive with that score. The rank is ``1 + #(scores > best) + #(scores == best before
    first)``: exactly the position a stable descending sort gives (equal scores keep index order),
    as in :func:`first_positive_rank`, in O(columns) memory per row.

    Comparisons are written into a float ``buffer`` (reused across chunks; counts of 0/1 are exact
    in float32 below 2**24 columns) and summed: summing a bool tensor would first convert it to
    int64, eight bytes per score. Rows with an exact tie at ``best`` (rare) are resolved one by one.
    """
    c, n = scores.shape
    dtype = torch.float32 if n < 2**24 else torch.float64
    if buffer is None or buffer.dtype != dtype or buffer.numel() < c * n:
        buffer = torch.empty(c * n, dtype=dtype)
    cmp = buffer[: c * n].view(c, n)
    torch.gt(scores, best[:, None], out=cmp)
    rank = cmp.sum(dim=1).long() + 1
    torch.eq(scores, best[:, None], out=cmp)
    tied = torch.nonzero(cmp.sum(dim=1) > 1).flatten()  # something ties with the best positive itself
    for r in tied.tolist():
        rank[r] += int((scores[r, : int(first[r])] == best[r]).sum())
    return rank


def _dense_best(scores: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not bool(pos.any(dim=1).all()):
        raise ValueError("every retrieval query needs at least one positive")
    best = scores.masked_fill(~pos, float("-inf")).max(dim=1).values
    first = (pos & (scores == best[:, None])).to(torch.uint8).argmax(dim=1)  # argmax: first maximum
    return best, first


def retrieval_ranks(
    image_emb: torch.Tensor, text_emb: torch.Tensor, positives: torch.Tensor, chunk: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t2i, i2t): 1-based rank of the first positive for every text (over images) and every image
    (over texts), computed ``chunk`` query rows at a time without a full score matrix.

    ``positives`` is either ``text_to_image`` (LongTensor[N_texts], the image of each caption: the
    COCO / Flickr case, several captions per image, one image per caption) or a dense
    (N_texts x N_images) bool matrix (the shapes world, where several images share a description).
    Score blocks are slices of ``text_emb @ image_emb.T`` (text rows, image columns), ranks are
    counted (:func:`count_ranks`), so the ranks equal :func:`first_positive_rank` on the full
    matrix, ties included. Peak memory is O(chunk x max(N_texts, N_images)) plus the positives.
    """
    txt, img = text_emb.float(), image_emb.float()
    n_t, n_i = txt.shape[0], img.shape[0]
    dense = positives.dtype == torch.bool
    if dense:
        if tuple(positives.shape) != (n_t, n_i):
            raise ValueError(
                f"positives must be (N_texts, N_images) = {(n_t, n_i)}, got {tuple(positives.shape)}"
            )
    else:
        positives = positives.long()
        if positives.shape != (n_t,):
            raise ValueError(
                f"text_to_image must have one entry per text ({n_t}), got {tuple(positives.shape)}"
            )
        if n_t and (int(positives.min()) < 0 or int(positives.max()) >= n_i):
            raise ValueError(f"text_to_image values must index the {n_i} images")
        caps = _positive_lists(positives, n_i)
        if n_i and bool((caps[:, 0] < 0).any()):
            raise ValueError("every retrieval query needs at least one positive (an image has no caption)")
    # outputs and workspaces are allocated once: fresh large temporaries per chunk cost page
    # faults, and small long-lived results between them fragment the heap (freed chunks stay resident)
    t2i = torch.empty(n_t, dtype=torch.long)
    i2t = torch.empty(n_i, dtype=torch.long)
    width = min(chunk, max(n_t, n_i, 1)) * max(n_t, n_i, 1)
    score_buf, cmp_buf = torch.empty(width), torch.empty(width)
    for a in range(0, n_t, chunk):  # text queries: rows of the score matrix
        q = txt[a : a + chunk]
        s = torch.mm(q, img.T, out=score_buf[: len(q) * n_i].view(len(q), n_i))
        if dense:
            best, first = _dense_best(s, positives[a : a + chunk])
        else:
            first = positives[a : a + chunk]
            best = s.gather(1, first[:, None]).squeeze(1)
        t2i[a : a + chunk] = count_ranks(s, best, first, cmp_buf)
    for a in range(0, n_i, chunk):  # image queries: columns of the score matrix
        q = img[a : a + chunk]
        s = torch.mm(txt, q.T, out=score_buf[: n_t * len(q)].view(n_t, len(q))).T
        if dense:
            best, first = _dense_best(s, positives[:, a : a + chunk].T)
        else:
            c = caps[a : a + chunk]
            vals = s.gather(1, c.clamp(min=0)).masked_fill(c < 0, float("-inf"))
            best = vals.max(dim=1).values
            # captions are listed in ascending index order: the first maximum is the lowest index
            first = c.gather(1, (vals == best[:, None]).to(torch.uint8).argmax(dim=1, keepdim=True)).squeeze(
                1
            )
        i2t[a : a + chunk] = count_ranks(s, best, first, cmp_buf)
    return t2i, i2t


def metrics_from_ranks(t2i: torch.Tensor, i2t: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """CLIP_benchmark's retrieval metric keys from first-positive ranks (see :func:`retrieval_metrics`)."""
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
    return m


def retrieval_metrics(
    image_emb: torch.Tensor, text_emb: torch.Tensor, positives: torch.Tensor, ks=(1, 5, 10), chunk: int = 512
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """CLIP_benchmark's zero-shot retrieval metrics (``metrics/zeroshot_retrieval.py``).

    ``positives`` is a (N_texts x N_images) boolean matrix or ``text_to_image`` (LongTensor of the
    image of every text); see :func:`retrieval_ranks`, which computes the ranks in bounded memory.
    Scores are cosine similarities ``text_emb @ image_emb.T`` (no scale). ``image_retrieval_recall@k``
    is text->image: the share of texts whose top k images include a positive;
    ``text_retrieval_recall@k`` is image->text: the share of images with any positive caption in
    their top k (the "CLIP paper" recall, a hit if ANY correct caption is retrieved). Also the mean
    and median rank of the first positive, ``mean_recall@k`` (the mean of both directions) and
    ``rsum`` (the sum of all recalls, in %). Returns (metrics, t2i ranks, i2t ranks).
    """
    t2i, i2t = retrieval_ranks(image_emb, text_emb, positives, chunk=chunk)
    return metrics_from_ranks(t2i, i2t, ks), t2i, i2t


class ShapesRetrieval(ShapesTask):
    """Image-text retrieval on the shapes world's ``test`` split (scenes never seen in training).

    Each image has its complete caption; an image and a caption are a positive pair when the
    caption is true of the image, i.e. the two scenes have the same complete description (several
    single-object scenes share one). Main score: the mean of text->image and image->text R@1
    (R@5 sits near its ceiling under the default budget, R@1 separates objectives).
    """

    family = "retrieval"
    version = "1"
    main_score = "mean_recall@1"
    metrics = RETRIEVAL_METRICS
    citation = "CLIP_benchmark zero-shot retrieval (LAION-AI/CLIP_benchmark)"

    def score(self, ctx: EvalContext, split: str):
        sp = ctx.world.split(split)
        img = self.image_embeddings(ctx, split, sp.images)
        txt = self.text_embeddings(ctx, split, "captions", sp.full_captions)
        labels = torch.from_numpy(sp.labels)
        metrics, t2i, i2t = retrieval_metrics(img, txt, labels[:, None] == labels[None, :])
        preds = [
            {"item": i, "caption": str(sp.full_captions[i]), "t2i_rank": int(t2i[i]), "i2t_rank": int(i2t[i])}
            for i in range(len(sp))
        ]
        # each scene is one image and one caption: its R@1 hits in both directions, averaged
        items = (((t2i <= 1).float() + (i2t <= 1).float()) / 2).tolist()
        return metrics, dict(
            predictions=preds, item_scores=items, n_items=len(sp), **self.provenance(ctx, split)
        )
