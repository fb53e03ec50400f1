"""Training-step time under torch.distributed: DDP vs the old hand-written averaging vs one process.

What is measured
----------------
Two MLP towers (``--depth`` linear layers of ``--width``, GELU between, L2-normalised outputs of
``--dim``) encode raw image and text features; the loss is ``clip`` (InfoNCE with a learnable
temperature) on the global batch of ``--batch`` rows. One step is ``zero_grad``, the trainer's
``forward_backward`` and an AdamW step, in three set-ups:

* ``one``    -- one process on the whole global batch (no torch.distributed);
* ``manual`` -- 2 gloo processes, each on its half, features all-gathered with autograd, then the
  old hand-written ``average_gradients`` over every parameter after backward (one blocking
  all-reduce per tensor);
* ``ddp``    -- 2 gloo processes, the towers in ``DistributedDataParallel`` (``wrap_ddp``, what the
  trainer does now): bucketed all-reduce overlapping with backward; the objective's parameters
  averaged explicitly.

Each process uses one thread (``torch.set_num_threads(1)``). The time is the median of ``--steps``
steps after ``--warmup`` steps; for the 2-process set-ups the steps start together (barrier) and
rank 0's times are reported. The losses of the three set-ups are compared (same data, same initial
weights), so the comparison is of equal work: "same losses" or "LOSSES DIFFER".

It is a measurement, not a test: the exit code is 0 whatever the ratios.

Run::

    python bench/ddp_step.py                       # depth 6, width 1024, batch 256, 20 steps
    python bench/ddp_step.py --width 2048 --batch 512 --steps 10
    python bench/ddp_step.py --tiny                # seconds: checks that it still runs

``--tiny`` (depth 2, width 32, batch 16, 2 steps) runs the same code for the test suite; its
figures mean nothing. Options given explicitly still apply.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from harness.core.batch import EmbeddingBatch  # noqa: E402
from harness.engine import distributed as hd  # noqa: E402
from harness.engine.trainer import forward_backward, wrap_ddp  # noqa: E402
from objectives.infonce import CLIP  # noqa: E402

MODES = ("one", "manual", "ddp")


@dataclass
class RawBatch:
    image: torch.Tensor
    text: torch.Tensor


class MLPTowers(torch.nn.Module):
    def __init__(self, d_in: int, width: int, depth: int, dim: int):
        super().__init__()

        def tower() -> torch.nn.Sequential:
            layers: list[torch.nn.Module] = [torch.nn.Linear(d_in, width)]
            for _ in range(depth - 2):
                layers += [torch.nn.GELU(), torch.nn.Linear(width, width)]
            layers += [torch.nn.GELU(), torch.nn.Linear(width, dim)]
            return torch.nn.Sequential(*layers)

        self.image_tower, self.text_tower = tower(), tower()

    def forward(self, batch: RawBatch) -> EmbeddingBatch:
        return EmbeddingBatch(
            image=F.normalize(self.image_tower(batch.image), dim=-1),
            text=F.normalize(self.text_tower(batch.text), dim=-1),
        )


def run(mode: str, rank: int, world: int, args) -> dict:
    """Step times and losses of one set-up on this rank."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n = args.batch
    raw = [
        RawBatch(torch.randn(n, args.d_in, generator=g), torch.randn(n, args.d_in, generator=g))
        for _ in range(args.warmup + args.steps)
    ]
    rows = slice(rank * n // world, (rank + 1) * n // world)
    torch.manual_seed(0)
    model = MLPTowers(args.d_in, args.width, args.depth, args.dim)
    objective = CLIP(temperature=0.07)
    params = [*model.parameters(), *objective.parameters()]
    towers = wrap_ddp(model) if mode == "ddp" else model
    opt = torch.optim.AdamW(params, lr=1e-4)
    times, losses = [], []
    for i, b in enumerate(raw):
        batch = RawBatch(b.image[rows], b.text[rows])
        hd.barrier()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = forward_backward(towers, objective, batch)
        if mode == "manual":  # the old trainer: one blocking all-reduce per tensor after backward
            hd.average_gradients(list(model.parameters()))
        opt.step()
        dt = time.perf_counter() - t
        if i >= args.warmup:
            times.append(dt)
        losses.append(float(out.loss))
    return {"times": times, "losses": losses, "ddp": type(towers).__name__}


def worker(rank: int, world: int, port: int, mode: str, args, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    hd.init_from_env(backend="gloo")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = run(mode, rank, world, args)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(res, f)
    finally:
        hd.barrier()
        hd.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(mode: str, args) -> dict:
    if mode == "one":
        return run(mode, 0, 1, args)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        try:
            torch.multiprocessing.spawn(worker, args=(2, free_port(), mode, args, out), nprocs=2, join=True)
        except torch.multiprocessing.ProcessExitedException:
            if not os.path.exists(out):  # a worker that died before writing fails the bench
                raise
        with open(out) as f:
            return json.load(f)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes: checks that the bench still runs")
    p.add_argument("--depth", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--dim", type=int)
    p.add_argument("--d-in", type=int)
    p.add_argument("--batch", type=int, help="global batch (2 processes: half each)")
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    args = p.parse_args(argv)
    defaults = (
        dict(depth=2, width=32, dim=16, d_in=16, batch=16, steps=2, warmup=1)
        if args.tiny
        else dict(depth=6, width=1024, dim=256, d_in=256, batch=256, steps=20, warmup=3)
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    print(
        f"ddp_step: {'TINY' if args.tiny else 'full'}; torch {torch.__version__}, gloo, 1 thread per process"
    )
    n_params = sum(p.numel() for p in MLPTowers(args.d_in, args.width, args.depth, args.dim).parameters())
    print(
        f"# two MLP towers: depth {args.depth}, width {args.width}, dim {args.dim} ({n_params / 1e6:.2f} M "
        f"parameters); clip; global batch {args.batch}; median of {args.steps} steps after {args.warmup}"
    )
    res = {m: measure(m, args) for m in MODES}
    print("mode    | processes | median step s |   min s | towers")
    for m in MODES:
        t, procs = res[m]["times"], 1 if m == "one" else 2
        print(f"{m:<7} | {procs:>9} | {statistics.median(t):>13.4f} | {min(t):>7.4f} | {res[m]['ddp']}")
    ref = res["one"]["losses"]
    same = all(
        max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(res[m]["losses"], ref)) < 1e-4 for m in MODES
    )
    print("same losses" if same else f"LOSSES DIFFER: { {m: res[m]['losses'] for m in MODES} }")
    med = {m: statistics.median(res[m]["times"]) for m in MODES}
    print(f"ratio ddp/manual = {med['ddp'] / med['manual']:.3f}")
    print(f"ratio ddp/one = {med['ddp'] / med['one']:.3f}")
    print(f"ratio manual/one = {med['manual'] / med['one']:.3f}")


if __name__ == "__main__":
    main()
