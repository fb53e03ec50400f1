"""Training-loop overhead: the harness's ``train()`` against a bare PyTorch loop, side by side.

What is measured
----------------
Seconds per optimiser step of two loops that do the same work, in one process:

* **harness**: ``harness.engine.trainer.train`` with the ``clip`` or ``siglip`` objective (embedding via
  ``harness.engine.trainer.embed`` and ``Encoder.preprocess``, the objective module, the non-finite guard,
  the step-0 FLOP counter, the schedule, ``after_step``, the loss read-back and callbacks);
* **bare**: a plain loop written here: preprocess (as ``Encoder.preprocess``), ``encode_image`` /
  ``encode_text`` with ``normalize=True``, the loss written out with ``F.cross_entropy`` (clip) or
  ``F.logsigmoid`` (siglip), ``zero_grad``, ``backward``, ``clip_grad_norm_``, AdamW ``step``,
  ``LambdaLR.step`` and the logit-scale clamp.

Both start from the same open_clip model (a fresh ``copy.deepcopy`` of one initial model for every
run), the same optimiser settings (AdamW with the harness's parameter groups, warmup-cosine
LambdaLR, grad clipping at ``Budget.grad_clip``) and the very same pre-built in-memory batches:
the batches are drawn once from ``ShapesTrainData.batch`` and the harness reads them through a
small wrapper, so data loading is not part of the comparison -- only the loop is.

Runs alternate harness, bare, harness, bare, ... (``--repeats`` pairs) to cancel drift. The first
``--warmup`` steps of every run are not timed (they include the harness's FLOP counter at step 0
and allocator warm-up). Each run gives two figures: the mean seconds per step (timed span divided
by ``--steps``) and the median single-step time, which resists bursts of load from other processes
on a shared machine. The headline ratio is median-over-pairs of the harness's median step time over
the same for the bare loop (on CUDA, where the bare loop does not wait per step, both figures are
the span mean). On CUDA the timed span starts and ends with ``torch.cuda.synchronize``. The
script also checks that both loops computed the same losses (they should agree to float rounding)
at every step where the harness reads its loss back (its logging steps: ``TrainResult.loss_curve``),
so the comparison is of equal work.

It is a measurement, not a test: the exit code is 0 whatever the ratio (goal: harness/bare <= 1.05).

Run::

    python bench/train_overhead.py                       # clip, 30 timed steps, batch 256, 3 pairs
    python bench/train_overhead.py --objective siglip --steps 50 --repeats 5 --threads 2

With the defaults it takes about a minute on a 2-core CPU (harness-tiny, ~0.27 s per step).

``--tiny`` runs the same code in seconds (harness-micro, batch 16, 1 warmup + 2 timed steps, one
pair, a 256-scene world) so the test suite can check that the benchmark still runs; its figures
mean nothing. Options given explicitly still apply.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import Budget
from harness.data.batches import ShapesTrainData
from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
from harness.engine.models import Encoder, ModelConfig, build_model
from harness.engine.trainer import param_groups, resolve_device, seed_everything, train, warmup_cosine
from objectives.infonce import CLIP
from objectives.sigmoid import SigLIP

OBJECTIVES = {"clip": CLIP, "siglip": SigLIP}
FIELDS = frozenset({"image", "text"})


class FixedBatches:
    """Training data for ``train()`` that hands out pre-built batches (no sampling, no copies);
    its length is that of the data the batches were drawn from (``objective.setup`` reads it)."""

    def __init__(self, batches, batch_size: int, n_samples: int):
        self.batches, self.batch_size, self.n_samples = batches, batch_size, n_samples

    def __len__(self) -> int:
        return self.n_samples

    def batch(self, step, batch_size, fields):
        assert batch_size == self.batch_size and set(fields) <= FIELDS, (batch_size, fields)
        return self.batches[step]


class BareLoss(nn.Module):
    """The objective's parameters, written out plainly: log logit scale (and the siglip bias)."""

    def __init__(self, objective: str):
        super().__init__()
        if objective == "clip":
            self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            self.bias = None
        else:
            self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.1)))
            self.bias = nn.Parameter(torch.tensor(-10.0))
        self.objective = objective

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        logits = self.log_scale.exp() * img @ txt.T
        n = logits.shape[0]
        if self.objective == "clip":
            target = torch.arange(n, device=logits.device)
            return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        logits = logits + self.bias
        z = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
        return -F.logsigmoid(z * logits).sum() / n


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing(marks: list[float], warmup: int, device: torch.device) -> tuple[float, float]:
    """(mean, median) seconds per timed step from the start time and the end time of every step.

    The mean is the timed span over the step count. The median of the single step durations
    resists short bursts of load from other processes; it is only meaningful on the CPU, since on
    CUDA the bare loop queues work without waiting, so there it equals the mean.
    """
    timed = marks[warmup:]  # timed[0]: end of the last warmup step (or the start)
    mean = (timed[-1] - timed[0]) / (len(timed) - 1)
    if device.type == "cuda":
        return mean, mean
    return mean, statistics.median(b - a for a, b in zip(timed, timed[1:]))


