"""Real images: lazy decoding of an image column (:class:`ImageColumn`) and open_clip's evaluation
resize / crop as a PIL -> uint8 transform (:func:`pil_transform`).

Split from :mod:`harness.data.sources`, which re-exports both names (tasks import them from there).
An undecodable image is skipped and counted, or raises :class:`UndecodableImageError` under
``strict``.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Callable, Sequence

import numpy as np

from harness.core.errors import MissingColumnsError, UndecodableImageError
from harness.data.messages import _first_line


class ImageColumn:
    """Lazily decoded images of one column of a table (an ``Image`` feature, bytes, a path, a
    webdataset ``jpg``/``png``/``webp`` field, or PIL images), optionally cropped per row.

    ``crop(i)`` may return a box ``(left, top, right, bottom)`` in pixels for row ``i`` (ARO's
    relation / attribute boxes). Rows PIL cannot decode come back as ``None``; the encoder gives
    them NaN embeddings and records them in :attr:`undecodable` (or raises under ``strict``).
    """

    def __init__(
        self,
        table,
        column: str | Sequence[str],
        name: str = "",
        strict: bool = False,
        crop: Callable[[int], tuple[float, float, float, float] | None] | None = None,
        rows: Sequence[int] | None = None,
    ):
        import datasets

        candidates = [column] if isinstance(column, str) else list(column)
        present = [c for c in candidates if c in table.column_names]
        if not present:
            raise MissingColumnsError(
                f"dataset {name or '?'} has no image column: expected one of "
                f"{', '.join(candidates)}; found {', '.join(table.column_names)}"
            )
        self.column = present[0]
        self.keys_from = table  # for webdataset keys in messages (:meth:`where`)
        table = table.select_columns([self.column])  # reading a row must not decode other image columns
        if isinstance(table.features.get(self.column), datasets.Image):
            table = table.cast_column(self.column, datasets.Image(decode=False))
        self.table, self.name, self.strict, self.crop = table, name, strict, crop
        self.rows = list(range(len(table))) if rows is None else list(rows)
        self.undecodable: list[int] = []

    def __len__(self) -> int:
        return len(self.rows)

    def key(self) -> str:
        """Identifies the images within their table (the embedding cache adds the table's
        fingerprint): the column, the rows and whether they are cropped."""
        rows = (
            "all"
            if self.rows == list(range(len(self.table)))
            else hashlib.sha1(np.asarray(self.rows, dtype=np.int64).tobytes()).hexdigest()[:12]
        )
        return f"{self.column}:{len(self.rows)}:{rows}:{'cropped' if self.crop is not None else 'whole'}"

    def _open(self, i: int, draft: bool = False):
        """The PIL image of item ``i``, loaded, RGB; raises what PIL raises. ``draft``: JPEGs are
        decoded at the smallest scale libjpeg offers (1/8), which reads the whole compressed stream
        (a truncated or corrupt file fails as it does at full size) in about 40% of the time."""
        from PIL import Image

        value = self.table[self.rows[i]][self.column]
        if isinstance(value, Image.Image):
            img = value
        elif isinstance(value, dict):
            img = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
        elif isinstance(value, (bytes, bytearray)):
            img = Image.open(io.BytesIO(value))
        elif isinstance(value, str):
            img = Image.open(value)
        else:
            raise TypeError(f"unsupported image value of type {type(value).__name__}")
        if draft and getattr(img, "format", None) == "JPEG":
            img.draft("RGB", (1, 1))
        img.load()
        return img.convert("RGB")

    def load(self, i: int):
        """The PIL image of item ``i`` (RGB, cropped), or None if it cannot be decoded."""
        row = self.rows[i]
        try:
            img = self._open(i)
            box = self.crop(row) if self.crop is not None else None
            if box is not None:
                img = img.crop(tuple(int(round(v)) for v in box))
            return img
        except Exception as e:  # PIL raises many types for corrupt data
            if self.strict:
                raise UndecodableImageError(
                    f"image {i} (row {row}) of {self.name or 'the dataset'} cannot be decoded "
                    f"({type(e).__name__}: {e}); drop --strict-images to skip and count such images"
                ) from None
            self.undecodable.append(i)
            return None

    def error(self, i: int) -> str | None:
        """Why item ``i`` cannot be decoded (``Type: message``), or None when it can; a quick check
        (JPEGs at reduced scale, see :meth:`_open`) that records nothing."""
        try:
            self._open(i, draft=True)
            return None
        except Exception as e:  # PIL raises many types for corrupt data
            return re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", _first_line(e))

    def where(self, i: int) -> str:
        """Item ``i`` for a message: its file path (with its webdataset shard), else its key, else
        its row."""
        row = self.rows[i]
        value = self.table[row][self.column]
        cols = self.keys_from.column_names
        shard = (
            f" in {self.keys_from.select_columns(['__url__'])[row]['__url__']}" if "__url__" in cols else ""
        )
        if isinstance(value, dict) and value.get("path"):
            return f"{value['path']}{shard}"
        if isinstance(value, str) and len(value) < 500:
            return value
        if "__key__" in cols:
            return f"key {self.keys_from.select_columns(['__key__'])[row]['__key__']}{shard}"
        return f"row {row}"


def pil_transform(preprocess_cfg: dict | None, image_size: int):
    """open_clip's evaluation resize / crop for a model (``model.visual.preprocess_cfg``), without
    its ToTensor / Normalize: PIL image -> uint8 (H, W, 3) array at the model's input size.

    The uint8 array then takes the harness's normal path (``Encoder.preprocess``: /255, normalise),
    so the result equals open_clip's own preprocess."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = dict(preprocess_cfg or {})
    cfg.setdefault("size", (image_size, image_size))
    keys = set(PreprocessCfg.__dataclass_fields__)
    t = image_transform_v2(PreprocessCfg(**{k: v for k, v in cfg.items() if k in keys}), is_train=False)
    steps = [
        s
        for s in getattr(t, "transforms", [t])
        if type(s).__name__ not in ("ToTensor", "MaybeToTensor", "Normalize")
    ]

    def apply(img):
        for s in steps:
            img = s(img)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)

    return apply
