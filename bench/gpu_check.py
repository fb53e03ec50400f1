"""One prepared check of the CUDA paths and of ViT-B/32 throughput, for a lent GPU (one H200).

Run by ``bench/gpu_check.sh`` on the device machine (it installs what is missing first); it
writes ``$OUT/gpu_check.txt`` and ``$OUT/gpu_check.json`` after every section, so a run that is
stopped still leaves what it measured. Everything is guarded by ``--time-budget`` (seconds from
the start of this script): a measurement that would not fit is skipped and listed as skipped.

(a) CUDA agrees with the CPU
    * ``harness-micro`` (word tokenizer), one shapes-world batch (B = 256): the ``clip`` and
      ``siglip`` objectives' loss and gradients (every model parameter and the objective's
      temperature / bias) on CPU float32 against CUDA float32 (TF32 off; tolerance: loss 1e-5
      relative, gradients 1e-4 relative L2 norm of the difference) and CUDA bf16 autocast (loose:
      loss 2e-2, gradients 0.1 relative norm and cosine >= 0.99).
    * ``objectives.tiled`` against the naive B x B losses on CUDA at B = 4096, d = 512, float32, chunk
      1024: loss and gradients (x, y, scale, bias) within 1e-5 relative (max |difference| / max
      |reference|, as in tests/unit/test_tiled.py), with the peak memory and time of each.
(b) ``python -m harness run --budget smoke --device cuda`` end to end in a temporary output
    directory: exit code 0 (needs the package installed, for its entry points, and MLflow).
(c) Throughput of open_clip ``ViT-B-32`` (random init, 224 px random uint8 images, 77-token random
    text, bf16 autocast, AdamW, the harness's ``train()``): ``clip`` and ``siglip``, naive and
    tiled (``budget.loss_chunk_size``), at B = 4096 and 16384, towers encoded with GradCache
    (``budget.gradcache_chunk``, 1024 by default, at both sizes so they compare). Per measurement:
    ``--warmup`` untimed steps (step 0 runs under the trainer's FLOP counter) and ``--timed``
    timed steps (synchronised at both ends), samples/s, peak memory
    (``torch.cuda.max_memory_allocated``, model, optimiser state and the batch included), FLOPs
    per step from ``torch.utils.flop_counter.FlopCounterMode`` (the trainer's count on step 0),
    and utilisation against ``--peak-tflops`` (default 989, the H200's dense bf16 peak):
    HFU counts every FLOP executed (GradCache's extra no-grad forward included); MFU leaves that
    recomputation out (model FLOPs = forward + backward once).
(d) ``datacomp-small`` wiring at scale (CUDA only): ``python -m harness run --budget datacomp-small``
    (ViT-B-32, 224 px, bf16) for ``--d-steps`` (default 25, not the preset's 3,125) steps of
    ``--d-batch`` (default 4096) with ``budget.gradcache_chunk`` / ``budget.loss_chunk_size`` set to
    (c)'s chunks, for ``clip`` and ``siglip``, on synthetic webdataset shards written to a temporary
    folder (4 x 64 smooth random 256-px JPEGs in img2dataset's layout, resampled cyclically).
    Samples/s is the trainer's ``cost/samples_per_second`` (step 0 left out; JPEG decoding in the
    loader workers included), read from the run's MLflow store. Printed: the projected wall time of
    a full datacomp-small run (12.8M samples) per objective, and of a 10-objective x 3-seed
    comparison on 1 GPU and on 8 GPUs (assumed: the one-GPU rate x 8 x 0.9); training only.
(e) DDP on every GPU of the node (CUDA only, skipped on one GPU): ``torchrun --standalone
    --nproc-per-node N -m harness run --budget smoke --device cuda``, exit code 0.
(f) A Ray sweep with one run per GPU (CUDA only, skipped without Ray): ``harness compare
    --executor ray --gpus-per-run 1 --budget smoke --seeds 1`` with as many objectives as GPUs.
(g) FSDP2, ``budget.shard=fsdp`` (CUDA only; tests/integration/test_fsdp.py covers 2 gloo CPU
    processes). (g1) on any GPU: harness-micro's towers sharded by ``harness.engine.fsdp.shard`` in
    a one-rank NCCL group against the plain towers (fp32, TF32 off): loss (1e-6 relative),
    gradients (1e-5 relative norm), the trainer's clipping norm and the parameters after one
    AdamW step (1e-6), and the full state gathered back into a plain model. (g2) on two or more
    GPUs: ``torchrun --nproc-per-node N -m harness run --budget smoke --device cuda --set
    budget.shard=fsdp --set budget.gradcache_chunk=8``, exit code 0 and one checkpoint of plain
    tensors with harness-micro's full shapes.
(d), (e), (g) and (f) run after (b) and before (c), each under a timeout (``--d-timeout`` per
objective, ``--e-timeout``, ``--g-timeout``, ``--f-timeout``); (c) gets the time left
(``--sections c`` gives it all).

``--smoke`` runs the same code on tiny settings (harness-micro, B = 64/128, short steps) so it can
be checked on a CPU: ``python bench/gpu_check.py --smoke --device cpu``. ``--tiny`` is smaller
still and runs in seconds on the CPU (the test suite's check that the script still runs): device
``cpu`` unless ``--device`` is given, (a1) at B = 16, (a2) at B = 128, (c) at B = 16 with one
warmup and one timed step, and (b) left out (a CLI smoke run takes half a minute;
tests/integration/test_cli.py covers it). On a CPU the CUDA-only parts -- CUDA against the CPU,
CUDA bf16 autocast, CUDA peak memory, MFU/HFU, and sections (d), (e), (f), (g) -- are listed as
skipped, with what stands in for them. Exit code: 0 when every check that ran passed
(measurements never fail), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a copy of the tree without an install
    sys.path.insert(0, str(ROOT))

T_START = time.perf_counter()


class OutOfTime(RuntimeError):
    pass


# -- report -----------------------------------------------------------------------------------


class Report:
    """Lines for gpu_check.txt and a dict for gpu_check.json, both rewritten after every section."""

    def __init__(self, out: Path, deadline: float):
        self.out, self.deadline = out, deadline
        self.lines: list[str] = []
        self.data: dict = {
            "meta": {},
            "devices": [],
            "tiled": [],
            "run": None,
            "throughput": [],
            "skipped": [],
            "errors": [],
        }
        self.failed = False

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def line(self, s: str = "") -> None:
        print(s, flush=True)
        self.lines.append(s)

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"what": what, "why": why})
        self.line(f"SKIPPED {what}: {why}")

    def error(self, what: str, e: BaseException) -> None:
        self.failed = True
        tb = traceback.format_exc(limit=6)
        self.data["errors"].append({"what": what, "error": f"{type(e).__name__}: {e}", "traceback": tb})
        self.line(f"ERROR in {what}: {type(e).__name__}: {e}")
        for t in tb.strip().splitlines()[-6:]:
            self.line(f"    {t}")

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.data["meta"]["elapsed_s"] = round(time.perf_counter() - T_START, 1)
        self.data["status"] = "FAIL" if self.failed else "PASS"
        for name, text in (
            ("gpu_check.txt", "\n".join(self.lines) + "\n"),
            ("gpu_check.json", json.dumps(self.data, indent=1, default=str) + "\n"),
        ):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.out / name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for matmuls and cuDNN convolutions (cuDNN allows TF32 by default: the patch
    embedding of a ViT is a convolution), restored afterwards."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def rel_err(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-8) -> float:
    """max |a - b| / max |b| (tests/unit/test_tiled.py's measure), with a floor on the denominator."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(atol / 1e-5))


# -- (a) devices agree --------------------------------------------------------------------------


def shapes_batch(cache: Path, n: int, words_model: str):
    from harness.data.batches import ShapesTrainData
    from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
    from harness.engine.models import ModelConfig, build_model

    spec = ShapesSpec(n_train=max(2048, n), n_val=128, n_test=128, n_heldout=128, n_zeroshot=128)
    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name=words_model), words=vocabulary())
    data = ShapesTrainData(ShapesWorld(spec, cache), tok, seed=0)
    return model, (tok, size, mean, std), data.batch(0, n, {"image", "text"})


