"""Geometry-regularising objectives (align-uniform, cua, dispersive, kernel-infonce) and the
surrogates (auc, catlip): nested-loop float64 references, gradients, invariances, properties and a
short real training run each."""

import copy
import math

import optuna
import pytest
import torch
import torch.nn.functional as F
from conftest import make, unit

from harness.config import Budget
from harness.core.batch import EmbeddingBatch
from harness.data.batches import ShapesTrainData, concept_vocabulary
from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
from harness.engine.models import Encoder, ModelConfig, build_model
from harness.engine.trainer import train
from objectives import OBJECTIVES, HyperparameterError, WeightedSum, build_objective

torch.manual_seed(0)
NAMES = ["align-uniform", "cua", "dispersive", "kernel-infonce", "auc", "catlip"]
IMAGE_TEXT = ["align-uniform", "cua", "dispersive", "kernel-infonce", "auc"]


def sqd(a, b):
    return sum((float(u) - float(v)) ** 2 for u, v in zip(a, b))


def log_mean_exp(values):
    return math.log(sum(math.exp(v) for v in values) / len(values))


def info_nce_rows(logit):
    """1/2 [mean_i -log softmax_j logit(i,j)[i] + mean_i -log softmax_j logit(j,i)[i]] by loops."""
    n, total = len(logit), 0.0
    for i in range(n):
        row = [logit[i][j] for j in range(n)]
        col = [logit[j][i] for j in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    return total / (2 * n)


# -- nested-loop references -------------------------------------------------------------------
def unif_ref(z, t):
    n = len(z)
    return log_mean_exp([-t * sqd(z[i], z[j]) for i in range(n) for j in range(n) if i != j])


def align_ref(x, y, alpha):
    return sum(sqd(x[i], y[i]) ** (alpha / 2) for i in range(len(x))) / len(x)


def align_uniform_ref(x, y, alpha=2.0, t=2.0, align_weight=1.0, uniform_weight=1.0):
    return align_weight * align_ref(x, y, alpha) + uniform_weight * (unif_ref(x, t) + unif_ref(y, t)) / 2


def cua_ref(
    x, y, temperature=0.01, uniform_weight=1.0, align_weight=1.0, xuniform_weight=0.0, t=2.0, alpha=2.0
):
    n = len(x)
    logit = [[float(x[i] @ y[j]) / temperature for j in range(n)] for i in range(n)]
    out = info_nce_rows(logit) + uniform_weight * (unif_ref(x, t) + unif_ref(y, t)) / 2
    out += align_weight * align_ref(x, y, alpha)
    xu = log_mean_exp([-t * sqd(x[j], y[k]) for j in range(n) for k in range(n) if j != k])
    return out + xuniform_weight * xu


def dispersive_ref(x, y, temperature=0.5, include_self=True):
    def disp(z):
        n = len(z)
        return log_mean_exp(
            [-sqd(z[i], z[j]) / temperature for i in range(n) for j in range(n) if include_self or i != j]
        )

    return (disp(x) + disp(y)) / 2


def kernel_ref(x, y, temperature=0.1, gamma=1.0, mix=0.5):
    n = len(x)
    dist = [[math.sqrt(sqd(x[i], y[j])) for j in range(n)] for i in range(n)]
    lg = info_nce_rows([[-(dist[i][j] ** gamma) / temperature for j in range(n)] for i in range(n)])
    l2 = info_nce_rows([[-(dist[i][j] ** 2) / temperature for j in range(n)] for i in range(n)])
    return mix * lg + (1 - mix) * l2


def softplus(v):
    return math.log1p(math.exp(v))


def auc_ref(x, y, temperature=0.05, scope="global"):
    n = len(x)
    s = [[float(x[i] @ y[j]) / temperature for j in range(n)] for i in range(n)]
    if scope == "global":
        pos = [s[i][i] for i in range(n)]
        neg = [s[i][j] for i in range(n) for j in range(n) if i != j]
        return sum(softplus(q - p) for p in pos for q in neg) / (len(pos) * len(neg))
    i2t = sum(softplus(s[i][j] - s[i][i]) for i in range(n) for j in range(n) if j != i)
    t2i = sum(softplus(s[j][i] - s[i][i]) for i in range(n) for j in range(n) if j != i)
    return (i2t + t2i) / (2 * n * (n - 1))


def catlip_ref(x, t, w, b):
    total = 0.0
    for i in range(len(x)):
        for c in range(len(w)):
            z = float(x[i] @ w[c]) + float(b[c])
            p = 1 / (1 + math.exp(-z))
            total += -(float(t[i, c]) * math.log(p) + (1 - float(t[i, c])) * math.log(1 - p))
    return total / len(x)


def concepts(n, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, generator=g) < 0.3).double()


