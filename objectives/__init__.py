"""The objectives library: one module per family of objectives, each objective a small class
whose docstring gives its formula and paper. The interface they implement, the registry and
objective expressions live in :mod:`harness.core.objective`; they are re-exported here, the public
import path of plugins (``from objectives import Objective, HParam, LearnableScale``).
"""

from harness.core.objective import (
    OBJECTIVES,
    DefaultSource,
    HParam,
    HyperparameterError,
    LearnableScale,
    Objective,
    ObjectiveExpressionError,
    WeightedSum,
    build_objective,
    parse_expression,
    register,
    resolve_expression,
    sources,
)
from harness.core.registry import UnknownNameError

__all__ = [
    "OBJECTIVES",
    "register",
    "Objective",
    "HParam",
    "DefaultSource",
    "sources",
    "HyperparameterError",
    "LearnableScale",
    "WeightedSum",
    "parse_expression",
    "resolve_expression",
    "build_objective",
    "ObjectiveExpressionError",
    "UnknownNameError",
]