def loss_and_grads(model0, enc_args, cls, batch, device: torch.device, bf16: bool):
    from harness.engine.models import Encoder
    from harness.engine.trainer import embed

    model = copy.deepcopy(model0).to(device).train()
    objective = cls().to(device).train()
    encoder = Encoder(model, *enc_args, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = objective(embed(model, encoder, batch, device))
    loss = out.loss.float()
    loss.backward()
    grads = {}
    for prefix, mod in (("model.", model), ("objective.", objective)):
        for n, p in mod.named_parameters():
            if p.grad is not None:
                grads[prefix + n] = p.grad.detach().double().cpu()
    return float(loss.detach()), grads


def compare_grads(got: dict, ref: dict) -> dict:
    if set(got) != set(ref):
        return {"error": f"different parameters have gradients: {sorted(set(got) ^ set(ref))[:5]}"}
    names = sorted(ref)
    g = torch.cat([got[n].flatten() for n in names])
    r = torch.cat([ref[n].flatten() for n in names])
    worst = max(names, key=lambda n: rel_err(got[n], ref[n]))
    return {
        "grad_rel_norm": float((g - r).norm() / r.norm().clamp_min(1e-30)),
        "grad_cosine": float(g @ r / (g.norm() * r.norm()).clamp_min(1e-30)),
        "worst_tensor": worst,
        "worst_tensor_rel_err": rel_err(got[worst], ref[worst]),
        "objective_grads": {
            n: [float(got[n].flatten()[0]), float(ref[n].flatten()[0])]
            for n in names
            if n.startswith("objective.")
        },
    }


def check_devices(rep: Report, args, device: torch.device, cache: Path) -> None:
    from objectives.infonce import CLIP
    from objectives.sigmoid import SigLIP

    cpu = torch.device("cpu")
    B = args.a_batch
    model0, enc_args, batch = shapes_batch(cache, B, "harness-micro")
    n_params = sum(p.numel() for p in model0.parameters())
    rep.line(
        f"(a1) harness-micro ({n_params / 1e3:.0f} k params), one shapes batch B = {B}; reference CPU fp32; "
        "TF32 off for the fp32 comparison"
    )
    tol = {"fp32": (1e-5, 1e-4, None), "bf16": (2e-2, 1e-1, 0.99)}
    with strict_fp32():
        for name, cls in (("clip", CLIP), ("siglip", SigLIP)):
            ref_loss, ref_grads = loss_and_grads(model0, enc_args, cls, batch, cpu, bf16=False)
            for prec in ("fp32", "bf16"):
                what = f"{device.type} {prec}" + (" autocast" if prec == "bf16" else "")
                loss, grads = loss_and_grads(model0, enc_args, cls, batch, device, bf16=prec == "bf16")
                cmp = compare_grads(grads, ref_grads)
                loss_rel = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
                t_loss, t_grad, t_cos = tol[prec]
                ok = (
                    "error" not in cmp
                    and loss_rel <= t_loss
                    and cmp["grad_rel_norm"] <= t_grad
                    and (t_cos is None or cmp["grad_cosine"] >= t_cos)
                )
                if device.type == "cpu" and prec == "bf16":
                    what = "cpu bf16 autocast"  # the smoke stand-in for CUDA bf16
                row = {
                    "objective": name,
                    "path": what,
                    "loss": loss,
                    "ref_loss": ref_loss,
                    "loss_rel": loss_rel,
                    **cmp,
                    "tolerance": {"loss_rel": t_loss, "grad_rel_norm": t_grad, "grad_cosine": t_cos},
                    "pass": ok,
                }
                rep.data["devices"].append(row)
                rep.failed |= not ok
                if "error" in cmp:
                    rep.line(f"  {'PASS' if ok else 'FAIL'} {name:6} {what:18} {cmp['error']}")
                    continue
                rep.line(
                    f"  {'PASS' if ok else 'FAIL'} {name:6} {what:18} loss {loss:.6f} vs {ref_loss:.6f} "
                    f"(rel {loss_rel:.1e} <= {t_loss:.0e}) | grads rel-norm {cmp['grad_rel_norm']:.1e} "
                    f"(<= {t_grad:.0e}) cos {cmp['grad_cosine']:.6f} | worst {cmp['worst_tensor']} "
                    f"{cmp['worst_tensor_rel_err']:.1e}"
                )
    rep.write()


def check_tiled(rep: Report, args, device: torch.device) -> None:
    from objectives.tiled import naive_infonce, naive_sigmoid, tiled_infonce, tiled_sigmoid

    n, d, chunk = args.tiled_batch, 512, args.tiled_chunk
    rep.line(
        f"(a2) tiled vs naive losses on {device.type}: B = {n}, d = {d}, chunk = {chunk}, float32 "
        "(TF32 off), tolerance 1e-5 relative (max |diff| / max |ref|)"
    )
    g = torch.Generator().manual_seed(5)
    x0 = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    y0 = F.normalize(
        x0 + 1.5 * F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1), dim=-1
    )
    with strict_fp32():
        for kind in ("infonce", "sigmoid"):
            res = {}
            for impl in ("naive", "tiled"):
                x = x0.float().to(device).requires_grad_()
                y = y0.float().to(device).requires_grad_()
                s = torch.tensor(1 / 0.07 if kind == "infonce" else 10.0, device=device, requires_grad=True)
                b = torch.tensor(-10.0, device=device, requires_grad=True)
                ins = [x, y, s] + ([b] if kind == "sigmoid" else [])
                if kind == "infonce" and impl == "tiled":
                    fn = functools.partial(tiled_infonce, x, y, s, chunk)
                elif kind == "infonce":
                    fn = functools.partial(naive_infonce, x, y, s)
                elif impl == "tiled":
                    fn = functools.partial(tiled_sigmoid, x, y, s, b, chunk)
                else:
                    fn = functools.partial(naive_sigmoid, x, y, s, b)
                torch.autograd.grad(fn(), ins)  # warm-up
                sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                t0 = time.perf_counter()
                loss = fn()
                grads = torch.autograd.grad(loss, ins)
                sync(device)
                dt = time.perf_counter() - t0
                peak = (
                    (torch.cuda.max_memory_allocated(device) - base) / 2**20
                    if device.type == "cuda"
                    else float("nan")
                )
                res[impl] = (loss.detach(), [t.detach() for t in grads], dt, peak)
                del x, y, s, b, ins, loss, grads
            (ln, gn, tn, pn), (lt, gt, tt, pt) = res["naive"], res["tiled"]
            names = ["x", "y", "scale"] + (["bias"] if kind == "sigmoid" else [])
            errs = {"loss": rel_err(lt, ln), **{f"grad_{k}": rel_err(a, c) for k, a, c in zip(names, gt, gn)}}
            ok = all(v <= 1e-5 for v in errs.values())
            rep.failed |= not ok
            rep.data["tiled"].append(
                {
                    "loss": kind,
                    "B": n,
                    "d": d,
                    "chunk": chunk,
                    "rel_err": errs,
                    "pass": ok,
                    "naive_s": tn,
                    "tiled_s": tt,
                    "naive_peak_mib": pn,
                    "tiled_peak_mib": pt,
                    "value": float(lt),
                }
            )
            mem = f" | peak extra MiB naive {pn:.0f} tiled {pt:.0f}" if device.type == "cuda" else ""
            rep.line(
                f"  {'PASS' if ok else 'FAIL'} {kind:7} loss {float(lt):.6f} | rel err "
                + " ".join(f"{k} {v:.1e}" for k, v in errs.items())
                + f" | fwd+bwd s naive {tn:.4f} tiled {tt:.4f}{mem}"
            )
            del res
            free_memory()
    rep.write()