def catlip_batch(n=6, d=5, c=7):
    return EmbeddingBatch(image=unit(n, d), concepts=concepts(n, c))


# -- equality with the references ---------------------------------------------------------------
CASES = [
    ("align-uniform", {}, align_uniform_ref),
    (
        "align-uniform",
        {"alpha": 1.5, "t": 3.0, "align_weight": 0.5, "uniform_weight": 2.0},
        align_uniform_ref,
    ),
    ("cua", {}, cua_ref),
    ("cua", {"temperature": 0.2, "xuniform_weight": 1.0, "uniform_weight": 0.5, "t": 1.5}, cua_ref),
    ("dispersive", {}, dispersive_ref),
    ("dispersive", {"temperature": 0.3, "include_self": False}, dispersive_ref),
    ("kernel-infonce", {}, kernel_ref),
    ("kernel-infonce", {"temperature": 0.3, "gamma": 0.5, "mix": 0.8}, kernel_ref),
    ("auc", {}, auc_ref),
    ("auc", {"temperature": 0.2, "scope": "query"}, auc_ref),
]


@pytest.mark.parametrize("name,params,ref", CASES)
def test_matches_nested_loop_reference(name, params, ref):
    x, y = unit(7, 5), unit(7, 5)
    obj = make(name, **params)
    out = obj(EmbeddingBatch(image=x, text=y))
    if name == "cua":  # the scale is stored as a float32 log: use its exact value
        params = {**params, "temperature": 1.0 / obj.scale().item()}
    assert out.loss.item() == pytest.approx(ref(x, y, **params), rel=1e-9)
    assert all(v.dim() == 0 and not v.requires_grad for v in out.logs.values())


def test_catlip_matches_nested_loop_reference():
    obj = make("catlip", num_concepts=7, embed_dim=5)
    with torch.no_grad():
        obj.weight.normal_()
        obj.bias.normal_()
    b = catlip_batch()
    out = obj(b)
    assert out.loss.item() == pytest.approx(catlip_ref(b.image, b.concepts, obj.weight, obj.bias), rel=1e-9)


def test_auc_chunked_path_equals_the_direct_one(monkeypatch):
    import objectives.surrogates as sur

    x, y = unit(9, 4).requires_grad_(), unit(9, 4)
    obj = make("auc")
    a = obj(EmbeddingBatch(image=x, text=y)).loss
    (ga,) = torch.autograd.grad(a, x)
    monkeypatch.setattr(sur, "_PAIR_CHUNK", 100)  # 72 negatives -> chunks of 1 positive
    b = obj(EmbeddingBatch(image=x, text=y)).loss
    (gb,) = torch.autograd.grad(b, x)
    assert b.item() == pytest.approx(a.item(), rel=1e-12)
    torch.testing.assert_close(ga, gb)


# -- gradients and invariances ----------------------------------------------------------------
GRAD_PARAMS = {
    "cua": {"temperature": 0.5, "xuniform_weight": 1.0},
    "kernel-infonce": {"temperature": 0.5},
    "auc": {"temperature": 0.5},
}


@pytest.mark.parametrize("name", IMAGE_TEXT)
def test_gradcheck(name):
    obj = make(name, **GRAD_PARAMS.get(name, {}))
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b: obj(EmbeddingBatch(image=F.normalize(a, dim=-1), text=F.normalize(b, dim=-1))).loss  # noqa
    assert torch.autograd.gradcheck(fn, (x, y))


