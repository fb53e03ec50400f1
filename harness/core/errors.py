"""The two kinds of error a command can end with.

* :class:`UserError`: bad input (an unknown name, an invalid value, a missing or malformed
  dataset, ...). The command prints its one-line message and exits 2; raised before anything is
  written wherever it can be known that early.
* Anything else is an internal error (a bug, or a fault of the machine): exit 1, with a hint to
  rerun with ``--verbose`` for the traceback.

``UserError`` is a ``ValueError`` so that code catching ``ValueError`` keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the command exits 2 with this message."""

    exit_code = 2


class DataError(UserError):
    """A dataset that cannot be used as given."""


class MissingColumnsError(DataError):
    """The table lacks columns the task reads."""


class DatasetUnavailableError(DataError):
    """The dataset is neither local nor reachable on the Hub (offline, gated, unknown)."""


class EmptyDatasetError(DataError):
    """The data is there but holds no rows (an empty file, a directory without data files)."""


class UnreadableDataError(DataError):
    """A local file that cannot be read in the format its name says (e.g. a ``.parquet`` that is not
    parquet)."""


class UndecodableImageError(DataError):
    """An image that PIL cannot decode (under ``strict``, or when too few training images decode)."""
