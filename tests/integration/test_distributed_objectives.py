"""Every objective under torch.distributed (2 CPU processes, gloo): with features gathered by
``harness.engine.distributed.gather_batch``, the loss and the gradients equal those of one process on
the concatenated batch (the convention of harness/distributed.py: the model's gradients after
averaging over ranks, the objective's own parameters without averaging).

The trainer's own step (``harness.engine.trainer.forward_backward``, the towers in
``DistributedDataParallel`` via ``wrap_ddp``) is checked the same way, plain and with GradCache
(``gradcache_chunk``, sub-batch backward passes under ``no_sync``): the towers' and the objective's
gradients, and the parameters after one AdamW step, equal one process on the concatenated batch.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from test_distributed import spawn_workers

from harness.core.batch import EmbeddingBatch
from harness.engine import distributed as hd
from harness.engine.trainer import forward_backward, wrap_ddp
from objectives import OBJECTIVES

W, B, D_IN, D, K, C = 2, 6, 5, 8, 3, 19
NAMES = sorted(n for n in OBJECTIVES.names() if OBJECTIVES.get(n).distributed != "unsupported")


def problem():
    g = torch.Generator().manual_seed(7)
    raw = {
        k: torch.randn(W * B, D_IN, generator=g, dtype=torch.float64)
        for k in ("image", "text", "image_view", "text_view")
    }
    raw["hard_negative_text"] = torch.randn(W * B, K, D_IN, generator=g, dtype=torch.float64)
    labels = torch.arange(W * B) % 4
    index = torch.arange(W * B) + 10
    concepts = (torch.rand(W * B, C, generator=g) < 0.3).double()
    torch.manual_seed(0)
    tower = torch.nn.Linear(D_IN, D).double()
    return raw, labels, index, concepts, tower


def run(name: str, rows: slice, gather: bool):
    raw, labels, index, concepts, tower = problem()
    emb = EmbeddingBatch(labels=labels[rows], index=index[rows], concepts=concepts[rows])
    for k, x in raw.items():
        setattr(emb, k, F.normalize(tower(x[rows]), dim=-1))
    if gather:
        emb = hd.gather_batch(emb)
    torch.manual_seed(1)  # objectives with random initial parameters start alike everywhere
    obj = OBJECTIVES.get(name)()
    obj.setup(num_samples=100, batch_size=W * B, steps=10, embed_dim=D, num_concepts=C)
    obj = obj.double()
    torch.manual_seed(2)
    out = obj(emb)
    out.loss.backward()
    return out.loss.detach(), tower, {n: p.grad for n, p in obj.named_parameters() if p.grad is not None}


RAW = ("image", "text", "image_view", "text_view", "hard_negative_text")
CHUNKS = (None, 4)  # plain step; GradCache in sub-batches of 4 rows (local batch 6: 4 + 2)


@dataclass
class RawBatch:
    """The raw inputs of the problem, split by GradCache like the trainer's batches."""

    image: torch.Tensor
    text: torch.Tensor
    image_view: torch.Tensor
    text_view: torch.Tensor
    hard_negative_text: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    concepts: torch.Tensor


class RawTowers(torch.nn.Module):
    """The trainer's ``Towers`` for raw features: one linear tower encodes every field."""

    def __init__(self, tower: torch.nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, batch: RawBatch) -> EmbeddingBatch:
        emb = EmbeddingBatch(labels=batch.labels, index=batch.index, concepts=batch.concepts)
        for k in RAW:
            setattr(emb, k, F.normalize(self.tower(getattr(batch, k)), dim=-1))
        return emb


def train_step(name: str, rows: slice, chunk: int | None):
    """The trainer's step (``forward_backward``: DDP under torch.distributed) and one AdamW step on
    ``rows`` of the problem: (loss, tower grads, objective grads, parameters after the step, ddp)."""
    raw, labels, index, concepts, tower = problem()
    batch = RawBatch(
        **{k: raw[k][rows] for k in RAW}, labels=labels[rows], index=index[rows], concepts=concepts[rows]
    )
    torch.manual_seed(1)
    obj = OBJECTIVES.get(name)()
    obj.setup(num_samples=100, batch_size=W * B, steps=10, embed_dim=D, num_concepts=C)
    obj = obj.double()
    towers = wrap_ddp(RawTowers(tower))
    opt = torch.optim.AdamW([*tower.parameters(), *(p for p in obj.parameters() if p.requires_grad)], lr=0.05)
    torch.manual_seed(2)
    out = forward_backward(towers, obj, batch, gradcache_chunk=chunk)
    grads = [p.grad.clone() for p in tower.parameters()]
    own = {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}
    opt.step()
    after = [p.detach().clone() for p in [*tower.parameters(), *obj.parameters()]]
    return out.loss, grads, own, after, type(towers).__name__


