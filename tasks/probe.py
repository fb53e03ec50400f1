"""The linear-probe solvers on frozen features, under two protocols (docs/linear-probe.md); the
tasks that use them are in :mod:`tasks.linear` (shapes world) and :mod:`tasks.linear_real` (CIFAR):

* ``harness`` (``shapes-linear``, ``cifar10-linear``, ``cifar100-linear``): multinomial logistic
  regression solved to convergence (:func:`fit_logistic_regression`, full-batch L-BFGS in float64,
  the objective of OpenAI's CLIP probe and sklearn's ``LogisticRegression``), the weight decay
  chosen on a validation split by :func:`select_probe`;
* ``clip_benchmark`` (``shapes-linear-cb``, ``cifar10-linear-cb``, ``cifar100-linear-cb``):
  CLIP_benchmark's ``metrics/linear_probe.py`` (LAION-AI/CLIP_benchmark), a ``torch.nn.Linear``
  trained by AdamW under a cosine schedule, its weight-decay search on the validation split and the
  refit on train + validation (:func:`clip_benchmark_probe`), reported under its ``lp_*`` keys.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from .zeroshot import classification_metrics

log = logging.getLogger(__name__)

#: weight-decay grid searched on the ``val`` split (CLIP_benchmark's range, logspace(-6, 2), coarse)
WEIGHT_DECAYS: tuple[float, ...] = tuple(float(w) for w in np.logspace(-6, 2, 9))
#: the harness solver's stopping rule: the largest gradient entry in the preconditioned variables
#: (see :func:`fit_logistic_regression`) at most ``PROBE_TOL``, within ``PROBE_MAX_ITER`` L-BFGS
#: iterations (OpenAI's CLIP probe capped sklearn's L-BFGS at 1000 too)
PROBE_TOL = 1e-6
PROBE_MAX_ITER = 1000


@dataclass
class LogisticRegression:
    """A fitted multinomial logistic regression: ``logits = x @ weight.T + bias``."""

    weight: torch.Tensor  # (C, d)
    bias: torch.Tensor  # (C,)
    weight_decay: float
    n_iter: int
    loss: float
    #: the largest gradient entry at the returned point (preconditioned variables) and whether it is
    #: at most the tolerance (False: the iteration cap or a stalled line search stopped the solver)
    grad_max: float = 0.0
    converged: bool = True

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.device, self.weight.dtype)
        return x @ self.weight.T + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(dim=1)


@contextlib.contextmanager
def _threads_for(work: int, device: torch.device):
    """A small problem on the CPU runs single-threaded: intra-op parallelism costs more than it
    saves there, and on a loaded machine oversubscribed threads make every step ~20x slower."""
    small = device.type == "cpu" and work < 2**24
    threads = torch.get_num_threads()
    try:
        if small:
            torch.set_num_threads(1)
        yield
    finally:
        if small:
            torch.set_num_threads(threads)


def principal_axes(x: torch.Tensor, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """``(mean, variances, axes)`` of the rows of ``x``: the eigen-decomposition of their
    covariance (``axes[:, j]`` has variance ``variances[j]``), in ``dtype`` on ``x``'s device."""
    x = x.detach().to(dtype)
    mu = x.mean(dim=0)
    xc = x - mu
    var, axes = torch.linalg.eigh(xc.T @ xc / len(x))
    return mu, var.clamp_min(0), axes


