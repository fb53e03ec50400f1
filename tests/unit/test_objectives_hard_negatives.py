"""Hard-negative and debiased objectives: focal, dcl, hcl, hn-nce, negclip, mochi."""

import math

import optuna
import pytest
import torch
import torch.nn.functional as F
from conftest import make, unit

from harness.core.batch import EmbeddingBatch
from objectives import OBJECTIVES, HyperparameterError
from objectives.hard_negatives import mochi_logits

NAMES = ["focal", "dcl", "hcl", "hn-nce", "negclip", "mochi"]


def dot(a, b):
    return float(a @ b)


def batch_of(x, y, h=None):
    return EmbeddingBatch(image=x, text=y, hard_negative_text=h)


# -- nested-loop float64 references ------------------------------------------------------------


def focal_reference(x, y, s, gamma, alpha):
    n, total = len(x), 0.0
    for i in range(n):
        for j in range(n):
            sig = 1.0 / (1.0 + math.exp(-s * dot(x[i], y[j])))
            p = sig if i == j else 1.0 - sig
            w = 2 * alpha if i == j else 2 * (1 - alpha)
            total += -w * (1 - p) ** gamma * math.log(p)
    return total / n


def debiased_reference(x, y, t, tau_plus, beta=0.0):
    """chingyaoc/DCL and joshr17/HCL, one direction per anchor set, both directions averaged."""

    def direction(a, b):
        n, total = len(a), 0.0
        N = n - 1
        for i in range(n):
            pos = math.exp(dot(a[i], b[i]) / t)
            negs = [math.exp(dot(a[i], b[j]) / t) for j in range(n) if j != i]
            imps = [math.exp(beta * dot(a[i], b[j]) / t) for j in range(n) if j != i]
            reweight = sum(m * v for m, v in zip(imps, negs)) / (sum(imps) / N)
            ng = (-tau_plus * N * pos + reweight) / (1 - tau_plus)
            ng = max(ng, N * math.exp(-1 / t))
            total += -math.log(pos / (pos + ng))
        return total / n

    return (direction(x, y) + direction(y, x)) / 2


def hn_nce_reference(x, y, s, alpha, beta1, beta2):
    def direction(a, b, beta):
        n, total = len(a), 0.0
        for i in range(n):
            z = sum(math.exp(beta * s * dot(a[i], b[k])) for k in range(n) if k != i)
            denom = alpha * math.exp(s * dot(a[i], b[i]))
            for j in range(n):
                if j != i:
                    w = (n - 1) * math.exp(beta * s * dot(a[i], b[j])) / z
                    denom += w * math.exp(s * dot(a[i], b[j]))
            total += -(s * dot(a[i], b[i]) - math.log(denom))
        return total / n

    return (direction(x, y, beta1) + direction(y, x, beta2)) / 2


def negclip_reference(x, y, h, s):
    n, k = len(x), h.shape[1]
    total = 0.0
    for i in range(n):
        row = [s * dot(x[i], y[j]) for j in range(n)]
        row += [s * dot(x[i], h[b, m]) for b in range(n) for m in range(k)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        col = [s * dot(y[i], x[j]) for j in range(n)]
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    return total / (2 * n)


def clip_value(x, y, t, h=None):
    return make("clip", temperature=t, learnable_temperature=False)(batch_of(x, y)).loss.item()


def mochi_reference(x, y, s, n_hard, draws):
    """Explicit synthetic vectors h = normalize(a k_i + (1-a) k_j), h' = normalize(b q + (1-b) k_j)."""

    def direction(qs, ks, d):
        ia, ib, a, ic, b = d
        n, total = len(qs), 0.0
        for i in range(n):
            q = qs[i]
            hard = sorted((j for j in range(n) if j != i), key=lambda j: -dot(q, ks[j]))[:n_hard]
            row = [s * dot(q, ks[j]) for j in range(n)]
            for c in range(ia.shape[1]):
                al = float(a[i, c])
                h = F.normalize(al * ks[hard[ia[i, c]]] + (1 - al) * ks[hard[ib[i, c]]], dim=0)
                row.append(s * dot(q, h))
            for c in range(ic.shape[1]):
                be = float(b[i, c])
                h = F.normalize(be * q + (1 - be) * ks[hard[ic[i, c]]], dim=0)
                row.append(s * dot(q, h))
            total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        return total / n

    return (direction(x, y, draws[0]) + direction(y, x, draws[1])) / 2


def fixed_draws(n, n_hard, s, s2, seed):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(n_hard, (n, s), generator=g),
        torch.randint(n_hard, (n, s), generator=g),
        torch.rand(n, s, generator=g, dtype=torch.float64),
        torch.randint(n_hard, (n, s2), generator=g),
        0.5 * torch.rand(n, s2, generator=g, dtype=torch.float64),
    )


