"""Weighting and temperature-individualising objectives: cwcl, isogclr, macl, amcl."""

import copy
import math

import optuna
import pytest
import torch
import torch.nn.functional as F
from conftest import make, unit

from harness.core.batch import EmbeddingBatch
from objectives import OBJECTIVES, HyperparameterError, build_objective

torch.manual_seed(0)
NAMES = ["cwcl", "isogclr", "macl", "amcl"]


def pair(n=7, d=5):
    return EmbeddingBatch(image=unit(n, d), text=unit(n, d), index=torch.randperm(20)[:n])


def lse(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def dot(a, b):
    return float(a @ b)


def clip_reference(x, y, s):
    n, total = len(x), 0.0
    for i in range(n):
        row_i = [s * dot(x[i], y[j]) for j in range(n)]
        row_t = [s * dot(y[i], x[j]) for j in range(n)]
        total += -(row_i[i] - lse(row_i)) - (row_t[i] - lse(row_t))
    return total / (2 * n)


# --------------------------------------------------------------------------------------- cwcl
def cwcl_reference(x, y, s, weights_from="image", both=False):
    n = len(x)
    u = x if weights_from == "image" else y
    w = [[dot(u[i], u[j]) / 2 + 0.5 for j in range(n)] for i in range(n)]
    onehot = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    t_i2t, t_t2i = (w, w if both else onehot) if weights_from == "image" else (w if both else onehot, w)

    def direction(a, b, t):
        total = 0.0
        for i in range(n):
            row = [s * dot(a[i], b[j]) for j in range(n)]
            z = lse(row)
            total += -sum(t[i][j] * (row[j] - z) for j in range(n)) / sum(t[i])
        return total / n

    return (direction(x, y, t_i2t) + direction(y, x, t_t2i)) / 2


@pytest.mark.parametrize(
    "weights_from,both", [("image", False), ("text", False), ("image", True), ("text", True)]
)
def test_cwcl_matches_nested_loop_reference(weights_from, both):
    b = pair()
    obj = make("cwcl", temperature=0.2, weights_from=weights_from, both_directions=both)
    ref = cwcl_reference(b.image, b.text, obj.scale().item(), weights_from, both)
    assert obj(b).loss.item() == pytest.approx(ref, rel=1e-10)


def test_cwcl_weight_formula():
    u = unit(6, 4)
    w = make("cwcl").weights(u)
    for i in range(6):
        raw = [dot(u[i], u[j]) / 2 + 0.5 for j in range(6)]
        for j in range(6):
            assert w[i, j].item() == pytest.approx(raw[j] / sum(raw), rel=1e-12)
    # orthogonal embeddings: w_ii = 1, w_ij = 0.5 (never 0), so the targets are not one-hot
    w = make("cwcl").weights(torch.eye(4, dtype=torch.float64))
    assert torch.allclose(w, (torch.full((4, 4), 0.5, dtype=torch.float64) + 0.5 * torch.eye(4)) / 2.5)


def test_cwcl_with_identity_weights_equals_clip():
    b = pair()
    obj = make("cwcl", temperature=0.3, both_directions=True)
    obj.weights = lambda u: torch.eye(len(u), dtype=u.dtype)
    clip = make("clip", temperature=0.3)
    assert obj(b).loss.item() == pytest.approx(clip(b).loss.item(), rel=1e-12)
    assert obj(b).loss.item() == pytest.approx(clip_reference(b.image, b.text, obj.scale().item()), rel=1e-10)


def test_cwcl_gradcheck():
    # the weights come from the detached U embeddings: hold U fixed and vary the other modality
    obj = make("cwcl", temperature=0.5, both_directions=True)
    x, y = unit(5, 3), torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda b: obj(EmbeddingBatch(image=x, text=F.normalize(b, dim=-1))).loss  # noqa: E731
    assert torch.autograd.gradcheck(fn, (y,))
    obj = make("cwcl", temperature=0.5, weights_from="text")
    a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda a: obj(EmbeddingBatch(image=F.normalize(a, dim=-1), text=y.detach())).loss  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a,))
    # with the weights held fixed, both inputs
    w = torch.softmax(torch.randn(5, 5, dtype=torch.float64), 1)
    obj.weights = lambda u: w
    fn = lambda a, b: obj(EmbeddingBatch(image=F.normalize(a, dim=-1), text=F.normalize(b, dim=-1))).loss  # noqa
    assert torch.autograd.gradcheck(fn, (a, y))


