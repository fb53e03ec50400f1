"""Single-tower objectives over two views of one modality: SimCLR's NT-Xent, SupCon (image tower)
and SimCSE (text tower)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.core.batch import EmbeddingBatch, LossOutput
from harness.core.objective import DefaultSource, HParam, Objective


def _two_view_logits(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits z z^T / temperature of the 2N batch z = [a; b], self-similarity set to -inf."""
    z = torch.cat([a, b])
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    return logits.masked_fill(eye, float("-inf"))


class NTXent(Objective):
    """NT-Xent (SimCLR, Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations") over two views of each image.

    With the 2N L2-normalised embeddings z = [image; image_view], k(i) the other view of sample i:

        L = 1/2N sum_i -log( exp(z_i.z_k(i)/t) / sum_{a != i} exp(z_i.z_a/t) )

    positives the other view, negatives the other 2N-2 embeddings of both views. Equal to
    pytorch-metric-learning's ``NTXentLoss(t)`` on the 2N batch with labels [0..N-1, 0..N-1]
    (each anchor has one positive, so its mean over positive pairs is this mean over anchors).
    Temperature fixed, default 0.5 (SimCLR's CIFAR-10 setting and the SupContrast/lightly
    default, suited to small batches; SimCLR's ImageNet runs at batch 4096 use 0.1).

    ``tower="image"`` (default): the image tower over (image, image_view); in the shapes world
    image_view is a jittered copy of the same scene. ``tower="text"``: the text tower over (text,
    text_view), i.e. SimCLR's symmetric 2N loss on sentences (with dropout views it is unsupervised
    SimCSE with both views as anchors and negatives); ``simcse`` is the one-directional form.

    Distributed: global negatives (the 2N logits span the gathered batch of every rank).
    """

    family = "self-supervised"
    citation = "Chen et al. 2020, A Simple Framework for Contrastive Learning of Visual Representations"
    distributed = "global"
    hparams = {
        "temperature": HParam(
            0.5, low=0.0, low_open=True, search=(0.05, 1.0, True), doc="fixed temperature t"
        ),
        "tower": HParam(
            "image",
            choices=("image", "text"),
            tunable=False,
            doc="which tower: image (image, image_view) or text (text, text_view)",
        ),
    }
    defaults_source = {
        "temperature": DefaultSource(
            "SimCLR paper (CIFAR-10); HobbitLong/SupContrast SimCLR recipe --temp 0.5",
            "CIFAR-10, ResNet from scratch, batch 1024 (SupContrast recipe), 2 augmented views "
            "(2N-2 negatives per anchor)",
            "yes",
            "SimCLR's ImageNet runs (batch 4096) use 0.1; checked: the SupContrast recipe",
        ),
        "tower": DefaultSource("harness", "structural switch (which tower trains)", "n/a"),
    }

    @property
    def requires(self):  # type: ignore[override]
        return (
            frozenset({"image", "image_view"})
            if self.params["tower"] == "image"
            else frozenset({"text", "text_view"})
        )

    @property
    def modality(self):  # type: ignore[override]
        return self.params["tower"]

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        a, b = (
            (batch.image, batch.image_view)
            if self.params["tower"] == "image"
            else (batch.text, batch.text_view)
        )
        logits = _two_view_logits(a, b, self.params["temperature"])
        n = a.shape[0]
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(logits.device)
        return LossOutput(F.cross_entropy(logits, target), {})


class SupCon(Objective):
    """Supervised Contrastive Learning, L_out form (Khosla et al. 2020), as the official
    ``SupConLoss`` (HobbitLong/SupContrast, contrast_mode "all").

    With the 2N L2-normalised embeddings z = [image; image_view], labels repeated for both views,
    A(i) = all a != i and P(i) = {p in A(i): label_p = label_i}:

        L = 1/2N sum_i -(t/t_b) 1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/t)
                                                            / sum_{a in A(i)} exp(z_i.z_a/t) )

    Every anchor has at least its other view as positive. Defaults: temperature t = 0.1 (the
    paper's value for all results and the repo's ``--temp 0.1`` recipe) and base_temperature
    t_b = 0.07, the code default that recipe leaves unchanged, so the loss is scaled by 0.1/0.07
    exactly as the official runs (a constant factor; t_b = t removes it). With all labels distinct
    this is ``nt-xent`` at the same temperature times t/t_b. pytorch-metric-learning's
    ``SupConLoss(t)`` is the same L_out without the t/t_b factor; its AvgNonZeroReducer averages
    over anchors with non-zero loss, which with two views is every anchor.

    In the shapes world a label is the id of the scene's complete description, so positives are the
    other view and every view of another sample of the same scene description.

    Distributed: global (positives and negatives from the gathered 2N batch with its labels).
    """

    family = "supervised"
    citation = "Khosla et al. 2020, Supervised Contrastive Learning"
    requires = frozenset({"image", "image_view", "labels"})
    modality = "image"
    distributed = "global"
    hparams = {
        "temperature": HParam(
            0.1, low=0.0, low_open=True, search=(0.03, 1.0, True), doc="fixed temperature t"
        ),
        "base_temperature": HParam(
            0.07, low=0.0, low_open=True, doc="the loss is multiplied by temperature/base_temperature"
        ),
    }
    defaults_source = {
        "temperature": DefaultSource(
            "paper (tau = 0.1 for all results); HobbitLong/SupContrast CIFAR recipe --temp 0.1",
            "ImageNet ResNet-50 batch 6144 (paper), CIFAR-10/100 batch 1024 (repo); from scratch, "
            "2 augmented views (2N anchors), class labels",
            "yes",
        ),
        "base_temperature": DefaultSource(
            "official code HobbitLong/SupContrast losses.py (SupConLoss base_temperature=0.07)",
            "as temperature (the recipe leaves it at the code default)",
            "yes",
            "a constant factor temperature/base_temperature = 0.1/0.07 on the loss",
        ),
    }

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        p = self.params
        logits = _two_view_logits(batch.image, batch.image_view, p["temperature"])
        labels = torch.cat([batch.labels, batch.labels]).to(logits.device)
        pos = (labels[:, None] == labels[None, :]).fill_diagonal_(False)
        log_prob = logits.log_softmax(dim=1).masked_fill(~pos, 0.0)  # -inf diagonal is not a positive
        mean_log_prob_pos = log_prob.sum(1) / pos.sum(1)
        loss = -(p["temperature"] / p["base_temperature"]) * mean_log_prob_pos.mean()
        return LossOutput(loss, {"positives_per_anchor": pos.sum(1).float().mean()})


