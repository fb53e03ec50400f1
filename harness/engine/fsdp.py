"""FSDP2 for the towers (``budget.shard = "fsdp"`` under torchrun): parameters, gradients and AdamW
state sharded over the ranks with ``torch.distributed.fsdp.fully_shard`` instead of replicated in
``DistributedDataParallel``.

How the trainer uses it (``harness.engine.trainer.train``):

- the towers are trained in a *copy* of the model (:class:`ShardedTowers`): every transformer block
  (:func:`transformer_blocks`) is one FSDP unit, gathered just before its forward and resharded
  after it; the rest of the towers (embeddings, final norms, projections) is the root unit, the
  trainer's ``Towers`` module. The encoders call their blocks through ``__call__``, so FSDP's
  hooks fire; the model itself is never sharded (``encode_image``/``encode_text`` are not its
  ``forward``);
- the caller's model stays a plain module, which evaluation, checkpoint selection and
  ``save_checkpoint`` use: on a GPU it is parked in host memory while the copy trains
  (:class:`ShardedTowers`), and :func:`copy_full_state` all-gathers the trained weights into it,
  one tensor at a time, before every validation and after the last step, on every rank;
- FSDP averages the towers' gradients over ranks in backward (reduce-scatter): with every rank
  computing the same global loss on the all-gathered features, this is the single-process
  gradient on the concatenated batch, as with DDP (the convention in
  ``harness/engine/distributed.py``). The objective's own parameters stay outside, averaged by the
  trainer as before;
- GradCache works unchanged: each sub-batch's backward reduce-scatters its share of the gradient
  into the sharded ``.grad`` (FSDP accumulates there), so no full-size gradient is ever held;
- :func:`clip_grad_norm_` clips sharded (DTensor) and plain gradients by their joint norm.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.distributed as dist

from harness.core.errors import UserError
from harness.engine.distributed import world_info

#: names of the module lists whose children are transformer blocks: open_clip's ``resblocks``,
#: timm's ``blocks``, Hugging Face encoders' ``layer``/``layers``
BLOCK_LISTS = ("resblocks", "blocks", "layer", "layers")


@functools.cache
def _fsdp():
    """``(fully_shard, FSDPModule)``: public since torch 2.6, ``_composable`` before."""
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import FSDPModule, fully_shard
        except ImportError:  # pragma: no cover - torch < 2.4
            raise UserError(
                f"budget.shard=fsdp needs FSDP2 (torch.distributed.fsdp.fully_shard); torch "
                f"{torch.__version__} has none: use budget.shard=none (DDP)"
            ) from None
    return fully_shard, FSDPModule


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import DTensor
    return DTensor


def transformer_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP units below the root: the children (with parameters) of every ``ModuleList`` or
    ``Sequential`` named in :data:`BLOCK_LISTS`, outermost first; lists inside a block found
    already are not searched (a block is sharded as a whole)."""
    blocks: list[torch.nn.Module] = []
    inside: list[str] = []
    for name, m in module.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if (
            isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential))
            and name.rsplit(".", 1)[-1] in BLOCK_LISTS
        ):
            for child_name, child in m.named_children():
                if any(True for _ in child.parameters()):
                    blocks.append(child)
                    inside.append(f"{name}.{child_name}")
    return blocks


