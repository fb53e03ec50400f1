"""Run one measurement in a fresh Python process (so peak memory is its own) and read back the
JSON object it prints last. Shared by the side-by-side benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def measure_in_child(script: str, spec: dict, timeout: float) -> dict:
    """``python SCRIPT --child JSON(spec)`` with the repository on PYTHONPATH; the child's last
    stdout line is its result. A timeout or a failure comes back as ``{"error": ...}``."""
    cmd = [sys.executable, os.path.abspath(script), "--child", json.dumps(spec)]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(script)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if p.returncode != 0:
        tail = (p.stderr or "").strip().splitlines()[-1:] or [f"exit code {p.returncode}"]
        return {"error": f"failed ({p.returncode}): {tail[0][:160]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])