def fit_logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    weight_decay: float,
    n_classes: int | None = None,
    max_iter: int = PROBE_MAX_ITER,
    tol: float = PROBE_TOL,
    history_size: int = 20,
    dtype: torch.dtype = torch.float64,
    axes: tuple[torch.Tensor, ...] | None = None,
) -> LogisticRegression:
    """Multinomial logistic regression by full-batch L-BFGS (strong-Wolfe line search), to convergence.

    Minimises ``mean_i CE(x_i W^T + b, y_i) + weight_decay / 2 * ||W||_F^2`` (the bias is not
    penalised), starting from zero, on ``x``'s device, in ``dtype`` (float64). This is sklearn's
    ``LogisticRegression(multinomial, lbfgs)`` objective with ``C = 1 / (n * weight_decay)``.

    The problem is solved in preconditioned variables: the centred features are rotated onto their
    principal axes (:func:`principal_axes`, pass ``axes`` to reuse them across weight decays) and
    axis ``j`` is divided by ``sqrt(var_j + weight_decay)``. The rotation leaves ``||W||`` unchanged
    and the unpenalised bias absorbs the centring, so the optimum is the same ``W``, ``b``; but the
    Hessian becomes close to the identity where the raw one spans the features' variances (12
    orders of magnitude for a random micro encoder's), and L-BFGS converges in tens of iterations
    where it needed thousands. It stops when the largest gradient entry is at most ``tol`` (the
    fit is then ``converged``), when the loss stops changing (1e-12) or after ``max_iter``
    iterations; an unconverged fit is logged as a warning. ``tol`` = 1e-6 is about where a line
    search on the float64 loss stalls (2-5e-7 on nearly separable data). Converged fits are
    reproducible: features re-normalised in float32 (a ~1e-7 relative change) give the same
    predictions and weights within 1e-4 (tests/unit/test_linear_probe.py; within ~1e-4 of the largest
    weight where nearly separable data make the optimum itself that flat). docs/linear-probe.md.
    """
    if not np.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"need features (n, d) and n labels with n >= 1, got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x = x.detach().to(dtype)
    y = y.detach().to(x.device, torch.long)
    n, d = x.shape
    c = int(n_classes if n_classes is not None else int(y.max()) + 1)
    if int(y.min()) < 0 or int(y.max()) >= c:
        raise ValueError(f"labels must lie in [0, {c}), got [{int(y.min())}, {int(y.max())}]")
    mu, var, rot = axes if axes is not None else principal_axes(x, dtype)
    # any positive per-axis scale leaves the optimum unchanged; axes without variance (and
    # weight_decay = 0) get a floor so the scale stays finite
    scale = (var + max(float(weight_decay), 1e-12 * float(var.max()), 1e-300)).rsqrt()
    z = ((x - mu) @ rot) * scale
    s2 = scale * scale
    v = torch.zeros(c, d, dtype=dtype, device=x.device, requires_grad=True)
    b = torch.zeros(c, dtype=dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [v, b],
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:  # W~ = v * scale (rotated W): ||W||^2 = sum (v * scale)^2
        return F.cross_entropy(z @ v.T + b, y) + 0.5 * weight_decay * (v * v * s2).sum()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with _threads_for(n * d * c, x.device), torch.enable_grad():
        opt.step(closure)
        opt.zero_grad()
        loss = objective()  # the gradient at the returned point, which decides convergence
        loss.backward()
    grad_max = float(max(v.grad.abs().max(), b.grad.abs().max()))
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    converged = grad_max <= tol
    if not converged:
        log.warning(
            "logistic regression at weight decay %g did not converge: largest gradient entry %.2g > "
            "tolerance %g after %d L-BFGS iterations (cap %d); its predictions may depend on the "
            "features' last bits",
            weight_decay,
            grad_max,
            tol,
            n_iter,
            max_iter,
        )
    with torch.no_grad():
        w = (v * scale) @ rot.T
        bias = b - w @ mu
    return LogisticRegression(
        w.detach(), bias.detach(), float(weight_decay), n_iter, float(loss.detach()), grad_max, converged
    )


def select_probe(
    x_fit: torch.Tensor,
    y_fit: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    weight_decays,
    n_classes: int,
    max_iter: int = PROBE_MAX_ITER,
    tol: float = PROBE_TOL,
) -> tuple[LogisticRegression, float, list[float]]:
    """Fit one probe per weight decay on (x_fit, y_fit) and keep the one with the best top-1 accuracy
    on (x_val, y_val); ties keep the larger weight decay (the strongest regularisation). Returns the
    probe, its validation accuracy and the weight decays whose fit did not converge. The test split
    plays no part."""
    y_val = y_val.to(x_val.device)
    axes = principal_axes(x_fit)  # shared by every weight decay
    best, best_acc, unconverged = None, -1.0, []
    for wd in sorted(weight_decays, reverse=True):  # strongest first: ties keep it
        probe = fit_logistic_regression(
            x_fit, y_fit, wd, n_classes=n_classes, max_iter=max_iter, tol=tol, axes=axes
        )
        if not probe.converged:
            unconverged.append(float(wd))
        acc = float((probe.predict(x_val) == y_val).double().mean())
        if acc > best_acc:
            best, best_acc = probe, acc
    return best, best_acc, unconverged


def harness_protocol(weight_decays, max_iter: int, tol: float, **extra) -> dict:
    """The ``protocol`` record of the harness probe: solver, stopping rule, grid, selection."""
    return {
        "linear_probe": "harness",
        "solver": "L-BFGS (strong Wolfe), full batch, float64, preconditioned "
        "on the features' principal axes",
        "tol": tol,
        "max_iter": max_iter,
        "weight_decays": [float(w) for w in weight_decays],
        "selection": "best validation acc1, ties to the larger weight decay",
        "refit": "none (the fit set's probe is reported)",
        **extra,
    }


def fit_facts(probe: LogisticRegression, unconverged: list[float]) -> dict:
    """The chosen fit's facts for ``protocol``: weight decay, convergence, iterations."""
    return {
        "weight_decay": probe.weight_decay,
        "converged": probe.converged,
        "iterations": probe.n_iter,
        "grad_max": probe.grad_max,
        "unconverged_weight_decays": unconverged,
    }


def probe_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """CLIP_benchmark's probe metrics: acc1, mean per-class recall, and acc5 only with more than 5
    classes (its ``target.max() >= 5``; with 5 classes top-5 accuracy is trivially 1)."""
    m = classification_metrics(logits.float().cpu(), target.cpu())
    if logits.shape[1] <= 5:
        m.pop("acc5", None)
    return m


# ------------------------------------------------------------------ CLIP_benchmark's protocol

#: CLIP_benchmark's defaults (``cli.py``: ``--fewshot_lr 0.1``, ``--fewshot_epochs 10``,
#: ``--batch_size 64``, ``--seed 0``, ``--normalize True``, AMP on) and the validation share of its
#: README's linear-probe example (``--val_proportion 0.1``; without one it trains at weight decay 0)
CB_LR, CB_EPOCHS, CB_BATCH_SIZE, CB_SEED, CB_VAL_PROPORTION = 0.1, 10, 64, 0, 0.1
#: its weight-decay grid, ``np.logspace(-6, 2, num=97)``, and the indices of the 7-point coarse grid
#: ``np.logspace(-6, 2, num=7)`` its search starts from (found by float equality, as it does)
CB_WEIGHT_DECAYS: tuple[float, ...] = tuple(np.logspace(-6, 2, num=97).tolist())
CB_INIT_INDICES: tuple[int, ...] = tuple(
    i for i, v in enumerate(CB_WEIGHT_DECAYS) if v in np.logspace(-6, 2, num=7).tolist()
)


class _Rows(torch.utils.data.Dataset):
    """CLIP_benchmark's ``FeatureDataset``, read a batch at a time (``__getitems__``): the DataLoader
    draws the same random numbers and yields the same batches, without a Python call per row."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, rows: list[int]):
        i = torch.as_tensor(rows)
        return self.x[i], self.y[i]


def _batches(batch):
    return batch


def cb_train(
    x: torch.Tensor,
    y: torch.Tensor,
    n_out: int,
    weight_decay: float,
    lr: float = CB_LR,
    epochs: int = CB_EPOCHS,
    batch_size: int = CB_BATCH_SIZE,
    seed: int = CB_SEED,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> torch.nn.Linear:
    """CLIP_benchmark's ``train``: ``torch.manual_seed(seed)``, ``torch.nn.Linear(d, n_out)``
    (its default init), ``AdamW(lr, weight_decay)`` on weight and bias, cross-entropy, ``epochs``
    passes of a shuffling DataLoader (``batch_size``, last batch kept) and the cosine schedule
    without warm-up set before every step: ``lr_t = lr * (1 + cos(pi * t / T)) / 2``, ``T = epochs
    * batches``. Under ``amp`` the forward runs in ``torch.autocast`` (CLIP_benchmark's default on
    CUDA, without a gradient scaler). Seeds the global RNG: callers isolate it
    (:func:`clip_benchmark_probe`)."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], n_out).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = torch.utils.data.DataLoader(
        _Rows(x, y), batch_size=batch_size, shuffle=True, collate_fn=_batches
    )
    steps = epochs * len(loader)
    with torch.enable_grad():
        for epoch in range(epochs):
            for i, (xb, yb) in enumerate(loader):
                step = i + epoch * len(loader)
                for group in optimizer.param_groups:
                    group["lr"] = 0.5 * (1 + np.cos(np.pi * step / steps)) * lr
                optimizer.zero_grad()
                with torch.autocast(device.type, enabled=amp):
                    loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
                loss.backward()
                optimizer.step()
    return model


