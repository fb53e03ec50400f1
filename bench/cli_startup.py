"""CLI start-up: wall time of fresh ``python -m harness ...`` processes, median of several runs.

    python bench/cli_startup.py [--repeats 5] [--tiny]

Measures ``harness --help``, ``harness run --help``, an argument error (``run --budget nope``, exit 2),
``harness list objectives`` with a cold catalogue cache (the cache is removed before each run: every
objective module, and torch, is imported) and a warm one, and the same for ``harness list tasks``.
The goals (issue 13, item 8): ``--help`` and argument errors under 1 s, a warm ``list objectives``
under 2 s, on a quiet 2-core machine. It also checks what the cache must guarantee: the warm listing
prints exactly what the cold one printed, and does not import torch. The catalogue cache goes to a
temporary folder (``HARNESS_CATALOGUE_DIR``), never the user's. ``--tiny`` runs each command once: the
test suite's check that the benchmark runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: (label, arguments, expected exit code, cache state, goal in s)
CASES = [
    ("harness --help", ["--help"], 0, None, 1.0),
    ("harness run --help", ["run", "--help"], 0, None, 1.0),
    ("argument error (run --budget nope)", ["run", "--budget", "nope"], 2, None, 1.0),
    ("harness list objectives (cold cache)", ["list", "objectives"], 0, "cold", None),
    ("harness list objectives (warm cache)", ["list", "objectives"], 0, "warm", 2.0),
    ("harness list tasks (cold cache)", ["list", "tasks"], 0, "cold", None),
    ("harness list tasks (warm cache)", ["list", "tasks"], 0, "warm", 2.0),
]
TORCH_CHECK = (
    "import sys\nfrom harness.cli.main import main\nmain(['-q', 'list', 'objectives', '--json'])\n"
    "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)"
)


def timed(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - t0, p


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--repeats", type=int, default=None, help="fresh processes per command (default 5; tiny 1)"
    )
    p.add_argument("--tiny", action="store_true", help="each command once: checks that the benchmark runs")
    a = p.parse_args(argv)
    repeats = a.repeats or (1 if a.tiny else 5)
    cache = Path(tempfile.mkdtemp(prefix="harness-catalogue-"))
    env = {
        **os.environ,
        "HARNESS_CATALOGUE_DIR": str(cache),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    load = os.getloadavg()
    print(
        f"cli_startup: {'TINY, ' if a.tiny else ''}{repeats} fresh process(es) per command; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'command':<40} | median s |  min s | goal | exit")
    outputs: dict[tuple[str, ...], dict[str, str]] = {}
    bad = []
    try:
        for label, args, code, state, goal in CASES:
            times, codes = [], set()
            for _ in range(repeats):
                if state == "cold":
                    for f in cache.glob(f"catalogue-{args[1]}-*.json"):
                        f.unlink()
                elif state == "warm" and not any(cache.glob(f"catalogue-{args[1]}-*.json")):
                    timed([sys.executable, "-m", "harness", *args], env)  # fill it, untimed
                dt, proc = timed([sys.executable, "-m", "harness", *args], env)
                times.append(dt)
                codes.add(proc.returncode)
                if state:
                    outputs.setdefault(tuple(args), {})[state] = proc.stdout
            ok = codes == {code}
            if not ok:
                bad.append(f"{label}: exit {sorted(codes)}, expected {code}")
            print(
                f"{label:<40} | {statistics.median(times):8.2f} | {min(times):6.2f} | "
                f"{f'< {goal:g}' if goal else '   -':>4} | {','.join(map(str, sorted(codes)))}"
            )
        for args, out in outputs.items():
            same = out.get("cold") == out.get("warm") and bool(out.get("cold"))
            print(f"`harness {' '.join(args)}`: warm output identical to cold: {same}")
            if not same:
                bad.append(f"harness {' '.join(args)}: the cached listing differs from the built one")
        _, proc = timed([sys.executable, "-c", TORCH_CHECK], env)
        print(f"warm `harness list objectives`: {proc.stderr.strip().splitlines()[-1:] or ['no output']}")
        if "torch imported: False" not in proc.stderr:
            bad.append("a warm `harness list objectives` imported torch")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for b in bad:
        print(f"CHECK FAILED: {b}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
