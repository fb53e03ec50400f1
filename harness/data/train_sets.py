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

:func:`check` runs before anything is trained or recorded. Besides columns and batch fields it
refuses a set with fewer usable samples than one batch, and one whose images do not decode. For
that every training image is decoded once (JPEGs at 1/8 scale: about 1.4 ms for a 640x480 COCO
image, a fifth of what building the image memmap costs) and the result, one bit per image, is
cached beside the memmap (``<cache>/train-<name>-<key>-decodable.json``, keyed by the table's
fingerprint and the rows kept): later checks of the same data read it, and the memmap build skips
the images it marks undecodable. A memmap build records the same file, so data decoded before
this check existed is never scanned again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from harness.config import HF_TEXT_PREFIX, MINILM
from harness.core.train_set import TRAIN_SETS, TrainContext, TrainSet, check_fields
from harness.data import text as text_data
from harness.data.batches import SHAPES_FIELDS, Batch, ShapesTrainData, jitter, shard
from harness.data.sources import (
    DataError,
    DataOptions,
    HubSource,
    ImageColumn,
    MissingColumnsError,
    UndecodableImageError,
    fingerprint,
    load_table,
    origin,
    pil_transform,
)

__all__ = ["TRAIN_DATA", "TRAIN_SETS", "TrainSet", "TrainContext", "check", "build", "spec", "check_fields"]


class TooFewSamplesError(DataError):
    """A training set with fewer usable samples than one batch."""


#: caption columns, in order of preference, and image columns of image-text tables
CAPTION_COLUMNS = ("caption", "captions", "sentences", "txt", "json", "text")
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img")


def resolve_name(train_data: str | None, tasks: Sequence) -> str:
    """``train_data`` if given, else the default of the first task (``shapes`` for no task)."""
    if train_data:
        return train_data
    return getattr(tasks[0], "default_train_data", "shapes") if tasks else "shapes"


def _enough(name: str, n: int, batch_size: int | None, max_samples: int | None) -> None:
    if batch_size is not None and n < batch_size:
        cut = (
            f" (--train-samples {max_samples} keeps only the first {max_samples})"
            if max_samples is not None and n == max_samples
            else ""
        )
        raise TooFewSamplesError(
            f"the training set {name!r} has {n} samples{cut}, fewer than one batch of "
            f"{batch_size}: lower --batch-size or provide more data"
            + (" (or raise --train-samples)" if cut else "")
        )


_DECODABLE: dict[str, tuple[np.ndarray, str]] = {}


def _decodable_file(cache_dir: Path | None, name: str, key: str) -> Path | None:
    return None if cache_dir is None else Path(cache_dir) / f"train-{name}-{key}-decodable.json"


def _decodable_key(table, rows: Sequence[int]) -> str:
    return hashlib.sha256(
        json.dumps(
            [fingerprint(table), hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()]
        ).encode()
    ).hexdigest()[:16]


def _cached_decodable(name: str, key: str, cache_dir: Path | None) -> tuple[np.ndarray, str] | None:
    if key not in _DECODABLE:
        f = _decodable_file(cache_dir, name, key)
        if f is None or not f.exists():
            return None
        doc = json.loads(f.read_text())
        _DECODABLE[key] = (np.asarray(doc["ok"], dtype=bool), doc["first"])
    return _DECODABLE[key]


def _store_decodable(name: str, key: str, cache_dir: Path | None, ok: np.ndarray, first: str) -> None:
    _DECODABLE[key] = (ok, first)
    f = _decodable_file(cache_dir, name, key)
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"ok": ok.tolist(), "first": first}))
        os.replace(tmp, f)


def decodable(
    name: str, table, column: ImageColumn, cache_dir: Path | None = None, workers: int = 4
) -> tuple[np.ndarray, str]:
    """Which images of ``column`` decode (a bool mask) and the first that does not (``where:
    reason``, "" if none), from the cache when this data was scanned or built before, else by
    decoding each once (:meth:`ImageColumn.error`)."""
    key = _decodable_key(table, column.rows)
    cached = _cached_decodable(name, key, cache_dir)
    if cached is not None:
        return cached
    with ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1))) as pool:
        errors = list(pool.map(column.error, range(len(column))))
    ok = np.array([e is None for e in errors], dtype=bool)
    bad = np.flatnonzero(~ok)
    first = f"{column.where(int(bad[0]))}: {errors[bad[0]]}" if len(bad) else ""
    _store_decodable(name, key, cache_dir, ok, first)
    return ok, first


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


def image_text_columns(table, name: str) -> tuple[str, str]:
    cols = table.column_names
    image = next((c for c in IMAGE_COLUMNS if c in cols), None)
    caption = next((c for c in CAPTION_COLUMNS if c in cols), None)
    if image is None or caption is None:
        raise MissingColumnsError(
            f"training data {name!r} needs an image column (one of {', '.join(IMAGE_COLUMNS)}) and a caption "
            f"column (one of {', '.join(CAPTION_COLUMNS)}); found {', '.join(cols)}"
        )
    return image, caption