def test_gradcheck_catlip_through_embedding_and_head():
    obj = make("catlip", num_concepts=4, embed_dim=3)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = concepts(5, 4)

    def fn(a, w, b):  # the head parameters enter through a functional call
        return torch.func.functional_call(
            obj, {"weight": w, "bias": b}, (EmbeddingBatch(image=F.normalize(a, dim=-1), concepts=t),)
        ).loss

    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("name", NAMES)
def test_permuting_the_batch_leaves_the_loss_unchanged(name):
    perm = torch.randperm(9)
    if name == "catlip":
        obj = make(name, num_concepts=6, embed_dim=4)
        x, t = unit(9, 4), concepts(9, 6)
        a = obj(EmbeddingBatch(image=x, concepts=t)).loss
        b = obj(EmbeddingBatch(image=x[perm], concepts=t[perm])).loss
    else:
        obj = make(name, **({"xuniform_weight": 1.0} if name == "cua" else {}))
        x, y = unit(9, 4), unit(9, 4)
        a = obj(EmbeddingBatch(image=x, text=y)).loss
        b = obj(EmbeddingBatch(image=x[perm], text=y[perm])).loss
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


# -- properties -----------------------------------------------------------------------------
def test_align_uniform_alignment_zero_for_identical_pairs_and_pdist_uniformity():
    x = unit(8, 5)
    out = make("align-uniform")(EmbeddingBatch(image=x, text=x.clone()))
    assert out.logs["align"].item() == 0.0
    official = torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log()  # SsnL/align_uniform
    assert out.logs["uniformity"].item() == pytest.approx(official.item(), rel=1e-12)
    assert out.loss.item() == pytest.approx(official.item(), rel=1e-12)
    y = unit(8, 5)
    out = make("align-uniform", t=3.0)(EmbeddingBatch(image=x, text=y))
    official_unif = lambda z, t: torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log()  # noqa: E731
    off = (official_unif(x, 3.0) + official_unif(y, 3.0)) / 2
    assert out.logs["uniformity"].item() == pytest.approx(off.item(), rel=1e-12)
    assert out.logs["align"].item() == pytest.approx((x - y).norm(dim=1).pow(2).mean().item(), rel=1e-12)


