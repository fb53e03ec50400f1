"""What ``harness list objectives|tasks`` shows, cached on disk so that listing does not import torch.

Listing needs ``describe()`` of every registered class, and so imports every objective or task module
(torch, open_clip, datasets: seconds). The rows are built that way once and cached as JSON, under a
key computed without importing anything (:func:`harness.core.registry.entry_point_fingerprint`: the
entry points with their distributions' names and versions, and the size and mtime of the files of the
modules they name and of the base classes' modules). A changed key, ``--refresh`` or a plugin that
failed to load rebuilds it (a failing plugin is never cached: it is reported, with its error, on every
listing until it loads). When this process has already imported the registry, the listing is the live
registry itself (with whatever the process registered), and the cache is neither read nor written.

The cache lives in ``$HARNESS_CATALOGUE_DIR`` (``off`` disables it), else
``$XDG_CACHE_HOME/contrastive-harness`` (``~/.cache/contrastive-harness``), one file per kind and
Python environment.

``python -m harness.cli.catalogue`` rewrites the generated tables of docs/objectives.md and
docs/tasks.md (the output of ``harness list objectives|tasks --format md``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import __version__
from harness.core.registry import Registry, entry_point_fingerprint

#: kind -> (entry-point group, module of its registry, the registry's name in it, extra key modules)
KINDS = {
    "objectives": ("harness.objectives", "harness.core.objective", "OBJECTIVES", ()),
    "tasks": ("harness.tasks", "harness.core.task", "TASKS", ("harness.data.sources",)),
}
FORMAT = 1  # of the cache file; part of the key
DOCS = {"objectives": "docs/objectives.md", "tasks": "docs/tasks.md"}
END = "<!-- end generated -->"


def begin_marker(kind: str) -> str:
    return f"<!-- generated: harness list {kind} --format md -->"


@dataclass
class Catalogue:
    """The rows (``describe()`` of each class) and the plugins that failed to load (``--json``'s
    ``failed``); ``origin`` is ``cache``, ``built`` (imported, then cached) or ``live``."""

    kind: str
    rows: list[dict[str, Any]]
    failed: list[dict[str, Any]] = field(default_factory=list)
    origin: str = "built"


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (importing it imports torch)."""
    _, module, attr, _ = KINDS[kind]
    return getattr(importlib.import_module(module), attr)


def _plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as JSON gives them back, so a listing built now and one read from the cache are equal."""

    def default(o: Any) -> Any:
        return sorted(o) if isinstance(o, (set, frozenset)) else str(o)

    return json.loads(json.dumps(rows, default=default))


def build(kind: str, reg: Registry | None = None) -> Catalogue:
    """Import every entry of ``reg`` (default: the registry of ``kind``) and describe it."""
    reg = registry(kind) if reg is None else reg
    rows = [cls.describe() for _, cls in reg.items()]
    failed = [vars(f) | {"traceback": None} for f in reg.failures.values()]
    return Catalogue(kind, _plain(rows), failed)


def cache_path(kind: str) -> Path | None:
    """This environment's cache file for ``kind``; None when caching is off."""
    where = os.environ.get("HARNESS_CATALOGUE_DIR")
    if where == "off":
        return None
    if not where:
        where = os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "contrastive-harness"
        )
    env = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    return Path(where) / f"catalogue-{kind}-{env}.json"


def key(kind: str) -> str:
    """What the cached rows of ``kind`` are valid for (nothing is imported to compute it)."""
    group, module, _, also = KINDS[kind]
    fp = entry_point_fingerprint(group, also=(module, "harness.cli.catalogue", *also))
    return f"{FORMAT}:{__version__}:{fp}"


