"""Numerical robustness of every registered objective (docs/objectives-numerics.md).

At the lowest temperature of its search space (and the other searched hyperparameters at either
end of their ranges, every switch flipped), on a batch built to be hard (near-duplicate positives,
a duplicated sample, an antipodal pair, a hard negative equal to the caption), each objective gives
a finite loss and finite gradients in float32 and under CPU bf16 autocast, at batch size 2 and
more; at batch size 1 it is finite too, or refuses with a ValueError when ``min_batch_size`` says
it needs 2. MACL, whose gradient reweighting multiplies a vanishing term by a huge weight, agrees
between float32 and float64 at temperature 0.01 and with a 50-digit reference.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from harness.core.batch import EmbeddingBatch
from objectives import OBJECTIVES

NAMES = sorted(OBJECTIVES.names())
D, K = 16, 3
VIEWS = ("image", "text", "image_view", "text_view", "hard_negative_text")


def is_temperature(name: str) -> bool:
    return "temperature" in name or name.startswith("tau")


class EndOfRange:
    """An Optuna trial stand-in for ``search_space``: every suggestion at the ``low`` or ``high``
    end of its range, except temperatures, always at their lowest."""

    def __init__(self, end: str):
        self.end = end

    def _pick(self, name, low, high):
        return low if self.end == "low" or is_temperature(name) else high

    def suggest_float(self, name, low, high, log=False, **kw):
        return float(self._pick(name, low, high))

    def suggest_int(self, name, low, high, log=False, **kw):
        return int(self._pick(name, low, high))

    def suggest_categorical(self, name, choices):
        return choices[0] if self.end == "low" else choices[-1]


def configurations(name: str) -> list[dict]:
    """Both ends of the search space (temperature lowest), then every boolean or categorical
    hyperparameter switched away from its default."""
    cls = OBJECTIVES.get(name)
    low = cls.search_space(EndOfRange("low"))
    out = [low, cls.search_space(EndOfRange("high"))]
    for k, hp in cls.hparams.items():
        if isinstance(hp.default, bool):
            out.append({**low, k: not hp.default})
        elif hp.choices is not None:
            out += [{**low, k: c} for c in hp.choices if c != hp.default]
    assert any(is_temperature(k) for k in low) or not any(is_temperature(k) for k in cls.hparams)
    return out


def hard_batch(n: int, dtype: torch.dtype, num_concepts: int = 19, seed: int = 0) -> EmbeddingBatch:
    """Near-duplicate positives (cosine ~0.999: the positive's logit dominates at temperature
    0.01), samples 0 and 1 identical, sample 2's caption the opposite of its image, one hard
    negative per sample equal to its caption."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, D, generator=g), dim=-1)
    if n > 2:
        x[1] = x[0]

    def near():
        return F.normalize(x + 0.02 * torch.randn(n, D, generator=g), dim=-1)

    y = near()
    if n > 2:
        y[1], y[2] = y[0], -x[2]
    hard = F.normalize(y[:, None] + 0.05 * torch.randn(n, K, D, generator=g), dim=-1)
    hard[:, 0] = y
    emb = {"image": x, "text": y, "image_view": near(), "text_view": near(), "hard_negative_text": hard}
    return EmbeddingBatch(
        **{k: v.to(dtype).requires_grad_(True) for k, v in emb.items()},
        labels=torch.arange(n) % 3,
        index=torch.arange(n),
        concepts=(torch.rand(n, num_concepts, generator=g) < 0.3).float(),
    )


def build(name: str, params: dict, n: int):
    torch.manual_seed(0)
    obj = OBJECTIVES.get(name)(**params)
    obj.setup(num_samples=64, batch_size=n, steps=10, embed_dim=D, num_concepts=19)
    return obj


