"""An example plugin objective: InfoNCE with an additive margin on the positive pair.

AM-softmax style margin (Wang et al. 2018, "Additive Margin Softmax for Face Verification"),
applied to both directions of CLIP's symmetric InfoNCE:

    L = 1/2 [ CE(s (X Y^T - m I), I) + CE(s (Y X^T - m I), I) ]

Installed with ``pip install -e examples/harness-plugin-example``, it appears in
``harness list objectives`` and trains with ``harness run --objective margin-infonce``.
"""

import torch
import torch.nn.functional as F

from harness.core.batch import EmbeddingBatch, LossOutput
from objectives import HParam, LearnableScale, Objective


class MarginInfoNCE(Objective):
    family = "softmax"
    citation = "Wang et al. 2018, Additive Margin Softmax for Face Verification"
    requires = frozenset({"image", "text"})
    distributed = "global"
    hparams = {
        "temperature": HParam(0.07, low=0.0, low_open=True, search=(0.01, 0.5, True)),
        "margin": HParam(0.1, low=0.0, high=1.0, search=(0.0, 0.4, False)),
    }

    def __init__(self, **params):
        super().__init__(**params)
        self.scale = LearnableScale(1.0 / self.params["temperature"])

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        sim = batch.image @ batch.text.T
        sim = sim - self.params["margin"] * torch.eye(sim.shape[0], device=sim.device, dtype=sim.dtype)
        logits = self.scale() * sim
        target = torch.arange(sim.shape[0], device=sim.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return LossOutput(loss, {"temperature": 1 / self.scale().detach()})

    def after_step(self) -> None:
        self.scale.clamp_()
