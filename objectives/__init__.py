"""The objectives library. Each family lives in its own module; every objective is registered
under the entry-point group ``harness.objectives`` (built-ins included, see pyproject.toml).

``build_objective("clip + 0.1*tic", params)`` builds a single objective or a weighted sum.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from harness.batch import EmbeddingBatch, LossOutput
from harness.registry import Registry, UnknownNameError

from .base import HParam, HyperparameterError, LearnableScale, Objective
from harness.core.errors import UserError

OBJECTIVES: Registry[Objective] = Registry("objective", "harness.objectives", base=Objective)
register = OBJECTIVES.register

__all__ = [
    "OBJECTIVES", "register", "Objective", "HParam", "HyperparameterError", "LearnableScale",
    "WeightedSum", "parse_expression", "build_objective", "ObjectiveExpressionError", "UnknownNameError",
]


class ObjectiveExpressionError(UserError):
    """A malformed ``--objective`` expression."""


_TERM = re.compile(r"^\s*(?:(?P<w>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[A-Za-z][\w\-]*)\s*$")


def parse_expression(expr: str) -> list[tuple[float, str]]:
    """``"clip + 0.1*tic"`` -> ``[(1.0, "clip"), (0.1, "tic")]``."""
    if not isinstance(expr, str) or not expr.strip():
        raise ObjectiveExpressionError("empty objective expression; give a name such as 'clip'")
    terms = []
    for part in expr.split("+"):
        m = _TERM.match(part)
        if m is None:
            raise ObjectiveExpressionError(
                f"cannot parse objective term {part.strip()!r} in {expr!r}; "
                "use NAME or WEIGHT*NAME joined by '+', e.g. 'clip + 0.1*tic'"
            )
        w = float(m.group("w")) if m.group("w") else 1.0
        if w <= 0:
            raise ObjectiveExpressionError(f"objective weight must be positive in {part.strip()!r}")
        terms.append((w, m.group("name")))
    names = [n for _, n in terms]
    if len(set(names)) != len(names):
        raise ObjectiveExpressionError(f"an objective appears twice in {expr!r}")
    return terms


def resolve_expression(expr: str) -> list[tuple[float, type[Objective]]]:
    """Parse and look every term up (raises UnknownNameError with suggestions)."""
    return [(w, OBJECTIVES.get(n)) for w, n in parse_expression(expr)]


class WeightedSum(Objective):
    """Sum of weighted objectives, e.g. ``clip + 0.1*tic``; logs each term."""

    name = "sum"
    family = "composite"

    def __init__(self, terms: list[tuple[float, Objective]]):
        nn.Module.__init__(self)
        self.weights = [w for w, _ in terms]
        self.terms = nn.ModuleList([o for _, o in terms])
        self.params = {f"{o.name}.{k}": v for _, o in terms for k, v in o.params.items()}

    @property
    def requires(self):  # type: ignore[override]
        return frozenset().union(*(o.requires for o in self.terms))

    @property
    def min_batch_size(self):  # type: ignore[override]
        return max(o.min_batch_size for o in self.terms)

    @property
    def modality(self):  # type: ignore[override]
        mods = {o.modality for o in self.terms}
        return mods.pop() if len(mods) == 1 else "image-text"

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        total = None
        logs: dict[str, float] = {}
        for w, obj in zip(self.weights, self.terms):
            out = obj(batch)
            total = w * out.loss if total is None else total + w * out.loss
            logs[f"{obj.name}/loss"] = out.loss.detach()
            logs.update({f"{obj.name}/{k}": v for k, v in out.logs.items()})
        return LossOutput(total, logs)

    def after_step(self) -> None:
        for o in self.terms:
            o.after_step()

    def setup(self, **kw) -> None:
        for o in self.terms:
            o.setup(**kw)


def build_objective(expr: str, params: dict[str, Any] | None = None) -> Objective:
    """Instantiate an objective expression. ``params`` keys are hyperparameter names for a single
    objective, and ``NAME.param`` for a term of a weighted sum."""
    params = dict(params or {})
    resolved = resolve_expression(expr)
    if len(resolved) == 1 and resolved[0][0] == 1.0:
        cls = resolved[0][1]
        own = {k.split(".", 1)[1] if k.startswith(cls.name + ".") else k: v for k, v in params.items()}
        return cls(**own)
    built = []
    for w, cls in resolved:
        own = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(cls.name + ".")}
        built.append((w, cls(**own)))
    stray = [k for k in params if k.split(".", 1)[0] not in {c.name for _, c in resolved}]
    if stray:
        raise HyperparameterError(
            f"objective parameters {stray} match no term of {expr!r}; name them TERM.param"
        )
    return WeightedSum(built)