def loss_and_grads(obj, batch: EmbeddingBatch, bf16: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = obj(batch).loss
    loss.float().backward()
    grads = [getattr(batch, k).grad for k in VIEWS] + [p.grad for p in obj.parameters()]
    return loss, [g for g in grads if g is not None]


@pytest.mark.parametrize("n", [1, 2, 32])
@pytest.mark.parametrize("precision", ["float32", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_finite_loss_and_gradients_at_the_lowest_temperature(name, precision, n):
    bad = []
    for params in configurations(name):
        obj = build(name, params, n)
        batch = hard_batch(
            n,
            torch.float32 if precision == "float32" else torch.bfloat16,
            num_concepts=obj.params.get("num_concepts") or 19,
        )
        if n < getattr(obj, "min_batch_size", 1):
            with pytest.raises(ValueError, match=r"at least \d"):
                obj(batch)
            continue
        loss, grads = loss_and_grads(obj, batch, precision == "bf16")
        if not torch.isfinite(loss) or not all(torch.isfinite(g).all() for g in grads):
            bad.append((params, float(loss)))
    assert not bad, f"{name} ({precision}, B={n}): non-finite loss or gradients with {bad}"


@pytest.mark.parametrize("name", NAMES)
def test_batch_size_one_is_finite_or_refused_with_a_reason(name):
    """At the defaults: a finite loss, or a ValueError that names the objective and says why."""
    obj = build(name, {}, 1)
    need = getattr(obj, "min_batch_size", 1)
    assert need in (1, 2)
    batch = hard_batch(1, torch.float32, num_concepts=obj.params.get("num_concepts") or 19)
    if need == 2:
        with pytest.raises(ValueError) as e:
            obj(batch)
        msg = str(e.value)
        assert name in msg and "at least 2" in msg and "batch_size >= 2" in msg, msg
    else:
        loss, grads = loss_and_grads(obj, batch, bf16=False)
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads), float(loss)


def test_refusals_depend_on_the_hyperparameters_that_need_them():
    assert OBJECTIVES.get("hn-nce")(alpha=0.0).min_batch_size == 2  # no negative, no positive: 1/0
    assert OBJECTIVES.get("hn-nce")(alpha=0.5).min_batch_size == 1
    assert OBJECTIVES.get("dispersive")(include_self=False).min_batch_size == 2
    assert OBJECTIVES.get("dispersive")().min_batch_size == 1


# ------------------------------------------------------------------------------------- macl


def macl_high_precision(sim: torch.Tensor, tau0=0.1, alpha=0.5, a0=0.0) -> float:
    """MACL's loss 1/2 sum_dir mean_i -V_i log P_ii, V_i = 1/(1 - P_ii), in 50-digit arithmetic
    from the float64 similarity matrix (the plain formula, which float64 itself cannot evaluate
    when 1 - P_ii falls below 1e-16)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    n = sim.shape[0]
    a = sim.diagonal().mean().item()
    tau = mpmath.mpf(tau0) * max(1 + alpha * (a - a0), 0.1)
    total = mpmath.mpf(0)
    for m in (sim, sim.T):
        for i in range(n):
            row = [mpmath.mpf(v) / tau for v in m[i].tolist()]
            z = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in row))
            rest = mpmath.fsum(mpmath.exp(row[k] - z) for k in range(n) if k != i)
            total += -(row[i] - z) / rest
    return float(total / (2 * n))


@pytest.mark.parametrize("noise", [0.05, 0.1, 0.2, 1.0])
def test_macl_float32_agrees_with_float64_at_temperature_001(noise):
    """B = 128, d = 64. The noise sets how well the positives align: at 0.05-0.2 the positive's
    probability P_ii is within 1e-7 of 1 (the regime where float32 lost the positive's pull)."""
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(128, 64, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(x + noise * torch.randn(128, 64, generator=g, dtype=torch.float64), dim=-1)
    out = {}
    for dtype in (torch.float64, torch.float32):
        a, b = (v.to(dtype).clone().requires_grad_(True) for v in (x, y))
        loss = OBJECTIVES.get("macl")(temperature=0.01)(EmbeddingBatch(image=a, text=b)).loss
        loss.backward()
        out[dtype] = loss.item(), torch.cat([a.grad.flatten(), b.grad.flatten()]).double()
    (l64, g64), (l32, g32) = out[torch.float64], out[torch.float32]
    assert l64 == pytest.approx(macl_high_precision(x @ y.T, tau0=0.01), rel=1e-9)
    assert l32 == pytest.approx(l64, rel=1e-4)
    assert ((g32 - g64).norm() / g64.norm()).item() < 1e-4
    assert math.isfinite(l32) and l32 >= 1 - 1e-6  # V_i (-log P_ii) >= 1, as -log P >= 1 - P


def test_dispersive_float32_gradient_agrees_with_float64_at_the_lowest_temperature():
    """The self-distances of the Gram-matrix form are rounding noise in float32 (|z|^2 + |z|^2 -
    2 z.z), and at tau = 0.1 their weight e^0 dwarfs every other pair's (e^{-2/0.1} for orthogonal
    ones): they must be exactly 0, or their noise is most of the float32 gradient."""
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(128, 64, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(128, 64, generator=g, dtype=torch.float64), dim=-1)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        a, b = (v.to(dtype).clone().requires_grad_(True) for v in (x, y))
        OBJECTIVES.get("dispersive")(temperature=0.1)(EmbeddingBatch(image=a, text=b)).loss.backward()
        grads[dtype] = torch.cat([a.grad.flatten(), b.grad.flatten()]).double()
    g64, g32 = grads[torch.float64], grads[torch.float32]
    assert ((g32 - g64).norm() / g64.norm()).item() < 1e-4