def patch_draws(obj, draws):
    it = iter(draws)
    obj.draw = lambda g, n_query, n_hard, device: next(it)


# -- the objectives equal their references -----------------------------------------------------


def test_focal_matches_nested_loop_reference():
    x, y = unit(7, 5, seed=1), unit(7, 5, seed=2)
    for gamma, alpha in [(1.0, 0.5), (2.0, 0.25), (0.5, 0.9)]:
        obj = make("focal", temperature=0.2, gamma=gamma, alpha=alpha)
        out = obj(batch_of(x, y)).loss.item()
        assert out == pytest.approx(focal_reference(x, y, obj.scale().item(), gamma, alpha), rel=1e-10)


@pytest.mark.parametrize("t,tau_plus", [(0.5, 0.1), (0.2, 0.05), (1.0, 0.3)])
def test_dcl_matches_nested_loop_reference(t, tau_plus):
    x, y = unit(8, 4, seed=3), unit(8, 4, seed=4)
    obj = make("dcl", temperature=t, tau_plus=tau_plus)
    out = obj(batch_of(x, y)).loss.item()
    assert out == pytest.approx(debiased_reference(x, y, 1 / obj.scale().item(), tau_plus), rel=1e-10)


@pytest.mark.parametrize("beta", [1.0, 0.5, 2.0])
def test_hcl_matches_nested_loop_reference(beta):
    x, y = unit(8, 4, seed=5), unit(8, 4, seed=6)
    obj = make("hcl", temperature=0.5, tau_plus=0.1, beta=beta)
    out = obj(batch_of(x, y)).loss.item()
    assert out == pytest.approx(debiased_reference(x, y, 1 / obj.scale().item(), 0.1, beta), rel=1e-10)


@pytest.mark.parametrize("alpha,b1,b2", [(1.0, 0.5, 0.5), (0.5, 1.0, 0.25), (0.0, 0.5, 0.0)])
def test_hn_nce_matches_nested_loop_reference(alpha, b1, b2):
    x, y = unit(7, 5, seed=7), unit(7, 5, seed=8)
    obj = make("hn-nce", temperature=0.25, alpha=alpha, beta1=b1, beta2=b2)
    out = obj(batch_of(x, y)).loss.item()
    assert out == pytest.approx(hn_nce_reference(x, y, obj.scale().item(), alpha, b1, b2), rel=1e-10)


def test_negclip_matches_nested_loop_reference():
    x, y, h = unit(6, 5, seed=9), unit(6, 5, seed=10), unit(6, 3, 5, seed=11)
    obj = make("negclip", temperature=0.2)
    out = obj(batch_of(x, y, h)).loss.item()
    assert out == pytest.approx(negclip_reference(x, y, h, obj.scale().item()), rel=1e-10)


@pytest.mark.parametrize("n_hard,s,s2", [(3, 4, 2), (100, 3, 0), (2, 0, 3)])
def test_mochi_matches_nested_loop_reference(n_hard, s, s2):
    x, y = unit(6, 4, seed=12), unit(6, 4, seed=13)
    nh = min(n_hard, 5)
    draws = [fixed_draws(6, nh, s, s2, 1), fixed_draws(6, nh, s, s2, 2)]
    obj = make("mochi", temperature=0.2, n_hard=n_hard, s=s, s_prime=s2)
    patch_draws(obj, draws)
    out = obj(batch_of(x, y)).loss.item()
    assert out == pytest.approx(mochi_reference(x, y, obj.scale().item(), nh, draws), rel=1e-10)


