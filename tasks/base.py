"""The :class:`Task` interface, results, and the shared embedding cache."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import torch

from harness.sources import DataOptions, HubSource, ImageColumn, fingerprint, load_table, origin


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
    #: how the numbers were made, where a reader could assume otherwise: the linear-probe protocol,
    #: the class names a zero-shot task prompts with, the tie rule of a k-way choice, ...
    protocol: dict[str, Any] = field(default_factory=dict)
    #: what a leaderboard needs about the task, recorded with the run so that a board is rebuilt from
    #: the runs alone, never from the installed registry: the task's family; whether it is an aggregate
    #: of other tasks (sts-avg); whether it is a diagnostic (family geometry, or an aggregate): shown,
    #: never ranked; and ``breakdown``, a grouping of metrics for plots (see :func:`breakdown_of`)
    family: str = ""
    diagnostic: bool = False
    aggregate: bool = False
    breakdown: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def breakdown_of(pattern: str | None, metrics: dict[str, float]) -> dict[str, Any]:
    """The metrics that match ``pattern`` grouped by its placeholders, or {} (no pattern, no match).

    ``pattern`` is a metric key with ``{level}`` placeholders, one path segment each, optionally
    restricted to a regular expression: ``{split}/{negative:attribute_swap|relation_swap}/acc``. The
    result is ``{"pattern": ..., "levels": ["split", "negative"], "metrics": {"test/relation_swap/acc":
    ["test", "relation_swap"], ...}}``, metrics in their recorded order."""
    if not pattern:
        return {}
    levels, parts = [], []
    for seg in pattern.split("/"):
        hit = re.fullmatch(r"\{(\w+)(?::([^{}]+))?\}", seg)
        if hit:
            levels.append(hit[1])
            parts.append(f"(?P<{hit[1]}>{hit[2] or '[^/]+'})")
        else:
            parts.append(re.escape(seg))
    rx = re.compile("/".join(parts))
    found = {k: [hit[level] for level in levels] for k in metrics if (hit := rx.fullmatch(k))}
    return {"pattern": pattern, "levels": levels, "metrics": found} if found else {}


def task_meta(results: list[TaskResult]) -> dict[str, dict[str, Any]]:
    """Per task, what a leaderboard reads about it: the run tag ``harness.task_meta`` (JSON), so a
    board needs no artifact download and no installed task to rank the run."""
    return {r.task: {"family": r.family, "main_metric": r.main_metric, "higher_is_better": r.higher_is_better,
                     "diagnostic": r.diagnostic, "aggregate": r.aggregate, "breakdown": r.breakdown}
            for r in results}


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
    #: local paths of real datasets and the strict-images flag (tasks reading Hub / local data)
    data: DataOptions = field(default_factory=DataOptions)

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
    #: an aggregate of other tasks' scores (e.g. sts-avg): shown on leaderboards, never ranked
    #: alongside its members (that would count them twice)
    aggregate: ClassVar[bool] = False
    #: metric keys grouped for plots, e.g. ``{split}/{negative}/acc`` (see :func:`breakdown_of`)
    breakdown: ClassVar[str | None] = None

    def evaluate(self, ctx: EvalContext) -> TaskResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_data(self, options: DataOptions) -> None:
        """Raise if the task's data is missing or malformed; called before training. Tasks on
        generated data have nothing to check."""

    def data_identity(self, options: DataOptions, validation: bool = False) -> dict[str, str] | None:
        """What the run identity records of the data this task scores on: the split and a
        fingerprint of its content. None for generated data (the shapes world's spec is already
        part of the identity)."""
        return None

    @classmethod
    def has_validation(cls) -> bool:
        """Whether the task can run in validation mode (tuning, checkpoint selection) without
        reading test data. The shapes world has a ``val`` split for every task."""
        return True

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
            higher_is_better=self.higher_is_better, version=self.version, family=self.family,
            aggregate=bool(self.aggregate), diagnostic=self.family == "geometry" or bool(self.aggregate),
            breakdown=breakdown_of(self.breakdown, metrics), **kw,
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


class DatasetTask(Task):
    """A task on a real dataset (Hugging Face Hub or a local copy in the same format).

    Subclasses declare ``source`` (a :class:`HubSource`: id, config, split, pinned revision),
    ``columns`` (what :meth:`table` requires) and, under validation (tuning, checkpoint
    selection), ``validation_source`` / ``validation_split``: a split that is never the test split,
    or None when the dataset has none (then validation mode refuses the task).
    """

    source: ClassVar[HubSource]
    columns: ClassVar[tuple[str, ...]] = ()
    validation_split: ClassVar[str | None] = None
    default_train_data: ClassVar[str] = "shapes"

    @classmethod
    def describe(cls) -> dict[str, Any]:
        d = super().describe()
        src = getattr(cls, "source", None)
        if src is not None:
            d.update(dataset=src.repo, revision=src.revision, split=src.split, config=src.config,
                     gated=src.gated)
        return d

    @classmethod
    def has_validation(cls) -> bool:
        return cls.validation_split is not None

    def split_name(self, ctx: EvalContext) -> str:
        if not ctx.validation:
            return self.source.split
        if self.validation_split is None:
            raise ValueError(f"task {self.name!r} has no validation split; it cannot be used for tuning "
                             "or checkpoint selection (its only split is the test split)")
        return self.validation_split

    #: other Hub layouts of the same data, used when one of them (not :attr:`source`) is found locally
    alternatives: ClassVar[tuple[HubSource, ...]] = ()

    def source_for(self, options: DataOptions) -> HubSource:
        """:attr:`source`, or an alternative layout found locally when the main one is not."""
        if options.local_path(self.name, self.source.repo) is None:
            for alt in self.alternatives:
                if options.local_path(alt.repo) is not None:
                    return alt
        return self.source

    def check_data(self, options: DataOptions) -> None:
        load_table(self.name, self.source_for(options), options, self.columns)

    def data_identity(self, options: DataOptions, validation: bool = False) -> dict[str, str]:
        """The scored split and its content fingerprint (a local copy or the Hub revision that was
        resolved), so the same model evaluated on other data, or on validation instead of test, is
        another run."""
        split = self.split_name(EvalContext(encoder=None, validation=validation, data=options))
        # the default split is the table check_data already loaded (split None), not a second read
        table = load_table(self.name, self.source_for(options), options, self.columns,
                           split=None if split == self.source.split else split)
        return {"split": split, "fingerprint": fingerprint(table)}

    def table(self, ctx: EvalContext, split: str | None = None):
        return load_table(self.name, self.source_for(ctx.data), ctx.data, self.columns,
                          split=split or self.split_name(ctx))

    def images(self, ctx: EvalContext, table, column, split: str | None = None, **kw) -> ImageColumn:
        """Lazily decoded images of ``table[column]``; their embeddings are cached by table content,
        so tasks reading the same images (CIFAR zero-shot and linear probe) encode them once."""
        return ImageColumn(table, column, name=f"{self.source.repo}/{split or self.split_name(ctx)}",
                           strict=ctx.data.strict_images, **kw)

    def image_embeddings(self, ctx: EvalContext, column: ImageColumn, table) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of ``column`` (cached per encoder and table) and a bool mask of the rows whose
        image decoded (NaN rows are the undecodable ones)."""
        key = (id(ctx.encoder), fingerprint(table), column.key(), "image")
        emb = ctx.cache.get(key, lambda: ctx.encoder.encode_image(column))
        return emb, ~torch.isnan(emb).any(dim=1)

    def text_embeddings(self, ctx: EvalContext, table, name: str, texts) -> torch.Tensor:
        return ctx.cache.text(ctx.encoder, fingerprint(table), "", name, texts)

    def where(self, table) -> str:
        """The task and where its table came from (a local path or the Hub source), for errors."""
        return f"{self.name} ({origin(table) or self.source.describe()})"

    def provenance(self, table) -> dict[str, Any]:
        """``dataset`` and ``dataset_fingerprint`` for :meth:`Task.result`."""
        return {"dataset": origin(table) or self.source.repo, "dataset_fingerprint": fingerprint(table)}