def worker(rank: int, world: int, port: int, out_dir: str):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    hd.init_from_env(backend="gloo")
    try:
        results = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in NAMES:
                loss, tower, own = run(name, slice(rank * B, (rank + 1) * B), gather=True)
                hd.average_gradients(list(tower.parameters()))
                results[name] = (loss, [p.grad.clone() for p in tower.parameters()], own)
                for chunk in CHUNKS:
                    results[(name, chunk)] = train_step(name, slice(rank * B, (rank + 1) * B), chunk)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        hd.barrier()  # no rank tears the group down while another still uses it
        hd.cleanup()


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist-objectives")
    spawn_workers(worker, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(W)]


@pytest.mark.parametrize("name", NAMES)
def test_objective_equals_one_process_on_the_concatenated_batch(dist_results, name):
    loss, tower, own = run(name, slice(None), gather=False)
    want = [p.grad for p in tower.parameters()]
    for rank in range(W):
        got_loss, got_tower, got_own = dist_results[rank][name]
        torch.testing.assert_close(got_loss, loss, rtol=1e-9, atol=1e-12)
        for g, w in zip(got_tower, want):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-11)
        assert got_own.keys() == own.keys()
        for k in own:
            torch.testing.assert_close(got_own[k], own[k], rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("chunk", CHUNKS, ids=["plain", "gradcache"])
@pytest.mark.parametrize("name", NAMES)
def test_ddp_step_equals_one_process_on_the_concatenated_batch(dist_results, name, chunk):
    """The trainer's step through DDP: gradients and one optimiser step as one process."""
    loss, tower, own, after, kind = train_step(name, slice(None), None)
    assert kind == "RawTowers"  # one process: no DDP
    for rank in range(W):
        got_loss, got_tower, got_own, got_after, got_kind = dist_results[rank][(name, chunk)]
        assert got_kind == "DistributedDataParallel"
        torch.testing.assert_close(got_loss, loss, rtol=1e-9, atol=1e-12)
        for g, w in zip(got_tower, tower):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-11)
        assert got_own.keys() == own.keys()
        for k in own:
            torch.testing.assert_close(got_own[k], own[k], rtol=1e-8, atol=1e-11)
        for g, w in zip(got_after, after):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-11)


def test_torchrun_training_equals_one_process(workdir):
    """`torchrun --nproc-per-node 2 -m harness run` (gloo; the towers in DDP) trains like one
    process on the same global batch, plain and with GradCache (sub-batches of 8 of each rank's 16
    rows), and only rank 0 records an MLflow run."""
    import subprocess
    import sys

    from conftest import runs

    base = [
        "run",
        "--budget",
        "smoke",
        "--objective",
        "clip",
        "--no-checkpoint",
        "--output-dir",
        str(workdir),
        "--task",
        "shapes-retrieval",
        "--set",
        "budget.steps=6",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "harness", "-q", *base, "--experiment", "one"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert one.returncode == 0, one.stderr

    def torchrun(experiment: str, *extra: str) -> None:
        two = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "2",
                "-m",
                "harness",
                "-q",
                *base,
                "--experiment",
                experiment,
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert two.returncode == 0, two.stderr[-3000:]

    torchrun("two")
    torchrun("two-gradcache", "--set", "budget.gradcache_chunk=8")
    by_exp = {}
    for r in runs(workdir):
        by_exp.setdefault(r.info.experiment_id, []).append(r)
    assert sorted(len(v) for v in by_exp.values()) == [1, 1, 1]  # rank 1 recorded nothing
    a, *others = (v[0].data.metrics for v in by_exp.values())
    for b in others:
        for k in (
            "train/final_loss",
            "shapes-retrieval/main_score",
            "shapes-retrieval/image_retrieval_mean_rank",
        ):
            assert a[k] == pytest.approx(b[k], rel=1e-3), k
