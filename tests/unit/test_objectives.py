import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make, unit
from open_clip.loss import ClipLoss, SigLipLoss

from harness.core.batch import EmbeddingBatch
from objectives import (
    OBJECTIVES,
    HyperparameterError,
    ObjectiveExpressionError,
    WeightedSum,
    build_objective,
    parse_expression,
)

torch.manual_seed(0)


def clip_reference(x, y, s):
    """Nested loops: -1/2B sum_i [log softmax_j(s x_i.y_j)_i + log softmax_j(s y_i.x_j)_i]."""
    n = len(x)
    total = 0.0
    for i in range(n):
        row_i = [s * float(x[i] @ y[j]) for j in range(n)]
        row_t = [s * float(y[i] @ x[j]) for j in range(n)]
        total += -(row_i[i] - math.log(sum(math.exp(v) for v in row_i)))
        total += -(row_t[i] - math.log(sum(math.exp(v) for v in row_t)))
    return total / (2 * n)


def siglip_reference(x, y, s, b):
    n = len(x)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += -math.log(1.0 / (1.0 + math.exp(-z * (s * float(x[i] @ y[j]) + b))))
    return total / n


def test_clip_matches_nested_loop_reference():
    x, y = unit(7, 5), unit(7, 5)
    obj = make("clip", temperature=0.2)
    out = obj(EmbeddingBatch(image=x, text=y))
    assert out.loss.item() == pytest.approx(clip_reference(x, y, obj.scale().item()), rel=1e-10)


def test_siglip_matches_nested_loop_reference():
    x, y = unit(6, 4), unit(6, 4)
    obj = make("siglip", temperature=0.25, bias=-2.0)
    out = obj(EmbeddingBatch(image=x, text=y))
    assert out.loss.item() == pytest.approx(siglip_reference(x, y, obj.scale().item(), -2.0), rel=1e-10)


def test_clip_equals_open_clip_cliploss_with_gradients():
    x = unit(16, 8, dtype=torch.float32).requires_grad_()
    y = unit(16, 8, dtype=torch.float32).requires_grad_()
    obj = OBJECTIVES.get("clip")()
    ours = obj(EmbeddingBatch(image=x, text=y)).loss
    gx, gy = torch.autograd.grad(ours, (x, y))
    ref = ClipLoss()(x, y, torch.tensor(1 / 0.07))
    rx, ry = torch.autograd.grad(ref, (x, y))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gy, ry)


def test_siglip_equals_open_clip_sigliploss_with_gradients():
    x = unit(16, 8, dtype=torch.float32).requires_grad_()
    y = unit(16, 8, dtype=torch.float32).requires_grad_()
    obj = OBJECTIVES.get("siglip")()
    ours = obj(EmbeddingBatch(image=x, text=y)).loss
    gx, gy = torch.autograd.grad(ours, (x, y))
    ref = SigLipLoss()(x, y, torch.tensor(10.0), torch.tensor(-10.0))
    rx, ry = torch.autograd.grad(ref, (x, y))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gy, ry)


def test_paper_defaults_of_the_learnable_parameters():
    clip = OBJECTIVES.get("clip")()
    assert clip.scale.log_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    sig = OBJECTIVES.get("siglip")()
    assert sig.scale.log_scale.item() == pytest.approx(math.log(10), rel=1e-6)
    assert sig.bias.item() == -10.0
    assert {n for n, _ in sig.named_parameters()} == {"scale.log_scale", "bias"}


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_gradcheck(name):
    obj = make(name, temperature=0.5)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: obj(EmbeddingBatch(image=F.normalize(a, dim=-1), text=F.normalize(b, dim=-1))).loss  # noqa
    assert torch.autograd.gradcheck(fn, (x, y))


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_permuting_the_batch_leaves_the_loss_unchanged(name):
    x, y = unit(9, 4), unit(9, 4)
    obj = make(name)
    perm = torch.randperm(9)
    a = obj(EmbeddingBatch(image=x, text=y)).loss
    b = obj(EmbeddingBatch(image=x[perm], text=y[perm])).loss
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_temperature_limits():
    x, y = unit(6, 4), unit(6, 4)
    # temperature -> infinity: every logit equal, InfoNCE -> log B
    hot = make("clip", temperature=1e9)(EmbeddingBatch(image=x, text=y)).loss.item()
    assert hot == pytest.approx(math.log(6), rel=1e-6)
    # temperature -> 0 with perfectly aligned pairs: loss -> 0
    cold = make("clip", temperature=1e-3)(EmbeddingBatch(image=x, text=x.clone())).loss.item()
    assert cold < 1e-6


def test_clamp_after_step_keeps_scale_at_most_100():
    obj = OBJECTIVES.get("clip")(temperature=0.001)
    obj.after_step()
    assert obj.scale().item() == pytest.approx(100.0, rel=1e-5)


def test_invalid_hyperparameters_name_the_parameter_and_range():
    with pytest.raises(HyperparameterError, match=r"temperature=-0.1 is outside its valid range \(0, inf\)"):
        OBJECTIVES.get("clip")(temperature=-0.1)
    with pytest.raises(HyperparameterError, match="label_smoothing"):
        OBJECTIVES.get("clip")(label_smoothing=1.5)
    with pytest.raises(HyperparameterError, match="unknown hyperparameter.*valid: bias"):
        OBJECTIVES.get("siglip")(tau_plus=0.1)


def test_weighted_sum_expressions():
    assert parse_expression("clip + 0.5*siglip") == [(1.0, "clip"), (0.5, "siglip")]
    obj = build_objective("clip + 0.5*siglip", {"siglip.bias": -3.0})
    assert isinstance(obj, WeightedSum) and obj.terms[1].params["bias"] == -3.0
    x, y = unit(5, 4, dtype=torch.float32), unit(5, 4, dtype=torch.float32)
    b = EmbeddingBatch(image=x, text=y)
    expect = obj.terms[0](b).loss + 0.5 * obj.terms[1](b).loss
    out = obj(b)
    assert out.loss.item() == pytest.approx(expect.item(), rel=1e-6)
    assert "siglip/bias" in out.logs and "clip/loss" in out.logs
    for bad in ["", "clip +", "0.1*", "clip * 2", "clip + clip", "-1*clip"]:
        with pytest.raises(ObjectiveExpressionError):
            parse_expression(bad)
    with pytest.raises(KeyError, match="Did you mean 'clip'"):
        build_objective("clip + 0.1*clipp")
    with pytest.raises(HyperparameterError, match="match no term"):
        build_objective("clip + siglip", {"tic.temperature": 0.1})