def run_harness(model0, args, budget, batches, n_samples, encoder_args, device):
    """One harness run; returns ((mean, median) seconds per timed step, {step: loss}).

    The trainer reads the loss back only at its logging steps (every ``budget.log_every`` and the
    last), so the losses are those of ``TrainResult.loss_curve``: the value ``on_step`` is given
    between two logging steps is the last one read back, not the step's own.
    """
    model = copy.deepcopy(model0)
    encoder = Encoder(model, *encoder_args, device=device)
    objective = OBJECTIVES[args.objective]()
    data = FixedBatches(batches, budget.batch_size, n_samples)
    total = budget.steps
    marks: list[float] = []

    def on_step(step: int, loss: float) -> None:
        if step == args.warmup - 1 or step == total - 1:
            sync(device)
        marks.append(time.perf_counter())

    sync(device)
    t_start = time.perf_counter()
    result = train(model, objective, encoder, data, budget, args.seed, device, on_step=on_step)
    return timing([t_start, *marks], args.warmup, device), dict(result.loss_curve)


def run_bare(model0, args, budget, batches, mean, std, image_size, device):
    """One bare-PyTorch run of the same steps; returns ((mean, median) s/step, per-step losses)."""
    model = copy.deepcopy(model0)
    crit = BareLoss(args.objective)
    seed_everything(args.seed)
    model.to(device).train()
    crit.to(device).train()
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(
        param_groups(model, crit, budget.weight_decay), lr=budget.lr, betas=budget.betas, eps=budget.eps
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(budget.warmup_steps, budget.steps))
    params = [p for g in opt.param_groups for p in g["params"]]
    max_log = math.log(100)
    total = budget.steps
    losses: list[torch.Tensor] = []
    marks: list[float] = []

    sync(device)
    t_start = time.perf_counter()
    for step in range(total):
        b = batches[step]
        # preprocess exactly as Encoder.preprocess: uint8 NHWC -> normalised float NCHW
        x = b.images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != image_size or x.shape[-2] != image_size:
            x = F.interpolate(
                x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
            )
        x = (x - mean_t) / std_t
        tok = b.tokens.to(device, non_blocking=True)
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tok, normalize=True)
        loss = crit(img, txt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if budget.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, budget.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            crit.log_scale.clamp_(0.0, max_log)
        losses.append(loss.detach())
        if step == args.warmup - 1 or step == total - 1:
            sync(device)
        marks.append(time.perf_counter())
    return timing([t_start, *marks], args.warmup, device), [float(v) for v in losses]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--objective", choices=sorted(OBJECTIVES), default="clip")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30; tiny 2)")
    ap.add_argument("--batch-size", type=int, default=None, help="(default 256; tiny 16)")
    ap.add_argument("--model", default=None, help="(default harness-tiny; tiny harness-micro)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="harness/bare pairs, alternated (default 3; tiny 1)"
    )
    ap.add_argument(
        "--warmup", type=int, default=None, help="untimed steps at the start of every run (default 3; tiny 1)"
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="a few steps at small sizes, seconds in all: checks that the benchmark runs",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cache-dir",
        default=None,
        help="shapes-world cache (default: a temporary directory, removed at exit)",
    )
    args = ap.parse_args(argv)
    tiny = args.tiny
    for name, full, small in (
        ("steps", 30, 2),
        ("batch_size", 256, 16),
        ("repeats", 3, 1),
        ("warmup", 3, 1),
        ("model", "harness-tiny", "harness-micro"),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or args.batch_size < 2:
        ap.error("need --steps >= 1, --repeats >= 1, --warmup >= 0, --batch-size >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    total = args.warmup + args.steps
    B = args.batch_size

    with tempfile.TemporaryDirectory(prefix="train_overhead-") as tmp:
        cache = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        t0 = time.perf_counter()
        spec = ShapesSpec(n_train=max(256 if tiny else 4096, B * total))
        world = ShapesWorld(spec, cache)
        seed_everything(args.seed)
        model0, tokenizer, image_size, mean, std = build_model(
            ModelConfig(name=args.model), words=vocabulary()
        )
        data = ShapesTrainData(world, tokenizer, seed=args.seed)
        batches = [data.batch(step, B, FIELDS) for step in range(total)]
        n_samples = len(data)
        setup = time.perf_counter() - t0
    del data, world

    budget = Budget(
        steps=total,
        batch_size=B,
        warmup_steps=min(Budget().warmup_steps, max(1, total // 10)),
        device=args.device,
    )
    n_params = sum(p.numel() for p in model0.parameters())
    print(
        f"train_overhead: {'TINY (figures mean nothing) ' if tiny else ''}objective={args.objective} "
        f"model={args.model} ({n_params / 1e6:.2f} M params) "
        f"batch={B} steps={args.steps} (+{args.warmup} warmup) repeats={args.repeats} "
        f"device={device.type} threads={torch.get_num_threads()} torch={torch.__version__}"
    )
    print(f"setup (world + model + {total} batches): {setup:.1f} s", flush=True)

    enc_args = (tokenizer, image_size, mean, std)
    rows = []  # ((harness mean, harness median step), (bare mean, bare median step))
    max_diff = 0.0
    t_bench = time.perf_counter()
    for r in range(args.repeats):  # A B A B ...
        h, h_losses = run_harness(model0, args, budget, batches, n_samples, enc_args, device)
        b, b_losses = run_bare(model0, args, budget, batches, mean, std, image_size, device)
        max_diff = max(max_diff, max(abs(v - b_losses[k]) for k, v in h_losses.items()))
        rows.append((h, b))
        print(
            f"  pair {r + 1}/{args.repeats}: harness {h[1]:.4f} s/step  bare {b[1]:.4f} s/step  "
            f"ratio {h[1] / b[1]:.3f}  (final loss {h_losses[total - 1]:.4f} vs {b_losses[-1]:.4f})",
            flush=True,
        )
    bench_s = time.perf_counter() - t_bench

    def med(side: int, k: int) -> float:
        return statistics.median(row[side][k] for row in rows)

    print()
    print("s/step per run: 'mean' = timed span / steps, 'median' = median single-step time")
    head = (
        f"{'pair':>6} | {'harness mean':>12} {'bare mean':>10} {'ratio':>6} | "
        f"{'harness median':>14} {'bare median':>11} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    for i, (h, b) in enumerate(rows, 1):
        print(
            f"{i:>6} | {h[0]:>12.4f} {b[0]:>10.4f} {h[0] / b[0]:>6.3f} | "
            f"{h[1]:>14.4f} {b[1]:>11.4f} {h[1] / b[1]:>6.3f}"
        )
    mh0, mb0, mh, mb = med(0, 0), med(1, 0), med(0, 1), med(1, 1)
    print(
        f"{'median':>6} | {mh0:>12.4f} {mb0:>10.4f} {mh0 / mb0:>6.3f} | "
        f"{mh:>14.4f} {mb:>11.4f} {mh / mb:>6.3f}"
    )
    print()
    same = "same losses" if max_diff < 1e-3 else "LOSSES DIFFER: the loops do not compute the same thing"
    print(f"loss check: max |harness - bare| over the steps the harness read back = {max_diff:.2e} ({same})")
    paired = statistics.median(h[1] / b[1] for h, b in rows)
    print(f"median of the per-pair ratios (median step): {paired:.3f}")
    print(f"samples/s: harness {B / mh:.0f}, bare {B / mb:.0f}; benchmark time {bench_s:.0f} s")
    print(f"ratio harness/bare = {mh / mb:.3f} (goal <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