def test_cwcl_weights_carry_no_gradient():
    x, y = unit(6, 4).requires_grad_(), unit(6, 4)
    obj = make("cwcl", weights_from="image")
    (gx,) = torch.autograd.grad(obj(EmbeddingBatch(image=x, text=y)).loss, (x,))
    w = obj.weights(x.detach())
    obj.weights = lambda u: w  # the same targets as constants: same gradient
    (gx2,) = torch.autograd.grad(obj(EmbeddingBatch(image=x, text=y)).loss, (x,))
    torch.testing.assert_close(gx, gx2)


# ------------------------------------------------------------------------------------ isogclr
def isog_reference(x, y, idx, tau, log_s=None, visited=None, gamma=0.8, rho=8.0):
    """Loss value, new log s and tau-gradients (before clipping), in nested loops over floats."""
    n = len(x)
    total, new_log_s, grads = 0.0, {}, {}
    for k, (a, b) in enumerate([(x, y), (y, x)]):
        part = 0.0
        for i in range(n):
            t = float(tau[k, idx[i]])
            hs = [dot(a[i], b[j]) - dot(a[i], b[i]) for j in range(n) if j != i]
            g = sum(math.exp(h / t) for h in hs) / (n - 1)
            if visited is not None and visited[k, idx[i]]:
                s = (1 - gamma) * math.exp(float(log_s[k, idx[i]])) + gamma * g
            else:
                s = g
            new_log_s[k, int(idx[i])] = math.log(s)
            w = [math.exp(h / t) / ((n - 1) * s) for h in hs]
            grads[k, int(idx[i])] = math.log(s) + rho - sum(wj * h / t for wj, h in zip(w, hs))
            part += t * (math.log(s) + rho)
        total += part / n
    return total, new_log_s, grads


def random_taus(obj, lo=0.005, hi=0.05):
    with torch.no_grad():
        obj.tau.copy_(torch.empty_like(obj.tau).uniform_(lo, hi))


def test_isogclr_first_visit_matches_nested_loop_reference():
    b = pair(6, 4)
    obj = make("isogclr")
    random_taus(obj)
    tau = obj.tau.clone()
    out = obj(b)
    ref, log_s, _ = isog_reference(b.image, b.text, b.index, tau)
    assert out.loss.item() == pytest.approx(ref, rel=1e-9)
    for (k, i), v in log_s.items():
        assert obj.log_s[k, i].item() == pytest.approx(v, rel=1e-9)
    assert bool(obj.visited[:, b.index].all()) and int(obj.visited.sum()) == 12


def test_isogclr_moving_average_matches_nested_loop_reference():
    b1 = pair(6, 4)
    b2 = EmbeddingBatch(image=unit(6, 4), text=unit(6, 4), index=b1.index)
    obj = make("isogclr", gamma=0.7, rho=2.0, tau_max=0.5, tau_init=0.2)  # no overflow at tau 0.2
    random_taus(obj, 0.1, 0.5)
    obj(b1)
    state = (obj.tau.clone(), obj.log_s.clone(), obj.visited.clone())
    out = obj(b2)  # no after_step in between: same temperatures, averaged estimate
    ref, log_s, _ = isog_reference(b2.image, b2.text, b2.index, *state, gamma=0.7, rho=2.0)
    assert out.loss.item() == pytest.approx(ref, rel=1e-9)
    for (k, i), v in log_s.items():
        assert obj.log_s[k, i].item() == pytest.approx(v, rel=1e-9)