# -- (b) harness run end to end -------------------------------------------------------------------


def check_run(rep: Report, args, device: torch.device) -> None:
    from importlib.metadata import entry_points

    missing = [
        m for m in ("mlflow", "open_clip", "pydantic", "rich", "yaml") if importlib.util.find_spec(m) is None
    ]
    if missing:
        rep.skip("(b) harness run", f"missing Python packages: {', '.join(missing)}")
        rep.data["run"] = {"skipped": f"missing {missing}"}
        return
    if not [e for e in entry_points(group="harness.objectives") if e.name == "siglip"]:
        rep.skip(
            "(b) harness run",
            "the package is not installed (no 'harness.objectives' entry points; "
            "pip install --no-deps -e . registers them)",
        )
        rep.data["run"] = {"skipped": "not installed"}
        return
    timeout = min(args.run_timeout, rep.left() - args.reserve)
    if timeout < 30:
        rep.skip("(b) harness run", f"out of time ({rep.left():.0f} s left)")
        return
    with tempfile.TemporaryDirectory(prefix="gpu_check_run-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "harness",
            "run",
            "--budget",
            "smoke",
            "--device",
            device.type,
            "--output-dir",
            tmp,
            "--no-checkpoint",
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HARNESS_CACHE")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        rep.line(
            f"(b) {' '.join(cmd[1:4])} {' '.join(cmd[4:8])} "
            f"(output dir: a temporary directory; timeout {timeout:.0f} s)"
        )
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout)
            rc, text = p.returncode, (p.stdout or "") + (p.stderr or "")
        except subprocess.TimeoutExpired as e:
            rc = None
            text = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        dt = time.perf_counter() - t0
    ok = rc == 0
    rep.failed |= not ok
    tail = text.strip().splitlines()[-25:]
    rep.data["run"] = {"cmd": cmd[1:], "exit_code": rc, "seconds": dt, "pass": ok, "output_tail": tail}
    rep.line(
        f"  {'PASS' if ok else 'FAIL'} exit code {rc if rc is not None else 'none (timed out)'} "
        f"in {dt:.0f} s; "
        "last lines:"
    )
    for t in tail[-12:]:
        rep.line(f"    | {t}")
    rep.write()


# -- (c) throughput -----------------------------------------------------------------------------


class RandomData:
    """One random batch, made once on the device, handed out at every step (no loading cost)."""

    def __init__(self, n: int, image_size: int, ctx: int, vocab: int, sot: int, eot: int, device):
        from harness.data.batches import Batch

        g = torch.Generator(device=device).manual_seed(n)
        self.n = n
        images = torch.randint(
            0, 256, (n, image_size, image_size, 3), generator=g, device=device, dtype=torch.uint8
        )
        tokens = torch.randint(1, min(sot, eot), (n, ctx), generator=g, device=device)
        tokens[:, 0], tokens[:, -1] = sot, eot
        self.b = Batch(images=images, tokens=tokens)

    def __len__(self) -> int:
        return self.n

    def batch(self, step, batch_size, fields):
        assert batch_size == self.n and set(fields) <= {"image", "text"}, (batch_size, fields)
        return self.b


def recompute_flops(model, encoder, batch, chunk: int, device, bf16: bool) -> float:
    """FLOPs of GradCache's extra no-grad forward over the whole batch (one sub-batch counted, scaled:
    the towers' cost is linear in the rows)."""
    from torch.utils.flop_counter import FlopCounterMode

    from harness.engine.gradcache import split_batch
    from harness.engine.trainer import embed

    sub = split_batch(batch, chunk)[0]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        embed(model, encoder, sub, device)
    return float(counter.get_total_flops()) * batch.images.shape[0] / sub.images.shape[0]


