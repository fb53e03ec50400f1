"""The DataComp budget presets: their values, and their wiring run end to end on the CPU with a
few steps of a tiny model on fixture shards (the real budget needs a GPU and CC-scale shards)."""

import pytest
from test_streaming import shards

from harness.config import resolve_config


@pytest.mark.parametrize(
    "preset, samples", [("datacomp-small", 12_800_000), ("datacomp-medium", 128_000_000)]
)
def test_datacomp_presets_mirror_the_published_budgets(preset, samples):
    cfg = resolve_config(preset, None, {"objective": "clip"}, [])
    b = cfg.budget
    assert b.samples_seen == samples and b.batch_size == 4096 and b.lr == 5e-4 and b.warmup_steps == 500
    assert (b.weight_decay, b.betas, b.eps, b.grad_clip) == (0.2, (0.9, 0.98), 1e-6, None)
    assert (b.precision, b.device) == ("bf16", "cuda")
    assert cfg.model.name == "ViT-B-32" and cfg.model.tokenizer == "open_clip" and cfg.train_data == "wds"


def test_datacomp_preset_wiring_runs_on_cpu_with_a_tiny_model(workdir, tmp_path, monkeypatch):
    from conftest import runs

    from harness.cli.main import main

    monkeypatch.setenv("HARNESS_WDS_WORKERS", "0")
    pattern = shards(tmp_path / "s", 2, 8)
    rc = main(["-q", "run", "--budget", "datacomp-small", "--output-dir", str(workdir),
               "--objective", "siglip", "--task", "shapes-retrieval", "--data", f"wds={pattern}",
               "--device", "cpu",
               "--model", "harness-micro", "--steps", "3", "--batch-size", "8",
               "--set", "budget.warmup_steps=1", "--set", "budget.precision=fp32",
               "--set", "shapes.n_test=64", "--set", "shapes.n_train=64"])  # fmt: skip
    assert rc == 0
    (run,) = runs(workdir)
    assert run.info.status == "FINISHED" and run.data.tags["harness.budget_preset"] == "datacomp-small"
    assert run.data.tags["harness.train_data"] == "wds" and run.data.metrics["cost/samples_seen"] == 24
    assert run.data.params["budget.lr"] == "0.0005" and run.data.params["budget.weight_decay"] == "0.2"