def test_align_uniform_gradient_finite_for_coincident_points():
    x = unit(4, 3)
    z = torch.cat([x, x[:1]]).requires_grad_()  # a duplicated embedding: pdist's sqrt would give NaN
    loss = make("align-uniform")(EmbeddingBatch(image=z, text=z)).loss
    (g,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize(
    "expr,weight,name",
    [("clip + 0.1*align-uniform", 0.1, "align-uniform"), ("clip + 0.5*dispersive", 0.5, "dispersive")],
)
def test_composes_as_a_weighted_term(expr, weight, name):
    obj = build_objective(expr, {f"{name}.t" if name == "align-uniform" else f"{name}.temperature": 1.5})
    assert isinstance(obj, WeightedSum) and obj.requires == frozenset({"image", "text"})
    obj = obj.double()
    b = EmbeddingBatch(image=unit(6, 4), text=unit(6, 4))
    out = obj(b)
    expect = obj.terms[0](b).loss + weight * obj.terms[1](b).loss
    assert out.loss.item() == pytest.approx(expect.item(), rel=1e-12)
    assert f"{name}/loss" in out.logs
    assert obj.terms[1].params[("t" if name == "align-uniform" else "temperature")] == 1.5


@pytest.mark.parametrize("learnable", [True, False])
def test_cua_with_extra_weights_zero_is_clip(learnable):
    x, y = unit(8, 5), unit(8, 5)
    cua = make("cua", temperature=0.07, learnable_temperature=learnable, uniform_weight=0.0, align_weight=0.0)
    clip = make("clip", temperature=0.07, learnable_temperature=learnable)
    a, b = cua(EmbeddingBatch(image=x, text=y)).loss, clip(EmbeddingBatch(image=x, text=y)).loss
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    assert [n for n, _ in cua.named_parameters()] == [n for n, _ in clip.named_parameters()]


def test_cua_paper_defaults():
    obj = OBJECTIVES.get("cua")()
    assert obj.scale().item() == pytest.approx(100.0, rel=1e-5) and not list(obj.parameters())
    assert obj.params["uniform_weight"] == obj.params["align_weight"] == 1.0 and obj.params["t"] == 2.0


def test_dispersive_prefers_spread_embeddings_and_pdist_variant():
    spread = torch.eye(6, dtype=torch.float64)
    tight = F.normalize(1 + 0.05 * torch.randn(6, 6, dtype=torch.float64), dim=-1)
    obj = make("dispersive")
    loss = lambda z: obj(EmbeddingBatch(image=z, text=z)).loss.item()  # noqa: E731
    assert loss(spread) < loss(tight)
    x, y = unit(7, 4), unit(7, 4)
    out = make("dispersive", temperature=0.5, include_self=False)(EmbeddingBatch(image=x, text=y))
    pdist_form = lambda z: torch.pdist(z).pow(2).div(-0.5).exp().mean().log()  # noqa: E731
    expect = (pdist_form(x) + pdist_form(y)) / 2
    assert out.loss.item() == pytest.approx(expect.item(), rel=1e-12)


@pytest.mark.parametrize("params", [{"mix": 0.0}, {"mix": 1.0, "gamma": 2.0}])
def test_kernel_infonce_gaussian_kernel_equals_clip_at_half_temperature(params):
    x, y = unit(8, 5), unit(8, 5)
    clip_obj = make("clip", temperature=0.15)  # its scale is a float32 log: match it exactly
    clip = clip_obj(EmbeddingBatch(image=x, text=y)).loss
    tau = 2.0 / clip_obj.scale().item()
    k = make("kernel-infonce", temperature=tau, **params)(EmbeddingBatch(image=x, text=y)).loss
    assert k.item() == pytest.approx(clip.item(), rel=1e-9)
    # and the mixture actually differs from it
    mixed = make("kernel-infonce", temperature=0.3)(EmbeddingBatch(image=x, text=y)).loss
    assert abs(mixed.item() - clip.item()) > 1e-3


@pytest.mark.parametrize("scope", ["global", "query"])
def test_auc_is_monotone_in_the_margins_and_vanishes_for_large_ones(scope):
    x = torch.eye(5, dtype=torch.float64)  # orthonormal pairs: every positive 1, every negative 0
    losses = [
        make("auc", temperature=t, scope=scope)(EmbeddingBatch(image=x, text=x)).loss.item()
        for t in (1.0, 0.3, 0.1, 0.03, 0.001)
    ]
    assert all(a > b for a, b in zip(losses, losses[1:]))  # larger margins, smaller loss
    assert losses[-1] < 1e-100


@pytest.mark.parametrize("scope", ["global", "query"])
def test_auc_falls_with_every_positive_and_rises_with_every_negative(scope):
    """On the score matrix itself (image = I, text = S^T gives scores S at temperature 1):
    dL/ds_ii < 0 and dL/ds_ij > 0, i.e. L is monotone in every pairwise margin s_p - s_n."""
    s = (torch.randn(6, 6, dtype=torch.float64) * 3).requires_grad_()
    obj = make("auc", temperature=1.0, scope=scope)
    loss = obj(EmbeddingBatch(image=torch.eye(6, dtype=torch.float64), text=s.T)).loss
    (g,) = torch.autograd.grad(loss, s)
    eye = torch.eye(6, dtype=torch.bool)
    assert (g[eye] < 0).all() and (g[~eye] > 0).all()


def test_catlip_head_shape_errors_and_defaults():
    obj = OBJECTIVES.get("catlip")()
    assert obj.modality == "image" and obj.requires == frozenset({"image", "concepts"})
    assert obj.distributed == "local"
    c = len(concept_vocabulary())
    obj.setup(num_samples=8, batch_size=4, steps=1, num_concepts=c)  # the training data's vocabulary
    assert obj.weight.shape == (c, 128) and obj.bias.shape == (c,)
    assert {n for n, _ in obj.named_parameters()} == {"weight", "bias"}  # exist before the optimiser
    with pytest.raises(
        HyperparameterError, match=r"embed_dim=128 but the batch has 32.*objective_params.embed_dim=32"
    ):
        obj(EmbeddingBatch(image=unit(4, 32, dtype=torch.float32), concepts=torch.zeros(4, c)))
    small = OBJECTIVES.get("catlip")(embed_dim=32, num_concepts=c)
    with pytest.raises(HyperparameterError, match=f"num_concepts={c} but the batch has 5"):
        small(EmbeddingBatch(image=unit(4, 32, dtype=torch.float32), concepts=torch.zeros(4, 5)))
    with pytest.raises(ValueError, match="needs batch fields"):
        small(EmbeddingBatch(image=unit(4, 32, dtype=torch.float32)))


def test_catlip_loss_falls_to_zero_when_the_head_separates_the_concepts():
    x = torch.eye(4, dtype=torch.float64)
    t = concepts(4, 3)
    obj = make("catlip", num_concepts=3, embed_dim=4)
    with torch.no_grad():
        obj.weight.copy_(50 * (2 * t.T - 1))  # concept c fires exactly on the images that have it
        obj.bias.zero_()
    assert obj(EmbeddingBatch(image=x, concepts=t)).loss.item() < 1e-18


# -- hyperparameters -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,param,value",
    [
        ("align-uniform", "t", 0.0),
        ("align-uniform", "alpha", -1.0),
        ("align-uniform", "uniform_weight", -0.5),
        ("cua", "temperature", 0.0),
        ("cua", "xuniform_weight", -1.0),
        ("dispersive", "temperature", -0.5),
        ("dispersive", "include_self", "yes"),
        ("kernel-infonce", "gamma", 2.5),
        ("kernel-infonce", "mix", 1.5),
        ("auc", "temperature", 0.0),
        ("auc", "scope", "batch"),
        ("catlip", "embed_dim", 0),
        ("catlip", "num_concepts", -3),
    ],
)
def test_invalid_hyperparameters_name_the_parameter(name, param, value):
    with pytest.raises(HyperparameterError, match=rf"{name}: {param}"):
        OBJECTIVES.get(name)(**{param: value})