def measure(rep: Report, args, device, model0, enc_args, data: RandomData, cls, impl: str) -> dict:
    from harness.config import Budget
    from harness.engine.gradcache import split_batch
    from harness.engine.models import Encoder
    from harness.engine.trainer import embed, train

    B = data.n
    bf16 = device.type == "cuda" and not args.fp32
    gc_chunk = args.gradcache_chunk if args.gradcache_chunk and args.gradcache_chunk < B else None
    extra = {"loader_workers": 0} if "loader_workers" in Budget.model_fields else {}
    # lr 1e-4: a few steps from random init must stay finite (the trainer stops on a non-finite loss)
    budget = Budget(
        steps=args.warmup + args.timed,
        batch_size=B,
        warmup_steps=1,
        lr=1e-4,
        device=device.type,
        precision="bf16" if bf16 else "fp32",
        loss_chunk_size=args.loss_chunk if impl == "tiled" else None,
        gradcache_chunk=gc_chunk,
        log_every=10**6,
        **extra,
    )
    model = copy.deepcopy(model0)
    encoder = Encoder(model, *enc_args, device=device)
    objective = cls()
    marks: list[float] = []
    hard_stop = rep.deadline - args.reserve / 2

    def on_step(step: int, loss: float) -> None:
        if step == args.warmup - 1 or step == budget.steps - 1:
            sync(device)
        marks.append(time.perf_counter())
        if time.perf_counter() > hard_stop and step < budget.steps - 1:
            raise OutOfTime(f"stopped after step {step}: the time budget ran out")

    free_memory()
    result = train(model, objective, encoder, data, budget, 0, device, on_step=on_step)
    t_step = (marks[-1] - marks[args.warmup - 1]) / args.timed
    flops = result.flops_per_step
    rec = recompute_flops(model, encoder, data.b, gc_chunk, device, bf16) if gc_chunk else 0.0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        emb = embed(model, encoder, split_batch(data.b, 2)[0], device)  # what the loss is given
    emb_dtype = str(emb.image.dtype).replace("torch.", "")
    model_flops = flops - rec
    peak = args.peak_tflops * 1e12
    row = {
        "objective": cls.name if hasattr(cls, "name") else cls.__name__,
        "impl": impl,
        "B": B,
        "gradcache_chunk": gc_chunk,
        "loss_chunk": budget.loss_chunk_size,
        "precision": budget.precision,
        "s_per_step": t_step,
        "samples_per_s": B / t_step,
        "flops_per_step": flops,
        "recompute_flops": rec,
        "model_flops_per_step": model_flops,
        "fwd_gflop_per_sample": (rec / B / 1e9) if gc_chunk else None,
        "mfu": model_flops / t_step / peak,
        "hfu": flops / t_step / peak,
        "peak_mem_gib": result.peak_memory_mb / 1024,
        "final_loss": result.final_loss,
        "embedding_dtype": emb_dtype,
        "warmup_steps": args.warmup,
        "timed_steps": args.timed,
    }
    del model, encoder, objective, emb
    free_memory()
    return row


def check_throughput(rep: Report, args, device: torch.device) -> None:
    import open_clip

    from harness.engine.models import ModelConfig, build_model
    from objectives.infonce import CLIP
    from objectives.sigmoid import SigLIP

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model0, tok, image_size, mean, std = build_model(ModelConfig(name=args.model, tokenizer="open_clip"))
    ctx = int(getattr(model0, "context_length", 77))
    vocab = int(getattr(model0, "vocab_size", 49408))
    sot, eot = getattr(tok, "sot_token_id", vocab - 2), getattr(tok, "eot_token_id", vocab - 1)
    n_params = sum(p.numel() for p in model0.parameters())
    bf16 = device.type == "cuda" and not args.fp32
    rep.line(
        f"(c) {args.model} ({n_params / 1e6:.1f} M params, random init), {image_size} px random images, "
        f"{ctx}-token random text, {'bf16 autocast' if bf16 else 'fp32'}, AdamW; GradCache chunk "
        f"{args.gradcache_chunk} (every B), tiled loss chunk {args.loss_chunk}; {args.warmup} warmup + "
        f"{args.timed} timed steps each; peak used for MFU/HFU: {args.peak_tflops:g} TFLOP/s "
        f"(model built in {time.perf_counter() - t0:.1f} s)"
    )
    rep.data["meta"].update(
        {
            "c_model": args.model,
            "c_params": n_params,
            "c_image_size": image_size,
            "c_context_length": ctx,
            "peak_tflops": args.peak_tflops,
            "open_clip_version": open_clip.__version__,
        }
    )
    objectives = {"clip": CLIP, "siglip": SigLIP}
    plan = [(name, B, impl) for name in ("clip", "siglip") for B in args.sizes for impl in ("naive", "tiled")]
    datasets: dict[int, RandomData] = {}
    done: list[dict] = []
    head = (
        f"  {'objective':9} {'impl':5} {'B':>6} | {'s/step':>7} {'samples/s':>9} | {'TFLOP/step':>10} "
        f"{'MFU':>6} {'HFU':>6} | {'peak GiB':>8} | loss"
    )
    printed_head = False
    for name, B, impl in plan:
        est = estimate_seconds(done, name, impl, B, args)
        if est > rep.left() - args.reserve:
            rep.skip(f"(c) {name} {impl} B={B}", f"out of time: ~{est:.0f} s needed, {rep.left():.0f} s left")
            rep.data["throughput"].append({"objective": name, "impl": impl, "B": B, "skipped": "out of time"})
            rep.write()
            continue
        try:
            if B not in datasets:  # one batch on the device at a time: peaks stay comparable
                datasets.clear()
                free_memory()
                datasets[B] = RandomData(B, image_size, ctx, vocab, sot, eot, device)
            row = measure(
                rep, args, device, model0, (tok, image_size, mean, std), datasets[B], objectives[name], impl
            )
            row["objective"] = name
        except OutOfTime as e:
            rep.skip(f"(c) {name} {impl} B={B}", str(e))
            rep.data["throughput"].append({"objective": name, "impl": impl, "B": B, "skipped": str(e)})
            free_memory()
            rep.write()
            continue
        except torch.cuda.OutOfMemoryError as e:
            free_memory()
            rep.line(f"  {name} {impl} B={B}: out of memory ({str(e).splitlines()[0][:120]})")
            rep.data["throughput"].append({"objective": name, "impl": impl, "B": B, "error": "OOM"})
            rep.write()
            continue
        except Exception as e:  # a failed measurement is reported, the rest still run
            rep.error(f"(c) {name} {impl} B={B}", e)
            free_memory()
            rep.write()
            continue
        done.append(row)
        rep.data["throughput"].append(row)
        if not printed_head:
            rep.line(head)
            printed_head = True
        util = f"{row['mfu']:>6.1%} {row['hfu']:>6.1%}" if device.type == "cuda" else f"{'n/a':>6} {'n/a':>6}"
        rep.line(
            f"  {name:9} {impl:5} {B:>6} | {row['s_per_step']:>7.3f} {row['samples_per_s']:>9.0f} | "
            f"{row['model_flops_per_step'] / 1e12:>10.4g} {util} | {row['peak_mem_gib']:>8.2f} | "
            f"{row['final_loss']:.4f}"
        )
        rep.write()
    del datasets
    free_memory()
    per_sample = [r["fwd_gflop_per_sample"] for r in done if r.get("fwd_gflop_per_sample")]
    if per_sample:
        rep.line(
            f"  forward FLOPs per sample (both towers, counted): {per_sample[0]:.4g} GFLOP; "
            "TFLOP/step = model FLOPs (forward + backward once); HFU adds GradCache's extra forward"
        )
    rep.line(
        "  peak GiB: "
        + (
            "torch.cuda.max_memory_allocated over the run: weights, AdamW state, gradients and "
            "the batch's uint8 images and tokens on the device included"
            if device.type == "cuda"
            else "the process's peak resident set size (CPU)"
        )
    )
    tiled = [r for r in done if r["impl"] == "tiled"]
    if tiled:
        d = int(getattr(getattr(model0, "visual", None), "output_dim", 512))
        worst = max(2 * r["B"] ** 2 * d / r["model_flops_per_step"] for r in tiled)
        rep.line(
            "  note: FlopCounterMode counts no FLOPs for the in-place addmm_ that objectives.tiled's "
            "backward uses for dY, so tiled rows (and the trainer's cost/flops_per_step) miss "
            f"2*B^2*d per step (at most {worst:.2%} of a step here)"
        )
    if done:
        rep.line(
            f"  embeddings reach the loss as {done[0]['embedding_dtype']} "
            "(the tiled losses' matmuls run in that dtype)"
        )
    rep.write()


