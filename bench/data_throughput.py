"""Data pipeline throughput against the training step rate, side by side in one process.

What is measured
----------------
For each objective (default: ``clip``, ``intra-modal``, ``negclip``) the fields it asks for are
drawn from the shapes world's training data, ``ShapesTrainData.batch(step, B, fields)``:

* ``clip``        -- image, text
* ``intra-modal`` -- image, text, image_view, text_view (the second view is jittered per batch,
  the most expensive field to produce)
* ``negclip``     -- image, text, hard_negative_text (B x 3 token rows)

and two figures are taken, in one process, on the same world and model:

* **loader** -- seconds per ``ShapesTrainData.batch`` call in a plain loop, nothing else running
  in the process (``--warmup`` untimed calls, then ``--steps`` timed ones; median);
* **step** -- seconds of one training step of ``--model`` at the same B: ``harness.engine.trainer.train``
  for ``--warmup + --steps`` steps with that objective, reading its batches through a wrapper
  that times every ``batch()`` call, and the step's compute time is the span between two
  consecutive steps minus the time spent in ``batch()`` (median over the timed steps). The first
  ``--warmup`` steps are not timed (step 0 runs under the trainer's FLOP counter). On CUDA every
  step ends with ``torch.cuda.synchronize`` so the span is the step's real duration.

Streaming (``--train-data wds``): the same process then writes synthetic webdataset shards in
img2dataset's layout (``--stream-shards`` shards of ``--stream-samples`` JPEGs of
``--stream-px`` px, with captions) to a temporary directory, and times
``harness.data.streaming.StreamingTrainData`` at the model's input size with 1, 2 and 4 DataLoader
worker processes (``--stream-workers``): samples/s = B x timed batches / their wall time, after
``STREAMS`` untimed batches (worker start-up and the shuffle buffers' fill). Its ratio is taken
against the first objective's training step. The stream loops over the shards (an infinite seeded
stream), so a few shards measure the decode rate of any number.

Printed: samples/s of the loader and of the step, their ratio (loader / step: the loader is not
the bottleneck when this is >> 1; below ~5 a synchronous loader costs a noticeable share of every
step), and the share of each training step that the trainer spent waiting in ``batch()``.

Caveats: on a CPU the loader and the step share the same cores (the trainer's default loader is
synchronous, in the training thread), so the in-loop share is what a run actually pays. On CUDA
the step runs on the GPU, the loader stays on the CPU, and a prefetching loader can hide it
entirely as long as the ratio is above 1. Shared machines: medians resist bursts of load, but the
absolute samples/s figures are only as good as the machine was quiet.

It is a measurement, not a test: the exit code is 0 whatever the ratios.

Run::

    python bench/data_throughput.py                          # B = 256, 20 timed steps, harness-tiny
    python bench/data_throughput.py --steps 3 --threads 1    # a quick look
    python bench/data_throughput.py --device cuda --batch-size 1024 --model harness-small
    python bench/data_throughput.py --tiny                   # seconds: checks that it still runs

``--tiny`` (harness-micro, B = 16, 1 warmup + 2 timed steps, a 256-scene world, all three
objectives) runs the same code in seconds for the test suite; its figures mean nothing. Options
given explicitly still apply.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness.config import Budget
from harness.data.batches import ShapesTrainData
from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
from harness.engine.models import Encoder, ModelConfig, build_model
from harness.engine.trainer import resolve_device, seed_everything, train


def objective_class(name: str):
    """The objective's class: imported directly (works without the package's entry points)."""
    from objectives.hard_negatives import NegCLIP
    from objectives.infonce import CLIP
    from objectives.intramodal import IntraModal
    from objectives.sigmoid import SigLIP

    direct = {"clip": CLIP, "siglip": SigLIP, "intra-modal": IntraModal, "negclip": NegCLIP}
    if name in direct:
        return direct[name]
    from objectives import OBJECTIVES  # any other registered objective, by name

    return OBJECTIVES.get(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedData:
    """Training data for ``train()``: the real ``ShapesTrainData``, with every ``batch()`` timed."""

    def __init__(self, data: ShapesTrainData):
        self.data = data
        self.seconds: list[float] = []

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, step, batch_size, fields):
        t0 = time.perf_counter()
        out = self.data.batch(step, batch_size, fields)
        self.seconds.append(time.perf_counter() - t0)
        return out


def time_loader(data: ShapesTrainData, fields, batch_size: int, warmup: int, steps: int) -> list[float]:
    """Seconds of each timed ``batch()`` call (steps ``warmup .. warmup+steps-1``)."""
    out = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        b = data.batch(step, batch_size, fields)
        dt = time.perf_counter() - t0
        del b
        if step >= warmup:
            out.append(dt)
    return out


def time_steps(
    model0,
    objective,
    enc_args,
    data: ShapesTrainData,
    budget: Budget,
    seed: int,
    warmup: int,
    device: torch.device,
) -> tuple[list[float], list[float]]:
    """Train ``budget.steps`` steps; returns (compute seconds, batch() seconds) of the timed steps."""
    model = copy.deepcopy(model0)
    encoder = Encoder(model, *enc_args, device=device)
    timed = TimedData(data)
    marks: list[float] = []

    def on_step(step: int, loss: float) -> None:
        sync(device)
        marks.append(time.perf_counter())

    sync(device)
    t_start = time.perf_counter()
    train(model, objective, encoder, timed, budget, seed, device, on_step=on_step)
    marks = [t_start, *marks]
    spans = [b - a for a, b in zip(marks, marks[1:])]
    if len(timed.seconds) != len(spans):  # a prefetching wrapper would call batch() out of step
        raise RuntimeError(
            f"expected one batch() call per step, got {len(timed.seconds)} for {len(spans)} steps"
        )
    compute = [s - b for s, b in zip(spans, timed.seconds)]
    return compute[warmup:], timed.seconds[warmup:]


def write_shards(root: Path, shards: int, samples: int, px: int, seed: int = 0) -> str:
    """Synthetic img2dataset shards ({key}.jpg, {key}.txt, {key}.json); returns their brace pattern."""
    import io
    import json
    import tarfile

    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:px, 0:px]
    for s in range(shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(samples):
                key = f"{s:05d}{i:04d}"
                base = (xx[..., None] * rng.uniform(0, 1, 3) + yy[..., None] * rng.uniform(0, 1, 3)) % 256
                img = (base + rng.normal(0, 12, (px, px, 3))).clip(0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=90)
                files = {
                    f"{key}.jpg": buf.getvalue(),
                    f"{key}.txt": f"a synthetic photo number {i} of shard {s}".encode(),
                    f"{key}.json": json.dumps({"key": key, "status": "success"}).encode(),
                }
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / ("{00000..%05d}.tar" % (shards - 1)))


def time_stream(pattern, tokenizer, image_size, preprocess_cfg, batch_size, steps, workers, seed):
    """(samples/s, first-batch seconds) of the streaming loader with ``workers`` processes."""
    from harness.data.streaming import STREAMS, StreamingTrainData, shard_list

    data = StreamingTrainData(
        "wds", shard_list("wds", pattern), tokenizer, seed, image_size, preprocess_cfg, workers=workers,
        shuffle=64,
    )  # fmt: skip
    fields = {"image", "text"}
    t0 = time.perf_counter()
    data.batch(0, batch_size, fields)
    first = time.perf_counter() - t0
    for step in range(1, STREAMS):
        data.batch(step, batch_size, fields)
    t0 = time.perf_counter()
    for step in range(STREAMS, STREAMS + steps):
        data.batch(step, batch_size, fields)
    dt = time.perf_counter() - t0
    data.close()
    return batch_size * steps / dt, first


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch-size", type=int, default=None, help="(default 256; tiny 16)")
    ap.add_argument(
        "--steps", type=int, default=None, help="timed steps / batch() calls (default 20; tiny 2)"
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps first (>= 1; step 0 counts FLOPs; default 2; tiny 1)",
    )
    ap.add_argument("--model", default=None, help="(default harness-tiny; tiny harness-micro)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument(
        "--objectives",
        default="clip,intra-modal,negclip",
        help="comma-separated objectives whose fields are loaded (default clip,intra-modal,negclip)",
    )
    ap.add_argument(
        "--n-train",
        type=int,
        default=None,
        help="training scenes of the world (default: the default budget's, 20000; tiny 256)",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="a few steps at small sizes, seconds in all: checks that the benchmark runs",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument(
        "--stream-workers",
        default="1,2,4",
        help="DataLoader worker counts of the streaming (wds) loader; '' skips it (default 1,2,4)",
    )
    ap.add_argument("--stream-shards", type=int, default=None, help="synthetic shards (default 4; tiny 2)")
    ap.add_argument(
        "--stream-samples", type=int, default=None, help="samples per shard (default 256; tiny 24)"
    )
    ap.add_argument("--stream-px", type=int, default=None, help="JPEG side in px (default 256; tiny 48)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cache-dir",
        default=None,
        help="shapes-world cache (default: a temporary directory, removed at exit)",
    )
    args = ap.parse_args(argv)
    tiny = args.tiny
    for name, full, small in (
        ("batch_size", 256, 16),
        ("steps", 20, 2),
        ("warmup", 2, 1),
        ("model", "harness-tiny", "harness-micro"),
        ("n_train", ShapesSpec().n_train, 256),
        ("stream_shards", 4, 2),
        ("stream_samples", 256, 24),
        ("stream_px", 256, 48),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 2:
        ap.error("need --steps >= 1, --warmup >= 1, --batch-size >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    B = args.batch_size
    names = [n.strip() for n in args.objectives.split(",") if n.strip()]
    objectives = {n: objective_class(n) for n in names}

    with tempfile.TemporaryDirectory(prefix="data_throughput-") as tmp:
        cache = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        t0 = time.perf_counter()
        spec = ShapesSpec(n_train=max(args.n_train, B))
        world = ShapesWorld(spec, cache)
        seed_everything(args.seed)
        model0, tokenizer, image_size, mean, std = build_model(
            ModelConfig(name=args.model), words=vocabulary()
        )
        data = ShapesTrainData(world, tokenizer, seed=args.seed)
        setup = time.perf_counter() - t0
    ShapesTrainData.check_static(set().union(*(c.requires for c in objectives.values())), ",".join(names))

    n_params = sum(p.numel() for p in model0.parameters())
    print(
        f"data_throughput: {'TINY (figures mean nothing) ' if tiny else ''}"
        f"model={args.model} ({n_params / 1e6:.2f} M params) batch={B} steps={args.steps} "
        f"(+{args.warmup} warmup) device={device.type} threads={torch.get_num_threads()} "
        f"world={len(data)} train scenes, {spec.image_size} px torch={torch.__version__}"
    )
    print(f"setup (world + tokenising + model): {setup:.1f} s", flush=True)

    extra = {"loader_workers": 0} if "loader_workers" in Budget.model_fields else {}  # batch() in step
    budget = Budget(
        steps=args.warmup + args.steps,
        batch_size=B,
        warmup_steps=1,
        device=args.device,
        log_every=10**6,
        **extra,
    )
    enc_args = (tokenizer, image_size, mean, std)
    rows = []
    for name, cls in objectives.items():
        fields = sorted(cls.requires)
        load = time_loader(data, set(fields), B, args.warmup, args.steps)
        compute, in_loop = time_steps(model0, cls(), enc_args, data, budget, args.seed, args.warmup, device)
        t_load, t_step, t_in = statistics.median(load), statistics.median(compute), statistics.median(in_loop)
        share = statistics.median(b / (b + c) for b, c in zip(in_loop, compute))
        rows.append((name, fields, t_load, t_in, t_step, share))
        print(
            f"  {name}: loader {t_load * 1e3:.1f} ms/batch ({B / t_load:.0f} samples/s), step "
            f"{t_step * 1e3:.1f} ms ({B / t_step:.0f} samples/s), ratio {t_step / t_load:.1f}",
            flush=True,
        )

    print()
    print(
        "median seconds over the timed steps; samples/s = B / seconds; "
        "ratio = loader samples/s / step samples/s"
    )
    head = (
        f"{'objective':12} {'fields':42} | {'loader ms':>9} {'loader sps':>10} | {'step ms':>8} "
        f"{'step sps':>8} | {'ratio':>6} | {'in-loop ms':>10} {'load share':>10}"
    )
    print(head)
    print("-" * len(head))
    worst = None
    for name, fields, t_load, t_in, t_step, share in rows:
        ratio = t_step / t_load
        worst = ratio if worst is None else min(worst, ratio)
        print(
            f"{name:12} {','.join(fields):42} | {t_load * 1e3:>9.1f} {B / t_load:>10.0f} | "
            f"{t_step * 1e3:>8.1f} "
            f"{B / t_step:>8.0f} | {ratio:>6.1f} | {t_in * 1e3:>10.1f} {share:>9.1%}"
        )
    print()
    print("in-loop ms: batch() inside train() (the same call, competing with the step for the CPU);")
    print("load share: the median share of a training step spent waiting in batch().")
    verdict = (
        "the loader is not the bottleneck"
        if worst >= 5
        else (
            "the loader keeps up but costs a noticeable share of a synchronous step"
            if worst >= 1
            else "THE LOADER IS THE BOTTLENECK"
        )
    )
    print(f"lowest ratio loader/step = {worst:.1f} (goal >> 1): {verdict}")

    workers = [int(w) for w in args.stream_workers.split(",") if w.strip()]
    if workers:
        step_sps = B / rows[0][4]
        preprocess_cfg = getattr(getattr(model0, "visual", None), "preprocess_cfg", None)
        print()
        with tempfile.TemporaryDirectory(prefix="data_throughput-wds-") as tmp:
            t0 = time.perf_counter()
            pattern = write_shards(
                Path(tmp), args.stream_shards, args.stream_samples, args.stream_px, args.seed
            )
            size = sum(p.stat().st_size for p in Path(tmp).glob("*.tar"))
            print(
                f"streaming (wds): {args.stream_shards} shards x {args.stream_samples} JPEGs of "
                f"{args.stream_px} px ({size / 2**20:.1f} MiB, written in {time.perf_counter() - t0:.1f} s), "
                f"decoded and resized to {image_size} px; step = {rows[0][0]}'s training step"
            )
            head = (
                f"{'workers':>7} | {'stream sps':>10} | {'first batch s':>13} | {'step sps':>8} | "
                f"{'ratio':>6}"
            )
            print(head)
            print("-" * len(head))
            for w in workers:
                sps, first = time_stream(
                    pattern, tokenizer, image_size, preprocess_cfg, B, args.steps, w, args.seed
                )
                print(
                    f"{w:>7} | {sps:>10.0f} | {first:>13.2f} | {step_sps:>8.0f} | {sps / step_sps:>6.1f}",
                    flush=True,
                )
        print("stream sps: B x timed batches / their wall time; ratio = stream sps / step sps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
