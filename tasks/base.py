"""The :class:`Task` interface, results, and the shared embedding cache."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import torch


@dataclass
class TaskResult:
    """What a task reports: metrics (CLIP_benchmark / MTEB key names), the main score, per-item
    predictions, and where the numbers came from."""

    task: str
    metrics: dict[str, float]
    main_score: float
    main_metric: str
    higher_is_better: bool = True
    predictions: list[dict[str, Any]] = field(default_factory=list)
    #: per test item, a value whose mean is the main score (for paired bootstrap tests over items)
    item_scores: list[float] | None = None
    dataset: str = ""
    dataset_fingerprint: str = ""
    n_items: int = 0
    version: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EmbeddingCache:
    """Embeddings computed once per (encoder, dataset, split, modality) and shared by tasks."""

    def __init__(self):
        self._store: dict[tuple, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self._store:
            self.hits += 1
        else:
            self.misses += 1
            self._store[key] = compute()
        return self._store[key]

    def image(self, encoder, dataset: str, split: str, images) -> torch.Tensor:
        return self.get((id(encoder), dataset, split, "image"), lambda: encoder.encode_image(images))

    def text(self, encoder, dataset: str, split: str, name: str, texts) -> torch.Tensor:
        """Texts keyed by content hash too, so equal caption lists share one encoding."""
        digest = hashlib.sha1("\n".join(map(str, texts)).encode()).hexdigest()[:12]
        return self.get((id(encoder), dataset, split, name, digest), lambda: encoder.encode_text(list(texts)))


@dataclass
class EvalContext:
    """What tasks evaluate: the encoder, the run's shapes world, the shared embedding cache.

    ``validation=True`` (tuning, checkpoint selection) redirects every evaluation split to the
    ``val`` split: tasks ask ``ctx.split("test")`` rather than naming a split, so selection never
    sees test data.
    """

    encoder: Any
    world: Any = None  # the ShapesWorld of the run (shapes tasks)
    cache: EmbeddingCache = field(default_factory=EmbeddingCache)
    validation: bool = False

    def split(self, name: str) -> str:
        return "val" if self.validation and name in ("test", "heldout", "zeroshot") else name


class Task:
    """A registered evaluation: declared data plus ``evaluate(ctx) -> TaskResult``."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    main_score: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    dataset: ClassVar[str] = ""
    revision: ClassVar[str | None] = None
    default_train_data: ClassVar[str] = "shapes"
    license: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    #: which towers the task evaluates: "image-text", "text" or "image"
    modality: ClassVar[str] = "image-text"
    requires: ClassVar[frozenset[str]] = frozenset()

    def evaluate(self, ctx: EvalContext) -> TaskResult:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "name": cls.name, "family": cls.family, "version": cls.version,
            "main_score": cls.main_score, "higher_is_better": cls.higher_is_better,
            "dataset": cls.dataset, "revision": cls.revision, "modality": cls.modality,
            "default_train_data": cls.default_train_data, "license": cls.license,
            "citation": cls.citation, "requires": sorted(cls.requires),
        }

    def result(self, metrics: dict[str, float], **kw) -> TaskResult:
        return TaskResult(
            task=self.name, metrics={k: float(v) for k, v in metrics.items()},
            main_score=float(metrics[self.main_score]), main_metric=self.main_score,
            higher_is_better=self.higher_is_better, version=self.version, **kw,
        )


class Suite(Task):
    """A named group of tasks, expanded into its members when a run is resolved."""

    family = "suite"
    members: ClassVar[tuple[str, ...]] = ()

    def evaluate(self, ctx: EvalContext) -> TaskResult:  # pragma: no cover - expanded before running
        raise TypeError(f"suite {self.name!r} is expanded into its tasks before evaluation")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {**super().describe(), "main_score": "(suite)", "dataset": ", ".join(cls.members)}
