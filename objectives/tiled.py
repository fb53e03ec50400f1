"""Exact large-batch CLIP and SigLIP losses without a B x B logits matrix (forward or backward).

Both losses are :class:`torch.autograd.Function` s that walk the image rows in chunks of ``chunk``
rows. The forward keeps only O(B) statistics; the backward recomputes each chunk's logits from the
saved embeddings, so the autograd graph holds ``x``, ``y`` (B x d), the scale/bias and O(B) vectors,
and the peak extra memory is a few ``chunk x B`` blocks in either pass (Inf-CL, Cheng et al. 2025,
"Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss", without the
cross-device ring: under torch.distributed, call these on the gathered batch).

InfoNCE (``tiled_infonce``), with logits ``L = s X Y^T`` and torch's label smoothing ``e``:

    loss = 1/(2B) sum_i [ (1-e)(r_i - L_ii) + e (r_i - mean_k L_ik) ]         (image -> text)
         + 1/(2B) sum_j [ (1-e)(c_j - L_jj) + e (c_j - mean_k L_kj) ]         (text -> image)

with row and column log-sum-exps ``r_i = LSE_k L_ik`` and ``c_j = LSE_k L_kj``. A chunk holds whole
rows, so ``r`` is exact per chunk; ``c`` is accumulated online over the chunks, max-stabilised
(running column max ``m``; the running sum of ``exp(L - m)`` is rescaled by ``exp(m_old - m_new)``
when the max grows). Each LSE is stored as the pair (max, log of the shifted sum) and subtracted
in two steps, ``(L - m) - l``: a single LSE vector of magnitude ~scale would cost eps * scale of
float32 precision in every probability. Backward: dloss/dL = G / (2B) with

    G = P^row + P^col - 2(1-e) I - 2e/B,    P^row_ij = exp(L_ij - r_i),  P^col_ij = exp(L_ij - c_j)

so dX = s G Y / (2B), dY = s G^T X / (2B), ds = sum_ij G_ij (x_i . y_j) / (2B), chunk by chunk.

Sigmoid (``tiled_sigmoid``), labels ``z = 2I - 1``, logits ``L = s X Y^T + b``:

    loss = 1/B sum_ij softplus(-z_ij L_ij),   dloss/dL_ij = -z_ij sigmoid(-z_ij L_ij) / B

and dX = s G Y, dY = s G^T X, ds = sum G_ij x_i.y_j, db = sum G_ij. The diagonal is handled
element-wise (no ``softplus(L) - L`` cancellation), so values match the naive loss to rounding.

Matmuls run in the inputs' dtype (bf16 stays bf16), the exp/log statistics in float32 (float64 for
float64 inputs). Autocast is disabled inside; the scalar loss is float32/float64. Not twice
differentiable.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _as_scalar(v, like: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(v):
        v = torch.tensor(float(v), device=like.device, dtype=_acc_dtype(like))
    if v.numel() != 1:
        raise ValueError(f"scale/bias must be a scalar, got shape {tuple(v.shape)}")
    return v


def _check(x: torch.Tensor, y: torch.Tensor, chunk: int) -> int:
    if x.ndim != 2 or y.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must both be (B, d); got {tuple(x.shape)} and {tuple(y.shape)}")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return x.shape[0]


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def _minus_target(p: torch.Tensor, a: int, n: int, eps: float) -> None:
    """In place: probabilities minus the (label-smoothed) target, ``(1-e) I + e/n``, for the rows
    ``a:a+len(p)``; each element minus its own target value, so ``P_ii ~ 1`` minus ~1 is exact."""
    d = p.diagonal(a)
    if not eps:
        d.sub_(1.0)
        return
    diag = d - ((1.0 - eps) + eps / n)
    p.sub_(eps / n)
    d.copy_(diag)


def _accumulate(g, x, y, a, b, gx, gy, gs, need_x, need_s) -> None:
    """Add chunk ``[a, b)``'s share of the gradients, given ``G = dloss/dL`` for its rows (c, n),
    ``L = s X Y^T (+ b)``: ``gx[a:b] = G Y``, ``gy += G^T X_c`` (both multiplied by s once, at the
    end) and ``ds += sum_i x_i . (G Y)_i``. The scale gradient uses the (c, d) product G Y, as
    autograd does for ``(s * x) @ y.T``: cheaper and more accurate than summing G * (X Y^T) over
    c x n terms that nearly cancel."""
    gm = g.to(x.dtype)
    if need_x or need_s:
        gyy = gm @ y  # (c, d)
        if need_s:
            gs += (gyy * x[a:b]).sum(dtype=gs.dtype)
        if need_x:
            gx[a:b] = gyy
    if gy is not None:
        if gy.dtype == gm.dtype:
            gy.addmm_(gm.T, x[a:b])
        else:
            gy += (gm.T @ x[a:b]).to(gy.dtype)


class _TiledInfoNCE(torch.autograd.Function):
    # Each log-sum-exp is kept as (max m, log of the max-shifted sum l): LSE = m + l. Subtracting
    # them one at a time, (L - m) - l, keeps float32 exact where L ~ m ~ scale (up to 100), which a
    # single LSE vector of magnitude ~scale would not (its rounding error is eps * scale).
    @staticmethod
    def forward(ctx, x, y, scale, chunk, label_smoothing):
        n = x.shape[0]
        acc = _acc_dtype(x)
        eps = float(label_smoothing)
        with _no_autocast(x.device):
            s = scale.detach().to(acc).reshape(())
            xs = x * s  # (s x) @ y.T, as the naive loss computes it (dtype of x)
            row_max = torch.empty(n, device=x.device, dtype=acc)
            row_log = torch.empty(n, device=x.device, dtype=acc)
            col_max = torch.full((n,), float("-inf"), device=x.device, dtype=acc)
            col_sum = torch.zeros(n, device=x.device, dtype=acc)  # sum_k exp(L_kj - col_max_j)
            col_tot = torch.zeros(n, device=x.device, dtype=acc) if eps else None  # sum_k L_kj
            diag = torch.empty(n, device=x.device, dtype=acc)
            row_terms = torch.zeros((), device=x.device, dtype=acc)
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                logits = (xs[a:b] @ y.T).to(acc)  # (c, n)
                d = logits.diagonal(a)
                diag[a:b] = d
                m = logits.amax(dim=1)
                lr = (logits - m[:, None]).exp_().sum(1).log_()
                row_max[a:b], row_log[a:b] = m, lr
                # online column log-sum-exp: rescale the running sums to the new running max
                new_max = torch.maximum(col_max, logits.amax(dim=0))
                col_sum.mul_(torch.exp(col_max - new_max))
                col_sum += (logits - new_max[None, :]).exp_().sum(0)
                col_max = new_max
                nll = (m - d) + lr  # r_i - L_ii
                if eps:
                    col_tot += logits.sum(0)
                    smooth = (m - logits.mean(1)) + lr  # r_i - mean_k L_ik
                    row_terms += ((1 - eps) * nll + eps * smooth).sum()
                else:
                    row_terms += nll.sum()
                del logits
            col_log = col_sum.log_()
            nll = (col_max - diag) + col_log
            if eps:
                smooth = (col_max - col_tot / n) + col_log
                col_terms = ((1 - eps) * nll + eps * smooth).sum()
            else:
                col_terms = nll.sum()
            loss = (row_terms + col_terms) / (2 * n)
        ctx.save_for_backward(x, y, scale, row_max, row_log, col_max, col_log)
        ctx.chunk, ctx.eps = chunk, eps
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        x, y, scale, row_max, row_log, col_max, col_log = ctx.saved_tensors
        chunk, eps = ctx.chunk, ctx.eps
        n = x.shape[0]
        acc = row_max.dtype
        need_x, need_y, need_s = ctx.needs_input_grad[:3]
        with _no_autocast(x.device):
            s = scale.detach().to(acc).reshape(())
            coef = grad_loss.to(acc) / (2 * n)
            gx = torch.empty_like(x) if need_x else None
            gy = torch.zeros(y.shape, device=y.device, dtype=acc) if need_y else None
            gs = torch.zeros((), device=x.device, dtype=acc)
            xs = x * s
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                logits = (xs[a:b] @ y.T).to(acc)
                # P^row - (1-e)I and P^col - (1-e)I separately, then summed: subtracting the target
                # from each probability (~1 on the diagonal) is exact, their sum (~2) would not be
                g = (logits - row_max[a:b, None]).sub_(row_log[a:b, None]).exp_()
                _minus_target(g, a, n, eps)
                p_col = logits.sub_(col_max[None, :]).sub_(col_log[None, :]).exp_()
                _minus_target(p_col, a, n, eps)
                g += p_col
                del logits, p_col
                g *= coef  # G = dloss / dL for this chunk
                _accumulate(g, x, y, a, b, gx, gy, gs, need_x, need_s)
        gx = gx.mul_(s.to(gx.dtype)) if need_x else None
        gy = gy.mul_(s).to(y.dtype) if need_y else None
        gs = gs.to(scale.dtype).reshape(scale.shape) if need_s else None
        return gx, gy, gs, None, None


class _TiledSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, scale, bias, chunk):
        n = x.shape[0]
        acc = _acc_dtype(x)
        with _no_autocast(x.device):
            s = scale.detach().to(acc).reshape(())
            bb = bias.detach().to(acc).reshape(())
            total = x.new_zeros((), dtype=acc)
            xs = x * s
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                z = (xs[a:b] @ y.T).to(acc).add_(bb)  # logits L
                z.diagonal(a).neg_()  # -z_ij L_ij with z = 2I - 1 is L off-diagonal, -L on it
                total = total + torch.nn.functional.softplus(z).sum()
                del z
            loss = total / n
        ctx.save_for_backward(x, y, scale, bias)
        ctx.chunk = chunk
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        x, y, scale, bias = ctx.saved_tensors
        chunk = ctx.chunk
        n = x.shape[0]
        acc = _acc_dtype(x)
        need_x, need_y, need_s, need_b = ctx.needs_input_grad[:4]
        with _no_autocast(x.device):
            s = scale.detach().to(acc).reshape(())
            bb = bias.detach().to(acc).reshape(())
            coef = grad_loss.to(acc) / n
            gx = torch.empty_like(x) if need_x else None
            gy = torch.zeros(y.shape, device=y.device, dtype=acc) if need_y else None
            gs = torch.zeros((), device=x.device, dtype=acc)
            gb = torch.zeros((), device=x.device, dtype=acc)
            xs = x * s
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                g = (xs[a:b] @ y.T).to(acc).add_(bb)
                g.diagonal(a).neg_()
                g = torch.sigmoid_(g)  # sigmoid(-z L)
                g.diagonal(a).neg_()  # d softplus(-z L) / dL = -z sigmoid(-z L)
                g *= coef  # G = dloss / dL for this chunk
                if need_b:
                    gb += g.sum()
                _accumulate(g, x, y, a, b, gx, gy, gs, need_x, need_s)
        gx = gx.mul_(s.to(gx.dtype)) if need_x else None
        gy = gy.mul_(s).to(y.dtype) if need_y else None
        gs = gs.to(scale.dtype).reshape(scale.shape) if need_s else None
        gb = gb.to(bias.dtype).reshape(bias.shape) if need_b else None
        return gx, gy, gs, gb, None


def tiled_infonce(
    x: torch.Tensor, y: torch.Tensor, scale, chunk: int, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Symmetric InfoNCE of ``x`` (B, d) against ``y`` (B, d) with logit scale ``scale``.

    Equal to ``objectives.infonce.CLIP`` / open_clip's ``ClipLoss`` (``(CE(sXY^T, I) + CE(sYX^T, I))/2``
    with torch's ``label_smoothing``) in value and gradient (x, y and ``scale`` when it requires
    grad), computed in chunks of ``chunk`` rows: memory O(chunk x B) in forward and backward.
    ``scale`` is the exponentiated scale (a 0-d/1-element tensor or a float).
    """
    n = _check(x, y, chunk)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    scale = _as_scalar(scale, x)
    return _TiledInfoNCE.apply(x, y, scale, min(int(chunk), n), float(label_smoothing))


