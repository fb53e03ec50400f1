"""The :class:`Task` interface, its declared metadata (:class:`TaskMeta`, checked when a task class
is defined or registered), its results, the evaluation context with the shared embedding cache, and
the task registry (entry-point group ``harness.tasks``, built-ins included)."""

from __future__ import annotations

import functools
import hashlib
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import torch

from harness.core.data import DataOptions, HubSource
from harness.core.registry import Registry

#: the families of the built-in tasks; a plugin may declare another (any non-empty name)
FAMILIES = (
    "retrieval",
    "zeroshot",
    "linear_probe",
    "sts",
    "compositionality",
    "intra_modal_retrieval",
    "geometry",
    "suite",
)
#: the towers a task evaluates
MODALITIES = ("image-text", "text", "image")


class TaskDeclarationError(TypeError):
    """A task class whose declared metadata is invalid (raised when it is defined or registered)."""


class TaskRegistry(Registry["Task"]):
    """The task registry: a class is checked (:meth:`TaskMeta.of`) when registered or loaded."""

    def _check(self, name: str, obj: Any) -> None:
        super()._check(name, obj)
        TaskMeta.of(obj, name)


#: every task, by name: the entry points of ``harness.tasks`` (``base`` is set once Task exists)
TASKS: TaskRegistry = TaskRegistry("task", "harness.tasks")
register = TASKS.register

_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^{}]+))?\}")


@functools.lru_cache(maxsize=None)
def metric_pattern(pattern: str) -> re.Pattern:
    """The regular expression of a declared metric key: literal text, where ``{level}`` stands for
    any text without ``/`` and ``{level:a|b}`` for a regular expression (``{target}/acc1``,
    ``{split:test|heldout}/macro_acc``, ``{kind:text|image|group}_score/{tag}``)."""
    parts, pos = [], 0
    for hit in _PLACEHOLDER.finditer(pattern):
        parts += [re.escape(pattern[pos : hit.start()]), f"(?:{hit[2] or '[^/]+'})"]
        pos = hit.end()
    rest = pattern[pos:]
    if "{" in rest or "}" in rest or any("{" in p or "}" in p for p in parts[::2]):
        raise ValueError(f"unbalanced braces in metric pattern {pattern!r}")
    return re.compile("".join(parts) + re.escape(rest))


def _valid_pattern(p: Any) -> bool:
    try:
        return isinstance(p, str) and bool(p) and bool(metric_pattern(p))
    except (ValueError, re.error):
        return False


def declares(metrics: tuple[str, ...], key: str) -> bool:
    """Whether ``key`` is one of the declared ``metrics`` (keys or :func:`metric_pattern` patterns)."""
    return any(metric_pattern(p).fullmatch(key) for p in metrics)


