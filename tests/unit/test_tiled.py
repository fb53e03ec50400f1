"""objectives.tiled: chunked CLIP/SigLIP losses equal the naive ones and never hold a B x B tensor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.core.batch import EmbeddingBatch
from objectives.tiled import naive_infonce, naive_sigmoid, tiled_infonce, tiled_sigmoid


def unit(n, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def problem(n, d, seed, dtype, noise=1.5, correlated=True):
    """Unit x, y with y_i = normalize(x_i + noise * e_i): positives more similar than negatives, a
    well-conditioned softmax (loss ~ 1) so float32 rounding stays far below the 1e-5 tolerance."""
    x = unit(n, d, seed, dtype)
    y = unit(n, d, seed + 1, dtype)
    if correlated:
        y = F.normalize(x + noise * y, dim=-1)
    return x.requires_grad_(), y.requires_grad_()


def losses(kind, x, y, s, b, chunk, ls=0.0):
    if kind == "infonce":
        return tiled_infonce(x, y, s, chunk, label_smoothing=ls), naive_infonce(x, y, s, label_smoothing=ls)
    return tiled_sigmoid(x, y, s, b, chunk), naive_sigmoid(x, y, s, b)


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def rel_err(a, b, atol=1e-8):
    """max |a - b| relative to max |b|; an absolute floor ``atol`` on the denominator, for exactly-zero
    references (e.g. every gradient at B = 1, which float32 rounding leaves at ~1e-9)."""
    a, b = a.detach(), b.detach().to(a.dtype)
    return float((a - b).abs().max() / b.abs().max().clamp_min(atol / 1e-5))


KINDS = ("infonce", "sigmoid")


@pytest.mark.parametrize("kind,ls", [("infonce", 0.0), ("infonce", 0.1), ("sigmoid", 0.0)])
@pytest.mark.parametrize(
    "n,chunk", [(64, 16), (64, 64), (61, 16), (61, 7), (50, 100), (1, 1), (1, 8), (5, 1)]
)
def test_matches_naive_float32(kind, n, chunk, ls):
    """Tiled == naive in float32 (relative error <= 1e-5 of the largest entry) for even and uneven
    chunks, chunk >= B and B = 1."""
    torch.manual_seed(0)
    x, y = problem(n, 32, seed=n, dtype=torch.float32)
    s = torch.tensor(14.0, requires_grad=True)
    b = torch.tensor(-5.0, requires_grad=True)
    lt, ln = losses(kind, x, y, s, b, chunk, ls)
    inputs = [x, y, s] + ([b] if kind == "sigmoid" else [])
    gt, gn = grads(lt, inputs), grads(ln, inputs)
    assert lt.dtype == torch.float32 and lt.shape == ()
    assert rel_err(lt, ln) <= 1e-5, (float(lt), float(ln))
    for a, c in zip(gt, gn):
        assert a.shape == c.shape and a.dtype == c.dtype
        assert rel_err(a, c) <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("s_val", [1.0, 30.0, 100.0])
@pytest.mark.parametrize("noise", [0.05, 0.5])
def test_float32_accuracy_confident_regime(kind, s_val, noise):
    """Near-perfect alignment and large scales: the loss is tiny and its gradients are differences
    of probabilities close to 1, where float32 itself is inexact. The tiled loss must be as close
    to the float64 truth as the naive float32 loss is: the same order (within 4x; which of the two
    rounds closer is luck), or 1e-6 relative."""
    x64, y64 = problem(48, 16, seed=3, dtype=torch.float64, noise=noise)
    s64 = torch.tensor(s_val, dtype=torch.float64, requires_grad=True)
    b64 = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    truth = losses(kind, x64, y64, s64, b64, chunk=48)[1]
    ins64 = [x64, y64, s64] + ([b64] if kind == "sigmoid" else [])
    g_truth = grads(truth, ins64)
    ins = [t.detach().float().requires_grad_() for t in ins64]
    lt, ln = losses(kind, *ins[:3], ins[3] if kind == "sigmoid" else None, chunk=10)
    assert rel_err(lt, truth) <= max(4 * rel_err(ln, truth), 1e-6)
    for a, c, r in zip(grads(lt, ins), grads(ln, ins), g_truth):
        assert rel_err(a, r) <= max(4 * rel_err(c, r), 1e-6)


@pytest.mark.parametrize("n,chunk", [(7, 3), (6, 6), (1, 1), (5, 9)])
def test_gradcheck_float64(n, chunk):
    x, y = problem(n, 4, seed=7, dtype=torch.float64)
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, s: tiled_infonce(x, y, s, chunk), (x, y, s))
    assert torch.autograd.gradcheck(lambda x, y, s: tiled_infonce(x, y, s, chunk, 0.2), (x, y, s))
    assert torch.autograd.gradcheck(lambda x, y, s, b: tiled_sigmoid(x, y, s, b, chunk), (x, y, s, b))
    torch.testing.assert_close(tiled_infonce(x, y, s, chunk), naive_infonce(x, y, s), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        tiled_sigmoid(x, y, s, b, chunk), naive_sigmoid(x, y, s, b), rtol=1e-12, atol=0
    )


def test_equals_objectives():
    """Same value and gradients as the harness objectives with their learnable scale and bias."""
    from objectives.infonce import CLIP
    from objectives.sigmoid import SigLIP

    x, y = problem(40, 16, seed=11, dtype=torch.float32)
    for obj, tiled in (
        (CLIP(label_smoothing=0.1), lambda o: tiled_infonce(x, y, o.scale(), 8, label_smoothing=0.1)),
        (SigLIP(), lambda o: tiled_sigmoid(x, y, o.scale(), o.bias, 8)),
    ):
        params = [x, y, *obj.parameters()]
        ref = obj(EmbeddingBatch(image=x, text=y)).loss
        got = tiled(obj)
        assert rel_err(got, ref) <= 1e-5
        for a, c in zip(grads(got, params), grads(ref, params)):
            assert rel_err(a, c) <= 1e-5


def test_plain_float_scale_and_partial_grads():
    x, y = problem(9, 4, seed=2, dtype=torch.float32)
    y = y.detach()
    lt = tiled_infonce(x, y, 5.0, 4)
    (gx,) = torch.autograd.grad(lt, [x])
    (gn,) = torch.autograd.grad(naive_infonce(x, y, 5.0), [x])
    assert rel_err(gx, gn) <= 1e-5
    lt = tiled_sigmoid(x, y, 5.0, -2.0, 4)
    assert rel_err(lt, naive_sigmoid(x, y, 5.0, -2.0)) <= 1e-5
    with pytest.raises(ValueError):
        tiled_infonce(x, y[:5], 5.0, 4)
    with pytest.raises(ValueError):
        tiled_sigmoid(x, y, 5.0, -2.0, 0)


def saved_numels(fn):
    """numel of every tensor the autograd graph of ``fn()`` saves for backward, and the result."""
    seen = []

    def pack(t):
        seen.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return seen, out


@pytest.mark.parametrize("kind", KINDS)
def test_graph_holds_no_b_by_b_tensor(kind):
    n, d, chunk = 2048, 64, 128
    x, y = problem(n, d, seed=5, dtype=torch.float32, correlated=False)
    s = torch.tensor(10.0, requires_grad=True)
    b = torch.tensor(-10.0, requires_grad=True)
    if kind == "infonce":
        tiled = lambda: tiled_infonce(x, y, s, chunk)  # noqa: E731
    else:
        tiled = lambda: tiled_sigmoid(x, y, s, b, chunk)  # noqa: E731
    naive = (lambda: naive_infonce(x, y, s)) if kind == "infonce" else (lambda: naive_sigmoid(x, y, s, b))
    seen, loss = saved_numels(tiled)
    assert seen and max(seen) <= n * d, f"tiled graph saves a tensor of {max(seen)} elements"
    assert n * n not in seen
    loss.backward()  # the backward runs from the saved O(B d) state
    assert x.grad is not None and s.grad is not None
    seen_naive, _ = saved_numels(naive)
    assert n * n in seen_naive  # the hook does see the naive B x B logits


def test_backward_peak_is_chunked():
    """Inside backward, no intermediate of B x B elements is allocated (hooked via a dispatch mode)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MaxNumel(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    MaxNumel.biggest = max(MaxNumel.biggest, t.numel())
            return out

    n, d, chunk = 512, 16, 32
    for kind in KINDS:
        x, y = problem(n, d, seed=9, dtype=torch.float32, correlated=False)
        s = torch.tensor(10.0, requires_grad=True)
        b = torch.tensor(-10.0, requires_grad=True)
        MaxNumel.biggest = 0
        with MaxNumel():
            loss = tiled_infonce(x, y, s, chunk) if kind == "infonce" else tiled_sigmoid(x, y, s, b, chunk)
            loss.backward()
        assert MaxNumel.biggest <= chunk * n, (kind, MaxNumel.biggest)
