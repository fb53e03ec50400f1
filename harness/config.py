"""The strict run configuration, budget presets, and the run identity.

Precedence, lowest first: schema defaults < budget preset < YAML file < CLI flags < ``--set k=v``.
Every model is ``extra="forbid"``: an unknown key fails, naming the key and the valid ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from harness.core.data import DataOptions
from harness.core.errors import UserError
from harness.data.shapes import ShapesSpec

#: model names that are Hugging Face text towers (``hf-text:DIR``, and the bundled all-MiniLM-L6-v2)
HF_TEXT_PREFIX = "hf-text:"
MINILM = "all-MiniLM-L6-v2"


class ModelConfig(BaseModel):
    """Which open_clip model to train or evaluate. Part of the run identity."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: str = Field("harness-tiny", description="a harness preset or any open_clip architecture")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or a local checkpoint path")
    tokenizer: Literal["auto", "words", "open_clip"] = Field(
        "auto",
        description="auto: the shapes-world word vocabulary for harness presets trained from "
        "scratch, open_clip's tokenizer otherwise",
    )
    text_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="dropout on the open_clip text tower's "
        "token embeddings and every attention / MLP output (BERT's hidden dropout); "
        "unsupervised SimCSE needs it (p = 0.1). Hugging Face text towers have their own",
    )


class ConfigError(UserError):
    """A configuration that does not validate; the message names the field."""


class Budget(BaseModel):
    """The fixed part of a training budget: identical for every objective in a comparison."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(450, ge=1, description="optimiser steps")
    batch_size: int = Field(256, ge=2, description="samples per step")
    lr: float = Field(2e-3, gt=0.0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.1, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0.0)
    warmup_steps: int = Field(40, ge=0, description="linear warmup, then cosine decay to 0")
    grad_clip: float | None = Field(1.0, gt=0.0, description="max global grad norm; null = off")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 = autocast on CUDA")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    loss_chunk_size: int | None = Field(
        None, ge=1, description="tiled clip/siglip losses: rows per chunk, never the B x B logits (Inf-CL)"
    )
    gradcache_chunk: int | None = Field(
        None, ge=1, description="GradCache: encode the batch in sub-batches of this size, exact gradients"
    )
    loader_workers: int = Field(
        0,
        ge=0,
        description="background threads preparing batches ahead "
        "(pinned memory on CUDA); 0 = prepare each batch in the training loop. A streamed "
        "webdataset set (wds): its DataLoader worker processes (0 = $HARNESS_WDS_WORKERS or up to 4)",
    )
    shard: Literal["none", "fsdp"] = Field(
        "none",
        description="under torchrun: 'fsdp' shards the towers' parameters, gradients and optimiser "
        "state over the ranks with FSDP2 (torch.distributed.fsdp.fully_shard) instead of "
        "replicating them in DDP; for towers too large to replicate (ViT-L/14 and up). A no-op in "
        "one process. Not part of the run identity (it changes how, not what, is computed)",
    )
    eval_batch_size: int = Field(500, ge=1)
    log_every: int = Field(10, ge=1, description="step-metric logging interval")

    @property
    def samples_seen(self) -> int:
        return self.steps * self.batch_size


class Tracking(BaseModel):
    """Bookkeeping: where results go. Not part of the run identity."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(
        None, description="default: $MLFLOW_TRACKING_URI or sqlite:///.harness/mlflow.db"
    )
    experiment: str = "harness"
    run_name: str | None = None
    checkpoint: bool = True
    output_dir: str = ".harness"


