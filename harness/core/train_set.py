"""The training-data protocol: a named training set (:class:`TrainSet`), the data it builds for
the trainer (:class:`TrainData`), and their registry :data:`TRAIN_SETS`.

Training sets are registered under the entry-point group ``harness.train_data``, built-ins included
(pyproject.toml), so a plugin package is found exactly like a built-in one; a class is named by its
entry point (an explicit ``name`` in the class body wins). A training set declares the batch fields
it ``provides``; a field the core does not know yet is declared in ``fields`` (a
:class:`~harness.core.batch.BatchField` with the tower that encodes it) and registered with the
class, so objectives may require it and the trainer encodes it with no edit to the harness.

A run calls :meth:`TrainSet.check` before anything is written (the objective's fields and towers,
then the data itself), then :meth:`TrainSet.build`, whose result the trainer draws batches from, and
tags the run with :meth:`TrainSet.fingerprint` of it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from harness.core.batch import FIELDS, BatchField, register_field
from harness.core.data import DataOptions, HubSource
from harness.core.errors import UserError
from harness.core.registry import Registry

#: the towers each modality trains or feeds
TOWERS = {"image-text": {"image", "text"}, "image": {"image"}, "text": {"text"}}


class MissingFieldError(UserError):
    """An objective needs a batch field that the training data cannot supply."""


def check_fields(requires, provides, objective: str, train_data: str) -> None:
    """Raise :class:`MissingFieldError`, naming each missing field and what supplies it, if
    ``objective`` needs fields that ``train_data`` (which supplies ``provides``) has not got."""
    missing = set(requires) - set(provides)
    if missing:
        need = "; ".join(f"{m} ({FIELDS.get(m, '?')})" for m in sorted(missing))
        raise MissingFieldError(
            f"objective {objective!r} needs {need}, which training data {train_data!r} does not "
            f"supply (it supplies {', '.join(sorted(provides))}); pick an objective that needs less "
            "or training data that supplies it (harness list train-data)"
        )


@runtime_checkable
class TrainData(Protocol):
    """What :meth:`TrainSet.build` returns and the trainer draws from. ``batch`` fills only the
    ``fields`` asked for, in an order and with augmentation draws that depend only on the seed and
    the step; under torch.distributed ``batch_size`` is the global batch and each rank keeps its
    rows (``harness.data.batches.shard``)."""

    def __len__(self) -> int: ...

    def batch(self, step: int, batch_size: int, fields) -> Any: ...


@dataclass
class TrainContext:
    """What checking and building a training set may use. ``batch_size`` is the global batch (a set
    must hold one); ``model`` the run's model config; ``world`` the run's shapes world; ``tokenizer``,
    ``image_size`` and ``preprocess_cfg`` the model's (building only); ``cache_dir`` the run's cache
    (None while checking: this process only)."""

    options: DataOptions = field(default_factory=DataOptions)
    max_samples: int | None = None
    batch_size: int | None = None
    cache_dir: Path | None = None
    model: Any = None
    world: Any = None
    tokenizer: Any = None
    seed: int = 0
    image_size: int | None = None
    preprocess_cfg: dict | None = None
    #: ``budget.loader_workers``: a streaming set's DataLoader worker processes (0: its own default)
    loader_workers: int = 0


class TrainSet:
    """A named training set. Subclasses set the class attributes and implement :meth:`build`;
    :meth:`check_data` (and :meth:`check_objective`) refuse what cannot work, before training."""

    name: ClassVar[str] = ""
    #: what kind of data (shown by ``harness list train-data``): "shapes", "image-text", "sentences", ...
    kind: ClassVar[str] = ""
    #: the towers its batches feed: "image-text", "text" or "image"
    modality: ClassVar[str] = "image-text"
    #: the batch fields its batches supply (names of harness.core.batch.BATCH_FIELDS)
    provides: ClassVar[frozenset[str]] = frozenset()
    #: batch fields it declares (registered when the class is defined)
    fields: ClassVar[tuple[BatchField, ...]] = ()
    #: where it lives (None: generated, e.g. from the shapes world)
    source: ClassVar[HubSource | None] = None
    license: ClassVar[str] = ""
    doc: ClassVar[str] = ""
    #: its text is the shapes world's words only (runs on it alone may use the 33-word vocabulary)
    shapes_vocabulary: ClassVar[bool] = False

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" not in cls.__dict__:
            cls.name = TRAIN_SETS.name_of(cls) or ""
        for f in cls.fields:
            register_field(f.name, f.tower, f.doc)

    # -- before training ---------------------------------------------------------------------
    def check(self, objective, ctx: TrainContext, objective_name: str | None = None) -> None:
        """Everything that can be wrong before training: :meth:`check_objective`, then
        :meth:`check_data`. Raises a :class:`~harness.core.errors.UserError` (exit 2)."""
        self.check_objective(objective, objective_name or objective.name, ctx)
        self.check_data(ctx)

    def check_objective(self, objective, objective_name: str, ctx: TrainContext) -> None:
        """The objective trains only towers this data feeds, and needs only fields it provides."""
        if not TOWERS[objective.modality] <= TOWERS[self.modality]:
            hint = (
                "a text objective (e.g. simcse)"
                if self.modality == "text"
                else f"an objective of the {self.modality} tower(s)"
            )
            raise UserError(
                f"training data {self.name!r} is {self.modality} only, but objective "
                f"{objective_name!r} trains the {objective.modality} tower(s); pick {hint} or "
                "image-text data"
            )
        check_fields(objective.requires, self.provides, objective_name, self.name)

    def check_data(self, ctx: TrainContext) -> None:
        """The data itself: it exists, has its columns, holds at least ``ctx.batch_size`` usable
        samples. Nothing to check by default (generated data)."""

    # -- the run -----------------------------------------------------------------------------
    def build(self, ctx: TrainContext) -> TrainData:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self, data: TrainData, ctx: TrainContext) -> str:
        """A content hash of what ``data`` trains on (tagged ``harness.dataset_fingerprint``): the
        data's own ``fingerprint`` if it has one, else the shapes world's, else one of the name."""
        fp = getattr(data, "fingerprint", None) or getattr(ctx.world, "fingerprint", None)
        return fp or hashlib.sha256(f"{self.name}:{self.kind}".encode()).hexdigest()[:16]

    @classmethod
    def describe(cls) -> dict:
        return {
            "name": cls.name,
            "kind": cls.kind,
            "modality": cls.modality,
            "dataset": cls.source.describe() if cls.source else "(generated)",
            "license": cls.license,
            "doc": cls.doc,
            "provides": sorted(cls.provides),
        }


#: every training set, by name: the entry points of ``harness.train_data`` (built-ins in pyproject.toml)
TRAIN_SETS: Registry[TrainSet] = Registry("training data", "harness.train_data", base=TrainSet)
