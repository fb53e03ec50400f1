"""Real datasets: one loader for the Hugging Face Hub and for local copies in the same format.

A task names its data as a :class:`HubSource` (dataset id, config, split, pinned revision). At run
time the table comes from, in order:

1. a local path given for the task or the dataset id (``--data coco-retrieval=/data/coco`` or
   ``data.paths`` in a config file);
2. ``$HARNESS_DATA_DIR/<dataset id>`` if that directory exists (a mirror made with
   ``hf download <id> --repo-type dataset --local-dir $HARNESS_DATA_DIR/<id>``);
3. the Hub itself (``datasets.load_dataset``), which needs network access and, for gated sets,
   accepted terms and a token. With ``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``) only the
   Hugging Face cache is read; otherwise the Hub is probed once per process (one HEAD request,
   :data:`HUB_TIMEOUT` seconds) and, when it cannot be reached, every Hub dataset is refused at
   once instead of after ``huggingface_hub``'s retries (about 25 s per dataset).

Local paths may be a ``save_to_disk`` directory, parquet / arrow / CSV / TSV / JSON(L) files,
webdataset ``.tar`` shards, or an image folder (``class_name/image.jpg``), as a file or a directory
of them; a directory with files of several splits keeps the files whose path names the split
(``test-00000.parquet``, ``test/0.tar``, ``TEST/test/0000.parquet``).

Errors are specific and raised before training (runner.prepare loads every task's table), and
each names the task (or training set) and the path or Hub id (docs/datasets-errors.md lists them):
:class:`DatasetUnavailableError` says how to provide a missing, gated or unreachable set locally,
:class:`EmptyDatasetError` refuses data that holds no rows, :class:`UnreadableDataError` a file
that is not in the format its name says, :class:`MissingColumnsError` names the expected and the
found columns.
Images are decoded lazily (:class:`ImageColumn`, in :mod:`harness.data.images`, re-exported here
with :func:`pil_transform`); an undecodable image is skipped and counted, or raises
:class:`UndecodableImageError` under ``strict``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from harness.core.data import DataOptions, HubSource
from harness.core.errors import (
    DataError as DataError,  # re-exported: the data errors are raised and caught here
)
from harness.core.errors import (
    DatasetUnavailableError,
    EmptyDatasetError,
    MissingColumnsError,
    UnreadableDataError,
)
from harness.core.errors import (
    UndecodableImageError as UndecodableImageError,  # re-exported: importers catch it from here
)
from harness.data.images import ImageColumn as ImageColumn  # re-exported: tasks import it from here
from harness.data.images import pil_transform as pil_transform
from harness.data.messages import _first_line

#: file suffix -> ``datasets`` packaged builder
BUILDERS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".json.gz": "json",
    ".jsonl.gz": "json",
    ".tar": "webdataset",
    ".arrow": "arrow",
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


# ----------------------------------------------------------------------------------- loading

_TABLES: dict[tuple, Any] = {}


def load_table(
    name: str,
    source: HubSource,
    options: DataOptions | None = None,
    columns: Iterable[str] = (),
    split: str | None = None,
):
    """The ``datasets.Dataset`` of ``source`` (``split`` overrides its split), from a local path
    when one is given (see the module docstring), else from the Hub. ``columns`` must all be present.

    Tables are loaded once per process (keyed by source, split and local path). A table without
    rows is refused (:class:`EmptyDatasetError`).
    """
    options = options or DataOptions()
    split = split or source.split
    local = options.local_path(name, source.repo)
    key = (source, split, str(local))
    if key not in _TABLES:
        if local is not None:
            table = _load_local(local, split, source.config, what=f"dataset for {name!r} at {local}")
        else:
            table = _load_hub(name, source, split)
            if len(table) == 0:
                raise EmptyDatasetError(
                    f"dataset for {name!r}, {source.describe()}, has no rows on the Hub; "
                    f"provide a copy that has rows with --data {name}=PATH"
                )
        _TABLES[key] = table
        _ORIGINS[id(table)] = (
            str(local)
            if local is not None
            else f"hf://datasets/{source.repo}@{_resolved_revision(source) or source.revision or 'main'}"
        )
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
            f"{', '.join(expected)}; found {', '.join(found) or '(none)'}"
        )


def _resolved_revision(source: HubSource) -> str | None:
    """The commit a Hub revision (branch, tag or None = main) points to now, so results record
    exactly which data they were computed on; None when the Hub cannot say."""
    if offline_mode() or hub_unreachable():
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(source.repo, revision=source.revision).sha
    except Exception:  # offline, or a mirror without the API: the declared revision is recorded
        return None


# ------------------------------------------------------------------------------------ the Hub

#: seconds the one reachability probe of the Hub may take
HUB_TIMEOUT = 3.0
_HUB_STATE: dict[str, str | None] = {}  # endpoint -> why it cannot be reached (None: reachable)


def offline_mode() -> bool:
    """Whether Hugging Face offline mode is on: ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set
    to a true value now, or read so by ``huggingface_hub`` / ``datasets`` at import."""

    def true(v: str | None) -> bool:
        return (v or "").strip().upper() in ("1", "ON", "YES", "TRUE")

    env = os.environ
    if "HF_DATASETS_OFFLINE" in env:  # datasets lets it override HF_HUB_OFFLINE either way
        return true(env["HF_DATASETS_OFFLINE"])
    if "HF_HUB_OFFLINE" in env:
        return true(env["HF_HUB_OFFLINE"])
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _probe_hub(endpoint: str, timeout: float) -> None:
    """One HEAD request to the Hub; raises OSError (URLError, timeout) when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # an HTTP status, whatever it is, means the Hub answered


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached, or None when it answered: one HEAD request with
    a :data:`HUB_TIMEOUT` s timeout, made once per process and endpoint (no retries)."""
    endpoint = _hub_endpoint()
    if endpoint not in _HUB_STATE:
        try:
            _probe_hub(endpoint, HUB_TIMEOUT)
            _HUB_STATE[endpoint] = None
        except Exception as e:  # DNS failure, refused connection, timeout, proxy error
            _HUB_STATE[endpoint] = f"{endpoint}: {_first_line(getattr(e, 'reason', None) or e)}"
    return _HUB_STATE[endpoint]


def _unavailable(name: str, source: HubSource, lead: str) -> DatasetUnavailableError:
    """The one-paragraph error for a Hub dataset that cannot be loaded: why, and the three ways
    to provide it locally."""
    cmd = (
        f"hf download {source.repo} --repo-type dataset"
        + (f" --revision {source.revision}" if source.revision else "")
        + (f" --include '{source.data_files}'" if source.data_files else "")
        + " --local-dir DIR"
    )
    return DatasetUnavailableError(
        f"dataset for {name!r}, {source.describe()}, {lead}. To provide it locally: download it where "
        f"you have access (`{cmd}`) and pass `--data {name}=DIR` (or set data.paths.{name} in the config, or "
        f"put it under $HARNESS_DATA_DIR/{source.repo}). parquet, arrow, save_to_disk, CSV/JSONL, webdataset "
        ".tar and image folders are read."
    )


def _load_hub(name: str, source: HubSource, split: str):
    """The table from the Hub, or from the Hugging Face cache alone in offline mode. An unreachable
    Hub is refused at once (:func:`hub_unreachable`), never after a retry loop."""
    gated_lead = "is gated (accept its terms on the Hub and log in with `hf auth login`)"
    offline = offline_mode()
    if not offline:
        down = hub_unreachable()
        if down:
            raise _unavailable(
                name,
                source,
                ("is gated and " if source.gated else "")
                + f"cannot be loaded: the Hugging Face Hub cannot be reached ({down}); if it "
                "is in your Hugging Face cache, set HF_HUB_OFFLINE=1 to read it from there",
            )
    import datasets

    kw: dict[str, Any] = {"revision": source.revision}
    if source.data_files:
        kw["data_files"] = {split: source.data_files}
    try:
        return datasets.load_dataset(
            source.repo, source.config if not source.data_files else None, split=split, **kw
        )
    except Exception as e:  # gating, unknown id, not in the cache: all need the same advice
        text, reason = str(e), _first_line(e)
        gated = source.gated or "gated" in text.lower() or "401" in text or "403" in text
        if offline:
            lead = (
                gated_lead + " or " if gated else ""
            ) + f"is not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE=1; {reason})"
        else:
            lead = (
                gated_lead + " or unreachable" if gated else "could not be loaded from the Hugging Face Hub"
            ) + f" ({reason})"
        raise _unavailable(name, source, lead) from None


# ------------------------------------------------------------------------------ local files


def _suffix(p: Path) -> str:
    name = p.name.lower()
    for s in (".json.gz", ".jsonl.gz"):
        if name.endswith(s):
            return s
    return p.suffix.lower()


def _select_split(files: list[Path], root: Path, split: str, config: str | None, what: str) -> list[Path]:
    """Files of ``split`` (and ``config``) when the names say which split a file holds."""

    def parts(f: Path) -> list[str]:
        rel = f.relative_to(root) if f != root else Path(f.name)
        return [x.lower() for x in re.split(r"[/\\._-]+", str(rel))]

    splits = {"train", "test", "validation", "val", "dev", "valid"}
    named = [f for f in files if splits & set(parts(f))]
    if not named:  # no split in any name: the files are the split
        return files
    want = {split.lower()} | (
        {"validation", "val", "dev", "valid"} if split.lower() in ("validation", "val", "dev") else set()
    )
    chosen = [f for f in files if want & set(parts(f))]
    if config:
        in_config = [f for f in chosen if config.lower() in parts(f)]
        chosen = in_config or chosen
    if not chosen:
        raise DatasetUnavailableError(
            f"{what} has no files for split {split!r} "
            f"(found: {', '.join(sorted(str(f.relative_to(root)) for f in files)[:8])}); "
            f"name the files by split (e.g. {split}-00000.parquet or {split}/0.tar), or "
            f"point --data at the {split!r} files alone"
        )
    return chosen


def _open_text(f: Path):
    import gzip

    return (
        gzip.open(f, "rt", encoding="utf-8", errors="replace")
        if f.name.lower().endswith(".gz")
        else open(f, encoding="utf-8", errors="replace")
    )


def _nonblank_lines(f: Path, at_most: int) -> int:
    """How many non-blank lines ``f`` has, counting no further than ``at_most``."""
    n = 0
    with _open_text(f) as fh:
        for line in fh:
            n += bool(line.strip())
            if n >= at_most:
                break
    return n


def _check_files(data: list[Path], root: Path, kind: str, what: str) -> None:
    """Cheap checks of local files before ``datasets`` reads them, so that a bad file gets one clear
    error rather than a builder traceback: every parquet file needs its footer (which also says how
    many rows it holds), every ``.tar`` must open as a tar archive; files that hold no rows at all
    (0-row parquet, empty tar, CSV without a row under its header, blank JSON) are refused. Reads
    footers, first headers and first lines only."""
    import tarfile

    def unreadable(f: Path, fmt: str, e: Exception) -> UnreadableDataError:
        which, rest = (
            (what, "")
            if f == root
            else (f"{what}: {f.relative_to(root)}", ", or remove it and point --data at the rest")
        )
        return UnreadableDataError(
            f"{which} is not a readable {fmt} file ({_first_line(e)}); replace it with a good copy{rest}"
        )

    rows = 0
    for f in data:
        try:
            if kind == "parquet":
                import pyarrow.parquet as pq

                rows += pq.read_metadata(f).num_rows
            elif kind == "webdataset":
                with tarfile.open(f) as tar:
                    rows += tar.next() is not None
            elif kind == "csv":
                rows += max(_nonblank_lines(f, 2) - 1, 0)  # the first line is the header
            elif kind == "json":
                rows += _nonblank_lines(f, 1)
            else:
                rows += 1  # arrow: counted once loaded
        except Exception as e:
            raise unreadable(f, {"webdataset": "tar (webdataset)"}.get(kind, kind), e) from None
    if rows:
        return
    files = (
        ""
        if data == [root]
        else ": "
        + ", ".join(str(f.relative_to(root)) for f in data[:4])
        + (f" and {len(data) - 4} more" if len(data) > 4 else "")
    )
    plural = "s" if len(data) > 1 else ""
    raise EmptyDatasetError(
        f"{what} has no rows (empty {kind} file{plural}{files}); point --data at the "
        "dataset's files with their rows (an empty file is often left by an interrupted "
        "download or export)"
    )


def _load_local(path: Path, split: str, config: str | None, what: str | None = None):
    """A local copy as a ``datasets.Dataset``; ``what`` (the task and path) leads every error."""
    import datasets

    what = what or f"local data {path}"
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:
            state = path / "state.json"
            if state.exists() and not json.loads(state.read_text()).get("_data_files", [None]):
                raise EmptyDatasetError(
                    f"{what} has no rows (a save_to_disk copy of 0 rows); save a copy that has rows"
                ) from None
            raise UnreadableDataError(
                f"{what}: the save_to_disk directory cannot be read ({_first_line(e)}); save it again"
            ) from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DatasetUnavailableError(
                    f"{what}: the save_to_disk copy has splits {list(ds)}, "
                    f"not {split!r}; save a copy that holds the {split!r} split "
                    "and pass that with --data"
                )
            ds = ds[split]
        return _nonempty(ds, what)
    files = (
        [path]
        if path.is_file()
        else sorted(
            f
            for f in path.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
        )
    )
    data = [f for f in files if _suffix(f) in BUILDERS]
    if not data:
        if any(_suffix(f) in IMAGE_SUFFIXES for f in files):
            return _nonempty(
                _load_files(
                    lambda: datasets.load_dataset("imagefolder", data_dir=str(path), split="train"), what
                ),
                what,
            )
        expected = (
            "parquet, arrow, CSV/TSV, JSON(L), webdataset .tar, a save_to_disk directory or an image "
            "folder (class_name/image.jpg)"
        )
        if not files:
            raise EmptyDatasetError(
                f"{what} is empty: it holds no files (expected {expected}); point --data "
                "at the directory the dataset was downloaded to"
            )
        found = sorted({_suffix(f) or f.name for f in files})
        raise UnreadableDataError(
            f"{what} holds no data file of a format the harness reads (found "
            f"{', '.join(found[:8])}); expected {expected}"
        )
    if path.is_dir():
        data = _select_split(data, path, split, config, what)
    kinds = {BUILDERS[_suffix(f)] for f in data}
    if len(kinds) > 1:
        raise UnreadableDataError(f"{what} mixes formats {sorted(kinds)}; keep one")
    kind = kinds.pop()
    _check_files(data, path, kind, what)
    if kind == "arrow":
        return _nonempty(
            _load_files(
                lambda: datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in data]),
                what,
            ),
            what,
        )
    kw: dict[str, Any] = {}
    if kind == "csv" and all(_suffix(f) == ".tsv" for f in data):
        kw["delimiter"] = "\t"
    return _nonempty(
        _load_files(
            lambda: datasets.load_dataset(kind, data_files=[str(f) for f in data], split="train", **kw), what
        ),
        what,
    )


def _load_files(load: Callable[[], Any], what: str):
    """``load()``, its failure turned into one :class:`UnreadableDataError` naming the data."""
    try:
        return load()
    except Exception as e:  # datasets wraps parser errors in DatasetGenerationError: keep the cause
        cause = e
        while cause.__cause__ is not None and type(cause).__name__ == "DatasetGenerationError":
            cause = cause.__cause__
        if "corresponds to no data" in str(cause):  # datasets' word for a split of 0 rows
            raise EmptyDatasetError(
                f"{what} has no rows; point --data at the dataset's files with their rows"
            ) from None
        raise UnreadableDataError(
            f"{what} cannot be read ({_first_line(cause)}); check that the files are "
            "complete and in the format their names say"
        ) from None


def _nonempty(table, what: str):
    if len(table) == 0:
        raise EmptyDatasetError(f"{what} has no rows; point --data at the dataset's files with their rows")
    return table


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
