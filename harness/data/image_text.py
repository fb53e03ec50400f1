"""Real image-text training sets: the memory-mapped images of :class:`ImageTextTrainData` and the
:class:`ImageTextSet` base of the built-ins ``coco`` and ``flickr30k`` (harness/data/train_sets.py).

Split from :mod:`harness.data.train_sets`, which re-exports the public names below. The sizing
check every real training set shares (:class:`TooFewSamplesError`) lives here too.

Before training, :meth:`ImageTextSet.check_data` refuses a set with fewer usable samples than one
batch, and one whose images do not decode. For that every training image is decoded once (JPEGs at
1/8 scale: about 1.4 ms for a 640x480 COCO image, a fifth of what building the image memmap costs)
and the result, one bit per image, is cached beside the memmap
(``<cache>/train-<name>-<key>-decodable.json``, keyed by the table's fingerprint and the rows
kept): later checks of the same data read it, and the memmap build skips the images it marks
undecodable. A memmap build records the same file, so data decoded before this check existed is
never scanned again.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from harness.core.train_set import TrainContext, TrainSet
from harness.data.batches import Batch, ShapesTrainData, jitter, shard
from harness.data.images import ImageColumn, pil_transform
from harness.data.sources import (
    DataError,
    MissingColumnsError,
    UndecodableImageError,
    fingerprint,
    load_table,
    origin,
)


class TooFewSamplesError(DataError):
    """A training set with fewer usable samples than one batch."""


#: caption columns, in order of preference, and image columns of image-text tables
CAPTION_COLUMNS = ("caption", "captions", "sentences", "txt", "json", "text")
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img")


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