def test_isogclr_gradient_is_the_papers_estimator():
    # second visit (gamma < 1): gradient = sum_j w_ij grad h_ij with w normalised by the averaged s
    b1 = pair(5, 3)
    x, y = unit(5, 3).requires_grad_(), unit(5, 3).requires_grad_()
    obj = make("isogclr", gamma=0.6, rho=1.0, tau_max=1.0, tau_init=0.3)
    random_taus(obj, 0.2, 1.0)
    obj(b1)
    tau, log_s, visited = obj.tau.clone(), obj.log_s.clone(), obj.visited.clone()
    gx, gy = torch.autograd.grad(obj(EmbeddingBatch(image=x, text=y, index=b1.index)).loss, (x, y))
    n, idx = 5, b1.index
    _, new_log_s, _ = isog_reference(x.detach(), y.detach(), idx, tau, log_s, visited, gamma=0.6, rho=1.0)
    surrogate = 0.0
    for k, (a, c) in enumerate([(x, y), (y, x)]):
        for i in range(n):
            t, s = float(tau[k, idx[i]]), math.exp(new_log_s[k, int(idx[i])])
            for j in range(n):
                if j != i:
                    h = a[i] @ c[j] - a[i] @ c[i]
                    surrogate = surrogate + math.exp(float(h) / t) / ((n - 1) * s) * h / n
    rx, ry = torch.autograd.grad(surrogate, (x, y))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gy, ry)


def test_isogclr_temperature_update_in_after_step():
    b = pair(6, 4)
    obj = make("isogclr", eta=0.01, beta=0.9)
    random_taus(obj)
    tau = obj.tau.clone()
    obj(b)
    assert torch.equal(obj.tau, tau)  # the loss alone does not move tau
    _, _, grads = isog_reference(b.image, b.text, b.index, tau)
    obj.after_step()
    for (k, i), g in grads.items():
        g = max(-5.0, min(5.0, g))
        assert obj.u[k, i].item() == pytest.approx(0.9 * g, rel=1e-9)
        expect = min(0.05, max(0.005, float(tau[k, i]) - 0.01 * 0.9 * g))
        assert obj.tau[k, i].item() == pytest.approx(expect, rel=1e-9)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[b.index] = False
    assert torch.equal(obj.tau[:, untouched], tau[:, untouched])
    obj.after_step()  # nothing pending: no change
    assert obj.u.abs().sum() > 0


def test_isogclr_reduces_to_global_contrastive_loss_without_averaging():
    """gamma = 1 (no moving average; the paper's convention weights the new estimate), one shared
    tau and rho = 0: each anchor's term is tau * log mean_{j != i} exp((s_ij - s_ii)/tau), the
    log-sum-exp form of a global contrastive loss, in value and in gradient."""
    tau = 0.3
    obj = make("isogclr", gamma=1.0, rho=0.0, tau_init=tau, tau_max=1.0)
    obj.tau.fill_(tau)  # exactly, not the float32 rounding of 0.3
    b1 = pair(6, 4)
    obj(b1)  # visited once: gamma = 1 must still ignore the stored estimate
    x, y = unit(6, 4).requires_grad_(), unit(6, 4).requires_grad_()
    out = obj(EmbeddingBatch(image=x, text=y, index=b1.index))
    sim = x @ y.T
    eye = torch.eye(6, dtype=torch.bool)

    def term(s):
        logits = (s / tau).masked_fill(eye, -math.inf)
        return tau * (torch.logsumexp(logits, 1) - s.diagonal() / tau - math.log(5)).mean()

    plain = term(sim) + term(sim.T)
    assert out.loss.item() == pytest.approx(plain.item(), rel=1e-10)
    g1 = torch.autograd.grad(out.loss, (x, y))
    g2 = torch.autograd.grad(plain, (x, y))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_isogclr_gradcheck():
    obj = make("isogclr", gamma=1.0, tau_init=0.5, tau_max=1.0, rho=1.0)
    idx = torch.arange(5)
    a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: (
        obj(
            EmbeddingBatch(
                image=F.normalize(a, dim=-1),
                text=F.normalize(b, dim=-1),  # noqa
                index=idx,
            )
        ).loss
    )
    assert torch.autograd.gradcheck(fn, (a, b))


