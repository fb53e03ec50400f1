"""harness.engine.distributed: 2 CPU processes (gloo) reproduce the single-process loss and gradients.

Workers start from torchrun's environment variables (``init_from_env``, gloo). Each rank runs a
tiny shared "tower" (a linear layer + L2 normalisation) on its half of a fixed
raw batch, gathers with :func:`gather_batch`, computes the global CLIP / SigLIP loss with the real
objectives and backprops. Convention checked (see harness.engine.distributed's docstring): the loss equals
the single-process loss; the gradient of the local embeddings is W x the single-process gradient;
after averaging over ranks (what DDP does; ``average_gradients``) the tower's parameter gradient
equals the single-process one; the objective's parameter gradients equal it without averaging.
"""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from harness.core.batch import EmbeddingBatch
from harness.engine import distributed as hd

W, B, D_IN, D = 2, 6, 5, 8  # world size, local batch, raw features, embedding dim
IMPLS = ("functional", "nn")
OBJECTIVES = ("clip", "siglip")


def make_objective(name: str):
    if name == "clip":
        from objectives.infonce import CLIP

        return CLIP(temperature=0.2)
    from objectives.sigmoid import SigLIP

    return SigLIP(temperature=0.3, bias=-2.0)


def fixed_problem():
    g = torch.Generator().manual_seed(1234)
    raw_i = torch.randn(W * B, D_IN, generator=g, dtype=torch.float64)
    raw_t = torch.randn(W * B, D_IN, generator=g, dtype=torch.float64)
    labels = torch.arange(W * B) % 3
    index = torch.arange(W * B) + 100
    concepts = torch.rand(W * B, 4, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    tower = torch.nn.Linear(D_IN, D).double()
    return raw_i, raw_t, labels, index, concepts, tower


def run_case(objective_name: str, rows: slice, impl: str | None):
    """Loss and gradients for the rows ``rows`` of the fixed problem (all rows: single process)."""
    raw_i, raw_t, labels, index, concepts, tower = fixed_problem()
    xi = raw_i[rows].clone().requires_grad_()
    xt = raw_t[rows].clone().requires_grad_()
    img = F.normalize(tower(xi), dim=-1)
    txt = F.normalize(tower(xt), dim=-1)
    img.retain_grad()
    txt.retain_grad()
    emb = EmbeddingBatch(image=img, text=txt, labels=labels[rows], index=index[rows], concepts=concepts[rows])
    if impl is not None:
        emb = hd.gather_batch(emb, impl=impl)
    obj = make_objective(objective_name).double()
    out = obj(emb)
    out.loss.backward()
    return {
        "loss": out.loss.detach(),
        "img_grad": img.grad.clone(),
        "txt_grad": txt.grad.clone(),
        "raw_i_grad": xi.grad.clone(),
        "raw_t_grad": xt.grad.clone(),
        "tower": [p.grad.clone() for p in tower.parameters()],
        "objective": {n: p.grad.clone() for n, p in obj.named_parameters()},
        "labels": emb.labels,
        "index": emb.index,
        "concepts": emb.concepts,
        "meta": (emb.rank, emb.world_size, emb.extras.get("local_slice")),
        "tower_params": list(tower.parameters()),
    }


def worker(rank: int, world: int, port: int, out_dir: str):
    # torchrun's environment, so that init_from_env (env://, gloo on this CPU build) is exercised
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    assert hd.init_from_env(backend=None if not torch.cuda.is_available() else "gloo") == (rank, world)
    try:
        assert dist.get_backend() == "gloo"
        assert hd.world_info() == (rank, world) and hd.is_main() == (rank == 0)
        torch.manual_seed(rank)  # different init per rank, then rank 0's weights everywhere
        lin = torch.nn.Linear(3, 2)
        hd.broadcast_parameters(lin)
        torch.manual_seed(0)
        assert torch.equal(lin.weight, torch.nn.Linear(3, 2).weight)
        results = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated collectives in torch 2.14
            for impl in IMPLS:
                for name in OBJECTIVES:
                    r = run_case(name, slice(rank * B, (rank + 1) * B), impl)
                    hd.average_gradients(r["tower_params"])
                    r["tower"] = [p.grad.clone() for p in r.pop("tower_params")]
                    results[(impl, name)] = r
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        hd.barrier()  # no rank tears the group down while another still uses it
        hd.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_workers(worker, out) -> None:
    """Spawn W gloo workers. A worker that aborts while tearing down, after it wrote its results,
    is tolerated (seen now and then on a loaded machine: "terminate called without an active
    exception" at process exit); a worker that died before writing them fails the test."""
    try:
        torch.multiprocessing.spawn(worker, args=(W, free_port(), str(out)), nprocs=W, join=True)
    except torch.multiprocessing.ProcessExitedException:
        if not all((out / f"rank{r}.pt").exists() for r in range(W)):
            raise


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    spawn_workers(worker, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(W)]


def test_single_process_defaults(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert hd.world_info() == (0, 1) and hd.is_main()
    x = torch.randn(3, 2)
    assert hd.all_gather_with_grad(x) is x
    emb = hd.gather_batch(EmbeddingBatch(image=x, text=x))
    assert emb.image is x and emb.world_size == 1 and emb.extras["local_slice"] == slice(0, 3)
    assert hd.init_from_env() == (0, 1)  # no torchrun environment: nothing initialised
    hd.cleanup()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", OBJECTIVES)
def test_matches_single_process(dist_results, impl, name):
    ref = run_case(name, slice(None), None)
    for rank in range(W):
        r = dist_results[rank][(impl, name)]
        rows = slice(rank * B, (rank + 1) * B)
        assert r["meta"] == (rank, W, rows)
        torch.testing.assert_close(r["loss"], ref["loss"], rtol=1e-10, atol=0)
        # gathered fields without grad arrive in rank order
        assert torch.equal(r["labels"], fixed_problem()[2]) and torch.equal(r["index"], fixed_problem()[3])
        torch.testing.assert_close(r["concepts"], fixed_problem()[4])
        # local embeddings: W x the single-process gradient (sum-reducing gather backward)
        torch.testing.assert_close(r["img_grad"] / W, ref["img_grad"][rows], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(r["txt_grad"] / W, ref["txt_grad"][rows], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(r["raw_i_grad"] / W, ref["raw_i_grad"][rows], rtol=1e-9, atol=1e-12)
        # tower parameters after averaging over ranks (DDP): exactly the single-process gradient
        for got, want in zip(r["tower"], ref["tower"]):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        # the objective's own parameters (scale, bias): equal on every rank without averaging
        assert r["objective"].keys() == ref["objective"].keys() and ref["objective"]
        for k in ref["objective"]:
            torch.testing.assert_close(r["objective"][k], ref["objective"][k], rtol=1e-9, atol=1e-12)