@torch.no_grad()
def cb_logits(
    model: torch.nn.Linear, x: torch.Tensor, amp: bool = False, batch_size: int = 4096
) -> torch.Tensor:
    """The probe's logits of ``x`` (float32, on the CPU), in ``x``'s order."""
    device = model.weight.device
    out = []
    for i in range(0, len(x), batch_size):
        with torch.autocast(device.type, enabled=amp):
            out.append(model(x[i : i + batch_size].to(device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, model.out_features)


def cb_accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """CLIP_benchmark's ``accuracy``: the share of rows whose target is among the ``k`` largest logits."""
    pred = logits.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum()) / len(target) for k in topk]


def cb_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """CLIP_benchmark's probe metrics: ``lp_acc1``, ``lp_acc5`` when ``target.max() >= 5`` (it reports
    NaN otherwise; the key is left out here) and ``lp_mean_per_class_recall`` (sklearn's balanced
    accuracy of the argmax)."""
    logits, target = logits.float().cpu(), target.cpu()
    m = {}
    if int(target.max()) >= 5 and logits.shape[1] >= 5:
        m["lp_acc1"], m["lp_acc5"] = cb_accuracy(logits, target, (1, 5))
    else:
        (m["lp_acc1"],) = cb_accuracy(logits, target, (1,))
    m["lp_mean_per_class_recall"] = float(balanced_accuracy_score(target.numpy(), logits.argmax(1).numpy()))
    return m


