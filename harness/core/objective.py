"""The :class:`Objective` interface every contrastive loss implements, its registry, and objective
expressions (``build_objective("clip + 0.1*tic", params)``: one objective or a weighted sum).

Objectives are registered under the entry-point group ``harness.objectives``, built-ins included
(see pyproject.toml): a plugin package is found exactly like a built-in one."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from harness.core.batch import EmbeddingBatch, LossOutput
from harness.core.errors import UserError
from harness.core.registry import Registry


class HyperparameterError(UserError):
    """An objective hyperparameter outside its valid range."""


@dataclass(frozen=True)
class HParam:
    """A hyperparameter: paper default, valid range, and the Optuna search range."""

    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low (else >= low)
    high_open: bool = False  # True: value must be < high (else <= high)
    choices: tuple | None = None
    search: tuple[float, float, bool] | None = None  # (low, high, log)
    doc: str = ""
    #: False for structural switches (which tower an objective trains): never searched by the tuner
    tunable: bool = True

    def describe_range(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{left}{lo}, {hi}{right}"

    def validate(self, objective: str, name: str, value: Any) -> Any:
        if self.choices is not None:
            if value not in self.choices:
                raise HyperparameterError(
                    f"{objective}: {name}={value!r} is invalid; valid: {self.describe_range()}"
                )
            return value
        if isinstance(self.default, bool):
            if not isinstance(value, bool):
                raise HyperparameterError(f"{objective}: {name} must be true or false, got {value!r}")
            return value
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise HyperparameterError(f"{objective}: {name} must be a number, got {value!r}") from None
        bad = not math.isfinite(v)
        if self.low is not None:
            bad |= v <= self.low if self.low_open else v < self.low
        if self.high is not None:
            bad |= v >= self.high if self.high_open else v > self.high
        if bad:
            raise HyperparameterError(
                f"{objective}: {name}={value!r} is outside its valid range {self.describe_range()}"
            )
        if isinstance(self.default, int):
            if v != int(v):
                raise HyperparameterError(f"{objective}: {name} must be an integer, got {value!r}")
            return int(v)
        return v


#: values of :attr:`DefaultSource.verified`
VERIFIED = ("yes", "partly", "no", "n/a")


@dataclass(frozen=True)
class DefaultSource:
    """Where a hyperparameter's default comes from (docs/objective-defaults.md is generated from these).

    ``source``: the paper, an official (or reference) code file, or ``harness`` (the harness's own
    choice); ``regime``: the setting the value was chosen for (data set, batch size, views,
    pretrained or from scratch); ``verified``: "yes" (checked against that source), "partly",
    "no" (taken from the docstring or recalled, not checked) or "n/a" (the harness's own choice);
    ``note``: how the harness's setting differs, or what was checked."""

    source: str
    regime: str
    verified: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.verified not in VERIFIED:
            raise ValueError(f"verified={self.verified!r}; one of {', '.join(VERIFIED)}")


def sources(names: str, src: DefaultSource) -> dict[str, DefaultSource]:
    """The same :class:`DefaultSource` for each of the space-separated hyperparameter ``names``."""
    return {n: src for n in names.split()}


class Objective(nn.Module):
    """A contrastive objective: a loss over an :class:`EmbeddingBatch` plus its own parameters.

    Subclasses set the class attributes and implement :meth:`loss`. Learnable parameters that
    belong to the loss (temperature, bias, per-sample temperatures) live on the objective, so the
    model stays objective-agnostic and the trainer optimises both.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    #: batch fields this objective needs (keys of harness.core.batch.FIELDS)
    requires: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    #: "image-text": trains both towers; "text": text tower only; "image": image tower only
    modality: ClassVar[Literal["image-text", "text", "image"]] = "image-text"
    #: behaviour under torch.distributed: "global" negatives gathered from all ranks,
    #: "local" loss per rank, or "unsupported"
    distributed: ClassVar[str] = "global"
    #: the smallest batch the loss is defined on (a batch of one pair has no negative): checked
    #: against budget.batch_size before training; an objective may make it a property of its
    #: hyperparameters
    min_batch_size: ClassVar[int] = 1
    hparams: ClassVar[dict[str, HParam]] = {}
    #: where each default of ``hparams`` comes from (one entry per hyperparameter)
    defaults_source: ClassVar[dict[str, DefaultSource]] = {}
    #: what a reader of the defaults must know beyond the per-parameter entries (e.g. a scale factor)
    defaults_note: ClassVar[str] = ""
    #: bumped when the objective's defaults or computation change what a run produces under the same
    #: configuration; versions other than "1" are part of the run identity
    version: ClassVar[str] = "1"
    #: rows per chunk for objectives with a tiled implementation (set from ``budget.loss_chunk_size``)
    loss_chunk_size: int | None = None

    def __init_subclass__(cls, **kw):
        """A built-in or plugin objective is named once, by its entry point: the class learns the
        name when it is defined (an explicit ``name`` in the class body wins)."""
        super().__init_subclass__(**kw)
        if "name" not in cls.__dict__:  # unregistered subclasses keep the name they inherit
            cls.name = OBJECTIVES.name_of(cls) or cls.name

    def __init__(self, **params: Any):
        super().__init__()
        unknown = sorted(set(params) - set(self.hparams))
        if unknown:
            valid = ", ".join(sorted(self.hparams)) or "none"
            raise HyperparameterError(
                f"{self.name}: unknown hyperparameter(s) {', '.join(unknown)}; valid: {valid}"
            )
        self.params = {
            k: hp.validate(self.name, k, params.get(k, hp.default)) for k, hp in self.hparams.items()
        }

    # -- the loss ------------------------------------------------------------------------------
    def loss(self, batch: EmbeddingBatch) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: EmbeddingBatch) -> LossOutput:
        missing = set(self.requires) - batch.present()
        if missing:
            raise ValueError(f"{self.name} needs batch fields {sorted(missing)}")
        return self.loss(batch)

    # -- shared parts --------------------------------------------------------------------------
    def logit_scale(self, temperature: float | None = None) -> "LearnableScale":
        """The logit scale 1 / temperature, learnable unless ``learnable_temperature`` is false
        (open_clip's ``logit_scale``); clamped after every step by :meth:`after_step`."""
        t = self.params["temperature"] if temperature is None else temperature
        return LearnableScale(1.0 / t, learnable=bool(self.params.get("learnable_temperature", True)))

    # -- hooks ---------------------------------------------------------------------------------
    def setup(
        self,
        *,
        num_samples: int,
        batch_size: int,
        steps: int,
        embed_dim: int | None = None,
        loss_chunk_size: int | None = None,
        num_concepts: int | None = None,
        **kw: Any,
    ) -> None:
        """Called once before the optimiser is built, with what the run knows: the training set size,
        the budget, the model's embedding width, the tiled-loss chunk (``budget.loss_chunk_size``)
        and, for training sets with concept labels, their number. The place to create per-sample
        state (e.g. one learnable temperature per training sample), heads sized to the model or the
        data, or batch-size-dependent initial values. Overrides call ``super().setup(**...)``;
        unknown keywords are accepted, so a run can pass more without breaking an objective."""
        self.loss_chunk_size = loss_chunk_size

    @torch.no_grad()
    def after_step(self) -> None:
        """Called after every optimiser step: clamps every learnable logit scale the objective owns
        (to [0, ln 100], as open_clip). Overrides that add state updates call ``super()``."""
        for m in self.modules():
            if isinstance(m, LearnableScale):
                m.clamp_()

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """Optuna search space: by default every hyperparameter with a ``search`` range."""
        out: dict[str, Any] = {}
        for k, hp in cls.hparams.items():
            if not hp.tunable:
                continue
            if hp.choices is not None and hp.search is None:
                out[k] = trial.suggest_categorical(k, list(hp.choices))
            elif hp.search is not None:
                lo, hi, log = hp.search
                if isinstance(hp.default, int) and not isinstance(hp.default, bool):
                    out[k] = trial.suggest_int(k, int(lo), int(hi), log=log)
                else:
                    out[k] = trial.suggest_float(k, lo, hi, log=log)
        return out

    @classmethod
    def describe(cls) -> dict[str, Any]:
        # ``requires``/``modality`` may be instance properties that depend on hyperparameters:
        # describe the default configuration then
        proto = (
            cls()
            if isinstance(cls.__dict__.get("requires"), property)
            or isinstance(cls.__dict__.get("modality"), property)
            else cls
        )
        return {
            "name": cls.name,
            "family": cls.family,
            "modality": proto.modality,
            "requires": sorted(proto.requires),
            "distributed": cls.distributed,
            "citation": cls.citation,
            "defaults": {k: hp.default for k, hp in cls.hparams.items()},
            "version": cls.version,
            "defaults_source": {k: asdict(v) for k, v in cls.defaults_source.items()},
            "defaults_note": cls.defaults_note,
        }


class LearnableScale(nn.Module):
    """A logit scale stored as log(scale), clamped to [0, ln 100] after each step (as open_clip)."""

    def __init__(self, init_scale: float, learnable: bool = True, max_log: float = math.log(100)):
        super().__init__()
        value = torch.tensor(math.log(init_scale), dtype=torch.float32)
        if learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)
        self.max_log = max_log

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        if isinstance(self.log_scale, nn.Parameter):  # a fixed temperature is left as configured
            self.log_scale.clamp_(0.0, self.max_log)


OBJECTIVES: Registry[Objective] = Registry("objective", "harness.objectives", base=Objective)
register = OBJECTIVES.register


class ObjectiveExpressionError(UserError):
    """A malformed ``--objective`` expression."""


_TERM = re.compile(
    r"^\s*(?:(?P<w>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[A-Za-z][\w\-]*)\s*$"
)


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
        super().setup(**kw)
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
