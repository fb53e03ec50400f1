import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# real-dataset tests read local fixtures only: the Hub is never contacted
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# `harness list` caches its catalogue: never in the user's ~/.cache during tests
os.environ.setdefault("HARNESS_CATALOGUE_DIR", "off")


@pytest.fixture(scope="session", autouse=True)
def _hf_cache(tmp_path_factory):
    """``datasets`` writes its arrow cache here, not into the user's ~/.cache."""
    import datasets

    d = tmp_path_factory.mktemp("hf-datasets")
    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = d
    yield d
    datasets.config.HF_DATASETS_CACHE = old


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One shapes-world cache for the whole session (each spec is rendered once)."""
    d = tmp_path_factory.mktemp("cache")
    return d


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store created (and migrated) once; tests copy it."""
    import mlflow

    d = tmp_path_factory.mktemp("mlflow-template")
    db = d / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    mlflow.search_experiments()
    return db


@pytest.fixture
def workdir(tmp_path, shared_cache, template_db, monkeypatch) -> Path:
    """An output dir with its own MLflow store, the shared cache, and the CWD set to it."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(template_db, out / "mlflow.db")
    monkeypatch.setenv("HARNESS_CACHE", str(shared_cache))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return out


def smoke_args(out: Path, *extra: str) -> list[str]:
    return ["-q", "run", "--budget", "smoke", "--output-dir", str(out), *extra]


def runs(out: Path, **filters):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    exps = [e.experiment_id for e in mlflow.search_experiments()]
    if not exps:
        return []
    client = mlflow.MlflowClient()
    return client.search_runs(exps, run_view_type=3)


# ----------------------------------------------------------------------- helpers for objective tests


def unit(*shape, dtype=torch.float64, seed: int | None = None) -> torch.Tensor:
    """Random unit vectors along the last axis (float64 by default: references compare to 1e-10)."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return F.normalize(torch.randn(*shape, dtype=dtype, generator=g), dim=-1)


def make(name: str, num_samples: int = 20, **params):
    """A registered objective in float64; objectives with per-sample state get ``setup`` first."""
    from harness.core.objective import OBJECTIVES

    obj = OBJECTIVES.get(name)(**params)
    if name == "isogclr":
        obj.setup(num_samples=num_samples, batch_size=8, steps=10)
    return obj.double()