def test_mochi_gradients_stop_at_the_synthetic_negatives():
    """Gradients equal an explicit implementation with h.detach() (the closed form never builds h)."""
    x0, y0 = unit(6, 4, seed=14), unit(6, 4, seed=15)
    draws = [fixed_draws(6, 4, 5, 3, 3), fixed_draws(6, 4, 5, 3, 4)]

    def explicit(x, y):
        def direction(q, k, d):
            ia, ib, a, ic, b = d
            sim = q @ k.T
            hard = sim.detach().masked_fill(torch.eye(6, dtype=torch.bool), -math.inf).topk(4).indices
            ka, kb, kc = k[hard.gather(1, ia)], k[hard.gather(1, ib)], k[hard.gather(1, ic)]
            h1 = F.normalize(a[..., None] * ka + (1 - a[..., None]) * kb, dim=-1).detach()
            h2 = F.normalize(b[..., None] * q[:, None] + (1 - b[..., None]) * kc, dim=-1).detach()
            logits = s * torch.cat([sim, (q[:, None] * h1).sum(-1), (q[:, None] * h2).sum(-1)], 1)
            return F.cross_entropy(logits, torch.arange(6))

        return (direction(x, y, draws[0]) + direction(y, x, draws[1])) / 2

    xa, ya = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    obj = make("mochi", temperature=0.2, n_hard=4, s=5, s_prime=3)
    s = obj.scale().item()
    patch_draws(obj, draws)
    ours = obj(batch_of(xa, ya)).loss
    xb, yb = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    ref = explicit(xb, yb)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    for g1, g2 in zip(torch.autograd.grad(ours, (xa, ya)), torch.autograd.grad(ref, (xb, yb))):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)


# -- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,params",
    [
        ("focal", {"temperature": 0.5}),
        ("dcl", {"tau_plus": 0.1}),
        ("hcl", {"tau_plus": 0.1}),
        ("hn-nce", {"temperature": 0.5, "alpha": 0.7}),
        ("negclip", {"temperature": 0.5}),
        ("mochi", {"temperature": 0.5, "s": 0, "s_prime": 0}),
    ],
)
def test_gradcheck(name, params):
    obj = make(name, **params)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)

    def fn(a, b, c):
        n = lambda t: F.normalize(t, dim=-1)  # noqa: E731
        return obj(batch_of(n(a), n(b), n(c))).loss

    assert torch.autograd.gradcheck(fn, (x, y, h))


def test_gradcheck_mochi_synthetic_logits():
    """MoCHi's synthetic negatives are detached, so gradcheck of the whole loss (whose numerical
    derivative sees h move) does not apply; the type-1 cosines are checked w.r.t. the queries with
    the keys fixed, where the stop-gradient changes nothing."""
    k = unit(6, 3, seed=16)
    hard = torch.tensor([[1, 2, 3], [0, 2, 4], [0, 1, 5], [4, 5, 0], [3, 5, 1], [3, 4, 2]])
    ia, ib, a, ic, b = fixed_draws(6, 3, 4, 2, 5)
    q = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda q_: mochi_logits(F.normalize(q_, dim=-1), k, hard, ia, ib, a, ic, b)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q,))


# -- permutation invariance --------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_permuting_the_batch_leaves_the_loss_unchanged(name):
    x, y, h = unit(9, 4, seed=17), unit(9, 4, seed=18), unit(9, 3, 4, seed=19)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    a_obj, b_obj = make(name), make(name)
    if name == "mochi":  # the per-query draws follow their query
        draws = [fixed_draws(9, 8, 6, 3, 6), fixed_draws(9, 8, 6, 3, 7)]
        patch_draws(a_obj, draws)
        patch_draws(b_obj, [tuple(t[perm] for t in d) for d in draws])
    a = a_obj(batch_of(x, y, h)).loss
    b = b_obj(batch_of(x[perm], y[perm], h[perm])).loss
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