def load(kind: str, refresh: bool = False, use_cache: bool | None = None) -> Catalogue:
    """The catalogue of ``kind``: from the cache when its key still holds, else built and cached.

    ``use_cache`` defaults to: the registry has not been imported in this process (then the cache saves
    importing it), and plugin autoloading is not disabled.
    """
    if use_cache is None:
        use_cache = (
            KINDS[kind][1] not in sys.modules and os.environ.get("HARNESS_DISABLE_PLUGIN_AUTOLOAD") != "1"
        )
    path = cache_path(kind) if use_cache else None
    if path is None:
        return Catalogue(**{**vars(build(kind)), "origin": "live"})
    k = key(kind)
    if not refresh:
        try:
            data = json.loads(path.read_text())
            if data.get("key") == k and data.get("kind") == kind:
                return Catalogue(kind, data["rows"], [], "cache")
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # missing, unreadable or from another version: rebuilt
    cat = build(kind)
    if not cat.failed:
        _write(path, {"kind": kind, "key": k, "rows": cat.rows})
    return cat


def _write(path: Path, data: dict[str, Any]) -> None:
    """Atomic (a concurrent reader sees the old file or the new one); a cache that cannot be written
    is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass


# -- Markdown --------------------------------------------------------------------------------------
def _code(v: Any) -> str:
    return f"`{v}`" if v not in (None, "") else ""


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _main_score(r: dict[str, Any]) -> str:
    if r.get("family") == "suite":
        return ""
    return _code(r.get("main_score")) + ("" if r.get("higher_is_better", True) else " (lower is better)")


#: kind -> [(column title, row -> cell)]: the columns of the docs' tables
COLUMNS = {
    "objectives": [
        ("name", lambda r: _code(r["name"])),
        ("family", lambda r: r["family"]),
        ("trains", lambda r: r["modality"]),
        ("needs", lambda r: ", ".join(r["requires"])),
        ("distributed", lambda r: r["distributed"]),
        ("defaults", lambda r: ", ".join(f"{k}={_value(v)}" for k, v in r.get("defaults", {}).items())),
        ("paper", lambda r: r.get("citation") or ""),
    ],
    "tasks": [
        ("name", lambda r: _code(r["name"])),
        ("family", lambda r: r["family"]),
        ("evaluates", lambda r: r["modality"]),
        ("main score", _main_score),
        ("dataset", lambda r: r.get("dataset") or ""),
        ("default training data", lambda r: r.get("default_train_data") or ""),
    ],
}


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown(kind: str, rows: list[dict[str, Any]]) -> str:
    """The Markdown table of ``harness list KIND --format md`` (the docs' generated tables)."""
    cols = COLUMNS[kind]
    lines = ["| " + " | ".join(t for t, _ in cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(_cell(fn(r)) for _, fn in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def docs_block(text: str, kind: str) -> str | None:
    """The generated table of ``kind`` in a docs page's text (between the markers), or None."""
    start = text.find(begin_marker(kind))
    end = text.find(END, start)
    if start < 0 or end < 0:
        return None
    return text[start + len(begin_marker(kind)) : end].strip("\n") + "\n"


def update_docs(root: Path, kind: str, table: str) -> bool:
    """Write ``table`` between the markers of ``kind``'s docs page; True when the page changed."""
    path = root / DOCS[kind]
    text = path.read_text()
    old = docs_block(text, kind)
    if old is None:
        raise ValueError(f"{path} has no {begin_marker(kind)!r} ... {END!r} block")
    start = text.find(begin_marker(kind)) + len(begin_marker(kind))
    new = text[:start] + "\n" + table + text[text.find(END, start) :]
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.cli.catalogue [ROOT]``: regenerate the docs' tables from the registries (a page
    is left alone, and the exit code is 1, when an entry of its kind fails to load)."""
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[2]
    rc = 0
    for kind in DOCS:
        cat = load(kind, refresh=True)
        for f in cat.failed:
            print(f"error: {f['name']} ({f['source']}) failed to load: {f['error']}", file=sys.stderr)
        if cat.failed:  # a table without them would be wrong
            print(f"{DOCS[kind]}: left as it is ({len(cat.failed)} {kind} failed to load)", file=sys.stderr)
            rc = 1
            continue
        changed = update_docs(root, kind, markdown(kind, cat.rows))
        print(f"{DOCS[kind]}: {len(cat.rows)} {kind}, {'updated' if changed else 'unchanged'}")
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