def _captions_of(value: Any) -> list[str]:
    """Captions of one row: a string (several lines = several captions), a list, or a webdataset
    ``json`` record with ``captions`` / ``caption`` / ``sentences``."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, dict):
        for k in ("captions", "caption", "sentences", "raw"):
            if k in value:
                return _captions_of(value[k])
        return []
    if isinstance(value, str):
        return [line.strip() for line in value.splitlines() if line.strip()]
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out += [v["raw"]] if isinstance(v, dict) and "raw" in v else _captions_of(v)
        return out
    return []


def _training_rows(table, name: str, split_value: str | None, max_samples: int | None):
    """The rows a training set keeps (its ``split_value`` rows, the first ``max_samples``, those with
    captions), their captions and the image column; the check and the build keep the same rows."""
    image_col, caption_col = image_text_columns(table, name)
    rows = np.arange(len(table))
    if split_value is not None:
        if "split" not in table.column_names:
            raise MissingColumnsError(
                f"training data {name!r} needs a 'split' column to keep its "
                f"{split_value!r} rows; found {', '.join(table.column_names)}"
            )
        rows = np.flatnonzero(np.asarray(table["split"]) == split_value)
    if max_samples is not None:
        rows = rows[:max_samples]
    captions = [_captions_of(v) for v in table.select(rows.tolist())[caption_col]] if len(rows) else []
    keep = [i for i, c in enumerate(captions) if c]
    rows, captions = rows[keep], [captions[i] for i in keep]
    if not len(rows):
        raise DataError(
            f"training data {name!r} has no rows with captions in column {caption_col!r}"
            + (f" among its {split_value!r} rows" if split_value else "")
            + "; check that --data points at an image-caption set"
        )
    return rows, captions, image_col


class ImageTextTrainData:
    """A real image-text training set held as uint8 images at the model's input resolution.

    Images are decoded once, with open_clip's evaluation resize / centre crop, into a memory-mapped
    file in the harness cache (``<cache>/train-<name>-<fingerprint>-<size>.u8``): the next run with
    the same data and resolution reuses it. Undecodable images are dropped (and counted,
    :attr:`n_undecodable`); images :func:`decodable` found undecodable are not decoded again, and
    a set none of whose images decode is refused (:class:`UndecodableImageError`). Each image keeps
    all its captions; a step's caption for an image is drawn from (seed, step), its ``text_view``
    is another of its captions (a real second phrasing), its ``image_view`` a jittered copy.
    ``labels`` is the image's row, so two captions of one image are one class. Memory: N x S x S x 3
    bytes on disk (COCO train at 32 px: 350 MB; at 224 px: 17 GB).
    """

    provides = frozenset({"image", "text", "text_view", "image_view", "index", "labels"})

    def __init__(
        self,
        name: str,
        table,
        tokenizer,
        seed: int,
        image_size: int,
        preprocess_cfg: dict | None,
        cache_dir: Path,
        split_value: str | None = None,
        max_samples: int | None = None,
        strict: bool = False,
        workers: int = 4,
    ):
        self.name, self.seed = name, seed
        rows, captions, image_col = _training_rows(table, name, split_value, max_samples)
        column = ImageColumn(table, image_col, name=name, strict=strict, rows=rows.tolist())
        scan_key = _decodable_key(table, rows)
        known = _cached_decodable(name, scan_key, cache_dir)
        rows_hash = hashlib.sha256(rows.astype(np.int64).tobytes()).hexdigest()
        key = hashlib.sha256(
            json.dumps(
                [fingerprint(table), rows_hash, image_size, sorted((preprocess_cfg or {}).items(), key=str)],
                default=str,
            ).encode()
        ).hexdigest()[:16]
        cache_dir.mkdir(parents=True, exist_ok=True)
        path = cache_dir / f"train-{name}-{key}-{image_size}.u8"
        meta = path.with_suffix(".json")
        shape = (len(rows), image_size, image_size, 3)
        if not (path.exists() and meta.exists()):
            transform = pil_transform(preprocess_cfg, image_size)
            tmp = path.with_suffix(".tmp")
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            ok = np.ones(len(rows), dtype=bool)

            def work(i: int) -> None:
                img = column.load(i) if known is None or known[0][i] or strict else None
                if img is None:
                    ok[i] = False
                else:
                    arr[i] = transform(img)

            with ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1))) as pool:
                list(pool.map(work, range(len(rows))))
            arr.flush()
            del arr
            os.replace(tmp, path)
            meta.write_text(json.dumps({"ok": ok.tolist()}))
        ok = np.asarray(json.loads(meta.read_text())["ok"], dtype=bool)
        if known is None:  # a later check of this data reads the memmap's result instead of decoding
            bad = np.flatnonzero(~ok)
            first = f"{column.where(int(bad[0]))}: undecodable" if len(bad) else ""
            _store_decodable(name, scan_key, cache_dir, ok, first)
        if not ok.any():
            raise UndecodableImageError(
                f"training data {name!r}: none of its {len(ok)} images could be "
                f"decoded; check that --data {name}=PATH points at a copy whose "
                "images are complete"
            )
        images = np.load(path, mmap_mode="r")
        self.n_undecodable = int((~ok).sum())
        self.rows = rows[ok]
        self.images = images  # indexed through self.valid
        self.valid = np.flatnonzero(ok)
        self.captions = [captions[i] for i in self.valid]
        flat = [c for cs in self.captions for c in cs]
        self.offsets = np.cumsum([0] + [len(cs) for cs in self.captions])
        self.tokens = tokenizer(flat)
        self._order_epoch, self._order = -1, None

    def __len__(self) -> int:
        return len(self.valid)

    #: epochs of seeded permutations consumed in order, ragged tail dropped (shared with the shapes data)
    indices = ShapesTrainData.indices

    def batch(self, step: int, batch_size: int, fields) -> Batch:
        idx = self.indices(step, batch_size)
        rng = np.random.default_rng([self.seed, step, 31337])
        counts = self.offsets[idx + 1] - self.offsets[idx]
        first = rng.integers(0, counts)
        second = (first + 1 + rng.integers(0, np.maximum(counts - 1, 1))) % counts  # another caption if any
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + step)
        out = Batch()
        images = (
            torch.from_numpy(np.ascontiguousarray(self.images[self.valid[idx]]))
            if {"image", "image_view"} & set(fields)
            else None
        )
        if "image" in fields:
            out.images = images
        if "image_view" in fields:
            out.image_view = jitter(images, g)
        if "text" in fields:
            out.tokens = self.tokens[torch.from_numpy(self.offsets[idx] + first)]
        if "text_view" in fields:
            out.text_view = self.tokens[torch.from_numpy(self.offsets[idx] + second)]
        if "index" in fields:
            out.index = torch.from_numpy(idx)
        if "labels" in fields:
            out.labels = torch.from_numpy(idx)
        return shard(out, batch_size)


# ----------------------------------------------------------------------------- the training sets


class ShapesSet(TrainSet):
    """The shapes world's train split: images, captions, second views, hard negatives, labels."""

    kind, provides, license, shapes_vocabulary = "shapes", SHAPES_FIELDS, "generated", True
    doc = "the embedded shapes world (train split), rendered offline"

    def build(self, ctx: TrainContext):
        return ShapesTrainData(ctx.world, ctx.tokenizer, seed=ctx.seed)

    def fingerprint(self, data, ctx: TrainContext) -> str:  # generated: the world says what was trained on
        return ctx.world.fingerprint


