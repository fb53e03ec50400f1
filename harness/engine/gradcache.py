"""GradCache: the gradient of a large-batch contrastive loss with the memory of a small sub-batch.

Gao, Zhang, Han, Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (``luyug/GradCache``). A contrastive loss couples every sample of the batch only through
the embeddings, so its parameter gradient factors as ``sum_k (d emb_k / d theta)^T (dL / d emb_k)``:

1. embed every sub-batch *without* autograd (activations freed at once), snapshotting the RNG
   state before each sub-batch (:class:`RandContext`);
2. compute the full-batch loss on the concatenated embeddings, detached and marked
   ``requires_grad``, and backprop it: this gives ``dL/d emb`` (cached, small: B x d) and
   accumulates the objective's own parameter gradients (temperature, bias);
3. re-embed each sub-batch *with* autograd under its restored RNG state (same dropout masks, same
   patch-dropout draws) and backprop the cached embedding gradients:
   ``torch.autograd.backward(emb_k, grad_k)``; parameter gradients accumulate over sub-batches.

The result equals the full-batch gradient when the towers are deterministic given the RNG state.
It is *not* equal for BatchNorm (sub-batch statistics; open_clip's ViT towers use LayerNorm) or
for anything that changes state between the two forwards. Peak activation memory is that of one
sub-batch; the cost is one extra forward (about +33% compute). Parameters get ``.grad`` exactly as
``loss.backward()`` would have done (accumulated into existing ``.grad``).

Under torch.distributed, pass ``loss_fn=lambda e: objective(gather_batch(e))``: the gather is
differentiable, so step 2 yields this rank's share of the global gradient.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, ContextManager

import torch
from torch.utils.checkpoint import get_device_states, set_device_states

from harness.core.batch import BATCH_FIELDS, EmbeddingBatch, LossOutput


def grad_fields(emb: EmbeddingBatch) -> list[str]:
    """The fields of ``emb`` a tower encoded (declared with a tower, floating point), in declaration
    order: their gradients are cached and pushed back through the towers."""
    return [
        n
        for n, t in emb.tensors().items()
        if BATCH_FIELDS[n].tower is not None and torch.is_floating_point(t)
    ]


def _tensor_fields(batch: Any) -> list[tuple[str, Any]]:
    """(name, value) of a batch's fields: a ``FieldAccess`` batch's present fields, else a
    dataclass's fields."""
    if hasattr(batch, "tensors"):
        return list(batch.tensors().items())
    return [(f.name, getattr(batch, f.name)) for f in dataclasses.fields(batch)]


