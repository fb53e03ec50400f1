"""Surrogate objectives: an AUC (Mann-Whitney) ranking loss and CatLIP classification."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from harness.core.batch import EmbeddingBatch, LossOutput
from harness.core.objective import DefaultSource, HParam, HyperparameterError, Objective

_PAIR_CHUNK = 1 << 24  # elements per chunk of the (positives x negatives) difference matrix


def _softplus_sum(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return F.softplus(neg[None, :] - pos[:, None]).sum()


def pairwise_softplus_mean(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """mean over all (p, n) of softplus(n - p) = -log sigmoid(p - n). For large batches the
    |P| x |N| matrix is built in checkpointed chunks of positives, so memory stays bounded."""
    step = max(1, _PAIR_CHUNK // max(1, neg.numel()))
    if pos.numel() <= step:
        return _softplus_sum(pos, neg) / (pos.numel() * neg.numel())
    total = sum(checkpoint(_softplus_sum, c, neg, use_reentrant=False) for c in pos.split(step))
    return total / (pos.numel() * neg.numel())


class AUC(Objective):
    """Mann-Whitney (MW) loss: a smooth surrogate of 1 - AUC (Sheikholeslami, Hosseini, Bechard,
    Daruru & Rajeswar 2025, "Optimizing What Matters: AUC-Driven Learning for Robust Neural
    Retrieval").

    With scores s_ij = x_i.y_j / tau, positives P = {s_ii} and negatives N = {s_ij, i != j}:

        scope="global" (paper): L = 1/(|P||N|) sum_{p in P} sum_{n in N} -log sigmoid(s_p - s_n)

    i.e. binary cross-entropy on every positive-negative score difference of the batch, across
    queries: the Mann-Whitney U statistic (= AUC) with the step replaced by a sigmoid, which the
    paper shows upper-bounds the area over the ROC curve. Comparing pairs across queries is the
    point of the loss (one global threshold separates relevant from irrelevant pairs); the pair
    set is transpose-invariant, so it is symmetric in image and text by construction.
    ``scope="query"`` is the per-query variant: mean_i mean_{j != i} softplus(s_ij - s_ii),
    image->text and text->image averaged. tau = 0.05, fixed (the temperature of the paper's
    retriever training; not learned). The loss is a decreasing function of every margin
    s_p - s_n and tends to 0 when each positive beats each negative by a large margin. Needs
    B >= 2 (a batch of one has no negative pair).

    Distributed: global (positives and negatives from the whole gathered batch).
    """

    family = "surrogate"
    citation = (
        "Sheikholeslami et al. 2025, Optimizing What Matters: AUC-Driven Learning for Robust Neural Retrieval"
    )
    requires = frozenset({"image", "text"})
    distributed = "global"
    min_batch_size = 2
    hparams = {
        "temperature": HParam(
            0.05, low=0.0, low_open=True, search=(0.01, 0.5, True), doc="scores are cosine / temperature"
        ),
        "scope": HParam(
            "global",
            choices=("global", "query"),
            doc="global: every positive vs every negative; query: per-query pairs",
        ),
    }
    _ret = "dense text retrieval: pretrained encoders fine-tuned with in-batch negatives"
    defaults_source = {
        "temperature": DefaultSource("paper (the retriever training temperature)", _ret, "no"),
        "scope": DefaultSource("paper (the global Mann-Whitney form)", _ret, "no"),
    }

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        n = batch.image.shape[0]
        if n < self.min_batch_size:
            raise ValueError(
                f"auc needs a batch of at least 2 pairs, got {n}: a batch of one has no "
                "negative pair, so the mean over (positive, negative) pairs is empty; set "
                "budget.batch_size >= 2"
            )
        s = batch.image @ batch.text.T / self.params["temperature"]
        eye = torch.eye(n, dtype=torch.bool, device=s.device)
        pos = s.diagonal()
        if self.params["scope"] == "global":
            loss = pairwise_softplus_mean(pos, s[~eye])
        else:
            off = (~eye).to(s.dtype)
            i2t = (F.softplus(s - pos[:, None]) * off).sum() / off.sum()
            t2i = (F.softplus(s - pos[None, :]) * off).sum() / off.sum()
            loss = (i2t + t2i) / 2
        margin = (pos.mean() - s[~eye].mean()) * self.params["temperature"]
        return LossOutput(loss, {"cosine_margin": margin.detach()})


class CatLIP(Objective):
    """CatLIP: image-text pre-training recast as multi-label classification of caption concepts
    (Mehta et al. 2024, "CatLIP: CLIP-level Visual Recognition Accuracy with 2.7x Faster
    Pre-training on Web-scale Image-Text Data").

    Each caption gives a multi-hot target t (B, C) over C concepts (CatLIP: WordNet synsets of
    caption nouns; shapes world: its colour, shape, size and relation words, ``batch.concepts``).
    A linear classifier head W (C, d), b (C,) owned by the objective scores the image embedding x
    (the logit of concept c is the dot product of x with a learnable class embedding w_c):

        logits = x W^T + b,   L = 1/B sum_i sum_c BCEWithLogits(logits_ic, t_ic)

    the binary cross-entropy summed over concepts and averaged over the batch, as CatLIP's
    corenet config (``binary_cross_entropy``, ``reduction: batch_mean``); W is initialised
    trunc-normal(std 0.02) and b = 0, corenet's linear init. Only the image tower is trained:
    it is the non-contrastive baseline, with no negatives. The head is sized in ``setup()``, before
    the optimiser is built: ``num_concepts`` C comes from the training data's concept vocabulary
    (the shapes world: 19) unless set, and ``embed_dim`` d from the trained model's width unless set
    (128 when used outside the trainer); a batch of another shape raises an error naming the
    ``--set objective_params.<name>=`` fix.
    The image embedding is already L2-normalised, so the head acts on unit vectors.

    Distributed: local (a per-sample loss, no negatives).
    """

    family = "classification"
    citation = (
        "Mehta et al. 2024, CatLIP: CLIP-level Visual Recognition Accuracy with 2.7x "
        "Faster Pre-training on Web-scale Image-Text Data"
    )
    requires = frozenset({"image", "concepts"})
    modality = "image"
    distributed = "local"
    hparams = {
        "num_concepts": HParam(
            0,
            low=0,
            doc="classes C of the head; 0 = the training data's concept "
            "vocabulary (the shapes world: 19), given to setup()",
        ),
        "embed_dim": HParam(128, low=1, doc="image embedding width d (harness-micro: 32)"),
    }
    defaults_source = {
        "num_concepts": DefaultSource(
            "harness (0: the training data's concept vocabulary)",
            "sized in setup() from the data",
            "n/a",
        ),
        "embed_dim": DefaultSource(
            "harness (the model's width, set in setup())", "sized from the model", "n/a"
        ),
    }

    def __init__(self, **params):
        super().__init__(**params)
        self._explicit_dim = "embed_dim" in params
        self._head(self.params["num_concepts"] or 1, self.params["embed_dim"])

    def _head(self, c: int, d: int) -> None:
        self.weight = nn.Parameter(nn.init.trunc_normal_(torch.empty(c, d), std=0.02))
        self.bias = nn.Parameter(torch.zeros(c))

    def setup(self, *, embed_dim: int | None = None, num_concepts: int | None = None, **kw) -> None:
        """Size the head: C from the training data's concept vocabulary unless ``num_concepts`` was
        set, d from the model's embedding width unless ``embed_dim`` was set."""
        super().setup(embed_dim=embed_dim, num_concepts=num_concepts, **kw)
        c = self.params["num_concepts"] or num_concepts
        if not c:
            raise ValueError("catlip: the training data declares no concept vocabulary; set num_concepts")
        d = embed_dim if embed_dim and not self._explicit_dim else self.params["embed_dim"]
        if (c, d) != tuple(self.weight.shape):
            self._head(c, d)
        self.params["num_concepts"], self.params["embed_dim"] = c, d

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        x, t = batch.image, batch.concepts
        for name, want, got in (
            ("embed_dim", self.weight.shape[1], x.shape[1]),
            ("num_concepts", self.weight.shape[0], t.shape[1]),
        ):
            if want != got:
                raise HyperparameterError(
                    f"catlip: {name}={want} but the batch has {got}; "
                    f"set --set objective_params.{name}={got} (objective_params.catlip.{name} in a sum)"
                )
        logits = x @ self.weight.T + self.bias
        loss = F.binary_cross_entropy_with_logits(logits, t.to(logits.dtype), reduction="sum") / x.shape[0]
        return LossOutput(loss, {})
