"""Geometry diagnostics of the joint embedding space: alignment, uniformity, modality gap, rank."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import EvalContext, ShapesTask


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola (2020): ``E_i ||x_i - y_i||^alpha`` over the positive pairs (rows)."""
    return float((x.double() - y.double()).norm(dim=1).pow(alpha).mean())


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """Wang & Isola (2020): ``log E_{i<j} exp(-t ||z_i - z_j||^2)`` over distinct pairs (``pdist``).
    Computed as a log-sum-exp, so it stays finite where the plain mean would underflow."""
    z = z.double()
    if len(z) < 2:
        raise ValueError("uniformity needs at least two embeddings")
    d2 = torch.pdist(z, p=2).pow(2)
    return float(torch.logsumexp(-t * d2, dim=0) - math.log(d2.numel()))


def modality_gap(x: torch.Tensor, y: torch.Tensor) -> float:
    """Liang et al. (2022), "Mind the Gap": ``|| mean_i x_i - mean_i y_i ||_2`` between the centroids
    of the two modalities' (L2-normalised) embeddings."""
    return float((x.double().mean(dim=0) - y.double().mean(dim=0)).norm())


def effective_rank(z: torch.Tensor, center: bool = True) -> float:
    """Roy & Vetterli (2007): ``exp(H(p))`` with ``p_k = sigma_k / sum(sigma)`` the normalised singular
    values of the (N x d) matrix, centred on its column means first by default (so a common offset
    does not count as a direction; an identity matrix centred has rank d - 1). Singular values at
    rounding level of the input's precision (below ``max(sigma) * max(N, d) * eps``, the cut-off of
    ``torch.linalg.matrix_rank``) count as zero; 0 log 0 = 0; an all-zero matrix has rank 0."""
    eps = torch.finfo(z.dtype if z.is_floating_point() else torch.float32).eps
    z = z.double()
    if center:
        z = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(z)
    if len(s) == 0 or s.max() <= 0:
        return 0.0
    s = s[s > s.max() * max(z.shape) * eps]
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def pair_cosines(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cosine of the matched image-text pairs (i, i) and of the mismatched ones (i != j)."""
    x, y = F.normalize(x.double(), dim=-1), F.normalize(y.double(), dim=-1)
    s = x @ y.T
    n = s.shape[0]
    pos = s.diagonal().mean()
    neg = (s.sum() - s.diagonal().sum()) / (n * n - n) if n > 1 else torch.tensor(float("nan"))
    return float(pos), float(neg)


class ShapesGeometry(ShapesTask):
    """Geometry of the joint space on the ``test`` split: images and their complete captions.

    ``alignment`` (E||x_i - y_i||^2 over the image-caption pairs), ``uniformity_image`` /
    ``uniformity_text`` (log E exp(-2||z_i - z_j||^2) over distinct pairs; Wang & Isola 2020),
    ``modality_gap`` (distance between the image and text centroids; Liang et al. 2022),
    ``effective_rank_image`` / ``effective_rank_text`` (Roy & Vetterli 2007, of the centred
    embedding matrix, from singular values, not their squares), ``mean_cosine_positive`` /
    ``mean_cosine_negative`` (image-text cosine of pairs i == j / i != j; i != j includes the
    scenes that happen to share a description). All on L2-normalised embeddings.

    These are diagnostics, not a ranking target: the main score ``modality_gap`` (lower is
    "better" only in the sense of a smaller gap) is reported so runs can be tabulated, but a smaller
    gap is not by itself a better model.
    """

    family = "geometry"
    version = "1"
    main_score = "modality_gap"
    metrics = (
        "alignment",
        "uniformity_image",
        "uniformity_text",
        "modality_gap",
        "effective_rank_image",
        "effective_rank_text",
        "mean_cosine_positive",
        "mean_cosine_negative",
    )
    higher_is_better = False
    citation = (
        "Wang & Isola 2020 (alignment and uniformity); Liang et al. 2022 (Mind the Gap); "
        "Roy & Vetterli 2007 (effective rank)"
    )
    modality = "image-text"

    def score(self, ctx: EvalContext, split: str):
        sp = ctx.world.split(split)
        img = F.normalize(self.image_embeddings(ctx, split, sp.images).double(), dim=-1)
        txt = F.normalize(self.text_embeddings(ctx, split, "captions", sp.full_captions).double(), dim=-1)
        pos, neg = pair_cosines(img, txt)
        metrics = {
            "alignment": alignment(img, txt),
            "uniformity_image": uniformity(img),
            "uniformity_text": uniformity(txt),
            "modality_gap": modality_gap(img, txt),
            "effective_rank_image": effective_rank(img),
            "effective_rank_text": effective_rank(txt),
            "mean_cosine_positive": pos,
            "mean_cosine_negative": neg,
        }
        cos = (img * txt).sum(-1)
        preds = [
            {"item": i, "caption": str(sp.full_captions[i]), "cosine": float(cos[i])} for i in range(len(sp))
        ]
        return metrics, dict(predictions=preds, n_items=len(sp), **self.provenance(ctx, split))
