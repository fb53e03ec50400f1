"""How the dataset readers (:mod:`harness.data.sources`, :mod:`harness.data.images`) quote an
exception in their one-line errors."""

from __future__ import annotations


def _first_line(e: BaseException) -> str:
    """``Type: first line of the message`` of an exception."""
    text = str(e)
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