class RandContext:
    """Snapshot of the CPU RNG and the CUDA RNG of the devices in use, re-playable as a context.

    Created before a sub-batch's first (no-grad) forward; ``with ctx:`` restores that state for the
    re-forward and, on exit, puts the RNG back where it was (``torch.random.fork_rng``), so the
    rest of the training step sees the RNG stream of the first pass.
    """

    def __init__(self, *tensors: Any, devices: list[int] | None = None):
        self.cpu_state = torch.get_rng_state()
        if devices is None:
            self.devices, self.device_states = get_device_states(*tensors)
        else:
            self.devices = list(devices)
            self.device_states = [torch.cuda.get_rng_state(d) for d in self.devices]
        self._fork: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> "RandContext":
        self._fork = torch.random.fork_rng(devices=self.devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        set_device_states(self.devices, self.device_states)
        return self

    def __exit__(self, *exc) -> None:
        fork, self._fork = self._fork, None
        fork.__exit__(*exc)


def _cuda_devices(device: torch.device | str | None, batch: Any) -> list[int]:
    """CUDA devices whose RNG a sub-batch forward may draw from: ``device`` (where ``embed`` moves
    the inputs) plus any CUDA tensor already in the batch."""
    devices: set[int] = set()
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda":
            devices.add(device.index if device.index is not None else torch.cuda.current_device())
    tensors = [t for _, t in _tensor_fields(batch)] if dataclasses.is_dataclass(batch) else []
    for t in tensors:
        if torch.is_tensor(t) and t.is_cuda:
            devices.add(t.get_device())
    return sorted(devices)


def batch_size(batch: Any) -> int:
    """Rows of a dataclass batch: the length of its first tensor field."""
    for _, t in _tensor_fields(batch):
        if torch.is_tensor(t) and t.ndim > 0:
            return int(t.shape[0])
    raise ValueError("batch has no tensor field")


def split_batch(batch: Any, chunk: int) -> list[Any]:
    """Split a dataclass batch (e.g. ``harness.data.batches.Batch``) into sub-batches of ``chunk`` rows:
    every tensor field is sliced along dim 0 (views, no copy); ``None`` and non-tensor fields are
    kept as they are."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n = batch_size(batch)
    for name, t in _tensor_fields(batch):
        if torch.is_tensor(t) and t.ndim > 0 and t.shape[0] != n:
            raise ValueError(f"batch field {name!r} has {t.shape[0]} rows, expected {n}")
    if hasattr(batch, "map"):
        return [batch.map(lambda t, a=a: t[a : a + chunk] if t.ndim > 0 else t) for a in range(0, n, chunk)]
    out = []
    for a in range(0, n, chunk):
        parts = {
            f.name: getattr(batch, f.name)[a : a + chunk]
            for f in dataclasses.fields(batch)
            if torch.is_tensor(getattr(batch, f.name)) and getattr(batch, f.name).ndim > 0
        }
        out.append(dataclasses.replace(batch, **parts))
    return out


def concat_embeddings(parts: list[EmbeddingBatch]) -> EmbeddingBatch:
    """Concatenate sub-batch :class:`EmbeddingBatch` es along dim 0 (every present field); scalar
    attributes (rank, world_size, extras) come from the first part."""
    first = parts[0]
    updates = {}
    names = [n for n in BATCH_FIELDS if any(p[n] is not None for p in parts)]
    for name in names:
        ts = [p[name] for p in parts]
        if not all(t is not None for t in ts):
            raise ValueError(f"field {name!r} is present in some sub-batches only")
        updates[name] = ts[0] if len(ts) == 1 else torch.cat(ts, dim=0)
    return dataclasses.replace(first, **updates, extras=dict(first.extras))


def gradcache_step(
    encode: Callable[[Any], EmbeddingBatch],
    loss_fn: Callable[[EmbeddingBatch], LossOutput],
    batch: Any,
    chunk: int,
    *,
    device: torch.device | str | None = None,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    restore_rng: bool = True,
    no_sync: Callable[[], ContextManager] | None = None,
) -> LossOutput:
    """One GradCache forward/backward over ``batch`` in sub-batches of ``chunk`` rows.

    ``encode(sub_batch) -> EmbeddingBatch`` runs the towers on one sub-batch (in the trainer:
    ``lambda b: embed(towers, encoder, b, device)``); ``loss_fn(EmbeddingBatch) -> LossOutput`` is
    the objective on the whole batch; ``batch`` is a dataclass batch (``harness.data.batches.Batch``) split
    with :func:`split_batch`. ``device``: where ``encode`` runs, so its CUDA RNG is snapshotted too.
    ``autocast()`` is entered around every forward (towers and loss), never around a backward,
    e.g. ``lambda: torch.autocast("cuda", dtype=torch.bfloat16)``. ``restore_rng=False`` skips the
    RNG replay (only to demonstrate why it is needed: dropout then differs between the passes).
    ``no_sync``: under ``DistributedDataParallel`` (``encode`` being the wrapped module), its
    ``no_sync``: every sub-batch re-forward and backward but the last runs under it, so the
    gradients accumulate locally and are all-reduced once, in the last sub-batch's backward.

    Gradients are *accumulated* into ``.grad`` of the towers' and the objective's parameters
    (zero them before, as before ``loss.backward()``); the caller does not call ``backward``.
    Returns ``LossOutput(loss.detach(), logs)`` of the full-batch loss. With ``chunk >= B`` this is
    a plain forward + backward. Embedding fields that come back without ``requires_grad`` (frozen
    towers) or that the loss does not use get no gradient pass.
    """
    n = batch_size(batch)
    if chunk >= n:
        with autocast():
            out = loss_fn(encode(batch))
        out.loss.backward()
        return LossOutput(out.loss.detach(), out.logs)

    subs = split_batch(batch, chunk)
    cuda = _cuda_devices(device, batch)
    # (1) embeddings of every sub-batch without autograd, RNG snapshotted before each
    states, cached = [], []
    for sub in subs:
        states.append(RandContext(devices=cuda) if restore_rng else None)
        with torch.no_grad(), autocast():
            cached.append(encode(sub))
    # (2) the full-batch loss on detached leaves -> embedding gradients (+ objective's own grads)
    leaves = []
    for emb in cached:
        for name in grad_fields(emb):
            t = emb[name].detach().requires_grad_()
            emb[name] = t
            leaves.append(t)
    full = concat_embeddings(cached)
    with autocast():
        out = loss_fn(full)
    loss = out.loss
    loss.backward()  # fills the leaves' .grad and the objective's parameter .grad
    grads = [
        [(name, emb[name].grad) for name in grad_fields(emb) if emb[name].grad is not None] for emb in cached
    ]
    del full, cached, leaves
    # (3) re-embed each sub-batch with autograd under its RNG state; push the cached gradients
    todo = [(sub, state, g) for sub, state, g in zip(subs, states, grads) if g]
    for k, (sub, state, sub_grads) in enumerate(todo):
        sync = no_sync() if no_sync is not None and k < len(todo) - 1 else contextlib.nullcontext()
        with sync, state if state is not None else contextlib.nullcontext():
            with autocast():
                emb = encode(sub)
            tensors, grad_tensors = [], []
            for name, g in sub_grads:
                t = emb[name]
                if t is not None and t.requires_grad:
                    tensors.append(t)
                    grad_tensors.append(g.to(t.dtype))
            if tensors:
                torch.autograd.backward(tensors, grad_tensors)
        del emb, tensors, grad_tensors
    return LossOutput(loss.detach(), out.logs)