def tiled_sigmoid(x: torch.Tensor, y: torch.Tensor, scale, bias, chunk: int) -> torch.Tensor:
    """SigLIP loss ``-1/B sum_ij logsigmoid(z_ij (s x_i.y_j + b))``, ``z = 2I - 1``, in chunks of rows.

    Equal to ``objectives.sigmoid.SigLIP`` / open_clip's single-process ``SigLipLoss`` in value and
    gradient (x, y, ``scale``, ``bias``); memory O(chunk x B) in forward and backward.
    """
    n = _check(x, y, chunk)
    scale, bias = _as_scalar(scale, x), _as_scalar(bias, x)
    return _TiledSigmoid.apply(x, y, scale, bias, min(int(chunk), n))


# -- naive references (materialise B x B; for tests and benchmarks) -------------------------------


def naive_infonce(x, y, scale, label_smoothing: float = 0.0) -> torch.Tensor:
    logits = scale * x @ y.T
    target = torch.arange(len(x), device=x.device)
    f = torch.nn.functional.cross_entropy
    return (
        f(logits, target, label_smoothing=label_smoothing)
        + f(logits.T, target, label_smoothing=label_smoothing)
    ) / 2


def naive_sigmoid(x, y, scale, bias) -> torch.Tensor:
    logits = scale * x @ y.T + bias
    n = len(x)
    z = 2 * torch.eye(n, device=x.device, dtype=logits.dtype) - 1
    return -torch.nn.functional.logsigmoid(z * logits).sum() / n
