"""The training loop: exactly ``budget.steps`` AdamW steps of ``budget.batch_size`` samples.

Read top to bottom: seeds -> optimiser and schedule -> for each step: batch, embed, loss, guard,
backward, clip, step, clamp, log. The objective's own parameters (temperature, bias) are optimised
alongside the model, without weight decay.
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.config import Budget
from harness.core.batch import BATCH_FIELDS, EmbeddingBatch, LossOutput
from harness.core.errors import UserError
from harness.data.batches import Batch, Prefetcher
from harness.engine.distributed import average_gradients, broadcast_parameters, gather_batch, world_info
from harness.engine.fsdp import ShardedTowers, clip_grad_norm_, is_sharded, shard
from harness.engine.gradcache import gradcache_step


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops and records the step."""

    def __init__(self, step: int, value: float, logs: dict):
        self.step, self.value = step, value
        super().__init__(
            f"non-finite loss {value} at step {step} (logs: {logs}); "
            "lower the learning rate or check the objective's hyperparameters"
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("budget.device is 'cuda' but CUDA is not available; use device=auto or cpu")
    return torch.device(name)


def param_groups(model: torch.nn.Module, objective: torch.nn.Module, weight_decay: float):
    """open_clip's rule: no decay for gains, biases, embeddings' scales and the objective's params."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if exclude else decay).append(p)
    own = [p for p in objective.parameters() if p.requires_grad]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay + own, "weight_decay": 0.0},
    ]


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return f


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def embed(model, encoder, batch: Batch, device) -> EmbeddingBatch:
    """Run the towers on the inputs present in ``batch``; every output is L2-normalised.

    ``model`` is anything with open_clip's ``encode_image``/``encode_text``. Each field goes where
    its declaration says (``harness.core.batch.BATCH_FIELDS``): all image fields through the image
    tower in one call, all text fields through the text tower in one call, in the order of the
    declarations (image, image_view; text, text_view, hard_negative_text; then any declared later);
    a field of shape (B, k, ...) comes back (B, k, d). Other fields are moved to ``device`` as they are.
    """
    out = EmbeddingBatch()
    towers: dict[str, list[tuple[str, torch.Tensor]]] = {"image": [], "text": []}
    for name, t in batch.tensors().items():
        tower = BATCH_FIELDS[name].tower
        if tower is None:
            out[name] = t.to(device)
        else:
            towers[tower].append((name, t))
    if towers["image"]:  # (B, ..., H, W, 3) -> (N, H, W, 3)
        flat = [t.reshape(-1, *t.shape[-3:]) for _, t in towers["image"]]
        pixels = encoder.preprocess(_cat(flat).to(device, non_blocking=True))
        feats = model.encode_image(pixels, normalize=True)
        for (n, t), f in zip(towers["image"], feats.split([len(x) for x in flat])):
            out[n] = f.view(*t.shape[:-3], -1)
    if towers["text"]:  # (B, ..., L) -> (N, L), padded to one width (a trimming tokenizer varies it)
        flat = [t.reshape(-1, t.shape[-1]) for _, t in towers["text"]]
        width = max(x.shape[1] for x in flat)
        tok = _cat(
            [x if x.shape[1] == width else torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in flat]
        ).to(device, non_blocking=True)
        feats = model.encode_text(tok, normalize=True)
        for (n, t), f in zip(towers["text"], feats.split([len(x) for x in flat])):
            out[n] = f.view(*t.shape[:-1], -1)
    return out


class Towers(torch.nn.Module):
    """The towers as one module whose forward encodes a batch's fields (:func:`embed`): what
    ``DistributedDataParallel`` wraps under torchrun, as open_clip_train wraps its model, so that
    DDP's bucketed all-reduce of the towers' gradients overlaps with backward; with
    ``budget.shard=fsdp``, the root FSDP2 unit (harness/engine/fsdp.py). ``fns`` (``encode_image``,
    ``encode_text``; compiled ones with ``budget.compile``) default to the model's own."""

    def __init__(self, model: torch.nn.Module, encoder, device, fns=None):
        super().__init__()
        self.model = model
        # plain attributes, not submodules: DDP replicates and reduces the model's parameters only
        self.__dict__.update(encoder=encoder, device=device)
        self.__dict__["fns"] = fns or SimpleNamespace(
            encode_image=model.encode_image, encode_text=model.encode_text
        )

    def forward(self, batch: Batch) -> EmbeddingBatch:
        out = embed(self.fns, self.encoder, batch, self.device)
        if is_sharded(self):  # FSDP2 hooks the root's outputs for backward: copies, not views
            for name, t in out.tensors().items():
                if BATCH_FIELDS[name].tower is not None:
                    out[name] = t.clone()
        return out


def wrap_ddp(towers: torch.nn.Module) -> torch.nn.Module:
    """``towers`` in ``DistributedDataParallel`` when torch.distributed is initialised with more
    than one rank and some parameter trains; else ``towers`` unchanged.

    ``find_unused_parameters``: a text-only objective leaves the image tower unused, and open_clip's
    ``logit_scale`` is never used by the towers. No buffer broadcast before every forward
    (``forward_sync_buffers=False``, or ``broadcast_buffers=False`` on older torch): buffers are
    equal from the start (the trainer broadcasts rank 0's model state) and the towers do not change
    them. ``device_ids=None`` (a single-device module): DDP leaves the batch where it is;
    :func:`embed` moves it to the device."""
    _, world = world_info()
    if world == 1 or not any(p.requires_grad for p in towers.parameters()):
        return towers
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # newer torch deprecates broadcast_buffers for forward_sync_buffers (which still syncs at init)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    buffers = (
        {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(towers, device_ids=None, find_unused_parameters=True, **buffers)


def forward_backward(
    towers: torch.nn.Module,
    objective: torch.nn.Module,
    batch: Batch,
    *,
    gradcache_chunk: int | None = None,
    device: torch.device | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> LossOutput:
    """One step's forward and backward; ``.grad`` of the towers' and the objective's parameters
    then hold the gradient of the global batch's loss. Returns ``LossOutput(loss (float32, detached), logs)``.

    ``towers`` maps a batch to its :class:`EmbeddingBatch` (a :class:`Towers`, or any module), in
    ``DistributedDataParallel`` (:func:`wrap_ddp`) under torchrun, or sharded by FSDP2
    (``harness.engine.fsdp.shard``, ``budget.shard=fsdp``). There the local embeddings are
    gathered with autograd (every rank computes the global loss), DDP averages the towers'
    gradients during backward (FSDP: reduce-scatters their mean into each rank's shard) and the
    objective's few parameters (and, under FSDP, the towers' unsharded scalars) are averaged here:
    all then equal one process's gradient on the concatenated batch (the convention of
    harness/engine/distributed.py). With ``gradcache_chunk`` the batch is encoded in sub-batches
    (GradCache), the sub-batch backward passes under DDP's ``no_sync`` but the last (FSDP: each
    sub-batch's backward reduce-scatters, so no full-size gradient is held).
    """
    _, world = world_info()
    loss_fn = (lambda e: objective(gather_batch(e))) if world > 1 else objective
    if gradcache_chunk:  # exact gradients of the whole batch, encoded in sub-batches
        out = gradcache_step(
            towers,
            loss_fn,
            batch,
            gradcache_chunk,
            device=device,
            autocast=autocast,
            no_sync=getattr(towers, "no_sync", None),
        )
        loss = out.loss.float()
    else:
        with autocast():
            out = loss_fn(towers(batch))
        loss = out.loss.float()
        loss.backward()
    if world > 1:  # the objective is outside DDP: every rank has dL/dtheta; the mean keeps it
        outside = [p for p in objective.parameters() if p.requires_grad]
        # under FSDP, the towers' scalar parameters are left out of the shards (harness/engine/fsdp.py)
        outside += towers.__dict__.get("replicated_params", [])
        average_gradients(outside)
    return LossOutput(loss.detach(), out.logs)


@dataclass
class TrainResult:
    steps: int
    samples_seen: int
    wall_seconds: float
    samples_per_second: float
    peak_memory_mb: float
    flops_per_step: float
    final_loss: float
    loss_curve: list[tuple[int, float]] = field(default_factory=list)

    def cost(self) -> dict[str, float]:
        return {
            "cost/wall_seconds": self.wall_seconds,
            "cost/samples_per_second": self.samples_per_second,
            "cost/peak_memory_mb": self.peak_memory_mb,
            "cost/flops_per_step": self.flops_per_step,
            "cost/samples_seen": float(self.samples_seen),
        }


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by this run. CPU: the process's peak resident set size (ru_maxrss), which
    covers everything the process did before, too."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(
    model,
    objective,
    encoder,
    data,
    budget: Budget,
    seed: int,
    device: torch.device,
    on_log: Callable[[int, dict], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    validate: Callable[[int], None] | None = None,
    validate_every: int = 0,
) -> TrainResult:
    """Train ``model`` with ``objective`` for exactly ``budget.steps`` steps.

    The loss is read back from the device only at logging steps (one sync per ``log_every``
    steps); the non-finite guard then names the first bad step and stops the run. ``validate(n)``
    is called after every ``validate_every`` steps (n = steps done; not after the last step): the
    tuner reports validation scores to Optuna's pruner from there. Its time is not training time.
    """
    seed_everything(seed)
    objective.setup(
        num_samples=len(data),
        batch_size=budget.batch_size,
        steps=budget.steps,
        embed_dim=getattr(getattr(model, "visual", None), "output_dim", None),
        loss_chunk_size=budget.loss_chunk_size,
        num_concepts=getattr(data, "num_concepts", None),
    )
    model.to(device).train()
    objective.to(device).train()
    fields = set(objective.requires)
    _, world = world_info()
    if world > 1:  # torchrun: rank 0's initial weights everywhere; each step sees the global batch
        broadcast_parameters(model)
        broadcast_parameters(objective)
    # budget.shard=fsdp under torchrun: a sharded copy of the model trains (harness/engine/fsdp.py)
    # and ``model`` gets its full weights before every validation and at the end; else the model
    # itself trains, replicated in DDP under torchrun
    trainable = any(p.requires_grad for p in model.parameters())
    sharded = ShardedTowers(model, device) if budget.shard == "fsdp" and world > 1 and trainable else None
    net = sharded.net if sharded is not None else model
    use_bf16 = budget.precision == "bf16" and device.type == "cuda"
    fns = None
    if budget.compile:
        fns = SimpleNamespace(
            encode_image=torch.compile(net.encode_image), encode_text=torch.compile(net.encode_text)
        )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    towers = Towers(net, encoder, device, fns)
    towers = shard(towers, device) if sharded is not None else wrap_ddp(towers)
    # after sharding: fully_shard replaces the parameters (with DTensors of this rank's shards)
    opt = torch.optim.AdamW(
        param_groups(net, objective, budget.weight_decay), lr=budget.lr, betas=budget.betas, eps=budget.eps
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(budget.warmup_steps, budget.steps))
    params = [p for g in opt.param_groups for p in g["params"]]
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731

    if budget.loader_workers and not getattr(data, "prefetches", False):  # a stream has its own workers
        data = Prefetcher(
            data,
            budget.steps,
            budget.batch_size,
            fields,
            workers=budget.loader_workers,
            pin=device.type == "cuda",
        )

    flops, t_first = 0.0, 0.0
    curve: list[tuple[int, float]] = []
    pending: list[torch.Tensor] = []  # losses since the last read-back
    loss_value = float("nan")
    t0 = time.perf_counter()
    for step in range(budget.steps):
        batch = data.batch(step, budget.batch_size, fields)
        counter = FlopCounterMode(display=False) if step == 0 else contextlib.nullcontext()
        with counter:
            opt.zero_grad(set_to_none=True)
            out = forward_backward(
                towers,
                objective,
                batch,
                gradcache_chunk=budget.gradcache_chunk,
                device=device,
                autocast=autocast,
            )
            loss = out.loss
        if step == 0:
            flops = float(counter.get_total_flops())
        if budget.grad_clip is not None:
            if sharded is not None:  # the towers' gradients are DTensors: the joint norm over ranks
                clip_grad_norm_(params, budget.grad_clip)
            else:
                torch.nn.utils.clip_grad_norm_(params, budget.grad_clip)
        opt.step()
        sched.step()
        objective.after_step()
        pending.append(loss.detach())
        last = step == budget.steps - 1
        if step % budget.log_every == 0 or last:
            values = torch.stack(pending).cpu()
            bad = (~torch.isfinite(values)).nonzero()
            logs = {k: float(v) for k, v in out.logs.items()}
            if len(bad):
                i = int(bad[0])
                raise NonFiniteLossError(step - len(values) + 1 + i, float(values[i]), logs)
            pending.clear()
            loss_value = float(values[-1])
            curve.append((step, loss_value))
            if on_log is not None:
                elapsed = time.perf_counter() - t0
                on_log(
                    step,
                    {
                        "train/loss": loss_value,
                        "train/lr": sched.get_last_lr()[0],
                        "train/samples_per_second": (step + 1) * budget.batch_size / elapsed,
                        **{f"train/{k}": v for k, v in logs.items()},
                    },
                )
        if on_step is not None:
            on_step(step, loss_value)
        if step == 0:
            t_first = time.perf_counter() - t0
        if validate is not None and validate_every and (step + 1) % validate_every == 0 and not last:
            tv = time.perf_counter()
            if sharded is not None:
                sharded.sync()  # the validation evaluates ``model``: the full weights, every rank
            validate(step + 1)
            if sharded is not None:
                sharded.park()
            model.train()
            t0 += time.perf_counter() - tv  # evaluation is not training time
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    if sharded is not None:  # evaluation and checkpoints use ``model``: the trained weights, in full
        sharded.sync()
        del towers, opt, sched, params, sharded, net
    if isinstance(data, Prefetcher):
        data.close()
    # throughput leaves out step 0, which runs under the FLOP counter
    timed_steps, timed = (budget.steps - 1, wall - t_first) if budget.steps > 1 else (1, wall)
    return TrainResult(
        steps=budget.steps,
        samples_seen=budget.samples_seen,
        wall_seconds=wall,
        samples_per_second=timed_steps * budget.batch_size / timed,
        peak_memory_mb=peak_memory_mb(device),
        flops_per_step=flops,
        final_loss=loss_value,
        loss_curve=curve,
    )
