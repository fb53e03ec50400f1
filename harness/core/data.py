"""How tasks name their data: a dataset on the Hugging Face Hub (:class:`HubSource`) and what the
user said about local copies (:class:`DataOptions`). Reading the data is :mod:`harness.data.sources`'
job; these are the plain descriptions the core API and the configuration share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.core.errors import DatasetUnavailableError


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
                    raise DatasetUnavailableError(
                        f"local data for {n!r} does not exist: {p}; fix the path "
                        f"given with --data {n}=PATH (or data.paths.{n})"
                    )
                return p
        root = os.environ.get("HARNESS_DATA_DIR")
        if root:
            for n in names:
                if n and (Path(root) / n).exists():
                    return Path(root) / n
        return None
