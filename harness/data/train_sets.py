"""Training data by name: the shapes world, real image-text sets, and sentence corpora.

Each training set is a :class:`~harness.core.train_set.TrainSet` registered under the entry-point
group ``harness.train_data`` (pyproject.toml names the built-ins below, exactly as a plugin names
its own); :data:`TRAIN_DATA` is the registry as a read-only mapping, name -> class.
``--train-data NAME`` picks one; when it is not given, the run trains on the data its first task
implies (``coco-retrieval`` -> ``coco``, ``stsb`` -> ``nli``, shapes tasks -> ``shapes``). Real sets
are read like evaluation sets (harness/data/sources.py): a local copy given with ``--data NAME=PATH``
(or ``$HARNESS_DATA_DIR/<dataset id>``), else the Hugging Face Hub.

Every training set yields batches in an order and with augmentation draws that depend only on the
run seed and the step (never on the objective), as the shapes world does: objectives compared on
the same data see the same samples.

Real image-text sets (``coco``, ``flickr30k``) are built on :mod:`harness.data.image_text`:
:func:`check` runs before anything is trained or recorded and, besides columns and batch fields,
refuses a set with fewer usable samples than one batch, and one whose images do not decode (each
image decoded once, the result cached beside the image memmap; see that module).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator, Sequence

from harness.config import HF_TEXT_PREFIX, MINILM
from harness.core.train_set import TRAIN_SETS, TrainContext, TrainSet, check_fields
from harness.data import text as text_data
from harness.data.batches import SHAPES_FIELDS, ShapesTrainData

# re-exported: the image-text training sets moved to harness/data/image_text.py
from harness.data.image_text import CAPTION_COLUMNS as CAPTION_COLUMNS
from harness.data.image_text import IMAGE_COLUMNS as IMAGE_COLUMNS
from harness.data.image_text import ImageTextSet as ImageTextSet
from harness.data.image_text import ImageTextTrainData as ImageTextTrainData
from harness.data.image_text import TooFewSamplesError as TooFewSamplesError
from harness.data.image_text import _enough
from harness.data.image_text import decodable as decodable
from harness.data.image_text import image_text_columns as image_text_columns
from harness.data.sources import DataOptions, HubSource

__all__ = ["TRAIN_DATA", "TRAIN_SETS", "TrainSet", "TrainContext", "check", "build", "spec", "check_fields"]


def resolve_name(train_data: str | None, tasks: Sequence) -> str:
    """``train_data`` if given, else the default of the first task (``shapes`` for no task)."""
    if train_data:
        return train_data
    return getattr(tasks[0], "default_train_data", "shapes") if tasks else "shapes"


_TEXTS: dict[tuple, list[list[str]]] = {}


def _texts(s: type[TrainSet], options: DataOptions, max_samples: int | None) -> list[list[str]]:
    """The columns of a text training set ([sentences] or [anchor, positive, negative]), read once
    per process: the check before training and the run itself share them."""
    key = (s.name, tuple(sorted(options.paths.items())), os.environ.get("HARNESS_DATA_DIR"), max_samples)
    if key not in _TEXTS:
        if s.kind == "sentences":
            _TEXTS[key] = [
                text_data.load_sentence_corpus(s.name, options, source=s.source, max_samples=max_samples)
            ]
        else:
            _TEXTS[key] = list(
                text_data.load_nli_triplets(s.name, options, source=s.source, max_samples=max_samples)
            )
    return _TEXTS[key]


# ----------------------------------------------------------------------------- the training sets


class ShapesSet(TrainSet):
    """The shapes world's train split: images, captions, second views, hard negatives, labels."""

    kind, provides, license, shapes_vocabulary = "shapes", SHAPES_FIELDS, "generated", True
    doc = "the embedded shapes world (train split), rendered offline"

    def build(self, ctx: TrainContext):
        return ShapesTrainData(ctx.world, ctx.tokenizer, seed=ctx.seed)

    def fingerprint(self, data, ctx: TrainContext) -> str:  # generated: the world says what was trained on
        return ctx.world.fingerprint