def test_isogclr_state_is_checkpointed_and_needs_setup():
    obj = make("isogclr", num_samples=11)
    assert {"tau", "log_s", "u", "visited"} <= set(obj.state_dict())
    assert obj.tau.shape == (2, 11) and torch.allclose(obj.tau, torch.tensor(0.01, dtype=torch.float64))
    assert list(obj.parameters()) == []  # temperatures follow the paper's update, not AdamW
    fresh = OBJECTIVES.get("isogclr")()
    with pytest.raises(RuntimeError, match="setup"):
        fresh(pair())
    with pytest.raises(ValueError, match="index"):
        obj(EmbeddingBatch(image=unit(4, 3), text=unit(4, 3)))


def test_isogclr_eval_mode_leaves_state_alone():
    obj = make("isogclr").eval()
    before = copy.deepcopy(obj.state_dict())
    obj(pair())
    obj.after_step()
    for k, v in obj.state_dict().items():
        assert torch.equal(v, before[k])


# --------------------------------------------------------------------------------------- macl
def macl_reference(x, y, tau0=0.1, alpha=0.5, a0=0.0, reweight=True):
    n = len(x)
    a = sum(dot(x[i], y[i]) for i in range(n)) / n
    tau = tau0 * max(1 + alpha * (a - a0), 0.1)
    total = 0.0
    for p, q in [(x, y), (y, x)]:
        for i in range(n):
            row = [dot(p[i], q[j]) / tau for j in range(n)]
            # r = (1 - P_ii) / P_ii summed in the ratio form: -log P_ii = log1p(r), V_i = (1 + r) / r,
            # exact also when P_ii rounds to 1 (row[i] - lse(row) would give 0 there)
            r = sum(math.exp(row[k] - row[i]) for k in range(n) if k != i)
            v = (1.0 + r) / r if reweight else 1.0
            total += v * math.log1p(r) / n
    return total / 2


@pytest.mark.parametrize(
    "params",
    [{}, {"reweight": False}, {"alpha": 1.0, "A_0": 0.3, "temperature": 0.2}, {"alpha": 1.0, "A_0": 1.0}],
)
@pytest.mark.parametrize("seed", range(5))
def test_macl_matches_nested_loop_reference(params, seed):
    torch.manual_seed(seed)
    b = pair(7, 5)
    obj = make("macl", **params)
    kw = {
        "tau0": params.get("temperature", 0.1),
        "alpha": params.get("alpha", 0.5),
        "a0": params.get("A_0", 0.0),
        "reweight": params.get("reweight", True),
    }
    out = obj(b)
    assert out.loss.item() == pytest.approx(macl_reference(b.image, b.text, **kw), rel=1e-10)
    a = sum(dot(b.image[i], b.text[i]) for i in range(7)) / 7
    assert out.logs["alignment"].item() == pytest.approx(a, rel=1e-12)


def test_macl_alpha_zero_without_reweighting_is_infonce_with_tau0():
    b = pair()
    obj = make("macl", temperature=0.15, alpha=0.0, reweight=False)
    clip = make("clip", temperature=0.15, learnable_temperature=False)  # float32 scale: rel 1e-7
    assert obj(b).loss.item() == pytest.approx(clip(b).loss.item(), rel=1e-7)
    assert obj(b).loss.item() == pytest.approx(clip_reference(b.image, b.text, 1 / 0.15), rel=1e-10)
    assert obj(b).logs["temperature"].item() == pytest.approx(0.15)


def test_macl_temperature_grows_with_alignment():
    x = unit(8, 6)
    obj = make("macl", alpha=1.0)
    loose = obj(EmbeddingBatch(image=x, text=unit(8, 6))).logs["temperature"].item()
    tight = obj(EmbeddingBatch(image=x, text=x.clone())).logs["temperature"].item()
    assert tight == pytest.approx(0.2) and loose < tight


def test_macl_gradient_treats_alignment_and_weights_as_constants():
    x, y = unit(5, 4).requires_grad_(), unit(5, 4).requires_grad_()
    obj = make("macl", alpha=0.8, A_0=0.1)
    g = torch.autograd.grad(obj(EmbeddingBatch(image=x, text=y)).loss, (x, y))
    n = 5
    a = float(sum(x[i] @ y[i] for i in range(n))) / n
    tau = 0.1 * max(1 + 0.8 * (a - 0.1), 0.1)
    total = 0.0
    for p, q in [(x, y), (y, x)]:
        for i in range(n):
            row = torch.stack([p[i] @ q[j] for j in range(n)]) / tau
            logp = torch.log_softmax(row, 0)
            v = 1.0 / float(1 - logp[i].exp())
            total = total - v * logp[i] / (2 * n)
    r = torch.autograd.grad(total, (x, y))
    for u, w in zip(g, r):
        torch.testing.assert_close(u, w)