# -- properties --------------------------------------------------------------------------------


def test_focal_gamma_zero_is_siglip_without_bias():
    x, y = unit(8, 5, seed=20), unit(8, 5, seed=21)
    focal = make("focal", temperature=0.1, gamma=0.0)(batch_of(x, y)).loss.item()
    siglip = make("siglip", temperature=0.1, bias=0.0)(batch_of(x, y)).loss.item()
    assert focal == pytest.approx(siglip, rel=1e-12)
    # gamma > 0 down-weights the easy pairs: the focal loss is smaller
    assert make("focal", temperature=0.1, gamma=1.0)(batch_of(x, y)).loss.item() < focal


def test_dcl_with_tau_plus_zero_is_infonce():
    x, y = unit(10, 6, seed=22), unit(10, 6, seed=23)
    for t in (0.5, 0.07, 0.01):  # 0.01: e^{100} would overflow float32 without the row shift
        out = make("dcl", temperature=t, tau_plus=0.0)(batch_of(x, y))
        assert out.loss.item() == pytest.approx(clip_value(x, y, t), rel=1e-9)
        assert out.logs["clamped"].item() == 0.0
    x32, y32 = x.float(), y.float()
    dcl32 = OBJECTIVES.get("dcl")(temperature=0.01, tau_plus=0.0)(batch_of(x32, y32)).loss
    assert torch.isfinite(dcl32) and dcl32.item() == pytest.approx(clip_value(x, y, 0.01), rel=1e-4)


def test_dcl_lower_bound_is_active_when_it_should_be():
    # two perfectly aligned, opposite pairs: the estimate -tau+ N pos + neg is negative, so
    # Ng = N e^{-1/t} and the loss is log(1 + e^{-2/t})
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    obj = make("dcl", temperature=0.5, tau_plus=0.1)
    t = 1 / obj.scale().item()
    out = obj(batch_of(e, e.clone()))
    assert out.logs["clamped"].item() == 1.0
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-2 / t)), rel=1e-12)
    assert out.loss.item() == pytest.approx(debiased_reference(e, e, t, 0.1), rel=1e-12)
    # aligned pairs in a larger batch: the bound binds once tau+ N pos outweighs the negatives ...
    x = unit(16, 8, seed=24)
    obj = make("dcl", temperature=0.2, tau_plus=0.5)
    s = obj.scale().item()
    hi = obj(batch_of(x, x.clone()))
    assert hi.logs["clamped"].item() == 1.0
    assert hi.loss.item() == pytest.approx(math.log(1 + 15 * math.exp(-2 * s)), rel=1e-10)
    # ... and random pairs with a small prior leave it inactive (the loss differs from the bound)
    y = unit(16, 8, seed=25)
    lo = make("dcl", temperature=0.2, tau_plus=0.05)(batch_of(x, y))
    assert lo.logs["clamped"].item() == 0.0
    assert lo.loss.item() == pytest.approx(debiased_reference(x, y, 1 / s, 0.05), rel=1e-10)
    assert lo.loss.item() != pytest.approx(math.log(1 + 15 * math.exp(-2 * s)), rel=1e-3)


def test_hcl_with_beta_zero_is_dcl():
    x, y = unit(10, 6, seed=26), unit(10, 6, seed=27)
    for t, tau in [(0.5, 0.1), (0.2, 0.0), (0.3, 0.3)]:
        hcl = make("hcl", temperature=t, tau_plus=tau, beta=0.0)(batch_of(x, y)).loss.item()
        dcl = make("dcl", temperature=t, tau_plus=tau)(batch_of(x, y)).loss.item()
        assert hcl == pytest.approx(dcl, rel=1e-12)
    # hardness weighting puts more mass on the hard negatives: the loss grows with beta
    hcl1 = make("hcl", beta=1.0)(batch_of(x, y)).loss.item()
    assert hcl1 > make("hcl", beta=0.0)(batch_of(x, y)).loss.item()