def cb_search(
    score: Callable[[int], float], n: int = len(CB_WEIGHT_DECAYS), init: Sequence[int] = CB_INIT_INDICES
) -> int:
    """CLIP_benchmark's weight-decay search (its ``find_peak`` loop), over grid indices: the peak of
    the coarse indices ``init``, then for spans 8, 4, 2, 1 the peak of ``[peak - span, peak, peak +
    span]`` (clipped to the grid). ``find_peak`` starts from index 0 at accuracy 0 and moves only on
    a strictly better score, so ties keep the earlier index (left, then the peak, then right)."""

    def find_peak(idxs):
        best, best_acc = 0, 0
        for i in idxs:
            acc = score(i)
            if best_acc < acc:
                best, best_acc = i, acc
        return best

    peak = find_peak(init)
    span = 8
    while span > 0:
        peak = find_peak([max(peak - span, 0), peak, min(peak + span, n - 1)])
        span //= 2
    return peak


def cb_split(n: int, val_proportion: float, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CLIP_benchmark's ``--val_proportion`` split: ``torch.utils.data.random_split(train, [1 - p,
    p])`` (rows of the train part, rows of the validation part, in the split's order)."""
    if not 0 < val_proportion < 1:
        raise ValueError(f"val_proportion must lie in (0, 1), got {val_proportion}")
    train, val = torch.utils.data.random_split(
        range(n), [1 - val_proportion, val_proportion], generator=generator
    )
    return np.asarray(train.indices, dtype=np.int64), np.asarray(val.indices, dtype=np.int64)


@dataclass
class CBProbe:
    """A CLIP_benchmark probe: the final model and how it was chosen."""

    model: torch.nn.Linear
    weight_decay: float
    index: int  # into CB_WEIGHT_DECAYS
    val_acc1: float
    val_logits: torch.Tensor  # the searched probe's (train part only) logits on the validation part
    searched: dict[int, float] = field(default_factory=dict)  # grid index -> validation acc1
    refit: bool = True


def clip_benchmark_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    lr: float = CB_LR,
    epochs: int = CB_EPOCHS,
    batch_size: int = CB_BATCH_SIZE,
    seed: int = CB_SEED,
    device: torch.device | str = "cpu",
    amp: bool = False,
    refit: bool = True,
    generator: torch.Generator | None = None,
) -> CBProbe:
    """CLIP_benchmark's ``linear_probe.evaluate`` after featurisation (``fewshot_k = -1``).

    The train rows are put in the order of ``torch.randperm`` (its few-shot selection, which with
    ``k = -1`` keeps every row); the output size is ``y_train.max() + 1``; for each grid index the
    search asks for (:func:`cb_search`; each index is trained once: training is deterministic given
    the seed, where CLIP_benchmark re-trains the repeated peak to the same result) a probe is trained
    on the train rows (:func:`cb_train`) and scored by top-1 accuracy on the validation rows; the
    chosen weight decay is retrained on train + validation (train rows first), or, with ``refit =
    False`` (validation mode: the validation rows then stay unseen), the train-only probe is kept.
    The permutation draws from ``generator`` (default: a fresh one seeded with ``seed``; CLIP_benchmark
    draws from the global RNG, whose state there depends on model construction); the global RNG is
    restored afterwards (``torch.random.fork_rng``).
    """
    device = torch.device(device)
    if len(x_train) == 0 or len(x_val) == 0:
        raise ValueError(
            f"the CLIP_benchmark probe needs train and validation rows, got {len(x_train)} and {len(x_val)}"
        )
    x_train, x_val = x_train.detach().float().cpu(), x_val.detach().float().cpu()
    y_train, y_val = y_train.detach().long().cpu(), y_val.detach().long().cpu()
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x_train), generator=g)
    x_train, y_train = x_train[perm], y_train[perm]
    n_out = int(y_train.max()) + 1
    kw = dict(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, device=device, amp=amp)
    searched: dict[int, float] = {}
    val_logits: dict[int, torch.Tensor] = {}
    models: dict[int, torch.nn.Linear] = {}

    def score(i: int) -> float:
        if i not in searched:
            model = cb_train(x_train, y_train, n_out, CB_WEIGHT_DECAYS[i], **kw)
            val_logits[i] = cb_logits(model, x_val, amp)
            searched[i] = cb_accuracy(val_logits[i], y_val.float(), (1,))[0]
            models[i] = model
        return searched[i]

    # torch.manual_seed also seeds every initialised CUDA device: restore all of them
    initialised = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda = list(range(torch.cuda.device_count())) if initialised else []
    with torch.random.fork_rng(devices=cuda), _threads_for(batch_size * x_train.shape[1] * n_out, device):
        peak = cb_search(score)
        score(peak)  # find_peak may return index 0 without having scored it (every accuracy 0)
        if refit:
            final = cb_train(
                torch.cat([x_train, x_val]), torch.cat([y_train, y_val]), n_out, CB_WEIGHT_DECAYS[peak], **kw
            )
        else:
            final = models[peak]
    return CBProbe(
        final, CB_WEIGHT_DECAYS[peak], peak, searched[peak], val_logits[peak], dict(searched), refit
    )