def test_macl_gradcheck():
    obj = make("macl", alpha=0.0, reweight=False, temperature=0.5)
    a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: obj(EmbeddingBatch(image=F.normalize(a, dim=-1), text=F.normalize(b, dim=-1))).loss  # noqa
    assert torch.autograd.gradcheck(fn, (a, b))


# --------------------------------------------------------------------------------------- amcl
def amcl_reference(x, y, weights, scales, beta):
    h, d = weights.shape[0], weights.shape[1]
    total = 0.0
    for k in range(h):
        zx = [F.normalize(weights[k] @ x[i], dim=0) for i in range(len(x))]
        zy = [F.normalize(weights[k] @ y[i], dim=0) for i in range(len(y))]
        tau = 1.0 / scales[k]
        total += clip_reference(zx, zy, scales[k]) + beta * (d / 2 * math.log(tau) + 1 / tau)
    return total


def test_amcl_matches_nested_loop_reference():
    b = pair(6, 4)
    obj = make("amcl", num_heads=3, beta=0.05, temperature=0.2)
    out = obj(b)  # materialises the heads
    assert obj.heads.weight.shape == (3, 4, 4)
    with torch.no_grad():
        obj.scales[1].log_scale.fill_(math.log(3.0))
    out = obj(b)
    scales = [sc().item() for sc in obj.scales]
    ref = amcl_reference(b.image, b.text, obj.heads.weight.detach(), scales, 0.05)
    assert out.loss.item() == pytest.approx(ref, rel=1e-10)
    assert out.logs["temperature_1"].item() == pytest.approx(1 / 3)


def test_amcl_one_identity_head_with_fixed_temperature_is_clip():
    b = pair()
    clip = make("clip", temperature=0.2, learnable_temperature=False)
    obj = make(
        "amcl", num_heads=1, head_init="identity", learnable_temperature=False, temperature=0.2, beta=0.0
    )
    assert obj(b).loss.item() == pytest.approx(clip(b).loss.item(), rel=1e-12)
    assert list(obj.parameters()) == [obj.heads.weight]
    # with the regulariser: clip + beta * Omega(tau), Omega = d/2 log tau + 1/tau, d = 5
    obj = make("amcl", num_heads=1, head_init="identity", learnable_temperature=False, temperature=0.2)
    tau = 1 / obj.scales[0]().item()  # 0.2 up to the float32 log-scale
    omega = 5 / 2 * math.log(tau) + 1 / tau
    assert obj(b).loss.item() == pytest.approx(clip(b).loss.item() + 0.01 * omega, rel=1e-12)


def test_amcl_gradcheck_inputs_heads_and_temperatures():
    obj = make("amcl", num_heads=2, temperature=0.5, beta=0.1)
    obj(pair(5, 3))
    w = obj.heads.weight.detach().clone().requires_grad_()
    t = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)

    def fn(a, b, w, t):
        params = {"heads.weight": w, "scales.0.log_scale": t[0], "scales.1.log_scale": t[1]}
        batch = EmbeddingBatch(image=F.normalize(a, dim=-1), text=F.normalize(b, dim=-1))
        return torch.func.functional_call(obj, params, (batch,)).loss

    assert torch.autograd.gradcheck(fn, (a, b, w, t))


def test_amcl_lazy_heads_load_from_a_checkpoint():
    obj = make("amcl")
    obj(pair())
    fresh = OBJECTIVES.get("amcl")().double()
    fresh.load_state_dict(obj.state_dict())
    b = pair()
    assert fresh(b).loss.item() == pytest.approx(obj(b).loss.item(), rel=1e-12)


