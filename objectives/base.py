"""The :class:`Objective` interface every contrastive loss implements."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from harness.batch import FIELDS, EmbeddingBatch, LossOutput
from harness.core.errors import UserError


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
        return f"{'(' if self.low_open or self.low is None else '['}{lo}, {hi}{')' if self.high_open or self.high is None else ']'}"

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


class Objective(nn.Module):
    """A contrastive objective: a loss over an :class:`EmbeddingBatch` plus its own parameters.

    Subclasses set the class attributes and implement :meth:`loss`. Learnable parameters that
    belong to the loss (temperature, bias, per-sample temperatures) live on the objective, so the
    model stays objective-agnostic and the trainer optimises both.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    #: batch fields this objective needs (keys of harness.batch.FIELDS)
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
    #: rows per chunk for objectives with a tiled implementation (set from ``budget.loss_chunk_size``)
    loss_chunk_size: int | None = None

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
        bad = set(self.requires) - set(FIELDS)
        if bad:
            raise ValueError(f"{self.name}: requires unknown batch fields {sorted(bad)}")

    # -- the loss ------------------------------------------------------------------------------
    def loss(self, batch: EmbeddingBatch) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: EmbeddingBatch) -> LossOutput:
        missing = set(self.requires) - batch.present()
        if missing:
            raise ValueError(f"{self.name} needs batch fields {sorted(missing)}")
        return self.loss(batch)

    # -- hooks ---------------------------------------------------------------------------------
    def setup(self, *, num_samples: int, batch_size: int, steps: int, embed_dim: int | None = None) -> None:
        """Called once before the optimiser is built, with the training set size, the budget and the
        model's embedding width: the place to create per-sample state (e.g. one learnable
        temperature per training sample), heads sized to the model, or batch-size-dependent
        initial values."""

    @torch.no_grad()
    def after_step(self) -> None:
        """Called after every optimiser step (e.g. to clamp a learnable temperature)."""

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
        proto = cls() if isinstance(cls.__dict__.get("requires"), property) or isinstance(
            cls.__dict__.get("modality"), property) else cls
        return {
            "name": cls.name,
            "family": cls.family,
            "modality": proto.modality,
            "requires": sorted(proto.requires),
            "distributed": cls.distributed,
            "citation": cls.citation,
            "defaults": {k: hp.default for k, hp in cls.hparams.items()},
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
