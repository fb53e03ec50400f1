"""Intra-modal terms for image-text training: FG-CLIP 2's textual intra-modal contrastive loss (TIC)
and an inter- plus intra-modal InfoNCE (TCL-style)."""

from __future__ import annotations

import torch

from harness.core.batch import EmbeddingBatch, LossOutput
from harness.core.objective import DefaultSource, HParam, Objective, sources

from .infonce import symmetric_infonce


class TIC(Objective):
    """Textual Intra-modal Contrastive loss (FG-CLIP 2, Xie et al. 2025, arXiv 2510.10921), the
    official ``hard_category_contrastive_loss`` + ``PNTextLoss``.

    With L2-normalised texts t_i of the batch, S = T T^T with the diagonal set to 0 and every entry
    above ``threshold`` (near-duplicates, treated as the same meaning) also set to 0; K_i are the
    ``k`` largest entries of row i (k clipped to B-1), and

        L = 1/B sum_i log sum_{j in K_i} exp(S_ij / temperature)

    a pure repulsion between each caption and its hardest in-batch captions. Official defaults:
    k = 10, threshold 0.95, no temperature (``temperature`` = 1 reproduces it; a fixed divisor
    kept for tuning). Needs B >= 2. As in the official code the zeroed entries stay candidates of the top-k (a
    zeroed entry contributes exp(0) when fewer than k entries are positive).

    Variant: FG-CLIP 2 applies TIC to the region texts of the batch (the positive box captions, not
    the generated hard negatives); here it runs on the batch captions (``text``), the in-batch form
    of the official code. It trains the text tower only (modality "text") and is meant to be added
    to an image-text loss, e.g. ``clip + 0.1*tic`` (FG-CLIP 2's region_cc_loss_weight = 0.1); the
    weighted sum then trains both towers.

    Distributed: global (the top-k hardest captions are chosen from the gathered batch).
    """

    family = "intra-modal"
    citation = "Xie et al. 2025, FG-CLIP 2: A Bilingual Fine-grained Vision-Language Alignment Model"
    requires = frozenset({"text"})
    modality = "text"
    distributed = "global"
    min_batch_size = 2
    hparams = {
        "k": HParam(10, low=1, doc="number of hardest in-batch captions"),
        "threshold": HParam(
            0.95, low=-1.0, high=1.0, doc="similarities above this are near-duplicates and set to 0"
        ),
        "temperature": HParam(
            1.0,
            low=0.0,
            low_open=True,
            search=(0.05, 1.0, True),
            doc="fixed divisor of the similarities (official code: none, i.e. 1)",
        ),
    }
    defaults_source = sources(
        "k threshold temperature",
        DefaultSource(
            "official code 360CVGroup/FG-CLIP fgclip2/model/strcs/fgclip2.py "
            "(hard_category_contrastive_loss)",
            "FG-CLIP 2 stage 2: fine-grained training of a pretrained model on region/box texts, "
            "added with weight 0.1 (region_cc_loss_weight)",
            "yes",
            "temperature 1 = no temperature, as the code",
        ),
    )

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        t = batch.text
        n = t.shape[0]
        if n < self.min_batch_size:
            raise ValueError(
                f"tic needs a batch of at least 2 captions, got {n}: it repels each caption "
                "from the other captions of the batch; set budget.batch_size >= 2"
            )
        p = self.params
        eye = torch.eye(n, dtype=torch.bool, device=t.device)
        sim = t @ t.T
        sim = sim.masked_fill(eye | (sim > p["threshold"]), 0.0)
        k = min(int(p["k"]), n - 1)
        vals = sim.topk(k, dim=1).values
        loss = torch.logsumexp(vals / p["temperature"], dim=1).mean()
        return LossOutput(loss, {"hardest_similarity": vals[:, 0].mean().detach()})


class IntraModal(Objective):
    """Inter-modal plus intra-modal InfoNCE over second views (TCL, Yang et al. 2022, "Vision-
    Language Pre-Training with Triple Contrastive Learning"; the intra-modal term that Mistretta et
    al. 2025, "Cross the Gap", show reduces CLIP's intra-modal misalignment; RCML's inter + intra).

    With L2-normalised image x, text y, second image view x', second phrasing y' and one shared
    scale s = 1/temperature, NCE(a, b) = 1/2 [CE(s A B^T, I) + CE(s B A^T, I)]:

        L = NCE(x, y) + image_weight * NCE(x, x') + text_weight * NCE(y, y')

    NCE(x, y) is exactly the ``clip`` objective, so both weights 0 give CLIP. One learnable
    temperature shared by the three terms (TCL: a single ``temp``, init 0.07), clamped as CLIP.

    Defaults: TCL's code averages the directional terms i2t, t2i, i2i, t2t (and two local MI terms)
    with equal weight, i.e. relative to the averaged cross-modal term each single intra-modal term
    weighs 1/2: image_weight = text_weight = 0.5 (not 1). Variant: TCL's intra-modal keys come
    from a momentum encoder and a queue (one direction, online -> momentum); here both views are
    online and in-batch, so each intra-modal term is symmetric like the cross-modal one. In the
    shapes world x' is a jittered copy of the image and y' the other mention order of the caption.

    Distributed: global negatives (every term's logits span the gathered batch).
    """

    family = "intra-modal"
    citation = "Yang et al. 2022, Vision-Language Pre-Training with Triple Contrastive Learning"
    requires = frozenset({"image", "text", "image_view", "text_view"})
    distributed = "global"
    hparams = {
        "temperature": HParam(
            0.07,
            low=0.0,
            low_open=True,
            search=(0.01, 0.5, True),
            doc="initial shared temperature; logit scale = 1/temperature",
        ),
        "learnable_temperature": HParam(True, doc="optimise log(1/temperature) with the model"),
        "image_weight": HParam(
            0.5, low=0.0, search=(0.0, 2.0, False), doc="weight of the image-image_view InfoNCE"
        ),
        "text_weight": HParam(
            0.5, low=0.0, search=(0.0, 2.0, False), doc="weight of the text-text_view InfoNCE"
        ),
    }
    _tcl = (
        "TCL: image-text pre-training of pretrained ViT/BERT encoders on 4M pairs (CC3M, SBU, "
        "COCO, VG) with a momentum encoder and queue"
    )
    defaults_source = {
        **sources(
            "temperature learnable_temperature",
            DefaultSource("official code (TCL: one learnable temp, init 0.07)", _tcl, "no"),
        ),
        **sources(
            "image_weight text_weight",
            DefaultSource(
                "harness, derived from TCL's code (i2t, t2i, i2i, t2t averaged with equal weight)",
                _tcl,
                "no",
                "relative to the averaged cross-modal term each intra-modal term weighs 1/2",
            ),
        ),
    }

    def __init__(self, **params):
        super().__init__(**params)
        self.scale = self.logit_scale()

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        s = self.scale()
        inter = symmetric_infonce(batch.image, batch.text, s)
        image_intra = symmetric_infonce(batch.image, batch.image_view, s)
        text_intra = symmetric_infonce(batch.text, batch.text_view, s)
        p = self.params
        loss = inter + p["image_weight"] * image_intra + p["text_weight"] * text_intra
        return LossOutput(
            loss,
            {
                "temperature": 1.0 / s.detach(),
                "inter": inter.detach(),
                "image_intra": image_intra.detach(),
                "text_intra": text_intra.detach(),
            },
        )