class Selection(BaseModel):
    """Checkpoint selection (SimCSE's protocol): every ``every`` steps the model is evaluated on
    ``task``'s validation split (never its test split); the best state is restored before the final
    evaluation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(..., description="a task with a validation split, e.g. stsb")
    every: int = Field(125, ge=1, description="evaluate every N steps (SimCSE: 125)")


class DataConfig(BaseModel):
    """Where real datasets are read from, and how strictly. Not part of the run identity: the
    dataset fingerprints recorded with every result say what data was used."""

    model_config = ConfigDict(extra="forbid")

    paths: dict[str, str] = Field(
        default_factory=dict,
        description="task name or dataset id -> local "
        "path (parquet/arrow/save_to_disk/CSV/JSONL/webdataset/image folder)",
    )
    strict_images: bool = Field(
        False, description="an undecodable image is an error (default: skipped and counted in the results)"
    )

    def options(self) -> DataOptions:
        return DataOptions(paths=dict(self.paths), strict_images=self.strict_images)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    objective: str = Field("siglip", description="an objective or a weighted sum, e.g. 'clip + 0.1*tic'")
    objective_params: dict[str, Any] = Field(default_factory=dict)
    tasks: list[str] = Field(default_factory=lambda: ["shapes-retrieval"])
    train_data: str = Field(
        "auto",
        description="training data (harness list train-data); 'auto' = "
        "what the first task implies (shapes tasks: shapes, coco-retrieval: coco, ...), "
        "resolved by the runner before the identity is used",
    )
    train_samples: int | None = Field(
        None, ge=1, description="use only the first N training samples of a real training set (None = all)"
    )
    selection: Selection | None = Field(None, description="checkpoint selection on a task's validation split")
    seed: int = Field(0, ge=0, description="the run's seed (model init, data order, augmentations)")
    evaluation: Literal["test", "validation"] = Field(
        "test", description="which split every task is scored on: test, or validation (tuning trials)"
    )
    budget_preset: str = "default"
    budget: Budget = Field(default_factory=Budget)
    model: ModelConfig = Field(default_factory=ModelConfig)
    shapes: ShapesSpec = Field(default_factory=ShapesSpec)
    tracking: Tracking = Field(default_factory=Tracking)
    data: DataConfig = Field(default_factory=DataConfig)

    #: per real-data task, the split it is scored on and the fingerprint of that data (content, or
    #: the resolved Hub revision), filled in by the runner once the data is checked: part of the
    #: identity, so the same checkpoint evaluated on other data is another run
    _eval_data: dict[str, dict[str, str]] = PrivateAttr(default_factory=dict)

    def set_eval_data(self, eval_data: dict[str, dict[str, str]]) -> None:
        self._eval_data = {k: dict(v) for k, v in sorted(eval_data.items())}

    @property
    def eval_data(self) -> dict[str, dict[str, str]]:
        return dict(self._eval_data)

    #: objectives past their first version (their defaults or computation changed): part of the
    #: identity, so resume never reuses a run of the old version; filled in by the runner
    _objective_versions: dict[str, str] = PrivateAttr(default_factory=dict)

    def set_objective_versions(self, versions: dict[str, str]) -> None:
        self._objective_versions = {k: str(v) for k, v in sorted(versions.items()) if str(v) != "1"}

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one task is needed")
        return v

    def identity_payload(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        d.pop("tracking")
        d.pop("data")
        d.pop("budget_preset")  # its values are in 'budget', 'model' and 'shapes'
        # how the run is executed, not what it computes: left out at every value. budget.shard is
        # one of them (popped, not a _LATER_KEYS entry): sharded or replicated towers get the same
        # gradients, like one process or torchrun (the world size is not in the identity either),
        # so an FSDP run resumes, and compares with, the DDP or single-process run of its budget
        for k in ("log_every", "eval_batch_size", "device", "loader_workers", "shard"):
            d["budget"].pop(k)
        # keys added after the first release leave the identity at their defaults, so the runs
        # recorded before them keep their identity (and compare can resume them)
        for path, default in _LATER_KEYS:
            node = d
            for part in path[:-1]:
                node = node.get(part, {})
            if node.get(path[-1], default) == default:
                node.pop(path[-1], None)
        if self._eval_data:
            d["eval_data"] = self._eval_data
        if self._objective_versions:
            d["objective_versions"] = self._objective_versions
        return d

    @property
    def identity(self) -> str:
        """Hash of everything that defines the run's outcome, bookkeeping excluded."""
        blob = json.dumps(self.identity_payload(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def budget_id(self) -> str:
        """Hash of the fixed budget (everything except the objective): runs compare only if equal."""
        d = self.identity_payload()
        for k in (
            "objective",
            "objective_params",
            "tasks",
            "seed",
            "evaluation",
            "eval_data",
            "objective_versions",
        ):
            d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


_LATER_KEYS: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("train_samples",), None),
    (("selection",), None),
    (("model", "text_dropout"), 0.0),
    (("evaluation",), "test"),
)