@pytest.mark.parametrize("name", NAMES)
def test_search_space_yields_a_valid_configuration(name):
    cls = OBJECTIVES.get(name)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    params = cls.search_space(trial)
    assert set(params) <= set(cls.hparams)
    obj = cls(**params)
    fixed = cls.search_space(optuna.trial.FixedTrial({k: v for k, v in params.items()}))
    assert fixed == params and obj.params.keys() == cls.hparams.keys()


def test_metadata():
    for name in NAMES:
        cls = OBJECTIVES.get(name)
        assert cls.citation and cls.family and cls.distributed in {"global", "local"}
        assert cls.__doc__ and "Distributed:" in cls.__doc__
        for k, hp in cls.hparams.items():  # defaults are valid
            hp.validate(name, k, hp.default)
    assert OBJECTIVES.get("kernel-infonce").hparams["gamma"].default == 1.0
    assert OBJECTIVES.get("align-uniform").hparams["t"].default == 2.0


# -- a short real training run ----------------------------------------------------------------
SPEC = ShapesSpec(n_train=512, n_val=32, n_test=32, n_heldout=32, n_zeroshot=32)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """The world, tokenised training data and one initial harness-micro model, built once."""
    world = ShapesWorld(SPEC, tmp_path_factory.mktemp("geo-world"))
    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    return (
        copy.deepcopy(model.state_dict()),
        (model, tok, size, mean, std),
        ShapesTrainData(world, tok, seed=0),
    )


@pytest.mark.parametrize(
    "expr,params",
    [
        ("align-uniform", {}),
        ("cua", {}),
        ("clip + 0.5*dispersive", {}),
        ("kernel-infonce", {}),
        ("auc", {}),
        ("catlip", {"embed_dim": 32}),
    ],
)
def test_training_loss_is_finite_and_falls(setting, expr, params):
    state, (model, tok, size, mean, std), data = setting
    model.load_state_dict(state)  # every run starts from the same initial weights
    enc = Encoder(model, tok, size, mean, std)
    obj = build_objective(expr, params)
    budget = Budget(steps=30, batch_size=32, lr=2e-3, warmup_steps=3, log_every=1)
    res = train(model, obj, enc, data, budget, seed=0, device=torch.device("cpu"))
    losses = [v for _, v in res.loss_curve]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, (expr, first, last)
