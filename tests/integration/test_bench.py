"""Every benchmark still runs: ``python bench/X.py --tiny`` exits 0 and prints its report.

A benchmark nobody runs rots (bench/train_overhead.py once died on a change to the trainer's data
protocol). Each bench has a ``--tiny`` mode that runs the same code at small sizes in seconds; here
it runs as a subprocess. The figures it prints are measurements and never asserted: only the exit
code, the report's lines and headers, and the checks of equal work that a bench makes itself
(identical ranks, same losses, passed agreement checks).

The selected benches run two at a time (the machines this runs on have 2 cores; each process is
mostly single-threaded imports), started together when the first test asks for one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
# slowest first, so that two workers finish together
BENCHES = [
    "gpu_check",
    "sweep_scaling",
    "ddp_step",
    "tiled_loss",
    "eval_speed",
    "train_overhead",
    "cli_startup",
    "data_throughput",
    "render_speed",
]
# generous: a bench's tiny mode takes ~60 s alone, but sweep_scaling (two Ray starts) took 178 s
# on the 2-core machine while a comparison ran beside it; the limit catches hangs, not slowness
TIMEOUT = 600


def run_bench(name: str, out_dir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--tiny"]
    if name == "gpu_check":  # its report files go here, not to a new temporary folder
        cmd += ["--out", str(out_dir)]
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "CUDA_VISIBLE_DEVICES")}
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        CUDA_VISIBLE_DEVICES="",
    )  # tiny mode is checked on the CPU
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


@pytest.fixture(scope="module")
def bench_runs(request, tmp_path_factory):
    """name -> Future of its CompletedProcess. The benches of the tests selected in this session are
    queued at once and run two at a time, so ``-k tiled`` runs that one alone."""
    none = SimpleNamespace(params={})
    wanted = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and "name" in getattr(item, "callspec", none).params
    ]
    pool = ThreadPoolExecutor(max_workers=2)
    futures: dict[str, Future] = {}
    for name in sorted(set(wanted or BENCHES), key=BENCHES.index):
        futures[name] = pool.submit(run_bench, name, tmp_path_factory.mktemp(name))
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


EXPECTED = {  # lines (substrings) every tiny report must print
    "cli_startup": [
        "cli_startup: TINY",
        "| median s |  min s | goal | exit",
        "\nharness --help ",
        "\nargument error (run --budget nope) ",
        "(cold cache)",
        "(warm cache)",
        "`harness list objectives`: warm output identical to cold: True",
        "`harness list tasks`: warm output identical to cold: True",
        "warm `harness list objectives`: ['torch imported: False']",
    ],
    "data_throughput": [
        "data_throughput: TINY",
        "setup (world + tokenising + model):",
        "objective    fields",
        "\nclip ",
        "\nintra-modal ",
        "\nnegclip ",
        "lowest ratio loader/step =",
    ],
    "ddp_step": [
        "ddp_step: TINY",
        "mode    | processes | median step s |   min s | towers",
        "\none     |         1 |",
        "\nmanual  |         2 |",
        "| DistributedDataParallel",
        "same losses",
        "ratio ddp/manual =",
        "ratio ddp/one =",
    ],
    "eval_speed": [
        "# TINY",
        "# memory method:",
        "impl     |  peak MiB |  time s",
        "\nfull ",
        "\nchunked ",
        "\nratio ",
        "metrics: image_retrieval_recall@1=",
        "identical ranks: True; identical metrics: True",
    ],
    "gpu_check": [
        "gpu_check: TINY",
        "SKIPPED CUDA-only (a1)",
        "(a1) harness-micro",
        "PASS clip   cpu fp32",
        "PASS siglip cpu bf16 autocast",
        "(a2) tiled vs naive losses on cpu",
        "PASS infonce",
        "PASS sigmoid",
        "SKIPPED (b) harness run: left out by --tiny",
        "(c) harness-micro",
        "  clip      naive     16 |",
        "  siglip    tiled     16 |",
        "PASS: checks passed",
    ],
    "render_speed": ["500 scenes at 32px: sample", "scenes/s"],
    "sweep_scaling": [
        "sweep_scaling: TINY",
        "2 objectives x 1 seed (clip, siglip)",
        "sweep                      | wall s | sum of run s",
        "\nin-process (2 threads) ",
        "\nray (2 workers x 1 thread) ",
        "ratio ray/in-process = ",
        "per-run overhead of Ray = ",
        "all runs finished: True; identical ranks: True; identical scores: True",
    ],
    "tiled_loss": [
        "# TINY",
        "# tiled vs naive loss, forward+backward",
        "loss          B | naive MiB",
        "\ninfonce     256 |",
        "\nsigmoid     256 |",
    ],
    "train_overhead": [
        "train_overhead: TINY",
        "setup (world + model + 3 batches)",
        "pair 1/1: harness",
        "| harness mean  bare mean",
        "(same losses)",
        "median of the per-pair ratios",
        "ratio harness/bare =",
    ],
}


@pytest.mark.parametrize("name", BENCHES)
def test_bench_tiny_runs(name, bench_runs):
    p = bench_runs[name].result()
    assert p.returncode == 0, (
        f"bench/{name}.py --tiny exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    )
    missing = [s for s in EXPECTED[name] if s not in p.stdout]
    assert not missing, f"bench/{name}.py --tiny did not print {missing}:\n{p.stdout[-3000:]}"
    for bad in ("Traceback", "failed (", "timed out", "skipped: needs", "ERROR in", "LOSSES DIFFER"):
        assert bad not in p.stdout + p.stderr, f"bench/{name}.py --tiny printed {bad!r}:\n{p.stdout[-3000:]}"


@pytest.mark.parametrize("name", ["gpu_check"])
def test_gpu_check_tiny_writes_its_report(name, bench_runs):
    """The report files (what bench/gpu_check.sh brings back from the device machine) are written."""
    p = bench_runs[name].result()
    assert p.returncode == 0, p.stdout[-3000:]
    out = Path(p.args[p.args.index("--out") + 1])
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["status"] == "PASS" and data["meta"]["tiny"] is True
    assert {r["objective"] for r in data["devices"]} == {"clip", "siglip"}
    assert all(r["pass"] for r in data["devices"])
    assert [r["loss"] for r in data["tiled"]] == ["infonce", "sigmoid"]
    assert len([r for r in data["throughput"] if "samples_per_s" in r]) == 4
    assert any(s["what"].startswith("CUDA-only") for s in data["skipped"])
    assert (out / "gpu_check.txt").read_text().rstrip().splitlines()[-1].startswith("PASS")