def shard(root: torch.nn.Module, device: torch.device, blocks: list[torch.nn.Module] | None = None):
    """``fully_shard`` every block of ``root`` (:func:`transformer_blocks` unless ``blocks`` is
    given), then ``root`` itself, over all ranks of the default process group; in place. Returns
    ``root`` (now also an ``FSDPModule``). Rank 0's weights must be everywhere already (the
    trainer broadcasts them): FSDP keeps each rank's own slice of its own tensors.

    Scalar parameters cannot be sharded (open_clip's ``logit_scale``/``logit_bias``, which the
    towers do not use): they stay plain, replicated tensors, listed in
    ``root.replicated_params``; ``forward_backward`` averages their gradients over ranks, like the
    objective's own."""
    fully_shard, _ = _fsdp()
    import inspect

    from torch.distributed.device_mesh import init_device_mesh

    _, world = world_info()
    mesh = init_device_mesh(device.type, (world,))
    scalars = [p for p in root.parameters() if p.ndim == 0]
    kwargs = {}
    if scalars:
        if "ignored_params" not in inspect.signature(fully_shard).parameters:
            names = [n for n, p in root.named_parameters() if p.ndim == 0]
            raise UserError(
                f"budget.shard=fsdp: this torch ({torch.__version__}) cannot leave the scalar "
                f"parameters {names} out of FSDP (its fully_shard has no ignored_params); "
                "use budget.shard=none (DDP) or a newer torch"
            )
        kwargs["ignored_params"] = set(scalars)
    for block in transformer_blocks(root) if blocks is None else blocks:
        fully_shard(block, mesh=mesh, **kwargs)
    fully_shard(root, mesh=mesh, **kwargs)
    root.__dict__["replicated_params"] = [p for p in scalars if p.requires_grad]
    return root


def is_sharded(module: torch.nn.Module) -> bool:
    """True if ``module`` has been through ``fully_shard``."""
    try:
        return isinstance(module, _fsdp()[1])
    except UserError:
        return False


@torch.no_grad()
def copy_full_state(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Copy the parameters and buffers of ``src`` (sharded: DTensors) into ``dst`` (the plain
    module ``src`` was copied from), in full, on every rank: one all-gather per sharded tensor, so
    that only one full tensor at a time is held beyond ``dst``. Every rank must call it (a
    collective). Buffers are not sharded: each rank copies its own."""
    dtensor = _dtensor_type()
    got = dict(src.named_parameters())
    got.update(src.named_buffers())
    want = dict(dst.named_parameters())
    want.update(dst.named_buffers())
    if got.keys() != want.keys():
        missing = sorted(set(want) ^ set(got))[:5]
        raise RuntimeError(f"the sharded copy and the model differ in tensors: {missing}")
    for name, t in want.items():
        v = got[name]
        if isinstance(v, dtensor):
            v = v.full_tensor()
        t.copy_(v.to(t.device))


@torch.no_grad()
def clip_grad_norm_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm) for a mix of sharded (DTensor) and plain
    gradients (the towers under FSDP and the objective's parameters): the norm is that of all the
    full gradients (the shards' squares summed over ranks), every gradient is scaled by
    ``min(1, max_norm / (norm + 1e-6))``. No host sync. Returns the total norm."""
    dtensor = _dtensor_type()
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if isinstance(g, dtensor)]
    plain = [g for g in grads if not isinstance(g, dtensor)]
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    dtype = functools.reduce(torch.promote_types, [g.dtype for g in grads], torch.float32)
    sq = torch.zeros((), dtype=dtype, device=device)
    if sharded:  # FSDP shards along dim 0 over one mesh: the local squares sum to the full ones
        for g in sharded:
            sq += g.to_local().to(dtype).pow(2).sum().to(device)
        dist.all_reduce(sq, op=dist.ReduceOp.SUM)
    for g in plain:
        sq += g.to(dtype).pow(2).sum().to(device)
    norm = sq.sqrt()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in sharded:
        g.to_local().mul_(coef.to(g.device, g.dtype))
    for g in plain:
        g.mul_(coef.to(g.device, g.dtype))
    return norm


class ShardedTowers:
    """The trainer's bookkeeping for ``budget.shard = "fsdp"``: ``model`` (the plain module the
    caller holds, evaluates and checkpoints) and ``net``, the deep copy of it on ``device`` that
    is sharded and trained (forward hooks such as ``text_dropout``'s come along).

    ``model`` is parked in host memory (on a GPU; on the CPU nothing moves) before the copy is
    made, so the device holds one full replica only while the copy is being sharded. :meth:`sync`
    all-gathers ``net``'s weights into ``model`` on ``device`` (before a validation, and after the
    last step); :meth:`park` puts it back in host memory after a validation."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.park()
        self.net = copy.deepcopy(model).to(device)

    def park(self) -> None:
        if self.device.type != "cpu":
            self.model.to("cpu")

    def sync(self) -> None:
        self.model.to(self.device)
        copy_full_state(self.net, self.model)