_SMALL_WORLD = {"n_train": 2048, "n_val": 128, "n_test": 128, "n_heldout": 128, "n_zeroshot": 128}


def _datacomp(steps: int) -> dict[str, Any]:
    return {
        "budget": {"steps": steps, "batch_size": 4096, "lr": 5e-4, "warmup_steps": 500, "weight_decay": 0.2,
                   "betas": (0.9, 0.98), "eps": 1e-6, "precision": "bf16", "device": "cuda",
                   "eval_batch_size": 1024, "grad_clip": None},
        "model": {"name": "ViT-B-32", "tokenizer": "open_clip"},
        "train_data": "wds",
    }  # fmt: skip


BUDGET_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "budget": {"steps": 8, "batch_size": 32, "warmup_steps": 2, "lr": 1e-3, "log_every": 2},
        "model": {"name": "harness-micro"},
        "shapes": _SMALL_WORLD,
    },
    "default": {},
    "gpu": {
        "budget": {
            "steps": 5000,
            "batch_size": 1024,
            "warmup_steps": 250,
            "lr": 1e-3,
            "precision": "bf16",
            "device": "cuda",
            "eval_batch_size": 2000,
            "loader_workers": 2,
        },
        "model": {"name": "harness-small"},
        "shapes": {
            "image_size": 64,
            "n_train": 200000,
            "n_test": 5000,
            "n_heldout": 5000,
            "n_val": 2000,
            "n_zeroshot": 2000,
        },
    },
    # DataComp's fixed training budgets (Gadre et al. 2023, mlfoundations/datacomp scale_configs.py
    # and train.py): ViT-B/32 at 224 px from scratch, global batch 4096, lr 5e-4 with 500 warmup
    # steps and cosine decay, open_clip_train's AdamW defaults (weight decay 0.2, betas 0.9/0.98,
    # eps 1e-6), bf16 autocast, streamed from webdataset shards (--data wds=PATTERN). small: 12.8M
    # samples seen (3,125 steps); medium: 128M (31,250 steps).
    "datacomp-small": _datacomp(3125),
    "datacomp-medium": _datacomp(31250),
}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["budget.steps=10", "shapes.mention_order=fixed"]`` -> nested dict (YAML-typed values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. budget.steps=100), got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        if parts[0] == "objective_params" and len(parts) > 2:  # term.param keys of a weighted sum
            parts = [parts[0], ".".join(parts[1:])]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    node: Any = model
    for part in loc[:-1]:
        field = getattr(node, "model_fields", {}).get(part)
        if field is None:
            return []
        node = field.annotation
    return sorted(getattr(node, "model_fields", {}))


def format_validation_error(err: ValidationError, model: type[BaseModel] = RunConfig) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(str(x) for x in e["loc"])
        where = ".".join(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            valid = _valid_keys(model, loc)
            lines.append(f"unknown key {where!r}; valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def resolve_config(
    preset: str | None = None,
    file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> RunConfig:
    """Merge preset < file < flags < --set and validate strictly."""
    data: dict[str, Any] = {}
    file_data = load_yaml(file) if file else {}
    name = (
        preset
        or (file_data.get("budget_preset") if isinstance(file_data.get("budget_preset"), str) else None)
        or "default"
    )
    if name not in BUDGET_PRESETS:
        raise ConfigError(f"unknown budget preset {name!r}; valid: {', '.join(BUDGET_PRESETS)}")
    data = deep_merge(BUDGET_PRESETS[name], {"budget_preset": name})
    data = deep_merge(data, file_data)
    data["budget_preset"] = name
    data = deep_merge(data, {k: v for k, v in (flags or {}).items() if v is not None})
    data = deep_merge(data, parse_set(sets or []))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
