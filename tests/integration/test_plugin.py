"""An out-of-tree objective, installed as a real distribution, is found through its entry point."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "harness-plugin-example"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """``pip install`` the example plugin into its own directory (no deps, offline)."""
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(site.glob("harness_plugin_example-*.dist-info"))
    # a second, broken plugin distribution: its entry point names a module that fails to import
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[harness.objectives]\nbroken-loss = broken_plugin_mod:Loss\n")
    (site / "broken_plugin_mod.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    return site


def harness(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=cwd,
    )


def test_plugin_objective_is_listed_and_broken_one_reported(plugin_site, tmp_path):
    proc = harness(plugin_site, "list", "objectives", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    names = {r["name"] for r in data["entries"]}
    assert {"margin-infonce", "clip", "siglip"} <= names
    assert [f["name"] for f in data["failed"]] == ["broken-loss"]
    assert "broken on purpose" in data["failed"][0]["error"]


def test_plugin_objective_trains(plugin_site, tmp_path, shared_cache):
    out = tmp_path / "out"
    os.environ["HARNESS_CACHE"] = str(shared_cache)
    try:
        proc = harness(
            plugin_site,
            "-q",
            "run",
            "--budget",
            "smoke",
            "--objective",
            "margin-infonce",
            "--set",
            "objective_params.margin=0.2",
            "--output-dir",
            str(out),
            "--no-checkpoint",
            cwd=tmp_path,
        )
    finally:
        del os.environ["HARNESS_CACHE"]
    assert proc.returncode == 0, proc.stderr
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    df = mlflow.search_runs(experiment_names=["harness"])
    assert list(df["status"]) == ["FINISHED"]
    assert df["tags.harness.objective"][0] == "margin-infonce"
    assert df["params.objective.margin"][0] == "0.2"
    assert df["metrics.shapes-retrieval/main_score"][0] >= 0
