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
