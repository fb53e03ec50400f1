"""JSON: the whole board (:meth:`Leaderboard.to_dict`), non-finite numbers as null."""

from __future__ import annotations

import json
import math

import numpy as np

from ..board import Leaderboard


def render_json(board: Leaderboard) -> str:
    return json.dumps(jsonable(board.to_dict()), indent=1, allow_nan=False)


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