def cb_protocol(amp: bool, validation: str, **extra) -> dict:
    """The ``protocol`` record of CLIP_benchmark's probe: solver, hyperparameters, search, refit."""
    return {
        "linear_probe": "clip_benchmark",
        "solver": "torch.nn.Linear + AdamW, cross-entropy, cosine LR "
        "without warm-up (CLIP_benchmark metrics/linear_probe.py)",
        "lr": CB_LR,
        "epochs": CB_EPOCHS,
        "batch_size": CB_BATCH_SIZE,
        "seed": CB_SEED,
        "amp": amp,
        "normalize": True,
        "fewshot_k": -1,
        "weight_decays": "np.logspace(-6, 2, 97)",
        "search": "find_peak on the 7-point grid "
        "np.logspace(-6, 2, 7), then spans 8, 4, 2, 1 around the peak; ties to the smaller weight decay",
        "validation": validation,
        **extra,
    }


def cb_facts(probe: CBProbe) -> dict:
    """The chosen probe's facts for ``protocol``: weight decay, validation accuracy, fits, refit."""
    return {
        "weight_decay": probe.weight_decay,
        "val_acc1": probe.val_acc1,
        "n_fits": len(probe.searched),
        "refit": "train + validation" if probe.refit else "none (validation mode: val stays unseen)",
    }
