"""Tiled (chunked, recompute-in-backward) vs naive CLIP and SigLIP losses: peak memory and time.

What is measured
----------------
For each loss (``infonce``: symmetric InfoNCE = open_clip ``ClipLoss``; ``sigmoid``: SigLIP), each
batch size B and each implementation (``naive``: ``objectives.tiled.naive_*``, the B x B logits as in
``objectives/``; ``tiled``: ``objectives.tiled.tiled_*`` with ``--chunk`` rows per tile), one forward
and backward of the loss on random L2-normalised float32 embeddings x, y (B x d) with a learnable
scale (and bias), gradients for x, y, scale (and bias).

* **peak memory** -- the memory the loss computation adds on top of its inputs (x, y already
  allocated; the gradients of x and y and every temporary are included):
  CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation after creating the inputs;
  CPU: every (loss, impl, B) runs in a fresh child process, and the figure is the growth of the
  child's ``ru_maxrss`` (peak resident set) over the forward+backward calls, measured from just
  after the inputs were created. (The allocator may keep freed pages, so repeated calls do not
  add up; the peak is a high-water mark.)
* **time** -- the fastest of ``--repeats`` forward+backward calls (the minimum resists load from
  other processes on a shared machine), with the forward and backward parts; on CUDA with
  ``synchronize`` around each part.

Ratios printed are tiled/naive: goals are memory <= 1/8 at B = 16384 and time <= 1.5. A naive run
whose estimated peak (about 5 B x B float32 matrices) exceeds 60% of the available memory is
skipped and printed as such. The loss values of both implementations are compared too (relative
difference, same data), so the comparison is of equal work.

It is a measurement, not a test: the exit code is 0 whatever the ratios.

Run::

    python bench/tiled_loss.py                                  # B = 4096 16384 32768, d = 512, CPU
    python bench/tiled_loss.py --sizes 4096 8192 --chunk 512 --repeats 2
    python bench/tiled_loss.py --device cuda --sizes 16384 65536 131072
    python bench/tiled_loss.py --tiny                           # seconds: checks that it still runs

``--tiny`` (B = 256, d = 64, chunk 64, one repeat, both losses, each in its child process) runs
the same code in seconds for the test suite; its figures mean nothing. Options given explicitly
still apply.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _child import measure_in_child  # noqa: E402


def _mem_available() -> int:
    """Bytes of memory available (CPU: /proc/meminfo MemAvailable; CUDA: free device memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(spec: dict) -> dict:
    """One (loss, impl, B) measurement in this process; returns a JSON-able dict."""
    import torch
    import torch.nn.functional as F

    from objectives.tiled import naive_infonce, naive_sigmoid, tiled_infonce, tiled_sigmoid

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dev = torch.device(spec["device"])
    n, d, chunk = spec["B"], spec["d"], spec["chunk"]
    g = torch.Generator(device="cpu").manual_seed(0)
    x = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    y = F.normalize(x + 1.0 * torch.randn(n, d, generator=g), dim=-1)
    x, y = x.to(dev).requires_grad_(), y.to(dev).requires_grad_()
    s = torch.tensor(1 / 0.07, device=dev, requires_grad=True)
    b = torch.tensor(-10.0, device=dev, requires_grad=True)
    tiled = spec["impl"] == "tiled"
    if spec["loss"] == "infonce":
        fn = (lambda: tiled_infonce(x, y, s, chunk)) if tiled else (lambda: naive_infonce(x, y, s))
    else:
        fn = (lambda: tiled_sigmoid(x, y, s, b, chunk)) if tiled else (lambda: naive_sigmoid(x, y, s, b))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if dev.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _rss_peak_bytes()
    fwd, bwd, tot, value = [], [], [], None
    for _ in range(spec["repeats"]):
        x.grad = y.grad = s.grad = b.grad = None
        sync()
        t0 = time.perf_counter()
        loss = fn()
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        value = float(loss.detach())
        del loss
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
        tot.append(t2 - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = _rss_peak_bytes() - base
    i = min(range(len(tot)), key=tot.__getitem__)
    return {
        "peak_bytes": peak,
        "time": tot[i],
        "fwd": fwd[i],
        "bwd": bwd[i],
        "loss_value": value,
        "threads": torch.get_num_threads(),
    }


def measure(spec: dict, timeout: float) -> dict:
    return measure_in_child(__file__, spec, timeout)


def fmt_mb(b: float) -> str:
    return f"{b / 2**20:9.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="(default 4096 16384 32768; tiny 256)")
    ap.add_argument("--dim", type=int, default=None, help="(default 512; tiny 64)")
    ap.add_argument(
        "--chunk", type=int, default=None, help="rows per tile of the tiled losses (default 512; tiny 64)"
    )
    ap.add_argument("--losses", nargs="+", default=["infonce", "sigmoid"], choices=["infonce", "sigmoid"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--repeats", type=int, default=None, help="forward+backward calls per measurement (default 2; tiny 1)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    ap.add_argument(
        "--tiny", action="store_true", help="small sizes, seconds in all: checks that the benchmark runs"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    for name, full, small in (
        ("sizes", [4096, 16384, 32768], [256]),
        ("dim", 512, 64),
        ("chunk", 512, 64),
        ("repeats", 2, 1),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if args.tiny else full)
    if args.tiny:
        print("# TINY: small sizes, the figures mean nothing")

    if args.device == "cuda":
        import torch

        free = torch.cuda.mem_get_info()[0]
        name = torch.cuda.get_device_name()
    else:
        free, name = _mem_available(), f"CPU ({os.cpu_count()} cores)"
    print(
        f"# tiled vs naive loss, forward+backward | device {name} | d={args.dim} chunk={args.chunk} "
        f"repeats={args.repeats} | peak = memory added by the loss call (MiB), time = best of repeats (s)"
    )
    header = (
        f"{'loss':8} {'B':>6} | {'naive MiB':>9} {'tiled MiB':>9} {'mem ratio':>9} | "
        f"{'naive s':>8} {'tiled s':>8} {'t ratio':>7} | {'tiled fwd/bwd s':>15} | {'loss rel diff':>13}"
    )
    print(header)
    print("-" * len(header))
    for loss in args.losses:
        for n in args.sizes:
            res = {}
            for impl in ("naive", "tiled"):
                est = (
                    5 * n * n * 4
                    if impl == "naive"
                    else 6 * min(args.chunk, n) * n * 4 + 4 * n * args.dim * 4
                )
                if est > 0.6 * free:
                    res[impl] = {"error": f"skipped: needs ~{est / 2**30:.1f} GiB"}
                    continue
                spec = {
                    "loss": loss,
                    "impl": impl,
                    "B": n,
                    "d": args.dim,
                    "chunk": args.chunk,
                    "device": args.device,
                    "repeats": args.repeats,
                    "threads": args.threads,
                }
                res[impl] = measure(spec, args.timeout)
            nv, tl = res["naive"], res["tiled"]
            ok_n, ok_t = "error" not in nv, "error" not in tl
            mem = [fmt_mb(r["peak_bytes"]) if ok else f"{'-':>9}" for r, ok in ((nv, ok_n), (tl, ok_t))]
            tim = [f"{r['time']:8.2f}" if ok else f"{'-':>8}" for r, ok in ((nv, ok_n), (tl, ok_t))]
            both = ok_n and ok_t
            mem_ratio = f"1/{nv['peak_bytes'] / max(tl['peak_bytes'], 1):.1f}" if both else "-"
            t_ratio = f"{tl['time'] / nv['time']:.2f}" if both else "-"
            split = f"{tl['fwd']:6.2f}/{tl['bwd']:6.2f}" if ok_t else "-"
            diff = f"{abs(tl['loss_value'] - nv['loss_value']) / abs(nv['loss_value']):.1e}" if both else "-"
            print(
                f"{loss:8} {n:>6} | {mem[0]} {mem[1]} {mem_ratio:>9} | {tim[0]} {tim[1]} {t_ratio:>7} | "
                f"{split:>15} | {diff:>13}",
                flush=True,
            )
            for impl in ("naive", "tiled"):
                if "error" in res[impl]:
                    print(f"{'':8} {'':>6}   {impl}: {res[impl]['error']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
