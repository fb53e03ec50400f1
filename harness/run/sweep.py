"""``harness compare --sweep AXIS=V1,V2,...``: the same comparison at each value of one budget axis.

Every value gets its own comparison (one MLflow parent run each, tagged ``harness.sweep`` with the
sweep's id, ``harness.sweep_axis`` and ``harness.sweep_value``); everything but the axis is identical.
``harness leaderboard --sweep ID`` draws each objective's score against the value.

Sweeping ``budget.batch_size`` holds the samples seen constant, as the SigLIP paper's batch-size study
reads (Zhai et al. 2023): ``steps = round(steps0 * batch0 / batch)`` and the warmup likewise, and the
learning rate follows one rule for every objective alike (``--lr-rule``):

- ``sqrt`` (default): ``lr = lr0 * sqrt(batch / batch0)``, the square-root scaling rule for adaptive
  optimisers such as AdamW (Malladi et al., "On the SDEs and Scaling Rules for Adaptive Gradient
  Algorithms", NeurIPS 2022);
- ``linear``: ``lr = lr0 * batch / batch0`` (Goyal et al. 2017, for SGD);
- ``constant``: ``lr0`` at every batch size.

``batch0``, ``steps0`` and ``lr0`` are the comparison's own budget (e.g. 256, 450, 2e-3 for
``default``). Any other axis (``budget.steps``, ``budget.lr``, ``model.text_dropout``, ...) is set as
given, nothing else adjusted.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from harness.config import RunConfig, deep_merge, parse_set
from harness.core.errors import UserError
from harness.run.compare import CompareOutcome, compare, plan_pairs
from harness.run.console import Reporter
from harness.run.executors import ExecutorSpec

LR_RULES = ("sqrt", "linear", "constant")


class SweepError(UserError):
    """A sweep that cannot start (bad axis, values or rule)."""


@dataclass
class SweepPoint:
    value: Any
    config: RunConfig
    rule: str  # what was adjusted, in words (recorded on the comparison)


def parse_sweep(spec: str) -> tuple[str, list[Any]]:
    """``"budget.batch_size=64,256,1024"`` -> ("budget.batch_size", [64, 256, 1024]) (YAML-typed)."""
    axis, sep, raw = spec.partition("=")
    axis = axis.strip()
    if not sep or not axis or not raw.strip():
        raise SweepError(f"--sweep expects AXIS=V1,V2,... (e.g. budget.batch_size=64,256,1024), got {spec!r}")
    values = [parse_set([f"v={v.strip()}"])["v"] for v in raw.split(",") if v.strip()]
    if len(values) < 2:
        raise SweepError(f"--sweep needs at least two values, got {values}")
    if len(set(map(str, values))) != len(values):
        raise SweepError(f"--sweep lists a value twice: {values}")
    return axis, values


def sweep_points(base: RunConfig, axis: str, values: list[Any], lr_rule: str = "sqrt") -> list[SweepPoint]:
    """One validated configuration per value (see the module docstring for the batch-size rule)."""
    if lr_rule not in LR_RULES:
        raise SweepError(f"unknown --lr-rule {lr_rule!r}; valid: {', '.join(LR_RULES)}")
    top = axis.split(".")[0]
    if top in ("objective", "objective_params", "seed", "tasks", "tracking", "evaluation"):
        raise SweepError(
            f"--sweep {axis}: the axis is a budget or model setting; objectives, seeds and tasks "
            "are the comparison's own lists"
        )
    points = []
    b0, s0, w0, lr0 = base.budget.batch_size, base.budget.steps, base.budget.warmup_steps, base.budget.lr
    for v in values:
        over = parse_set([f"{axis}={json.dumps(v) if isinstance(v, str) else v}"])
        rule = f"{axis}={v}"
        if axis == "budget.batch_size":
            if not isinstance(v, int) or v < 2:
                raise SweepError(f"--sweep budget.batch_size: {v!r} is not a batch size (an integer >= 2)")
            steps = max(1, round(s0 * b0 / v))
            lr = lr0 * {"sqrt": math.sqrt(v / b0), "linear": v / b0, "constant": 1.0}[lr_rule]
            warmup = min(steps - 1, round(w0 * b0 / v)) if w0 else 0
            over["budget"].update(steps=steps, lr=lr, warmup_steps=max(0, warmup))
            rule = (
                f"batch {v}: {steps} steps ({steps * v:,} samples seen, base {s0 * b0:,}), "
                f"warmup {over['budget']['warmup_steps']}, lr {lr:.3g} ({lr_rule} rule from {lr0:g} at {b0})"
            )
        try:
            cfg = RunConfig.model_validate(deep_merge(base.model_dump(), over))
        except Exception as e:
            raise SweepError(f"--sweep {axis}={v}: {e}") from None
        points.append(SweepPoint(v, cfg, rule))
    return points


def sweep_id(axis: str, points: list[SweepPoint], objectives: list[str], seeds: int) -> str:
    """Deterministic: rerunning the same sweep resumes it under the same id."""
    blob = json.dumps(
        [
            axis,
            [p.config.budget_id for p in points],
            sorted(objectives),
            seeds,
            "default",  # the track; a sweep runs paper defaults only, kept so existing ids stay
            points[0].config.tasks,
        ]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_sweep(
    base: RunConfig,
    objectives: list[str],
    seeds: int,
    axis: str,
    values: list[Any],
    reporter: Reporter | None = None,
    lr_rule: str = "sqrt",
    executor: ExecutorSpec | None = None,
) -> tuple[str, list[CompareOutcome]]:
    """Every point validated (every pair planned) before the first run; then one comparison per value."""
    reporter = reporter or Reporter(quiet=True)
    points = sweep_points(base, axis, values, lr_rule)
    for p in points:
        plan_pairs(p.config, objectives, seeds)
    sid = sweep_id(axis, points, objectives, seeds)
    over = ", ".join(map(str, values))
    reporter.info(f"[bold]sweep[/] {sid}: {axis} over {over} ({len(points)} comparisons)")
    outcomes = []
    for i, p in enumerate(points):
        reporter.info(f"[bold]sweep[/] {i + 1}/{len(points)}: {p.rule}")
        tags = {
            "harness.sweep": sid,
            "harness.sweep_axis": axis,
            "harness.sweep_value": json.dumps(p.value),
            "harness.sweep_index": str(i),
            "harness.sweep_rule": p.rule,
            "harness.sweep_lr_rule": lr_rule,
        }
        outcomes.append(compare(p.config, objectives, seeds, reporter, executor=executor, parent_tags=tags))
    return sid, outcomes