class _TextSet(TrainSet):
    """A text set: generated from the shapes world's captions (``source`` None) or read from
    ``source`` (:func:`_texts`); fingerprinted by its texts."""

    modality = "text"

    def check_data(self, ctx: TrainContext) -> None:
        if self.source is not None:
            _enough(
                self.name,
                len(_texts(type(self), ctx.options, ctx.max_samples)[0]),
                ctx.batch_size,
                ctx.max_samples,
            )

    def build(self, ctx: TrainContext):
        if self.source is None:
            return self.from_shapes(ctx)
        texts = _texts(type(self), ctx.options, ctx.max_samples)
        data = self.from_texts(texts, ctx)
        digest = hashlib.sha256()
        for column in texts:
            digest.update("\n".join(column).encode())
        data.fingerprint = digest.hexdigest()[:16]
        return data

    def fingerprint(self, data, ctx: TrainContext) -> str:
        return ctx.world.fingerprint if self.source is None else data.fingerprint


class SentenceSet(_TextSet):
    """One sentence per sample, whose two views are two dropout passes (``SentenceTrainData``)."""

    kind, provides = "sentences", text_data.SentenceTrainData.provides

    def check_objective(self, objective, objective_name: str, ctx: TrainContext) -> None:
        """The two views of one sentence differ only by dropout: an open_clip text tower needs
        ``model.text_dropout``."""
        model = ctx.model
        if model is not None and "text_view" in objective.requires:
            if not model.text_dropout and not (model.name == MINILM or model.name.startswith(HF_TEXT_PREFIX)):
                raise ValueError(
                    f"training data {self.name!r} gives two views of one sentence that differ "
                    f"only by dropout, and model {model.name!r} has none: set "
                    "model.text_dropout (SimCSE: 0.1, --set model.text_dropout=0.1) or use a "
                    "Hugging Face text tower"
                )
        super().check_objective(objective, objective_name, ctx)

    def from_shapes(self, ctx: TrainContext):
        return text_data.SentenceTrainData.from_shapes(
            ctx.world, ctx.tokenizer, seed=ctx.seed, views="dropout"
        )

    def from_texts(self, texts, ctx: TrainContext):
        return text_data.SentenceTrainData(texts[0], ctx.tokenizer, seed=ctx.seed)


class NLISet(_TextSet):
    """(anchor, entailment, contradiction) triplets (:class:`text_data.NLITrainData`)."""

    kind, provides = "nli", text_data.NLITrainData.provides

    def from_shapes(self, ctx: TrainContext):
        return text_data.NLITrainData.from_shapes(ctx.world, ctx.tokenizer, seed=ctx.seed)

    def from_texts(self, texts, ctx: TrainContext):
        return text_data.NLITrainData(*texts, ctx.tokenizer, seed=ctx.seed)


# the built-ins, named by their entry points (pyproject.toml, group harness.train_data)
class ShapesSentences(SentenceSet):
    license, shapes_vocabulary = "generated", True
    doc = (
        "the shapes world's training captions as a sentence corpus (text track, offline); the two views "
        "are two dropout passes of the same caption (set model.text_dropout)"
    )


class ShapesNLI(NLISet):
    license, shapes_vocabulary = "generated", True
    doc = (
        "shapes-world triplets (text track, offline): caption, its other phrasing (entailment), its "
        "attribute-swap hard negative (contradiction)"
    )


class Coco(ImageTextSet):
    source = HubSource("undefined443/coco-karpathy-wds", split="train")
    license = "CC BY 4.0 (annotations); images under Flickr terms"
    doc = (
        "COCO 2014 Karpathy train split (113,287 images x 5 captions), webdataset: jpg + json{captions}; "
        "disjoint from the 5k test images of coco-retrieval"
    )


class Flickr30k(ImageTextSet):
    source = HubSource(
        "nlphuji/flickr30k", split="test", revision="refs/convert/parquet", data_files="TEST/test/*.parquet"
    )
    split_value, license = "train", "Flickr terms of use; research only"
    doc = (
        "Flickr30k Karpathy train split (29,000 images x 5 captions): the rows of nlphuji/flickr30k with "
        "split == 'train'"
    )