class ImageTextSet(TrainSet):
    """A real image-text set (:class:`ImageTextTrainData`); ``split_value`` keeps the rows whose
    ``split`` column has this value (nlphuji/flickr30k holds every split in one table)."""

    kind, provides = "image-text", ImageTextTrainData.provides
    split_value: str | None = None

    def check_data(self, ctx: TrainContext) -> None:
        name, options, batch_size = self.name, ctx.options, ctx.batch_size
        table = load_table(name, self.source, options)
        rows, _, image_col = _training_rows(table, name, self.split_value, ctx.max_samples)
        _enough(name, len(rows), batch_size, ctx.max_samples)
        column = ImageColumn(table, image_col, name=name, rows=rows.tolist())
        ok, first = decodable(name, table, column, ctx.cache_dir)
        bad = int((~ok).sum())
        where = f"training data {name!r} ({origin(table) or self.source.describe()})"
        if bad and options.strict_images:
            raise UndecodableImageError(
                f"{where}: {bad} of {len(ok)} images cannot be decoded (first: "
                f"{first}); drop --strict-images to skip and count such images"
            )
        if not ok.any():
            raise UndecodableImageError(
                f"{where}: none of its {len(ok)} images could be decoded (first: "
                f"{first}); check that --data {name}=PATH points at a copy whose "
                "images are complete (a truncated download, or Git LFS pointers "
                "instead of files, looks like this)"
            )
        if batch_size is not None and int(ok.sum()) < batch_size:
            raise TooFewSamplesError(
                f"{where}: {bad} of {len(ok)} images could not be decoded (first: "
                f"{first}), leaving {int(ok.sum())} samples, fewer than one batch of "
                f"{batch_size}: lower --batch-size or provide more (decodable) data"
            )

    def build(self, ctx: TrainContext):
        table = load_table(self.name, self.source, ctx.options)
        data = ImageTextTrainData(
            self.name,
            table,
            ctx.tokenizer,
            ctx.seed,
            ctx.image_size,
            ctx.preprocess_cfg,
            ctx.cache_dir,
            split_value=self.split_value,
            max_samples=ctx.max_samples,
            strict=ctx.options.strict_images,
        )
        data.fingerprint = fingerprint(table)
        return data


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
    )
    ts = spec(name)()
    data = ts.build(ctx)
    data.fingerprint = ts.fingerprint(data, ctx)
    return data