@dataclass(frozen=True)
class TaskMeta:
    """What a task declares, checked: built from its class attributes by :meth:`of` (``Task.meta``),
    when the class is defined (for a named class) and when it is registered. ``metrics`` lists the
    keys the task may report (patterns allowed, :func:`metric_pattern`); ``()`` means undeclared (a
    task written before the declaration existed: only its main score is checked, in ``result``).
    A task with a ``source`` (a :class:`HubSource`, tasks/base.py's ``DatasetTask``) takes its dataset,
    revision and split from it."""

    name: str
    family: str
    version: str
    main_score: str
    higher_is_better: bool
    metrics: tuple[str, ...]
    modality: str
    dataset: str
    revision: str | None
    splits: tuple[str, ...]
    default_train_data: str
    license: str
    citation: str
    requires: frozenset[str]
    aggregate: bool
    breakdown: str | None

    @classmethod
    def of(cls, task: type, name: str | None = None) -> "TaskMeta":
        """The metadata ``task`` declares, or :class:`TaskDeclarationError` naming every problem."""
        name = task.name if name is None else name
        a = {f: getattr(task, f, None) for f in cls.__dataclass_fields__ if f != "name"}
        src = getattr(task, "source", None)
        if isinstance(src, HubSource):
            a.update(dataset=src.repo, revision=src.revision, splits=(src.split,))
        for k, kind in (("metrics", tuple), ("splits", tuple), ("requires", frozenset)):
            if isinstance(a[k], (tuple, list, set, frozenset)):
                a[k] = kind(a[k])  # other types are left for problems() to name
        meta = cls(name=name or "", **a)
        problems = meta.problems() + task.declaration_problems()
        if problems:
            where = f"{task.__module__}:{task.__qualname__}"
            raise TaskDeclarationError(f"task {name!r} ({where}): " + "; ".join(problems))
        return meta

    def problems(self) -> list[str]:
        """What is wrong with the declaration (empty when it is valid)."""
        out = []

        def text(k: str, empty: bool = False, none: bool = False) -> None:
            v = getattr(self, k)
            if not ((none and v is None) or (isinstance(v, str) and (empty or v))):
                kind = ("a string" if empty else "a non-empty string") + (" or None" if none else "")
                out.append(f"{k} must be {kind}, got {v!r}")

        for k in ("family", "version", "default_train_data"):
            text(k)
        for k in ("dataset", "license", "citation", "main_score"):
            text(k, empty=True)
        text("revision", none=True)
        text("breakdown", empty=True, none=True)
        for k in ("higher_is_better", "aggregate"):
            if not isinstance(getattr(self, k), bool):
                out.append(f"{k} must be True or False, got {getattr(self, k)!r}")
        if self.modality not in MODALITIES:
            out.append(f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        names = isinstance(self.splits, tuple) and all(isinstance(s, str) and s for s in self.splits)
        if not (names and self.splits):
            out.append(f"splits must be a non-empty tuple of split names, got {self.splits!r}")
        fields = isinstance(self.requires, frozenset) and all(isinstance(r, str) and r for r in self.requires)
        if not fields:
            out.append(f"requires must be a set of batch field names, got {self.requires!r}")
        if not isinstance(self.metrics, tuple):
            out.append(f"metrics must be a tuple of metric keys, got {self.metrics!r}")
            return out
        bad = [p for p in self.metrics if not _valid_pattern(p)]
        out += [
            f"metric key {p!r} must be a non-empty string with balanced {{level}} placeholders" for p in bad
        ]
        if (
            self.metrics
            and not bad
            and isinstance(self.main_score, str)
            and self.main_score
            and not declares(self.metrics, self.main_score)
        ):
            out.append(
                f"main_score {self.main_score!r} is not among the metrics it declares "
                f"({', '.join(self.metrics)})"
            )
        return out

    def check_metrics(self, metrics: dict[str, Any]) -> None:
        """Refuse a metrics dict without the main score or, when metrics are declared, with a key the
        task does not declare (a typo in a key, or a declaration out of date)."""
        if self.main_score not in metrics:
            raise ValueError(
                f"task {self.name!r} reported no {self.main_score!r} (its main score); it "
                f"reported: {', '.join(metrics) or '(nothing)'}"
            )
        extra = [k for k in metrics if self.metrics and not declares(self.metrics, k)]
        if extra:
            raise ValueError(
                f"task {self.name!r} reported metrics it does not declare: {', '.join(extra)}; "
                f"it declares: {', '.join(self.metrics)}"
            )

    def describe(self) -> dict[str, Any]:
        """What ``harness list tasks`` shows of the task."""
        return {
            "name": self.name,
            "family": self.family,
            "version": self.version,
            "main_score": self.main_score,
            "higher_is_better": self.higher_is_better,
            "dataset": self.dataset,
            "revision": self.revision,
            "modality": self.modality,
            "default_train_data": self.default_train_data,
            "license": self.license,
            "citation": self.citation,
            "requires": sorted(self.requires),
            "metrics": list(self.metrics),
        }


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
    return {
        r.task: {
            "family": r.family,
            "main_metric": r.main_metric,
            "higher_is_better": r.higher_is_better,
            "diagnostic": r.diagnostic,
            "aggregate": r.aggregate,
            "breakdown": r.breakdown,
        }
        for r in results
    }


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


class _Meta:
    """``Task.meta``: the class's :class:`TaskMeta`, built when asked for (class attributes may be set
    after the class statement, as the registry sets ``name``)."""

    def __get__(self, obj: Any, cls: type) -> TaskMeta:
        return TaskMeta.of(cls)


class Task:
    """A registered evaluation: declared metadata plus ``score(ctx, split) -> (metrics, extras)``
    (or, in full, ``evaluate(ctx) -> TaskResult``).

    The metadata are class attributes, checked as a :class:`TaskMeta` when a named class is defined
    (a name comes from the task's entry point, or an explicit ``name``) and when it is registered, so
    a main score the task does not declare among its ``metrics`` fails there, not at the end of an
    evaluation. :meth:`evaluate` times :meth:`score` on the split :meth:`split_name` picks and
    builds the result; family bases (tasks/base.py ``ShapesTask``, ``DatasetTask``) add the data.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    main_score: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    #: the metric keys the task reports, ``{level}`` patterns allowed (:func:`metric_pattern`); the
    #: main score must be one; ``()``: undeclared (then only the main score is checked)
    metrics: ClassVar[tuple[str, ...]] = ()
    dataset: ClassVar[str] = ""
    revision: ClassVar[str | None] = None
    #: the splits it reports on (before ``ctx.split`` redirects them to ``val`` under validation)
    splits: ClassVar[tuple[str, ...]] = ("test",)
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
    meta: ClassVar[TaskMeta] = _Meta()  # type: ignore[assignment]

    def __init_subclass__(cls, **kw):
        """A built-in or plugin task is named once, by its entry point: the class learns the name
        when it is defined (an explicit ``name`` in the class body wins). A named class's metadata
        are checked then (:class:`TaskDeclarationError`); unnamed ones are family bases."""
        super().__init_subclass__(**kw)
        if "name" not in cls.__dict__:
            cls.name = TASKS.name_of(cls) or ""
        if cls.name:
            TaskMeta.of(cls)

    @classmethod
    def declaration_problems(cls) -> list[str]:
        """Checks of a family's own declarations, beyond :meth:`TaskMeta.problems`."""
        return [] if cls.main_score else ["declares no main_score"]

    def split_name(self, ctx: EvalContext) -> str:
        """The split :meth:`evaluate` scores: the first of :attr:`splits`, ``val`` under validation."""
        return ctx.split(self.splits[0])

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        """:meth:`score` on :meth:`split_name`, timed, as a :class:`TaskResult`."""
        t0 = time.perf_counter()
        metrics, extras = self.score(ctx, self.split_name(ctx))
        return self.result(metrics, seconds=time.perf_counter() - t0, **extras)

    def score(self, ctx: EvalContext, split: str) -> tuple[dict[str, float], dict[str, Any]]:
        """The metrics on ``split`` and further :class:`TaskResult` fields (predictions, item_scores,
        dataset, dataset_fingerprint, n_items, protocol)."""
        raise NotImplementedError(f"task {self.name!r} implements neither score() nor evaluate()")

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
        return cls.meta.describe()

    def result(self, metrics: dict[str, float], **kw) -> TaskResult:
        """The :class:`TaskResult` of ``metrics``; refuses metrics without the main score or with
        undeclared keys (:meth:`TaskMeta.check_metrics`)."""
        self.meta.check_metrics(metrics)
        return TaskResult(
            task=self.name,
            metrics={k: float(v) for k, v in metrics.items()},
            main_score=float(metrics[self.main_score]),
            main_metric=self.main_score,
            higher_is_better=self.higher_is_better,
            version=self.version,
            family=self.family,
            aggregate=bool(self.aggregate),
            diagnostic=self.family == "geometry" or bool(self.aggregate),
            breakdown=breakdown_of(self.breakdown, metrics),
            **kw,
        )


class Suite(Task):
    """A named group of tasks, expanded into its members when a run is resolved."""

    family = "suite"
    members: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def declaration_problems(cls) -> list[str]:
        m = cls.members
        ok = isinstance(m, tuple) and m and all(isinstance(x, str) and x for x in m)
        return [] if ok else [f"members must be a non-empty tuple of task names, got {cls.members!r}"]

    def evaluate(self, ctx: EvalContext) -> TaskResult:  # pragma: no cover - expanded before running
        raise TypeError(f"suite {self.name!r} is expanded into its tasks before evaluation")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {**super().describe(), "main_score": "(suite)", "dataset": ", ".join(cls.members)}


TASKS.base = Task