class NLIForSimCSE(NLISet):
    source, license = text_data.NLI_FOR_SIMCSE, "CC BY-SA 4.0 (SNLI), MNLI: mixed (see GLUE)"
    doc = "supervised SimCSE triplets (anchor, entailment, contradiction), 274,951 rows"


class AllNLI(NLISet):
    source, license = text_data.ALL_NLI, "CC BY-SA 4.0 (SNLI), MNLI: mixed (see GLUE)"
    doc = "AllNLI triplets (SNLI + MultiNLI), 557,850 rows"


class Wiki1M(SentenceSet):
    source, license = text_data.WIKI1M, "CC BY-SA 3.0 (Wikipedia)"
    doc = "unsupervised SimCSE: 1M Wikipedia sentences, one per line"


class _TrainDataView(Mapping):
    """:data:`TRAIN_SETS` as a read-only mapping, name -> training set class (what ``TRAIN_DATA``
    was: its values carry ``name``, ``kind``, ``modality``, ``source``, ``license``, ``doc``)."""

    def __getitem__(self, name: str) -> type[TrainSet]:
        return TRAIN_SETS.get(name)

    def __contains__(self, name) -> bool:
        return name in TRAIN_SETS

    def __iter__(self) -> Iterator[str]:
        return iter(TRAIN_SETS.names())

    def __len__(self) -> int:
        return len(TRAIN_SETS.names())


TRAIN_DATA: Mapping[str, type[TrainSet]] = _TrainDataView()


def spec(name: str) -> type[TrainSet]:
    """The training set class named ``name`` (loads it, so the batch fields it declares are known);
    :class:`~harness.core.registry.UnknownNameError` (exit 2, with suggestions) if there is none."""
    return TRAIN_SETS.get(name)


def provides(kind: str) -> frozenset[str]:
    """The batch fields a built-in kind of training data supplies."""
    kinds = {"shapes": ShapesSet, "image-text": ImageTextSet, "sentences": SentenceSet, "nli": NLISet}
    return kinds[kind].provides


def check(
    name: str,
    objective,
    objective_name: str,
    options: DataOptions,
    max_samples: int | None = None,
    model=None,
    batch_size: int | None = None,
    cache_dir: Path | None = None,
) -> None:
    """Before training: :meth:`TrainSet.check` of ``name``: the data exists, has its columns,
    supplies what the objective needs, and feeds the towers the objective trains. ``model`` (a
    ModelConfig): a sentence corpus's two views are two dropout passes, so an open_clip text tower
    needs ``text_dropout``.

    A real set must also hold at least ``batch_size`` (the global batch) usable samples, and its
    images must decode (:class:`TooFewSamplesError`, :class:`UndecodableImageError`): each image
    is decoded once, the result cached in ``cache_dir`` (the run's cache; None: in this process
    only) and reused by :func:`build`."""
    ctx = TrainContext(
        options=options, max_samples=max_samples, batch_size=batch_size, cache_dir=cache_dir, model=model
    )
    spec(name)().check(objective, ctx, objective_name)


def uses_shapes_vocabulary(train_data: str, tasks: Sequence) -> bool:
    """The word-level shapes vocabulary fits only runs that see nothing but shapes-world text."""
    return spec(train_data).shapes_vocabulary and all(
        getattr(t, "dataset", "") == "shapes-world" for t in tasks
    )


def build(
    name: str,
    *,
    world,
    tokenizer,
    seed: int,
    options: DataOptions,
    image_size: int,
    preprocess_cfg: dict | None,
    cache_dir: Path,
    max_samples: int | None = None,
    loader_workers: int = 0,
):
    """The training data object (``len``, ``batch(step, batch_size, fields)``, ``fingerprint``) of
    ``name``: :meth:`TrainSet.build`, fingerprinted by :meth:`TrainSet.fingerprint`."""
    ctx = TrainContext(
        options=options,
        max_samples=max_samples,
        cache_dir=cache_dir,
        world=world,
        tokenizer=tokenizer,
        seed=seed,
        image_size=image_size,
        preprocess_cfg=preprocess_cfg,
        loader_workers=loader_workers,
    )
    ts = spec(name)()
    data = ts.build(ctx)
    data.fingerprint = ts.fingerprint(data, ctx)
    return data