def estimate_seconds(done: list[dict], name: str, impl: str, B: int, args) -> float:
    """Seconds one measurement should take, from what was measured so far (linear in B)."""
    steps = args.warmup + args.timed
    same = [r for r in done if r["objective"] == name and r["impl"] == impl]
    pool = same or done
    if not pool:
        return args.first_guess_s
    r = max(pool, key=lambda r: r["B"])
    return steps * r["s_per_step"] * B / r["B"] * 1.3 + 10.0


# -- (d), (e), (f): the harness CLI at scale (CUDA only) ------------------------------------------


def harness_cli_missing() -> str | None:
    """Why ``python -m harness ...`` cannot run here, or None."""
    from importlib.metadata import entry_points

    missing = [
        m for m in ("mlflow", "open_clip", "pydantic", "rich", "yaml") if importlib.util.find_spec(m) is None
    ]
    if missing:
        return f"missing Python packages: {', '.join(missing)}"
    if not [e for e in entry_points(group="harness.objectives") if e.name == "siglip"]:
        return "the package is not installed (no 'harness.objectives' entry points)"
    return None


def run_cli(cmd: list[str], timeout: float, extra_env: dict | None = None) -> tuple[int | None, str, float]:
    """Runs a harness CLI command in its own process group; (exit code or None when it timed out,
    output, seconds). On a timeout the whole group is killed (torchrun's workers and DataLoader
    workers included), so that nothing is left holding GPU memory for the next section."""
    import signal

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HARNESS_CACHE")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra_env or {})
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd,
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        text, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        text, _ = p.communicate()
        rc = None
    return rc, text or "", time.perf_counter() - t0


def last_metric(out_dir: Path, key: str) -> float | None:
    """The last value of one MLflow metric in a run's output directory (its sqlite store)."""
    import sqlite3

    db = out_dir / "mlflow.db"
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(str(db))
        try:
            row = con.execute(
                "SELECT value FROM metrics WHERE key = ? ORDER BY timestamp DESC, step DESC LIMIT 1", (key,)
            ).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return None if row is None else float(row[0])


def cli_result(rep: Report, what: str, key: str, cmd: list[str], rc, text: str, dt: float, **extra) -> bool:
    ok = rc == 0
    rep.failed |= not ok
    tail = text.strip().splitlines()[-25:]
    rep.data[key] = {"cmd": cmd[1:], "exit_code": rc, "seconds": dt, "pass": ok, "output_tail": tail, **extra}
    rep.line(
        f"  {'PASS' if ok else 'FAIL'} {what}: exit code "
        f"{rc if rc is not None else 'none (timed out)'} in {dt:.0f} s"
    )
    if not ok:
        for t in tail[-12:]:
            rep.line(f"    | {t}")
    rep.write()
    return ok


