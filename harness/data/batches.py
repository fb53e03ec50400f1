"""Training data: batches of the shapes world in a seeded order with truth-preserving augmentation.

The data order and the augmentation draws depend only on the run seed and the step, never on the
objective, so every objective in a comparison sees exactly the same samples (DESIGN: fairness).

Augmentations keep every caption true. The anchor pair is mirrored with probability 1/2 and its
captions (positive, second phrasing and hard negatives) have "left of" and "right of" exchanged
accordingly. The second image view (``image_view``) is a jittered copy (shift by up to 2 pixels and
pixel noise) without a flip, so it depicts the same scene as the anchor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from harness.core.batch import FieldAccess, open_fields
from harness.core.errors import UserError
from harness.core.train_set import MissingFieldError, check_fields
from harness.data.shapes import COLOUR_NAMES, SHAPES, SIZES, ShapesSplit, ShapesWorld, flip_caption

#: fields the shapes world supplies to objectives
SHAPES_FIELDS = frozenset(
    {"image", "text", "image_view", "text_view", "hard_negative_text", "labels", "index", "concepts"}
)
__all__ = ["Batch", "MissingFieldError", "check_fields", "ShapesTrainData", "shard", "Prefetcher", "jitter"]


@open_fields
@dataclass
class Batch(FieldAccess):
    """Model inputs of one step (only the fields an objective asked for are filled).

    Field ``image`` is held as ``images``, ``text`` as ``tokens``; a field declared after the
    built-ins (:func:`harness.core.batch.register_field`) in ``more``: ``batch["caption_b"]``,
    ``batch.caption_b`` and :meth:`tensors` (by field name) read them all."""

    _ALIAS = {"image": "images", "text": "tokens"}

    images: torch.Tensor | None = None  # uint8 (B, H, W, 3)
    tokens: torch.Tensor | None = None  # (B, L)
    image_view: torch.Tensor | None = None
    text_view: torch.Tensor | None = None
    hard_negative_text: torch.Tensor | None = None  # (B, k, L)
    labels: torch.Tensor | None = None
    index: torch.Tensor | None = None
    concepts: torch.Tensor | None = None  # (B, C) float multi-hot
    #: fields declared after the built-ins, by name
    more: dict = field(default_factory=dict)


class ShapesTrainData:
    """The ``train`` split, pre-tokenised (plain and mirrored captions) and held in memory."""

    name = "shapes"
    provides = SHAPES_FIELDS

    def __init__(self, world: ShapesWorld, tokenizer, seed: int, split: str = "train"):
        self.world = world
        self.split: ShapesSplit = world.split(split)
        self.seed = seed
        sp = self.split
        self.images = torch.from_numpy(sp.images)
        self.labels = torch.from_numpy(sp.labels)
        self.concept_names = concept_vocabulary()
        #: classes of the multi-hot ``concepts`` field (CatLIP's head is sized from it in setup())
        self.num_concepts = len(self.concept_names)
        key = (world.fingerprint, split, tuple(getattr(tokenizer, "itos", ())) or id(tokenizer))
        if key not in _TEXT_CACHE:  # tokenised once per world and vocabulary in a process
            _TEXT_CACHE.clear()
            _TEXT_CACHE[key] = _tokenise(sp, tokenizer, self.concept_names)
        self.tokens, self.views, self.negatives, self.concepts = _TEXT_CACHE[key]
        self._order_epoch = -1
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.split)

    @classmethod
    def check_static(cls, requires, objective: str, train_data: str = "shapes") -> None:
        """Raise before training if ``objective`` needs fields this data cannot supply."""
        check_fields(requires, cls.provides, objective, train_data)

    def indices(self, step: int, batch_size: int) -> np.ndarray:
        """Sample indices of ``step``: epochs of seeded permutations, consumed in order."""
        n = len(self)
        if batch_size > n:
            raise UserError(f"batch_size {batch_size} exceeds the {n} training samples")
        per_epoch = n // batch_size  # drop the ragged tail of each epoch
        epoch, pos = divmod(step, per_epoch)
        if epoch != self._order_epoch:
            rng = np.random.default_rng([self.seed, epoch, 2718])
            self._order, self._order_epoch = rng.permutation(n), epoch
        return self._order[pos * batch_size : (pos + 1) * batch_size]

    def batch(self, step: int, batch_size: int, fields: set[str] | frozenset[str]) -> Batch:
        """The inputs of ``step``. Under torch.distributed ``batch_size`` is the global batch: every
        rank draws it identically (order and augmentations) and keeps its own rows."""
        return shard(self._global_batch(step, batch_size, fields), batch_size)

    def _global_batch(self, step: int, batch_size: int, fields: set[str] | frozenset[str]) -> Batch:
        idx_np = self.indices(step, batch_size)
        idx = torch.from_numpy(idx_np)
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + step)
        flip = torch.rand(batch_size, generator=g) < 0.5
        fl = flip.long()
        out = Batch(index=idx if "index" in fields else None)
        if "image" in fields:
            imgs = self.images[idx]
            out.images = torch.where(flip[:, None, None, None], imgs.flip(2), imgs)
        if "text" in fields:
            out.tokens = self.tokens[fl, idx]
        if "text_view" in fields:
            out.text_view = self.views[fl, idx]
        if "hard_negative_text" in fields:
            out.hard_negative_text = self.negatives[fl, idx]
        if "labels" in fields:
            out.labels = self.labels[idx]
        if "concepts" in fields:
            out.concepts = self.concepts[fl, idx]
        if "image_view" in fields:
            base = out.images if out.images is not None else self.images[idx]
            out.image_view = jitter(base, g)
        return out


def world_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` when not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(full: Batch, batch_size: int) -> Batch:
    """This rank's rows of a global batch (rows ``rank*B/W .. (rank+1)*B/W``); the batch itself in
    one process. Every training set draws the global batch identically on every rank, then shards."""
    rank, world = world_info()
    if world == 1:
        return full
    if batch_size % world:
        raise UserError(f"global batch {batch_size} is not divisible by the world size {world}")
    b = batch_size // world
    return full.map(lambda t: t[rank * b : (rank + 1) * b])


_TEXT_CACHE: dict[tuple, tuple[torch.Tensor, ...]] = {}


def _tokenise(sp: ShapesSplit, tokenizer, concept_names: list[str]) -> tuple[torch.Tensor, ...]:
    """Token ids of captions, second phrasings and negatives, plain [0] and mirrored [1]."""
    tok = lambda texts: tokenizer(list(texts))  # noqa: E731
    flip = np.vectorize(flip_caption, otypes=[object])
    n, k = sp.negatives.shape
    tokens = torch.stack([tok(sp.captions), tok(flip(sp.captions))])
    views = torch.stack([tok(sp.alt_captions), tok(flip(sp.alt_captions))])
    negs = sp.negatives.reshape(-1)
    negatives = torch.stack([tok(negs), tok(flip(negs))]).view(2, n, k, -1)
    concepts = torch.stack(
        [multi_hot(sp.captions, concept_names), multi_hot(flip(sp.captions), concept_names)]
    )
    return tokens, views, negatives, concepts


class Prefetcher:
    """Batches of steps ``0..steps-1`` prepared by ``workers`` background threads, ``depth`` ahead,
    in order; pinned (page-locked) on CUDA so host-to-device copies can overlap compute.

    Batches depend only on the step, so prefetching changes nothing in what is trained on.
    """

    def __init__(
        self, data, steps: int, batch_size: int, fields, workers: int = 1, depth: int = 2, pin: bool = False
    ):
        from concurrent.futures import ThreadPoolExecutor

        self.data, self.steps, self.batch_size, self.fields, self.pin = data, steps, batch_size, fields, pin
        self.depth = max(1, depth)
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="harness-data")
        self.pending: dict[int, object] = {}
        self._lock = __import__("threading").Lock()

    def __len__(self) -> int:
        return len(self.data)

    def _make(self, step: int) -> Batch:
        with self._lock:  # ShapesTrainData keeps a per-epoch permutation: one producer at a time
            b = self.data.batch(step, self.batch_size, self.fields)
        if self.pin:
            b = b.map(torch.Tensor.pin_memory)
        return b

    def batch(self, step: int, batch_size: int, fields) -> Batch:
        for s in range(step, min(step + self.depth + 1, self.steps)):
            if s not in self.pending:
                self.pending[s] = self.pool.submit(self._make, s)
        fut = self.pending.pop(step, None) or self.pool.submit(self._make, step)
        return fut.result()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def concept_vocabulary() -> list[str]:
    """Content words of the shapes grammar: sizes, colours, shapes and relation words."""
    return [*SIZES, *COLOUR_NAMES, *SHAPES, "left", "right", "above", "below"]


def multi_hot(captions, names: list[str]) -> torch.Tensor:
    index = {w: i for i, w in enumerate(names)}
    out = torch.zeros(len(captions), len(names))
    for row, cap in enumerate(captions):
        for w in str(cap).split():
            j = index.get(w)
            if j is not None:
                out[row, j] = 1.0
    return out


def jitter(images: torch.Tensor, g: torch.Generator, max_shift: int = 2, noise: float = 6.0) -> torch.Tensor:
    """Shift each uint8 image by up to ``max_shift`` pixels (edge-replicated) and add pixel noise."""
    b, h, w, _ = images.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=g)
    x = images.float()
    ys = (torch.arange(h)[None, :] - shifts[:, :1]).clamp(0, h - 1)  # (b, h)
    xs = (torch.arange(w)[None, :] - shifts[:, 1:]).clamp(0, w - 1)  # (b, w)
    bi = torch.arange(b)[:, None, None]
    x = x[bi, ys[:, :, None], xs[:, None, :]]
    x = x + noise * torch.randn(x.shape, generator=g)
    return x.clamp_(0, 255).to(torch.uint8)
