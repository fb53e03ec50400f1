"""What an objective sees: :class:`EmbeddingBatch`, and what it returns: :class:`LossOutput`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

#: batch fields an objective may require, and what supplies each one
FIELDS = {
    "image": "every image-text dataset",
    "text": "every dataset with captions",
    "image_view": "a second augmented view of each image (shapes world: truth-preserving jitter)",
    "text_view": "a second phrasing of each caption (shapes world: the other mention order)",
    "hard_negative_text": "generated hard-negative captions (shapes world: attribute swap, "
    "relation swap, object replacement)",
    "labels": "class labels (shapes world: the id of each scene's complete description)",
    "index": "the sample's index in the training set (per-sample state, e.g. learned temperatures)",
    "concepts": "multi-hot caption concepts, (B, C) float (shapes world: the colour, shape, size and "
    "relation words of the caption; CatLIP-style classification targets)",
}


@dataclass
class EmbeddingBatch:
    """L2-normalised embeddings of one training batch.

    ``image`` and ``text`` are (B, d); ``image_view``/``text_view`` are second views (B, d);
    ``hard_negative_text`` is (B, k, d); ``labels`` and ``index`` are (B,) integer tensors.
    Under torch.distributed, ``rank``/``world_size`` say where this shard sits in the global batch.
    """

    image: torch.Tensor | None = None
    text: torch.Tensor | None = None
    image_view: torch.Tensor | None = None
    text_view: torch.Tensor | None = None
    hard_negative_text: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    index: torch.Tensor | None = None
    concepts: torch.Tensor | None = None
    rank: int = 0
    world_size: int = 1
    extras: dict = field(default_factory=dict)

    def present(self) -> set[str]:
        return {f.name for f in fields(self) if f.name in FIELDS and getattr(self, f.name) is not None}

    @property
    def size(self) -> int:
        for name in ("image", "text", "image_view", "text_view"):
            t = getattr(self, name)
            if t is not None:
                return int(t.shape[0])
        raise ValueError("empty EmbeddingBatch")


@dataclass
class LossOutput:
    """A scalar ``loss`` to minimise and ``logs``: values worth plotting (temperature, terms).

    Log values may be detached 0-d tensors: the trainer reads them back only at logging steps,
    so an objective never forces a device sync per step.
    """

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)