class SimCSE(Objective):
    """SimCSE (Gao et al. 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings"),
    text tower only, as the official ``cl_forward``.

    With L2-normalised captions h_i (``text``), positives h_i^+ (``text_view``) and, when
    ``supervised``, contradiction hard negatives h_i^- (``hard_negative_text[:, 0]``), t the
    temperature and alpha = ``hard_negative_weight`` (Eq. 8):

        unsupervised:  l_i = -log( e^{h_i.h_i^+/t} / sum_j e^{h_i.h_j^+/t} )
        supervised:    l_i = -log( e^{h_i.h_i^+/t}
                                   / sum_j ( e^{h_i.h_j^+/t} + alpha^{1[i=j]} e^{h_i.h_j^-/t} ) )
        L = 1/B sum_i l_i

    One direction only (anchors are the first views; negatives the other samples' second views and
    every hard negative of the batch), unlike the symmetric ``clip``. Defaults: t = 0.05 fixed,
    alpha = 1 (the paper's best; the official code adds log(alpha) to the logit, its
    ``hard_negative_weight`` = 0). alpha = 0 drops only each anchor's own hard negative; the other
    samples' hard negatives stay in the denominator.

    Variant: the unsupervised positive is not a second dropout pass of the same sentence but the
    shapes world's other phrasing of the caption (the other mention order); the supervised
    "entailment" is that phrasing and the "contradiction" the first generated hard negative
    (an attribute swap).

    Distributed: global negatives (positives and hard negatives gathered from every rank).
    """

    family = "self-supervised"
    citation = "Gao et al. 2021, SimCSE: Simple Contrastive Learning of Sentence Embeddings"
    modality = "text"
    distributed = "global"
    hparams = {
        "temperature": HParam(
            0.05, low=0.0, low_open=True, search=(0.01, 0.5, True), doc="fixed temperature t"
        ),
        "supervised": HParam(False, doc="add the contradiction hard negative (hard_negative_text[:, 0])"),
        "hard_negative_weight": HParam(
            1.0,
            low=0.0,
            search=(0.25, 4.0, True),
            doc="alpha, weight of each anchor's own hard negative (Eq. 8)",
        ),
    }
    defaults_source = {
        "temperature": DefaultSource(
            "paper; princeton-nlp/SimCSE",
            "pretrained BERT-base fine-tuned: unsupervised on 1M Wikipedia sentences, batch 64, "
            "dropout views; supervised on NLI triplets, batch 512",
            "yes",
        ),
        "supervised": DefaultSource(
            "harness",
            "the shapes world has no NLI data; the unsupervised form needs only a second phrasing",
            "n/a",
        ),
        "hard_negative_weight": DefaultSource(
            "paper (alpha = 1 best on STS-B dev)",
            "supervised SimCSE, pretrained BERT-base, NLI triplets, batch 512",
            "yes",
        ),
    }

    @property
    def requires(self):  # type: ignore[override]
        extra = {"hard_negative_text"} if self.params["supervised"] else set()
        return frozenset({"text", "text_view", *extra})

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        p = self.params
        h = batch.text
        logits = h @ batch.text_view.T / p["temperature"]
        if p["supervised"]:
            neg = h @ batch.hard_negative_text[:, 0].T / p["temperature"]
            alpha = p["hard_negative_weight"]
            eye = torch.eye(len(h), dtype=torch.bool, device=h.device)
            if alpha == 0:  # log 0: each anchor's own hard negative leaves the denominator
                neg = neg.masked_fill(eye, float("-inf"))
            else:
                neg = neg + eye.to(neg.dtype) * math.log(alpha)
            logits = torch.cat([logits, neg], dim=1)
        target = torch.arange(len(h), device=h.device)
        return LossOutput(F.cross_entropy(logits, target), {})
