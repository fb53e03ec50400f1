"""Sigmoid (pairwise binary) objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.batch import EmbeddingBatch, LossOutput
from harness.core.objective import DefaultSource, HParam, Objective, sources
from objectives.tiled import tiled_sigmoid


class SigLIP(Objective):
    """Pairwise sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training").

    Every image-text pair is an independent binary problem with label z_ij = +1 on the diagonal and
    -1 elsewhere, logits s x_i.y_j + b:

        L = -1/B sum_i sum_j log sigmoid( z_ij (s x_i.y_j + b) )

    exactly open_clip's ``SigLipLoss``. Paper defaults: t' = log 10 (temperature 0.1) and
    b = -10, both learnable; the scale is clamped to <= 100 after each step as open_clip does.

    With ``budget.loss_chunk_size`` the loss is computed in chunks (``objectives.tiled``).

    Distributed: global negatives (each rank's images against every rank's texts).
    """

    family = "sigmoid"
    citation = "Zhai et al. 2023, Sigmoid Loss for Language Image Pre-Training"
    requires = frozenset({"image", "text"})
    distributed = "global"
    hparams = {
        "temperature": HParam(
            0.1,
            low=0.0,
            low_open=True,
            search=(0.02, 0.5, True),
            doc="initial temperature; logit scale = 1/temperature (t' = log 10)",
        ),
        "bias": HParam(-10.0, search=(-15.0, 0.0, False), doc="initial logit bias b"),
        "learnable_temperature": HParam(True),
    }
    defaults_source = sources(
        "temperature bias learnable_temperature",
        DefaultSource(
            'paper ("we initialize t\' and b to log 10 and -10"); open_clip main.py --siglip',
            "WebLI image-text pre-training from scratch (B/16), batch 8k-32k, one view per modality",
            "yes",
            "both learnable; Table 4 (batch 8k) ablates b and t'",
        ),
    )

    def __init__(self, **params):
        super().__init__(**params)
        p = self.params
        self.scale = self.logit_scale()
        self.bias = nn.Parameter(torch.tensor(float(p["bias"])))

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        s = self.scale()
        n = batch.image.shape[0]
        if self.loss_chunk_size and self.loss_chunk_size < n:  # exact, without the B x B logits
            loss = tiled_sigmoid(batch.image, batch.text, s, self.bias, self.loss_chunk_size)
        else:
            logits = s * batch.image @ batch.text.T + self.bias
            z = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
            loss = -F.logsigmoid(z * logits).sum() / n
        return LossOutput(loss, {"temperature": 1.0 / s.detach(), "bias": self.bias.detach()})
