"""Softmax (InfoNCE) objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.core.batch import EmbeddingBatch, LossOutput
from harness.core.objective import DefaultSource, HParam, Objective
from objectives.tiled import tiled_infonce


def symmetric_ce(logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """1/2 [CE(L, I) + CE(L^T, I)] over a (B, B) logit matrix whose diagonal holds the positives."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (
        F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        + F.cross_entropy(logits.T, target, label_smoothing=label_smoothing)
    ) / 2


def symmetric_infonce(
    a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """1/2 [CE(s A B^T, I) + CE(s B A^T, I)]: row i of ``a`` is paired with row i of ``b``."""
    return symmetric_ce(scale * a @ b.T, label_smoothing)


class CLIP(Objective):
    """Symmetric InfoNCE over image-text pairs (CPC, van den Oord et al. 2018; CLIP, Radford et al.
    2021, "Learning Transferable Visual Models From Natural Language Supervision").

    With L2-normalised image/text embeddings x_i, y_i and scale s = exp(t) = 1/temperature:

        L = 1/2 [ CE(s X Y^T, I) + CE(s Y X^T, I) ]

    i.e. the mean over rows of -log softmax of the matching pair, image->text and text->image,
    exactly open_clip's ``ClipLoss``. The temperature is learnable from log(1/0.07) and clamped to
    scale <= 100 after every step, as in CLIP. ``label_smoothing`` is torch's cross-entropy option.

    With ``budget.loss_chunk_size`` the loss is computed tiled (``objectives.tiled``, Inf-CL style):
    equal values and gradients without materialising the B x B logits.

    Distributed: global negatives (the logits span every rank's batch).
    """

    family = "softmax"
    citation = "Radford et al. 2021, Learning Transferable Visual Models From Natural Language Supervision"
    requires = frozenset({"image", "text"})
    distributed = "global"
    hparams = {
        "temperature": HParam(
            0.07,
            low=0.0,
            low_open=True,
            search=(0.01, 0.5, True),
            doc="initial temperature; logit scale = 1/temperature",
        ),
        "learnable_temperature": HParam(True, doc="optimise log(1/temperature) with the model"),
        "label_smoothing": HParam(0.0, low=0.0, high=1.0, high_open=True, search=(0.0, 0.2, False)),
    }
    defaults_source = {
        "temperature": DefaultSource(
            "paper; open_clip CLIP(init_logit_scale=log(1/0.07))",
            "WIT-400M image-text pre-training from scratch, batch 32768, one view per modality",
            "yes",
            "open_clip's init_logit_scale; the learned scale is clamped at 100 (temperature 0.01)",
        ),
        "learnable_temperature": DefaultSource(
            "paper; open_clip logit_scale", "as temperature", "yes", "learned, clamped to scale <= 100"
        ),
        "label_smoothing": DefaultSource(
            "open_clip ClipLoss (no smoothing)",
            "as temperature",
            "yes",
            "Fini et al. 2023's improved CLIP recipe uses 0.1 (CC3M/CC12M/YFCC15M, batch 4096)",
        ),
    }

    def __init__(self, **params):
        super().__init__(**params)
        self.scale = self.logit_scale()

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        s = self.scale()
        chunk, ls = self.loss_chunk_size, self.params["label_smoothing"]
        if chunk and chunk < batch.image.shape[0]:  # exact, without the B x B logits
            loss = tiled_infonce(batch.image, batch.text, s, chunk, label_smoothing=ls)
        else:
            loss = symmetric_infonce(batch.image, batch.text, s, ls)
        return LossOutput(loss, {"temperature": 1.0 / s.detach()})
