"""Retrieval metrics at COCO 5k size: bounded-memory (chunked, counted ranks) vs a full-matrix argsort.

What is measured
----------------
Random embeddings the size of the COCO Karpathy 5k test (``--images`` 5,000 images x
``--captions-per-image`` 5 = 25,000 captions, ``--dim`` 512): images are random unit vectors, each
caption is its image plus Gaussian noise (``--noise``), re-normalised, so ranks are spread out
rather than all 1. Two implementations compute CLIP_benchmark's retrieval metrics
(R@1/5/10 both directions, mean / median ranks) on the same embeddings:

* ``full`` -- what a straightforward implementation does: the whole (N_captions x N_images) score
  matrix, a dense bool positives matrix, a full stable ``argsort`` of every row in both directions,
  the first positive found by ``gather`` + ``argmax``;
* ``chunked`` -- :func:`tasks.retrieval.retrieval_metrics` with ``text_to_image`` positives:
  ``--chunk`` query rows at a time, the rank counted as 1 + (#scores above the best positive) +
  (#equal scores at a lower index), no sort and no full matrix.

Both must give identical ranks and metrics (checked; the script exits 1 otherwise). The
embeddings are rounded to multiples of 2**-10 (``--no-grid`` turns this off) so that every dot
product is exact in float32 whatever order a matmul kernel sums in: the two implementations
compute their scores through differently shaped matmuls, and without the grid a last-bit
difference could reorder two near-equal scores. The grid also creates exact ties, which both
implementations must break the same way (lower index first).

* **peak memory** -- each implementation runs in a fresh child process (same seed, same
  embeddings). After the embeddings exist, the child records its resident set (``VmRSS`` from
  ``/proc/self/status``), resets the kernel's peak-RSS mark (writing ``5`` to
  ``/proc/self/clear_refs``), runs the metrics, and reads the peak (``VmHWM``). The figure is peak
  minus baseline: the memory the metric computation added, torch allocations included (which
  ``tracemalloc`` does not see). Where ``clear_refs`` cannot be written the growth of
  ``ru_maxrss`` is used instead (a lower bound when an earlier peak was higher); the output says
  which. psutil is not needed.
* **time** -- wall time of the metric computation (the fastest of ``--repeats``; memory is from
  the first call).

It is a measurement, not a test. Run::

    python bench/eval_speed.py                           # 5,000 x 25,000, d = 512
    python bench/eval_speed.py --images 1000 --dim 256 --chunk 256 --threads 2
    python bench/eval_speed.py --tiny                    # seconds: checks that it still runs

``--tiny`` (200 images x 1,000 captions, d = 64, chunk 64) runs the same code, children and
checks included, in seconds for the test suite; its figures mean nothing. Options given explicitly
still apply.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _child import measure_in_child  # noqa: E402


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def embeddings(spec: dict):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(spec["seed"])
    n_img, per, d = spec["images"], spec["per"], spec["dim"]
    image = F.normalize(torch.randn(n_img, d, generator=g), dim=1)
    owner = torch.arange(n_img).repeat_interleave(per)
    text = F.normalize(image[owner] + spec["noise"] * torch.randn(len(owner), d, generator=g) / d**0.5, dim=1)
    if spec["grid"]:  # exact float32 dot products: |sum| <= ~1, resolution 2**-20, 24-bit mantissa
        image = torch.round(image * 1024) / 1024
        text = torch.round(text * 1024) / 1024
    return image.contiguous(), text.contiguous(), owner


def full_matrix_metrics(image, text, text_to_image, ks=(1, 5, 10)):
    """The straightforward version: full score matrix, dense positives, full stable argsort."""
    import torch

    from tasks.retrieval import metrics_from_ranks

    scores = text @ image.T  # N_texts x N_images
    positives = torch.zeros(scores.shape, dtype=torch.bool)
    positives[torch.arange(len(text_to_image)), text_to_image] = True
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    t2i = positives.gather(1, order).to(torch.uint8).argmax(dim=1) + 1  # first positive in the ranking
    del order
    order = torch.argsort(scores.T, dim=1, descending=True, stable=True)
    i2t = positives.T.gather(1, order).to(torch.uint8).argmax(dim=1) + 1
    return metrics_from_ranks(t2i, i2t, ks), t2i, i2t


def child(spec: dict) -> dict:
    import gc

    import torch

    from tasks.retrieval import retrieval_metrics

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    image, text, owner = embeddings(spec)
    if spec["impl"] == "full":
        fn = lambda: full_matrix_metrics(image, text, owner)  # noqa: E731
    else:
        fn = lambda: retrieval_metrics(image, text, owner, chunk=spec["chunk"])  # noqa: E731
    gc.collect()
    times, peak, method = [], None, None
    for rep in range(spec["repeats"]):
        base_rss = _status_kib("VmRSS")
        if rep == 0:
            if base_rss is not None and _reset_peak() and _status_kib("VmHWM") is not None:
                method = "VmHWM-after-reset minus VmRSS"
            else:
                method, base_rss = "ru_maxrss growth", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        metrics, t2i, i2t = fn()
        times.append(time.perf_counter() - t0)
        if rep == 0:
            hwm = (
                _status_kib("VmHWM")
                if method.startswith("VmHWM")
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            )
            peak = (hwm - base_rss) * 1024
            torch.save({"t2i": t2i, "i2t": i2t}, spec["ranks_file"])
        del t2i, i2t
        gc.collect()
    return {
        "peak_bytes": peak,
        "time": min(times),
        "metrics": metrics,
        "method": method,
        "threads": torch.get_num_threads(),
    }


def measure(spec: dict, timeout: float) -> dict:
    return measure_in_child(__file__, spec, timeout)


def tied_queries(args) -> int:
    """Captions whose image's score equals another image's score (exact ties the ranks must break
    by index), counted on the same embeddings."""
    spec = {
        "images": args.images,
        "per": args.per,
        "dim": args.dim,
        "noise": args.noise,
        "grid": args.grid,
        "seed": args.seed,
    }
    image, text, owner = embeddings(spec)
    n = 0
    for a in range(0, len(text), args.chunk):
        s = text[a : a + args.chunk] @ image.T
        best = s.gather(1, owner[a : a + args.chunk, None])
        n += int(((s == best).sum(dim=1) > 1).sum())
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=None, help="(default 5000; tiny 200)")
    ap.add_argument("--captions-per-image", dest="per", type=int, default=5)
    ap.add_argument("--dim", type=int, default=None, help="(default 512; tiny 64)")
    ap.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="query rows per step of the chunked version (default 512; tiny 64)",
    )
    ap.add_argument(
        "--noise",
        type=float,
        default=6.0,
        help="caption = image + noise * N(0, I/d), re-normalised (larger: harder retrieval)",
    )
    ap.add_argument(
        "--no-grid",
        dest="grid",
        action="store_false",
        help="do not round embeddings to the 2**-10 grid (exact dot products, see the docstring)",
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per implementation")
    ap.add_argument(
        "--tiny", action="store_true", help="small sizes, seconds in all: checks that the benchmark runs"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    for name, full, small in (("images", 5000, 200), ("dim", 512, 64), ("chunk", 512, 64)):
        if getattr(args, name) is None:
            setattr(args, name, small if args.tiny else full)

    if args.tiny:
        print("# TINY: small sizes, the figures mean nothing")
    n_txt = args.images * args.per
    print(
        "# retrieval metrics, chunked (counted ranks) vs full matrix + argsort | "
        f"CPU ({os.cpu_count()} cores) | "
        f"{args.images} images x {n_txt} captions, d={args.dim}, chunk={args.chunk}, "
        f"grid={'2**-10' if args.grid else 'off'}"
    )
    print(
        f"# full score matrix alone: {n_txt * args.images * 4 / 2**20:.0f} MiB float32; "
        "each implementation in "
        "a fresh process; peak = resident memory added by the metric call (MiB), time = wall seconds"
    )
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in ("full", "chunked"):
            spec = {
                "impl": impl,
                "images": args.images,
                "per": args.per,
                "dim": args.dim,
                "chunk": args.chunk,
                "noise": args.noise,
                "grid": args.grid,
                "repeats": args.repeats,
                "threads": args.threads,
                "seed": args.seed,
                "ranks_file": os.path.join(tmp, f"{impl}.pt"),
            }
            res[impl] = measure(spec, args.timeout)
            if "error" not in res[impl]:
                import torch

                res[impl]["ranks"] = torch.load(spec["ranks_file"])
    for impl in ("full", "chunked"):
        if "error" in res[impl]:
            print(f"{impl}: {res[impl]['error']}")
    if any("error" in r for r in res.values()):
        return 1
    full, chunked = res["full"], res["chunked"]
    print(f"# memory method: {chunked['method']}; torch threads: {chunked['threads']}")
    header = f"{'impl':8} | {'peak MiB':>9} | {'time s':>7}"
    print(header)
    print("-" * len(header))
    for impl in ("full", "chunked"):
        r = res[impl]
        print(f"{impl:8} | {r['peak_bytes'] / 2**20:9.1f} | {r['time']:7.2f}")
    print(
        f"{'ratio':8} | {'1/' + format(full['peak_bytes'] / max(chunked['peak_bytes'], 1), '.1f'):>9} | "
        f"{chunked['time'] / full['time']:7.2f}   (chunked / full)"
    )
    same_ranks = all(torch.equal(full["ranks"][k], chunked["ranks"][k]) for k in ("t2i", "i2t"))
    same_metrics = full["metrics"] == chunked["metrics"]
    m = chunked["metrics"]
    print(
        "metrics: "
        + ", ".join(
            f"{k}={m[k]:.4f}"
            for k in (
                "image_retrieval_recall@1",
                "image_retrieval_recall@5",
                "text_retrieval_recall@1",
                "text_retrieval_recall@5",
                "mean_recall@5",
                "image_retrieval_mean_rank",
                "text_retrieval_mean_rank",
            )
        )
    )
    print(
        f"identical ranks: {same_ranks}; identical metrics: {same_metrics} ({len(m)} keys); "
        f"text->image queries whose positive ties with another image: {tied_queries(args)}"
    )
    return 0 if same_ranks and same_metrics else 1


if __name__ == "__main__":
    raise SystemExit(main())