def write_fake_shards(root: Path, count: int, per_shard: int, size: int = 256) -> str:
    """Synthetic webdataset shards in img2dataset's layout ({key}.jpg, .txt, .json), smooth random
    ``size``-px JPEGs; returns the brace pattern of the shard paths."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    words = "red green blue small large circle square photo of a dog cat tree car house".split()
    root.mkdir(parents=True, exist_ok=True)
    for s in range(count):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                img = Image.fromarray(low).resize((size, size), Image.BILINEAR)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                caption = " ".join(rng.choice(words, 6))
                files = {
                    f"{key}.jpg": buf.getvalue(),
                    f"{key}.txt": caption.encode(),
                    f"{key}.json": json.dumps({"key": key, "status": "success"}).encode(),
                }
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / ("{00000..%05d}.tar" % (count - 1)))


DATACOMP_SMALL_SAMPLES = 12_800_000


def check_datacomp(rep: Report, args, device: torch.device) -> None:
    what = "(d) datacomp-small"
    if device.type != "cuda":
        rep.skip(f"CUDA-only {what} wiring at scale", f"no CUDA device (device {device.type})")
        return
    why = harness_cli_missing()
    if why:
        rep.skip(what, why)
        rep.data["datacomp"] = {"skipped": why}
        return
    B, steps = args.d_batch, args.d_steps
    from harness.data.streaming import worker_count

    workers = str(worker_count(max(1, (os.cpu_count() or 4) - 2)))  # rounded to a divisor of 8
    with tempfile.TemporaryDirectory(prefix="gpu_check_wds-") as tmp:
        t0 = time.perf_counter()
        pattern = write_fake_shards(Path(tmp) / "shards", args.d_shards, args.d_per_shard)
        n = args.d_shards * args.d_per_shard
        rep.line(
            f"{what}: --budget datacomp-small (ViT-B-32, 224 px, bf16) for {steps} steps of B = {B} "
            f"(GradCache chunk {args.gradcache_chunk}, loss chunk {args.loss_chunk}) per objective, on "
            f"{n} synthetic 256-px JPEGs in {args.d_shards} img2dataset shards (resampled cyclically; "
            f"written in {time.perf_counter() - t0:.1f} s), loader workers {workers}; samples/s is the "
            "trainer's (step 0, under the FLOP counter, left out)"
        )
        rows = []
        for name in ("clip", "siglip"):
            timeout = min(args.d_timeout, rep.left() - args.reserve)
            if timeout < 30:
                rep.skip(f"{what} {name}", f"out of time ({rep.left():.0f} s left)")
                continue
            out_dir = Path(tmp) / f"run-{name}"
            cmd = [
                sys.executable, "-m", "harness", "run", "--budget", "datacomp-small",
                "--objective", name, "--task", "shapes-retrieval", "--data", f"wds={pattern}",
                "--device", "cuda", "--output-dir", str(out_dir), "--no-checkpoint",
                "--steps", str(steps), "--batch-size", str(B),
                "--set", f"budget.gradcache_chunk={args.gradcache_chunk}",
                "--set", f"budget.loss_chunk_size={args.loss_chunk}",
                "--set", "shapes.n_test=256", "--set", "shapes.n_train=256",
            ]  # fmt: skip
            rc, text, dt = run_cli(cmd, timeout, {"HARNESS_WDS_WORKERS": workers})
            sps = last_metric(out_dir, "cost/samples_per_second")
            peak = last_metric(out_dir, "cost/peak_memory_mb")
            row = {"objective": name, "B": B, "steps": steps, "samples_per_s": sps, "peak_memory_mb": peak}
            ok = cli_result(rep, f"{what} {name}", f"datacomp_{name}", cmd, rc, text, dt, **row)
            if ok and sps:
                full = DATACOMP_SMALL_SAMPLES / sps
                row["full_run_hours"] = full / 3600
                rows.append(row)
                rep.line(
                    f"    {name}: {sps:.0f} samples/s, peak {(peak or float('nan')) / 1024:.1f} GiB; "
                    f"a full datacomp-small run (12.8M samples) ~ {full / 3600:.1f} h on one GPU"
                )
        if rows:
            rate = sum(r["samples_per_s"] for r in rows) / len(rows)
            runs = 10 * 3
            one = runs * DATACOMP_SMALL_SAMPLES / rate / 3600
            eight = runs * DATACOMP_SMALL_SAMPLES / (rate * 8 * 0.9) / 3600
            rep.data["datacomp_projection"] = {
                "mean_samples_per_s": rate,
                "objectives_measured": [r["objective"] for r in rows],
                "comparison_10x3_hours_1gpu": one,
                "comparison_10x3_hours_8gpu": eight,
                "assumption_8gpu": "measured one-GPU rate x 8 x 0.9",
            }
            rep.line(
                f"    10 objectives x 3 seeds (30 runs of 12.8M samples) at the mean measured rate "
                f"{rate:.0f} samples/s: ~ {one:.0f} h on 1 GPU; ~ {eight:.0f} h on 8 GPUs (assumed: the "
                "one-GPU rate x 8 x 0.9); training only, evaluation and start-up left out"
            )
    rep.write()


def torchrun_gate(rep: Report, what: str, key: str, needs: str, limit: float, reserve: float):
    """``(GPUs, timeout)`` for a torchrun check over every GPU of the node, or None after saying
    why it is skipped (one GPU, no harness CLI, out of time)."""
    n = torch.cuda.device_count()
    if n < 2:
        rep.skip(what, f"one GPU on this node ({n}): {needs} needs at least two")
        rep.data[key] = {"skipped": f"{n} GPU"}
        return None
    why = harness_cli_missing()
    if why:
        rep.skip(what, why)
        return None
    timeout = min(limit, rep.left() - reserve)
    if timeout < 30:
        rep.skip(what, f"out of time ({rep.left():.0f} s left)")
        return None
    return n, timeout


def check_ddp(rep: Report, args, device: torch.device) -> None:
    what = "(e) DDP under torchrun"
    if device.type != "cuda":
        rep.skip(f"CUDA-only {what}", f"no CUDA device (device {device.type})")
        return
    gate = torchrun_gate(rep, what, "ddp", "DDP", args.e_timeout, args.reserve)
    if gate is None:
        return
    n, timeout = gate
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp-") as tmp:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
            "-m", "harness", "run", "--budget", "smoke", "--device", "cuda",
            "--output-dir", tmp, "--no-checkpoint",
        ]  # fmt: skip
        rep.line(
            f"{what}: torchrun --nproc-per-node {n} -m harness run --budget smoke (timeout {timeout:.0f} s)"
        )
        rc, text, dt = run_cli(cmd, timeout)
        cli_result(rep, what, "ddp", cmd, rc, text, dt, nproc=n)


def fsdp_one_gpu(cache: Path, B: int, device: torch.device) -> dict:
    """(g1): harness-micro's towers through ``harness.engine.fsdp.shard`` in a one-rank NCCL group
    against the plain towers on the same GPU (fp32, TF32 off): one ``forward_backward`` with
    ``clip``, the trainer's clipping and one AdamW step; then ``copy_full_state`` into a plain
    model. One rank: FSDP's shards are whole tensors, but its CUDA path runs (all-gather and
    reduce-scatter streams, inputs moved by the root, DTensor parameters and gradients)."""
    import socket

    import torch.distributed as dist

    from harness.engine.fsdp import clip_grad_norm_, copy_full_state, is_sharded, shard
    from harness.engine.models import Encoder
    from harness.engine.trainer import Towers, forward_backward
    from objectives.infonce import CLIP

    model0, enc_args, batch = shapes_batch(cache, B, "harness-micro")
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"  # gloo: to try this function on a CPU
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        results = {}
        for sharded in (False, True):
            model = copy.deepcopy(model0).to(device).train()
            towers = Towers(model, Encoder(model, *enc_args, device=device), device)
            if sharded:
                shard(towers, device)
                assert is_sharded(towers), "fully_shard did not apply"
            objective = CLIP().to(device).train()
            params = [*towers.parameters(), *objective.parameters()]
            opt = torch.optim.AdamW(params, lr=1e-3)
            with strict_fp32():
                loss = forward_backward(towers, objective, batch, device=device).loss
                grads = {n: p.grad for n, p in towers.named_parameters() if p.grad is not None}
                grads = {
                    n: (g.full_tensor() if hasattr(g, "full_tensor") else g).double().cpu()
                    for n, g in grads.items()
                }
                clip = clip_grad_norm_ if sharded else torch.nn.utils.clip_grad_norm_
                norm = float(clip(params, 0.01))
                opt.step()
            plain = copy.deepcopy(model0).to(device)
            copy_full_state(model, plain) if sharded else plain.load_state_dict(model.state_dict())
            after = {k: v.double().cpu() for k, v in plain.state_dict().items()}
            kinds = sorted({type(v).__name__ for v in plain.state_dict().values()})
            results[sharded] = (float(loss), grads, norm, after, kinds)
            del towers, model, opt
        (l0, g0, n0, a0, _), (l1, g1, n1, a1, kinds) = results[False], results[True]
        cmp = compare_grads(g1, g0)
        return {
            "loss_rel": abs(l1 - l0) / max(abs(l0), 1e-30),
            "grad_rel_norm": cmp.get("grad_rel_norm"),
            "grad_error": cmp.get("error"),
            "clip_norm_rel": abs(n1 - n0) / max(abs(n0), 1e-30),
            "param_max_abs_diff": max(float((a1[k] - a0[k]).abs().max()) for k in a0),
            "full_state_kinds": kinds,
        }
    finally:
        dist.destroy_process_group()


def check_fsdp(rep: Report, args, device: torch.device, cache: Path) -> None:
    what = "(g) FSDP2 (budget.shard=fsdp)"
    if device.type != "cuda":
        rep.skip(
            f"CUDA-only {what}",
            f"no CUDA device (device {device.type}); tests/integration/test_fsdp.py checks FSDP2 on 2 CPU "
            "processes (gloo)",
        )
        return
    import torch.distributed as dist

    if not dist.is_nccl_available():
        rep.skip(what, "this torch has no NCCL")
        return
    B = args.a_batch
    rep.line(
        f"(g1) fully_shard on one GPU: harness-micro, clip, one shapes batch B = {B}: the sharded towers "
        "against the plain ones (loss, gradients, clipping norm, parameters after one AdamW step)"
    )
    r = fsdp_one_gpu(cache, B, device)
    ok = (
        r["grad_error"] is None
        and r["loss_rel"] <= 1e-6
        and r["grad_rel_norm"] <= 1e-5
        and r["clip_norm_rel"] <= 1e-5
        and r["param_max_abs_diff"] <= 1e-6
        and r["full_state_kinds"] == ["Tensor"]
    )
    rep.failed |= not ok
    rep.data["fsdp_one_gpu"] = {**r, "pass": ok}
    rep.line(
        f"  {'PASS' if ok else 'FAIL'} loss rel {r['loss_rel']:.1e}, grad rel norm "
        f"{r['grad_rel_norm'] if r['grad_rel_norm'] is None else format(r['grad_rel_norm'], '.1e')}, "
        f"clip norm rel {r['clip_norm_rel']:.1e}, parameters max |diff| {r['param_max_abs_diff']:.1e}, "
        f"full state {r['full_state_kinds']}" + (f"; {r['grad_error']}" if r["grad_error"] else "")
    )
    rep.write()
    what2 = "(g2) FSDP2 under torchrun"
    gate = torchrun_gate(rep, what2, "fsdp", "sharding", args.g_timeout, args.reserve)
    if gate is None:
        return
    n, timeout = gate
    with tempfile.TemporaryDirectory(prefix="gpu_check_fsdp-") as tmp:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
            "-m", "harness", "run", "--budget", "smoke", "--device", "cuda",
            "--output-dir", tmp, "--set", "budget.shard=fsdp", "--set", "budget.gradcache_chunk=8",
        ]  # fmt: skip
        rep.line(
            f"{what2}: torchrun --nproc-per-node {n} -m harness run --budget smoke --set budget.shard=fsdp "
            f"--set budget.gradcache_chunk=8, with its checkpoint (timeout {timeout:.0f} s)"
        )
        rc, text, dt = run_cli(cmd, timeout)
        ckpts = sorted(Path(tmp).glob("checkpoints/*.pt"))
        extra: dict = {"nproc": n, "checkpoints": len(ckpts)}
        if rc == 0:  # rank 0 wrote one checkpoint of plain, full tensors: harness-micro's shapes
            from harness.data.shapes import vocabulary
            from harness.engine.models import ModelConfig, build_model

            want = build_model(ModelConfig(name="harness-micro"), words=vocabulary())[0].state_dict()
            state = torch.load(ckpts[0], weights_only=True)["model"] if len(ckpts) == 1 else {}
            full = state.keys() == want.keys() and all(
                type(v) is torch.Tensor and v.shape == want[k].shape for k, v in state.items()
            )
            extra["checkpoint_full"] = full
            if not full:
                rc = f"0, but {len(ckpts)} checkpoint(s), full state: {full}"
        cli_result(rep, what2, "fsdp", cmd, rc, text, dt, **extra)


def check_ray(rep: Report, args, device: torch.device) -> None:
    what = "(f) Ray sweep, one run per GPU"
    if device.type != "cuda":
        rep.skip(f"CUDA-only {what}", f"no CUDA device (device {device.type})")
        return
    if importlib.util.find_spec("ray") is None:
        rep.skip(what, "Ray is not installed (pip install -e '.[ray]')")
        rep.data["ray"] = {"skipped": "no ray"}
        return
    why = harness_cli_missing()
    if why:
        rep.skip(what, why)
        return
    timeout = min(args.f_timeout, rep.left() - args.reserve)
    if timeout < 30:
        rep.skip(what, f"out of time ({rep.left():.0f} s left)")
        return
    from importlib.metadata import entry_points

    n = torch.cuda.device_count()
    known = sorted(e.name for e in entry_points(group="harness.objectives"))
    preferred = [o for o in ("clip", "siglip") if o in known] + [
        o for o in known if o not in ("clip", "siglip")
    ]
    objectives = preferred[: max(1, n)]
    with tempfile.TemporaryDirectory(prefix="gpu_check_ray-") as tmp:
        cmd = [
            sys.executable, "-m", "harness", "compare", "--objectives", ",".join(objectives),
            "--seeds", "1", "--budget", "smoke", "--device", "cuda", "--executor", "ray",
            "--gpus-per-run", "1", "--output-dir", tmp,
        ]  # fmt: skip
        rep.line(
            f"{what}: harness compare --executor ray --gpus-per-run 1 --budget smoke, {len(objectives)} "
            f"objective(s) on {n} GPU(s): {', '.join(objectives)} (timeout {timeout:.0f} s)"
        )
        rc, text, dt = run_cli(cmd, timeout)
        cli_result(rep, what, "ray", cmd, rc, text, dt, gpus=n, objectives=objectives)


# -- main -------------------------------------------------------------------------------------

CUDA_ONLY = [  # (what, what a CPU run does instead)
    ("(a1) CUDA fp32 and bf16 autocast against the CPU", "CPU fp32 against itself and CPU bf16 autocast run"),
    ("(a2) peak memory of the tiled and naive losses", "agreement and time only"),
    ("(c) bf16 autocast, MFU/HFU against --peak-tflops", "fp32, utilisation printed as n/a"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default=None, help="(default auto; tiny cpu)"
    )
    ap.add_argument("--smoke", action="store_true", help="tiny settings, for checking the script on a CPU")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="smaller than --smoke, on the CPU, without (b): seconds in all (the test suite's check)",
    )
    ap.add_argument("--out", default=None, help="report folder (default $OUT, else a new temporary folder)")
    ap.add_argument(
        "--time-budget", type=float, default=280.0, help="seconds for the whole script (default 280)"
    )
    ap.add_argument("--reserve", type=float, default=10.0, help="seconds kept back for the final report")
    ap.add_argument(
        "--sections", default=None, help="which sections to run (default a,b,c,d,e,f,g; tiny a,c,d,e,f,g)"
    )
    ap.add_argument("--a-batch", type=int, default=None, help="(a1) batch size (default 256; smoke 64)")
    ap.add_argument("--tiled-batch", type=int, default=None, help="(a2) B (default 4096; smoke 512)")
    ap.add_argument("--tiled-chunk", type=int, default=None, help="(a2) chunk (default 1024; smoke 128)")
    ap.add_argument("--run-timeout", type=float, default=120.0, help="(b) seconds at most")
    ap.add_argument(
        "--model", default=None, help="(c) open_clip model (default ViT-B-32; smoke harness-micro)"
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="(c) batch sizes (default 4096 16384)")
    ap.add_argument(
        "--gradcache-chunk", type=int, default=None, help="(c) GradCache sub-batch (default 1024; 0: off)"
    )
    ap.add_argument("--loss-chunk", type=int, default=None, help="(c) tiled loss chunk (default 1024)")
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="(c) untimed steps (>= 1; step 0 counts FLOPs; default 2; tiny 1)",
    )
    ap.add_argument("--timed", type=int, default=None, help="(c) timed steps (default 5; smoke 2; tiny 1)")
    ap.add_argument("--fp32", action="store_true", help="(c) no bf16 autocast")
    ap.add_argument("--d-steps", type=int, default=25, help="(d) steps per objective (default 25)")
    ap.add_argument("--d-batch", type=int, default=4096, help="(d) batch size (default 4096)")
    ap.add_argument("--d-shards", type=int, default=4, help="(d) synthetic shards (default 4)")
    ap.add_argument("--d-per-shard", type=int, default=64, help="(d) JPEGs per shard (default 64)")
    ap.add_argument("--d-timeout", type=float, default=90.0, help="(d) seconds per objective at most")
    ap.add_argument("--e-timeout", type=float, default=60.0, help="(e) seconds at most")
    ap.add_argument("--f-timeout", type=float, default=75.0, help="(f) seconds at most")
    ap.add_argument("--g-timeout", type=float, default=75.0, help="(g2) seconds at most")
    ap.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H200 SXM: 989)"
    )
    ap.add_argument("--first-guess-s", type=float, default=45.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tiny = args.tiny
    small = args.smoke or tiny
    args.device = args.device or ("cpu" if tiny else "auto")
    left_out = (
        "not in --sections"
        if args.sections
        else "left out by --tiny (a CLI smoke run takes half a minute on a CPU; "
        "tests/integration/test_cli.py covers it)"
    )
    args.sections = args.sections or ("a,c,d,e,f,g" if tiny else "a,b,c,d,e,f,g")
    args.a_batch = args.a_batch or (16 if tiny else 64 if small else 256)
    args.tiled_batch = args.tiled_batch or (128 if tiny else 512 if small else 4096)
    args.tiled_chunk = args.tiled_chunk or (32 if tiny else 128 if small else 1024)
    args.model = args.model or ("harness-micro" if small else "ViT-B-32")
    args.sizes = args.sizes or ([16] if tiny else [64, 128] if small else [4096, 16384])
    args.gradcache_chunk = (
        (8 if tiny else 32 if small else 1024) if args.gradcache_chunk is None else args.gradcache_chunk
    )
    args.loss_chunk = args.loss_chunk or (8 if tiny else 32 if small else 1024)
    args.warmup = args.warmup or (1 if tiny else 2)
    args.timed = args.timed or (1 if tiny else 2 if small else 5)
    if small:
        args.first_guess_s = 10.0
    if args.warmup < 1 or args.timed < 1:
        ap.error("need --warmup >= 1 and --timed >= 1")
    sections = set(s.strip() for s in args.sections.split(","))

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    out = Path(args.out or os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_check-"))
    rep = Report(out, T_START + args.time_budget)
    meta = rep.data["meta"]
    meta.update(
        {
            "argv": sys.argv[1:],
            "smoke": small,
            "tiny": tiny,
            "device": str(device),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "time_budget_s": args.time_budget,
        }
    )
    mode = "TINY (test-suite settings) " if tiny else "SMOKE (tiny settings) " if small else ""
    rep.line(
        f"gpu_check: {mode}device {device}, torch {torch.__version__}, "
        f"python {platform.python_version()}, report in {out}"
    )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            rep.line("CUDA is not available: nothing to check")
            rep.failed = True
            rep.write()
            return 1
        p = torch.cuda.get_device_properties(device)
        meta.update(
            {
                "gpu": p.name,
                "sm_count": p.multi_processor_count,
                "gpu_mem_gib": p.total_memory / 2**30,
                "tf32_defaults": {
                    "matmul": torch.backends.cuda.matmul.allow_tf32,
                    "cudnn": torch.backends.cudnn.allow_tf32,
                },
            }
        )
        rep.line(
            f"GPU {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB; TF32 defaults: "
            f"matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32}"
        )
    if device.type == "cpu" and not small:
        rep.line("note: a CPU run at full size is slow; use --smoke on a CPU")
    if device.type == "cpu":  # what only a CUDA device can check, said up front, not silently passed
        for what, stand_in in CUDA_ONLY:
            rep.skip(f"CUDA-only {what}", f"no CUDA device (device cpu); {stand_in}")
    setup = os.environ.get("GPU_CHECK_SETUP")  # what bench/gpu_check.sh installed or found
    if setup:
        meta["setup"] = setup
        rep.line(f"setup: {setup}")
    rep.line(f"time budget {args.time_budget:.0f} s")
    rep.write()

    with tempfile.TemporaryDirectory(prefix="gpu_check-cache-") as cache:
        steps = [
            ("a", "(a1) CPU vs device", lambda: check_devices(rep, args, device, Path(cache))),
            ("a", "(a2) tiled vs naive", lambda: check_tiled(rep, args, device)),
            ("b", "(b) harness run", lambda: check_run(rep, args, device)),
            ("d", "(d) datacomp-small", lambda: check_datacomp(rep, args, device)),
            ("e", "(e) DDP", lambda: check_ddp(rep, args, device)),
            ("g", "(g) FSDP2", lambda: check_fsdp(rep, args, device, Path(cache))),
            ("f", "(f) Ray sweep", lambda: check_ray(rep, args, device)),
            ("c", "(c) throughput", lambda: check_throughput(rep, args, device)),
        ]
        for key, what, fn in steps:
            rep.line()
            if key not in sections:
                rep.skip(what, left_out)
                continue
            if rep.left() < args.reserve + 5:
                rep.skip(what, f"out of time ({rep.left():.0f} s left)")
                continue
            try:
                fn()
            except ImportError as e:
                rep.skip(what, f"cannot import: {e}")
            except Exception as e:
                rep.error(what, e)
            rep.write()
            free_memory()
    rep.line()
    n_skip = len(rep.data["skipped"])
    rep.line(
        f"{'FAIL' if rep.failed else 'PASS'}: checks {'failed' if rep.failed else 'passed'}"
        f"{f', {n_skip} item(s) skipped' if n_skip else ''}; {time.perf_counter() - T_START:.0f} s in all"
    )
    rep.write()
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
