"""One generic registry for objectives and tasks (timm's ``@register_model`` meets entry points).

Names come from two places:

* the decorator ``@OBJECTIVES.register("clip")`` on a class in an imported module, and
* the entry-point groups ``harness.objectives`` / ``harness.tasks``. The built-ins are declared there
  too (``pyproject.toml``), so a plugin package is found exactly like a built-in one.

Discovery is a cheap metadata scan; a module is imported only when one of its names is asked for
(lazy loading). A plugin that fails to import is reported (``failures``, ``harness list``) and
skipped; the rest keep working. Unknown names raise :class:`UnknownNameError` with "did you mean"
suggestions.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from harness.core.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
    """An objective or task name that no registry entry carries."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        avail = ", ".join(sorted(known)) if known else "none"
        super().__init__(f"unknown {kind} {name!r}.{hint} Available: {avail}.")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


@dataclass
class PluginFailure:
    name: str
    source: str
    error: str
    traceback: str


@dataclass
class _Entry:
    name: str
    source: str  # "module:attr" or the distribution that declared the entry point
    loader: Callable[[], Any] | None = None
    obj: Any = None
    value: str = ""  # the entry point's "module:attr"


class Registry(Generic[T]):
    """Name -> class, filled by decorators and by the entry points of ``group``."""

    def __init__(self, kind: str, group: str, base: type | None = None):
        self.kind, self.group, self.base = kind, group, base
        self._entries: dict[str, _Entry] = {}
        self._discovered = False
        self.failures: dict[str, PluginFailure] = {}

    # -- registration ------------------------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            key = name or getattr(cls, "name", None) or cls.__name__.lower()
            existing = self._entries.get(key)
            if existing is not None and existing.obj is not None and existing.obj is not cls:
                raise ValueError(
                    f"{self.kind} {key!r} registered twice: {existing.source} and "
                    f"{cls.__module__}:{cls.__qualname__}"
                )
            self._check(key, cls)
            cls.name = key  # type: ignore[attr-defined]
            self._entries[key] = _Entry(key, f"{cls.__module__}:{cls.__qualname__}", obj=cls)
            return cls

        return deco

    def _check(self, name: str, obj: Any) -> None:
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise TypeError(f"{self.kind} {name!r} must be a subclass of {self.base.__name__}, got {obj!r}")

    # -- discovery ---------------------------------------------------------------------------
    def discover(self, refresh: bool = False) -> None:
        if self._discovered and not refresh:
            return
        self._discovered = True
        if os.environ.get("HARNESS_DISABLE_PLUGIN_AUTOLOAD") == "1":
            return
        seen: set[str] = set()
        for ep in entry_points(group=self.group):
            if ep.name in seen:  # stale duplicate metadata: first wins (as xarray does)
                continue
            seen.add(ep.name)
            if ep.name in self._entries and self._entries[ep.name].obj is not None:
                continue
            dist = getattr(ep, "dist", None)
            source = f"{ep.value} ({dist.name} {dist.version})" if dist else ep.value
            self._entries[ep.name] = _Entry(ep.name, source, loader=self._loader(ep), value=ep.value)

    @staticmethod
    def _loader(ep: EntryPoint) -> Callable[[], Any]:
        return ep.load

    def _materialise(self, entry: _Entry) -> Any:
        if entry.obj is None and entry.loader is not None:
            try:
                obj = entry.loader()
                self._check(entry.name, obj)
            except Exception as e:  # a broken plugin is reported and skipped
                self.failures[entry.name] = PluginFailure(
                    entry.name, entry.source, f"{type(e).__name__}: {e}", traceback.format_exc()
                )
                log.warning("%s plugin %r (%s) failed to load: %s", self.kind, entry.name, entry.source, e)
                del self._entries[entry.name]
                return None
            if getattr(obj, "name", None) != entry.name:
                obj.name = entry.name
            entry.obj = obj
        return entry.obj

    # -- lookup ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def get(self, name: str) -> type[T]:
        self.discover()
        entry = self._entries.get(name)
        if entry is None:
            if name in self.failures:
                f = self.failures[name]
                raise ImportError(f"{self.kind} {name!r} ({f.source}) failed to load: {f.error}")
            raise UnknownNameError(self.kind, name, self.names())
        obj = self._materialise(entry)
        if obj is None:
            f = self.failures[name]
            raise ImportError(f"{self.kind} {name!r} ({f.source}) failed to load: {f.error}")
        return obj

    def name_of(self, cls: type) -> str | None:
        """The registered name of ``cls`` (its entry point's name), without loading anything else:
        a class is named once, by the entry point that declares it."""
        self.discover()
        target = f"{cls.__module__}:{cls.__qualname__}"
        for entry in self._entries.values():
            if entry.obj is cls or entry.value.replace(" ", "") == target:
                return entry.name
        return None

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._entries

    def source(self, name: str) -> str:
        self.get(name)
        return self._entries[name].source

    def items(self) -> Iterator[tuple[str, type[T]]]:
        """Every loadable entry (loads them all; broken plugins land in ``failures``)."""
        for name in self.names():
            entry = self._entries.get(name)
            if entry is None:
                continue
            obj = self._materialise(entry)
            if obj is not None:
                yield name, obj

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        self.failures.pop(name, None)


# -- metadata without importing -------------------------------------------------------------------
def module_file(module: str) -> Path | None:
    """The source file of ``module`` ("pkg.sub"), found without importing it or its packages: the
    top-level name is looked up with :func:`importlib.util.find_spec` (which imports nothing for a
    top-level name), the rest is a path below its locations. None when there is no such ``.py`` file
    (a compiled or namespace-only module, or a module that does not exist)."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for loc in spec.submodule_search_locations or ():
        base = Path(loc).joinpath(*rest)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def source_stamps(modules: Iterable[str]) -> dict[str, Any]:
    """``path -> [size, mtime_ns]`` of each module's file and, for a module inside a package, of every
    ``.py`` file beside it (what it most likely imports: ``objectives/infonce.py`` and
    ``objectives/tiled.py``); ``module -> None`` for a module whose file is not found. Nothing is
    imported."""
    out: dict[str, Any] = {}
    for module in sorted(set(modules)):
        path = module_file(module)
        if path is None:
            out[module] = None
            continue
        in_package = "." in module or path.name == "__init__.py"
        for f in sorted(path.parent.glob("*.py")) if in_package else [path]:
            try:
                st = f.stat()
            except OSError:
                continue
            out[str(f)] = [st.st_size, st.st_mtime_ns]
    return out


def entry_point_fingerprint(group: str, also: Iterable[str] = ()) -> str:
    """A hash of everything the classes of entry-point ``group`` (and so what ``describe()`` says of
    them) can depend on, computed without importing any of them: each entry point with its
    distribution's name and version, the size and mtime of the files of the modules the entry points
    name (see :func:`source_stamps`) and of the modules in ``also`` (the base classes), and the
    Python version. Equal fingerprints mean a cached description of the group is still valid."""
    found = {
        (ep.name, ep.value, getattr(ep.dist, "name", None), getattr(ep.dist, "version", None))
        for ep in entry_points(group=group)
    }
    eps = sorted(found, key=str)
    modules = {value.partition(":")[0].strip() for _, value, _, _ in eps} | set(also)
    data = {"group": group, "python": sys.version, "entry_points": eps, "files": source_stamps(modules)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