# ------------------------------------------------------------------------------------- common
@pytest.mark.parametrize("name", NAMES)
def test_permuting_the_batch_leaves_the_loss_unchanged(name):
    b = pair(9, 4)
    obj = make(name, **({"tau_init": 0.05, "tau_max": 0.1} if name == "isogclr" else {}))
    obj(b) if name == "amcl" else None  # materialise the heads once
    perm = torch.randperm(9)
    o1, o2 = copy.deepcopy(obj), copy.deepcopy(obj)
    a = o1(b).loss
    c = o2(EmbeddingBatch(image=b.image[perm], text=b.text[perm], index=b.index[perm])).loss
    assert a.item() == pytest.approx(c.item(), rel=1e-12)
    o1.after_step(), o2.after_step()
    for k, v in o1.state_dict().items():  # per-sample state too
        torch.testing.assert_close(v, o2.state_dict()[k])


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("cwcl", {"temperature": 0.0}, "temperature"),
        ("cwcl", {"weights_from": "audio"}, "weights_from"),
        ("isogclr", {"gamma": 1.5}, "gamma"),
        ("isogclr", {"gamma": 0.0}, "gamma"),
        ("isogclr", {"rho": -1.0}, "rho"),
        ("isogclr", {"tau_init": 0.2}, "tau_init"),
        ("macl", {"alpha": 1.5}, r"alpha=1.5 is outside its valid range \[0, 1\]"),
        ("macl", {"A_0": -0.1}, "A_0"),
        ("amcl", {"num_heads": 0}, "num_heads"),
        ("amcl", {"beta": -0.1}, "beta"),
        ("amcl", {"head_init": "zeros"}, "head_init"),
    ],
)
def test_invalid_hyperparameters_name_the_parameter(name, params, match):
    with pytest.raises(HyperparameterError, match=match):
        OBJECTIVES.get(name)(**params)


@pytest.mark.parametrize("name", NAMES)
def test_search_space_yields_valid_configurations(name):
    cls = OBJECTIVES.get(name)
    fixed = {}
    for k, hp in cls.hparams.items():
        if hp.search is not None:
            fixed[k] = (hp.search[0] + hp.search[1]) / 2
        elif hp.choices is not None:
            fixed[k] = hp.choices[-1]
    cfg = cls.search_space(optuna.trial.FixedTrial(fixed))
    assert set(cfg) == set(fixed)
    build_objective(name, cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        build_objective(name, cls.search_space(study.ask()))


@pytest.mark.parametrize("name", NAMES)
def test_describe_and_distributed_statement(name):
    cls = OBJECTIVES.get(name)
    d = cls.describe()
    assert d["modality"] == "image-text" and d["distributed"] == "global"
    assert "Distributed:" in cls.__doc__ and cls.citation
    assert ("index" in d["requires"]) == (name == "isogclr")


# ------------------------------------------------------------------------------ real training
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from harness.data.shapes import ShapesSpec, ShapesWorld

    spec = ShapesSpec(n_train=512, n_val=32, n_test=32, n_heldout=32, n_zeroshot=32)
    return ShapesWorld(spec, tmp_path_factory.mktemp("w"))


@pytest.mark.parametrize("name", NAMES)
def test_training_loss_is_finite_and_falls(world, name):
    from harness.config import Budget
    from harness.data.batches import ShapesTrainData
    from harness.data.shapes import vocabulary
    from harness.engine.models import Encoder, ModelConfig, build_model
    from harness.engine.trainer import train

    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    enc = Encoder(model, tok, size, mean, std)
    obj = OBJECTIVES.get(name)()
    budget = Budget(steps=30, batch_size=32, lr=2e-3, warmup_steps=3, log_every=1)
    res = train(
        model, obj, enc, ShapesTrainData(world, tok, seed=0), budget, seed=0, device=torch.device("cpu")
    )
    losses = [v for _, v in res.loss_curve]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, (name, first, last)
    if name == "isogclr":  # per-sample temperatures moved, within bounds
        seen = obj.visited.all(0)
        assert seen.sum() == min(512, 30 * 32) and (obj.tau[:, seen] != 0.01).any()
        assert obj.tau.min() >= 0.005 and obj.tau.max() <= 0.05
    if name == "amcl":
        assert obj.heads.weight.grad is not None