def test_hn_nce_with_beta_zero_alpha_one_is_infonce():
    x, y = unit(10, 6, seed=28), unit(10, 6, seed=29)
    obj = make("hn-nce", temperature=0.1, learnable_temperature=False, alpha=1.0, beta1=0.0, beta2=0.0)
    assert obj(batch_of(x, y)).loss.item() == pytest.approx(clip_value(x, y, 0.1), rel=1e-10)
    # the default (beta 0.5) and the learnable temperature start from CLIP's 0.07
    assert make("hn-nce").scale().item() == pytest.approx(1 / 0.07, rel=1e-6)


def test_negclip_without_hard_negatives_is_clip():
    x, y = unit(8, 5, seed=30), unit(8, 5, seed=31)
    empty = torch.zeros(8, 0, 5, dtype=torch.float64)
    out = make("negclip", temperature=0.1)(batch_of(x, y, empty))
    assert out.loss.item() == pytest.approx(clip_value(x, y, 0.1), rel=1e-12)
    assert "hard_negative_accuracy" not in out.logs
    # hard negatives only add terms to the image->text denominators
    h = unit(8, 2, 5, seed=32)
    assert make("negclip", temperature=0.1)(batch_of(x, y, h)).loss.item() > out.loss.item()
    with pytest.raises(ValueError, match="hard_negative_text"):
        make("negclip")(batch_of(x, y))


def test_mochi_without_synthetic_negatives_is_infonce():
    x, y = unit(10, 6, seed=33), unit(10, 6, seed=34)
    obj = make("mochi", temperature=0.1, learnable_temperature=False, s=0, s_prime=0)
    assert obj(batch_of(x, y)).loss.item() == pytest.approx(clip_value(x, y, 0.1), rel=1e-12)
    # synthetic negatives only add terms to the denominators
    assert make("mochi", temperature=0.1)(batch_of(x, y)).loss.item() > obj(batch_of(x, y)).loss.item()


def test_mochi_draws_are_reproducible_and_advance_with_the_step():
    x, y = unit(12, 6, seed=35), unit(12, 6, seed=36)
    a, b = make("mochi", seed=3), make("mochi", seed=3)
    la = a(batch_of(x, y)).loss.item()
    assert la == b(batch_of(x, y)).loss.item() == a(batch_of(x, y)).loss.item()
    assert make("mochi", seed=4)(batch_of(x, y)).loss.item() != la
    a.after_step()
    assert a.step == 1 and a(batch_of(x, y)).loss.item() != la
    c = make("mochi", seed=3)
    c.load_state_dict(a.state_dict())
    assert c.step == 1 and c(batch_of(x, y)).loss.item() == a(batch_of(x, y)).loss.item()


def test_fixed_temperatures_are_not_moved_and_learnable_ones_are_clamped():
    dcl = OBJECTIVES.get("dcl")(temperature=2.0)  # fixed: after_step leaves it alone
    dcl.after_step()
    assert dcl.scale().item() == pytest.approx(0.5)
    assert [n for n, _ in dcl.named_parameters()] == []
    for name in ("focal", "hn-nce", "negclip", "mochi"):
        obj = OBJECTIVES.get(name)(temperature=0.001)
        assert [n for n, _ in obj.named_parameters()] == ["scale.log_scale"]
        obj.after_step()
        assert obj.scale().item() == pytest.approx(100.0, rel=1e-5)


