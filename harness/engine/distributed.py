"""torch.distributed helpers: process-group setup from torchrun's environment and an autograd-aware
all-gather of an :class:`EmbeddingBatch` for objectives with global negatives.

Gradient convention (read this before wiring it into a trainer)
----------------------------------------------------------------
Every rank gathers the global batch with :func:`all_gather_with_grad` and computes the *same*
global loss ``L`` on it (as open_clip's ``ClipLoss(gather_with_grad=True, local_loss=False)``).
The backward of the gather is a reduce-scatter with **sum** (both the functional collective and
the legacy ``torch.distributed.nn.functional.all_gather``; the gloo path emulates it with an
all-to-all followed by a sum), so the gradient rank ``r`` receives for its local embeddings is the
sum over the ``W`` ranks of ``dL/dx_r``, i.e.

    grad_r(local embeddings) = W * dL/dx_r            (W = world size)

and the gradient of the objective's own parameters (scale, bias) on every rank is ``dL/dtheta``.
Averaging gradients over ranks, as ``DistributedDataParallel`` does (all-reduce sum / W), therefore
gives exactly the single-process gradient of ``L`` on the concatenated batch for the towers'
parameters *and* the objective's parameters. The trainer (``harness.engine.trainer.forward_backward``)
wraps the towers in ``DistributedDataParallel`` (its bucketed all-reduce overlaps with backward; or
shards them with FSDP2, whose reduce-scatter averages the same way: harness/engine/fsdp.py) and
averages the objective's few parameters with :func:`average_gradients` after ``backward()`` (they
are equal on every rank already; the mean keeps them, and covers an objective with per-rank terms).
Dividing the loss by ``W`` instead would make the local-embedding gradients equal but would shrink
the objective-parameter gradients by ``W``; do not mix the two conventions.

The logged loss is already the global one (identical on all ranks). Every rank must contribute the
same local batch size (all-gather needs equal shapes).

Launch with torchrun (``torchrun --standalone --nproc-per-node=N -m harness ...``) and call
:func:`init_from_env` once at start-up; seed model init identically on every rank and the data
order with ``seed + rank``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import replace

import torch
import torch.distributed as dist

from harness.core.batch import BATCH_FIELDS, EmbeddingBatch
from harness.data.batches import world_info  # noqa: F401 - one definition, re-exported for the engine

try:  # functional collectives (PyTorch >= 2.3); names are in flux, feature-detect below
    from torch.distributed import _functional_collectives as _fcol
except ImportError:  # pragma: no cover - very old torch
    _fcol = None

#: EmbeddingBatch fields that carry gradients (gathered with autograd); the rest (labels, index,
#: concepts) are gathered without


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs, tracks and writes files."""
    return world_info()[0] == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def env_world_size() -> int:
    """The world size torchrun asked for (1 without torchrun), before any initialisation."""
    return int(os.environ.get("WORLD_SIZE", 1))


def init_from_env(backend: str | None = None, timeout_s: float | None = None) -> tuple[int, int]:
    """Initialise the default process group from torchrun's environment; returns ``(rank, world)``.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` (``env://``).
    ``backend`` defaults to ``nccl`` when CUDA is available and ``gloo`` otherwise; on CUDA the
    current device is set from ``LOCAL_RANK`` (and passed as ``device_id`` when supported). Without
    torchrun's variables (``WORLD_SIZE`` unset or 1) nothing is initialised and ``(0, 1)`` is
    returned, so a plain ``python -m harness`` run is unaffected. Idempotent.
    """
    if is_initialized():
        return world_info()
    if "RANK" not in os.environ or env_world_size() <= 1:
        return 0, 1
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    kwargs: dict = {}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    if cuda and local_rank() < torch.cuda.device_count():
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
        if backend == "nccl":
            kwargs["device_id"] = device
    try:
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    except TypeError:  # older torch without device_id
        kwargs.pop("device_id", None)
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    return world_info()


def cleanup() -> None:
    """Destroy the default process group if there is one."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def _gather_fn(impl: str):
    if impl in ("auto", "functional") and _fcol is not None:
        for name in ("all_gather_single_autograd", "all_gather_tensor_autograd"):
            fn = getattr(_fcol, name, None)
            if fn is not None:
                return lambda x: fn(x, gather_dim=0, group=dist.group.WORLD)
        if impl == "functional":
            raise RuntimeError("this torch has no autograd-aware functional all_gather")
    if impl not in ("auto", "functional", "nn"):
        raise ValueError(f"impl must be 'auto', 'functional' or 'nn', got {impl!r}")
    import torch.distributed.nn.functional as dist_nn

    return lambda x: torch.cat(dist_nn.all_gather(x), dim=0)


def all_gather_with_grad(x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Concatenate ``x`` over ranks along dim 0; backward sends every rank its slice of the summed
    gradient (reduce-scatter, sum; see the module docstring for what that means for the loss).

    ``impl``: ``"auto"`` (functional collective ``all_gather_single_autograd`` or its older name
    ``all_gather_tensor_autograd``, else the legacy ``torch.distributed.nn.functional.all_gather``),
    ``"functional"`` or ``"nn"`` to force one. Identity when the world size is 1. All ranks must
    pass tensors of the same shape.
    """
    _, world = world_info()
    if world == 1:
        return x
    out = _gather_fn(impl)(x.contiguous())
    wait = getattr(out, "wait", None)  # AsyncCollectiveTensor -> plain tensor
    return wait() if callable(wait) else out


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over ranks along dim 0 (no autograd)."""
    _, world = world_info()
    if world == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def gather_batch(emb: EmbeddingBatch, impl: str = "auto") -> EmbeddingBatch:
    """The global batch: every tensor field concatenated over ranks (rank order) along dim 0.

    Embedding fields are gathered with :func:`all_gather_with_grad` (gradients reach every rank's
    local embeddings), ``labels``/``index``/``concepts`` without gradient. The result has ``rank``
    and ``world_size`` set and ``extras["local_slice"] = slice(rank*B, (rank+1)*B)``: the rows of
    this rank's local samples (for objectives with per-rank terms or per-sample state). Other extras
    are copied (shallow) unchanged. With one process the batch is returned as a copy with
    ``local_slice = slice(0, B)``.
    """
    rank, world = world_info()
    b = emb.size
    updates: dict = {}
    for name, t in emb.tensors().items():
        if world == 1:
            break
        # fields a tower encodes are embeddings: gathered with autograd; the rest (labels, index,
        # concepts, any declared field without a tower) without gradient
        grad = BATCH_FIELDS[name].tower is not None
        updates[name] = all_gather_with_grad(t, impl) if grad else all_gather_no_grad(t)
    extras = dict(emb.extras)
    extras["local_slice"] = slice(rank * b, (rank + 1) * b)
    return replace(emb, **updates, rank=rank, world_size=world, extras=extras)


@torch.no_grad()
def average_gradients(params) -> None:
    """All-reduce (mean over ranks) the ``.grad`` of ``params``: what DDP does, for parameters not
    wrapped in ``DistributedDataParallel`` (the trainer: the objective's own parameters). One
    blocking all-reduce per tensor: for many tensors (the towers) use DDP."""
    _, world = world_info()
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


@torch.no_grad()
def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``module``'s parameters and buffers from rank ``src`` to every rank (what DDP does at
    construction): start all ranks from the same weights even if their seeds differ."""
    _, world = world_info()
    if world == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)
