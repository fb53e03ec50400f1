"""Real datasets: one loader for the Hugging Face Hub and for local copies in the same format.

A task names its data as a :class:`HubSource` (dataset id, config, split, pinned revision). At run
time the table comes from, in order:

1. a local path given for the task or the dataset id (``--data coco-retrieval=/data/coco`` or
   ``data.paths`` in a config file);
2. ``$HARNESS_DATA_DIR/<dataset id>`` if that directory exists (a mirror made with
   ``huggingface-cli download <id> --repo-type dataset --local-dir $HARNESS_DATA_DIR/<id>``);
3. the Hub itself (``datasets.load_dataset``), which needs network access and, for gated sets,
   accepted terms and a token.

Local paths may be a ``save_to_disk`` directory, parquet / arrow / CSV / TSV / JSON(L) files,
webdataset ``.tar`` shards, or an image folder (``class_name/image.jpg``), as a file or a directory
of them; a directory with files of several splits keeps the files whose path names the split
(``test-00000.parquet``, ``test/0.tar``, ``TEST/test/0000.parquet``).

Errors are specific and raised before training (runner.prepare loads every task's table):
:class:`MissingColumnsError` names the expected and the found columns,
:class:`DatasetUnavailableError` says how to provide a gated or unreachable set locally.
Images are decoded lazily (:class:`ImageColumn`); an undecodable image is skipped and counted, or
raises :class:`UndecodableImageError` under ``strict``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

#: file suffix -> ``datasets`` packaged builder
BUILDERS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json",
            ".json.gz": "json", ".jsonl.gz": "json", ".tar": "webdataset", ".arrow": "arrow"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class DataError(ValueError):
    """A dataset that cannot be used as given."""


class MissingColumnsError(DataError):
    """The table lacks columns the task reads."""


class DatasetUnavailableError(DataError):
    """The dataset is neither local nor reachable on the Hub (offline, gated, unknown)."""


class UndecodableImageError(DataError):
    """An image that PIL cannot decode, under ``strict``."""


@dataclass(frozen=True)
class HubSource:
    """Where a task's table lives on the Hugging Face Hub.

    ``revision`` pins a commit or branch (``refs/convert/parquet`` is the Hub's parquet conversion,
    used for sets whose loading scripts current ``datasets`` refuses); ``data_files`` selects files
    inside the repository (a glob), else the repository's own layout decides.
    """

    repo: str
    split: str = "test"
    config: str | None = None
    revision: str | None = None
    data_files: str | None = None
    gated: bool = False

    def describe(self) -> str:
        s = self.repo + (f" (config {self.config})" if self.config else "") + f", split {self.split}"
        return s + (f", revision {self.revision}" if self.revision else "")


@dataclass
class DataOptions:
    """What the user said about data: local paths by task name or dataset id, and strictness."""

    paths: dict[str, str] = field(default_factory=dict)
    strict_images: bool = False

    def local_path(self, *names: str) -> Path | None:
        for n in names:
            if n and n in self.paths:
                p = Path(self.paths[n]).expanduser()
                if not p.exists():
                    raise DatasetUnavailableError(f"local data for {n!r} does not exist: {p}; fix the path "
                                                  f"given with --data {n}=PATH (or data.paths.{n})")
                return p
        root = os.environ.get("HARNESS_DATA_DIR")
        if root:
            for n in names:
                if n and (Path(root) / n).exists():
                    return Path(root) / n
        return None


# ----------------------------------------------------------------------------------- loading

_TABLES: dict[tuple, Any] = {}


def load_table(name: str, source: HubSource, options: DataOptions | None = None,
               columns: Iterable[str] = (), split: str | None = None):
    """The ``datasets.Dataset`` of ``source`` (``split`` overrides its split), from a local path
    when one is given (see the module docstring), else from the Hub. ``columns`` must all be present.

    Tables are loaded once per process (keyed by source, split and local path).
    """
    options = options or DataOptions()
    split = split or source.split
    local = options.local_path(name, source.repo)
    key = (source, split, str(local))
    if key not in _TABLES:
        table = _load_local(local, split, source.config) if local is not None else _load_hub(name, source, split)
        _TABLES[key] = table
        _ORIGINS[id(table)] = str(local) if local is not None else \
            f"hf://datasets/{source.repo}@{_resolved_revision(source) or source.revision or 'main'}"
    table = _TABLES[key]
    check_columns(table, columns, f"{name} ({local or source.describe()})")
    return table


_ORIGINS: dict[int, str] = {}


def origin(table) -> str:
    """Where a table loaded by :func:`load_table` came from (local path or ``hf://`` address)."""
    return _ORIGINS.get(id(table), "")


def check_columns(table, expected: Iterable[str], what: str) -> None:
    expected = list(expected)
    found = list(table.column_names)
    missing = [c for c in expected if c not in found]
    if missing:
        raise MissingColumnsError(
            f"dataset {what} lacks column(s) {', '.join(map(repr, missing))}: expected "
            f"{', '.join(expected)}; found {', '.join(found) or '(none)'}")


def _resolved_revision(source: HubSource) -> str | None:
    """The commit a Hub revision (branch, tag or None = main) points to now, so results record
    exactly which data they were computed on; None when the Hub cannot say."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(source.repo, revision=source.revision).sha
    except Exception:  # offline, or a mirror without the API: the declared revision is recorded
        return None


def _load_hub(name: str, source: HubSource, split: str):
    import datasets

    kw: dict[str, Any] = {"revision": source.revision}
    if source.data_files:
        kw["data_files"] = {split: source.data_files}
    try:
        return datasets.load_dataset(source.repo, source.config if not source.data_files else None,
                                     split=split, **kw)
    except Exception as e:  # network, gating, unknown id, offline mode: all need the same advice
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        gated = source.gated or "gated" in str(e).lower() or "401" in str(e) or "403" in str(e)
        how = (f"download it where you have access "
               f"(`huggingface-cli download {source.repo} --repo-type dataset"
               + (f" --revision {source.revision}" if source.revision else "")
               + f" --local-dir DIR`) and pass `--data {name}=DIR` (or set data.paths.{name} in the "
               f"config, or put it under $HARNESS_DATA_DIR/{source.repo}). parquet, arrow, "
               "save_to_disk, CSV/JSONL, webdataset .tar and image folders are read.")
        lead = "is gated (accept its terms on the Hub and log in) or unreachable" if gated else \
            "could not be loaded from the Hugging Face Hub"
        raise DatasetUnavailableError(f"dataset for {name!r}, {source.describe()}, {lead} ({reason}). "
                                      f"To provide it locally: {how}") from None


def _suffix(p: Path) -> str:
    name = p.name.lower()
    for s in (".json.gz", ".jsonl.gz"):
        if name.endswith(s):
            return s
    return p.suffix.lower()


def _select_split(files: list[Path], root: Path, split: str, config: str | None) -> list[Path]:
    """Files of ``split`` (and ``config``) when the names say which split a file holds."""
    def parts(f: Path) -> list[str]:
        rel = f.relative_to(root) if f != root else Path(f.name)
        return [x.lower() for x in re.split(r"[/\\._-]+", str(rel))]

    splits = {"train", "test", "validation", "val", "dev", "valid"}
    named = [f for f in files if splits & set(parts(f))]
    if not named:  # no split in any name: the files are the split
        return files
    want = {split.lower()} | ({"validation", "val", "dev", "valid"} if split.lower() in ("validation", "val", "dev") else set())
    chosen = [f for f in files if want & set(parts(f))]
    if config:
        in_config = [f for f in chosen if config.lower() in parts(f)]
        chosen = in_config or chosen
    if not chosen:
        raise DatasetUnavailableError(f"local data in {root} has no files for split {split!r} "
                                      f"(found: {', '.join(sorted(str(f.relative_to(root)) for f in files)[:8])}); "
                                      f"name the files by split (e.g. {split}-00000.parquet or {split}/0.tar), or "
                                      f"point --data at the {split!r} files alone")
    return chosen


def _load_local(path: Path, split: str, config: str | None):
    import datasets

    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DatasetUnavailableError(f"local dataset {path} has splits {list(ds)}, not {split!r}; save "
                                              f"a copy that holds the {split!r} split and pass that with --data")
            ds = ds[split]
        return ds
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file() and not any(
        part.startswith(".") for part in f.relative_to(path).parts))
    data = [f for f in files if _suffix(f) in BUILDERS]
    if not data:
        if any(_suffix(f) in IMAGE_SUFFIXES for f in files):
            return datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
        raise DatasetUnavailableError(
            f"no readable data in {path}: expected parquet, arrow, CSV/TSV, JSON(L), webdataset .tar, "
            "a save_to_disk directory or an image folder")
    if path.is_dir():
        data = _select_split(data, path, split, config)
    kinds = {BUILDERS[_suffix(f)] for f in data}
    if len(kinds) > 1:
        raise DatasetUnavailableError(f"local data in {path} mixes formats {sorted(kinds)}; keep one")
    kind = kinds.pop()
    if kind == "arrow":
        return datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in data])
    kw: dict[str, Any] = {}
    if kind == "csv" and all(_suffix(f) == ".tsv" for f in data):
        kw["delimiter"] = "\t"
    return datasets.load_dataset(kind, data_files=[str(f) for f in data], split="train", **kw)


_FINGERPRINTS: dict[int, tuple[Any, str]] = {}


def fingerprint(table) -> str:
    """A content fingerprint of a table: its rows, columns and the bytes of its arrow files (size,
    first and last MiB of each; whole files would mean reading every image twice). Computed once
    per table object (the cache holds the table, so its id cannot be reused)."""
    cached = _FINGERPRINTS.get(id(table))
    if cached is None or cached[0] is not table:
        cached = _FINGERPRINTS[id(table)] = (table, _fingerprint(table))
    return cached[1]


def _fingerprint(table) -> str:
    h = hashlib.sha256()
    h.update(repr((len(table), sorted(table.column_names))).encode())
    files = [c["filename"] for c in getattr(table, "cache_files", [])]
    if files:
        for f in sorted(files):
            size = os.path.getsize(f)
            h.update(str(size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(2**20))
                if size > 2**20:
                    fh.seek(max(size - 2**20, 2**20))
                    h.update(fh.read())
    else:  # an in-memory table: hash its arrow buffers
        for batch in table.data.to_batches():
            for col in batch.columns:
                for buf in col.buffers():
                    if buf is not None:
                        h.update(memoryview(buf))
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------ images


class ImageColumn:
    """Lazily decoded images of one column of a table (an ``Image`` feature, bytes, a path, a
    webdataset ``jpg``/``png``/``webp`` field, or PIL images), optionally cropped per row.

    ``crop(i)`` may return a box ``(left, top, right, bottom)`` in pixels for row ``i`` (ARO's
    relation / attribute boxes). Rows PIL cannot decode come back as ``None``; the encoder gives
    them NaN embeddings and records them in :attr:`undecodable` (or raises under ``strict``).
    """

    def __init__(self, table, column: str | Sequence[str], name: str = "", strict: bool = False,
                 crop: Callable[[int], tuple[float, float, float, float] | None] | None = None,
                 rows: Sequence[int] | None = None):
        import datasets

        candidates = [column] if isinstance(column, str) else list(column)
        present = [c for c in candidates if c in table.column_names]
        if not present:
            raise MissingColumnsError(f"dataset {name or '?'} has no image column: expected one of "
                                      f"{', '.join(candidates)}; found {', '.join(table.column_names)}")
        self.column = present[0]
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
        rows = "all" if self.rows == list(range(len(self.table))) else hashlib.sha1(
            np.asarray(self.rows, dtype=np.int64).tobytes()).hexdigest()[:12]
        return f"{self.column}:{len(self.rows)}:{rows}:{'cropped' if self.crop is not None else 'whole'}"

    def load(self, i: int):
        """The PIL image of item ``i`` (RGB, cropped), or None if it cannot be decoded."""
        from PIL import Image

        row = self.rows[i]
        value = self.table[row][self.column]
        try:
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
            img.load()
            img = img.convert("RGB")
            box = self.crop(row) if self.crop is not None else None
            if box is not None:
                img = img.crop(tuple(int(round(v)) for v in box))
            return img
        except Exception as e:  # PIL raises many types for corrupt data
            if self.strict:
                raise UndecodableImageError(
                    f"image {i} (row {row}) of {self.name or 'the dataset'} cannot be decoded "
                    f"({type(e).__name__}: {e}); drop --strict-images to skip and count such images") from None
            self.undecodable.append(i)
            return None


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
    steps = [s for s in getattr(t, "transforms", [t])
             if type(s).__name__ not in ("ToTensor", "MaybeToTensor", "Normalize")]

    def apply(img):
        for s in steps:
            img = s(img)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)

    return apply