def test_invalid_hyperparameters_name_the_parameter_and_range():
    with pytest.raises(HyperparameterError, match=r"tau_plus=1.0 is outside its valid range \[0, 1\)"):
        OBJECTIVES.get("dcl")(tau_plus=1.0)
    with pytest.raises(HyperparameterError, match=r"tau_plus=-0.1 is outside"):
        OBJECTIVES.get("hcl")(tau_plus=-0.1)
    with pytest.raises(HyperparameterError, match=r"beta=-1 is outside its valid range \[0, inf\)"):
        OBJECTIVES.get("hcl")(beta=-1)
    with pytest.raises(HyperparameterError, match=r"gamma=-0.5 is outside"):
        OBJECTIVES.get("focal")(gamma=-0.5)
    with pytest.raises(HyperparameterError, match=r"alpha=1.5 is outside its valid range \[0, 1\]"):
        OBJECTIVES.get("focal")(alpha=1.5)
    with pytest.raises(HyperparameterError, match=r"alpha=2 is outside"):
        OBJECTIVES.get("hn-nce")(alpha=2)
    with pytest.raises(HyperparameterError, match=r"beta1=-0.1 is outside"):
        OBJECTIVES.get("hn-nce")(beta1=-0.1)
    with pytest.raises(HyperparameterError, match=r"temperature=0 is outside its valid range \(0, inf\)"):
        OBJECTIVES.get("negclip")(temperature=0)
    with pytest.raises(HyperparameterError, match=r"n_hard=0 is outside its valid range \[1, inf\)"):
        OBJECTIVES.get("mochi")(n_hard=0)
    with pytest.raises(HyperparameterError, match=r"s_prime=-1 is outside"):
        OBJECTIVES.get("mochi")(s_prime=-1)
    with pytest.raises(HyperparameterError, match="unknown hyperparameter.*beta"):
        OBJECTIVES.get("dcl")(beta=1.0)  # beta belongs to hcl


@pytest.mark.parametrize("name", NAMES)
def test_search_space_yields_a_valid_configuration(name):
    cls = OBJECTIVES.get(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    cfg = cls.search_space(study.ask())
    obj = cls(**cfg).double()
    x, y, h = unit(6, 4, seed=37), unit(6, 4, seed=38), unit(6, 2, 4, seed=39)
    assert torch.isfinite(obj(batch_of(x, y, h)).loss)
    fixed = cls.search_space(optuna.trial.FixedTrial(dict(cfg)))
    assert fixed == cfg
    assert all(hp.validate(name, k, cfg[k]) == cfg[k] for k, hp in cls.hparams.items() if k in cfg)


def test_metadata():
    for name in NAMES:
        d = OBJECTIVES.get(name).describe()
        assert d["modality"] == "image-text" and d["distributed"] == "global" and d["citation"]
    assert OBJECTIVES.get("negclip").describe()["requires"] == ["hard_negative_text", "image", "text"]
    assert OBJECTIVES.get("dcl").describe()["defaults"] == {
        "temperature": 0.5,
        "learnable_temperature": False,
        "tau_plus": 0.1,
    }
    assert OBJECTIVES.get("hcl").describe()["defaults"]["beta"] == 1.0
    assert OBJECTIVES.get("focal").describe()["defaults"]["gamma"] == 1.0


# -- through the real trainer ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_setup(tmp_path_factory):
    from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
    from harness.engine.models import ModelConfig, build_model

    world = ShapesWorld(
        ShapesSpec(n_train=512, n_val=32, n_test=32, n_heldout=32, n_zeroshot=32),
        tmp_path_factory.mktemp("hn-world"),
    )
    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    return world, model.state_dict(), (model, tok, size, mean, std)


@pytest.mark.parametrize("name", NAMES)
def test_training_loss_is_finite_and_falls(shapes_setup, name):
    import copy

    from harness.config import Budget
    from harness.data.batches import ShapesTrainData
    from harness.engine.models import Encoder
    from harness.engine.trainer import train

    world, state, (model, tok, size, mean, std) = shapes_setup
    model = copy.deepcopy(model)
    model.load_state_dict(state)  # every objective starts from the same weights
    data = ShapesTrainData(world, tok, seed=0)
    budget = Budget(steps=30, batch_size=32, lr=2e-3, warmup_steps=3, log_every=1)
    res = train(
        model,
        OBJECTIVES.get(name)(),
        Encoder(model, tok, size, mean, std),
        data,
        budget,
        seed=0,
        device=torch.device("cpu"),
    )
    losses = [v for _, v in res.loss_curve]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
