"""The bases of the built-in tasks: :class:`ShapesTask` scores the run's shapes world,
:class:`DatasetTask` reads a Hugging Face dataset or a local copy of it. The task interface itself
lives in :mod:`harness.core.task` (re-exported here, the import path of tasks written before it
moved)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from harness.core.data import DataOptions, HubSource

# the task interface, re-exported: tasks/base.py was its home before it moved to harness.core.task
from harness.core.task import (  # noqa: F401
    TASKS,
    EmbeddingCache,
    EvalContext,
    Suite,
    Task,
    TaskMeta,
    TaskResult,
    breakdown_of,
    register,
    task_meta,
)
from harness.data.sources import ImageColumn, fingerprint, load_table, origin


class ShapesTask(Task):
    """A task on the run's shapes world (``ctx.world``): generated data, nothing to check or
    fingerprint beyond the world's spec. :meth:`score` gets the split to report on (``val`` under
    validation); embeddings go through the shared cache under the dataset name ``shapes``."""

    dataset = "shapes-world"
    license = "generated"

    @staticmethod
    def image_embeddings(ctx: EvalContext, split: str, images) -> torch.Tensor:
        return ctx.cache.image(ctx.encoder, "shapes", split, images)

    @staticmethod
    def text_embeddings(ctx: EvalContext, split: str, name: str, texts) -> torch.Tensor:
        return ctx.cache.text(ctx.encoder, "shapes", split, name, texts)

    @staticmethod
    def provenance(ctx: EvalContext, split: str) -> dict[str, Any]:
        """``dataset`` and ``dataset_fingerprint`` of a result on ``split``."""
        return {"dataset": f"shapes-world/{split}", "dataset_fingerprint": ctx.world.fingerprint}


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
    def declaration_problems(cls) -> list[str]:
        src, val = getattr(cls, "source", None), cls.validation_split
        out = super().declaration_problems()
        if not isinstance(src, HubSource):
            out.append(f"source must be a HubSource (dataset id, split, revision), got {src!r}")
        elif not (isinstance(src.repo, str) and src.repo and isinstance(src.split, str) and src.split):
            out.append(f"source needs a dataset id and a split, got {src!r}")
        if val is not None and not (isinstance(val, str) and val):
            out.append(f"validation_split must be a split name or None, got {val!r}")
        return out

    @classmethod
    def describe(cls) -> dict[str, Any]:
        src = cls.source  # dataset and revision come from it (TaskMeta)
        return {**super().describe(), "split": src.split, "config": src.config, "gated": src.gated}

    @classmethod
    def has_validation(cls) -> bool:
        return cls.validation_split is not None

    def split_name(self, ctx: EvalContext) -> str:
        if not ctx.validation:
            return self.source.split
        if self.validation_split is None:
            raise ValueError(
                f"task {self.name!r} has no validation split; it cannot be used for tuning "
                "or checkpoint selection (its only split is the test split)"
            )
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
        table = load_table(
            self.name,
            self.source_for(options),
            options,
            self.columns,
            split=None if split == self.source.split else split,
        )
        return {"split": split, "fingerprint": fingerprint(table)}

    def table(self, ctx: EvalContext, split: str | None = None):
        return load_table(
            self.name, self.source_for(ctx.data), ctx.data, self.columns, split=split or self.split_name(ctx)
        )

    def images(self, ctx: EvalContext, table, column, split: str | None = None, **kw) -> ImageColumn:
        """Lazily decoded images of ``table[column]``; their embeddings are cached by table content,
        so tasks reading the same images (CIFAR zero-shot and linear probe) encode them once."""
        return ImageColumn(
            table,
            column,
            name=f"{self.source.repo}/{split or self.split_name(ctx)}",
            strict=ctx.data.strict_images,
            **kw,
        )

    def image_embeddings(
        self, ctx: EvalContext, column: ImageColumn, table
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
