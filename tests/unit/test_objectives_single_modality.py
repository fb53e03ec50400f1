"""Intra-modal terms (tic, intra-modal) and single-modality objectives (nt-xent, supcon, simcse)."""

import math

import optuna
import pytest
import torch
import torch.nn.functional as F
from conftest import make, unit
from pytorch_metric_learning.losses import NTXentLoss, SupConLoss

from harness.core.batch import EmbeddingBatch
from objectives import OBJECTIVES, HyperparameterError, WeightedSum, build_objective

torch.manual_seed(0)
NAMES = ["tic", "intra-modal", "nt-xent", "supcon", "simcse"]


def full_batch(n=7, d=5, k=3, dtype=torch.float64, n_labels=3):
    return EmbeddingBatch(
        image=unit(n, d, dtype=dtype),
        text=unit(n, d, dtype=dtype),
        image_view=unit(n, d, dtype=dtype),
        text_view=unit(n, d, dtype=dtype),
        hard_negative_text=unit(n, k, d, dtype=dtype),
        labels=torch.randint(0, n_labels, (n,)),
        index=torch.arange(n),
    )


def permute(b, perm):
    return EmbeddingBatch(
        **{
            f: getattr(b, f)[perm]
            for f in ("image", "text", "image_view", "text_view", "hard_negative_text", "labels", "index")
        }
    )


def lse(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


# --------------------------------------------------------------------------- nested-loop references
def dot(a, b):
    return float(a @ b)


def tic_reference(t, k=10, threshold=0.95, temperature=1.0):
    n = len(t)
    total = 0.0
    for i in range(n):
        row = []
        for j in range(n):
            s = dot(t[i], t[j])
            row.append(0.0 if i == j or s > threshold else s)
        top = sorted(row, reverse=True)[: min(k, n - 1)]
        total += lse([v / temperature for v in top])
    return total / n


def nce_reference(a, b, s):
    """Symmetric InfoNCE, row i of a paired with row i of b."""
    n = len(a)
    total = 0.0
    for i in range(n):
        total -= s * dot(a[i], b[i]) - lse([s * dot(a[i], b[j]) for j in range(n)])
        total -= s * dot(b[i], a[i]) - lse([s * dot(b[i], a[j]) for j in range(n)])
    return total / (2 * n)


def ntxent_reference(a, b, t):
    z = list(a) + list(b)
    n, m = len(a), len(z)
    total = 0.0
    for i in range(m):
        p = (i + n) % m
        total -= dot(z[i], z[p]) / t - lse([dot(z[i], z[j]) / t for j in range(m) if j != i])
    return total / m


def supcon_reference(a, b, labels, t, tb):
    z = list(a) + list(b)
    y = [int(v) for v in labels] * 2
    m = len(z)
    total = 0.0
    for i in range(m):
        denom = lse([dot(z[i], z[j]) / t for j in range(m) if j != i])
        pos = [p for p in range(m) if p != i and y[p] == y[i]]
        total += -(t / tb) * sum(dot(z[i], z[p]) / t - denom for p in pos) / len(pos)
    return total / m


def simcse_reference(h, hp, hn=None, t=0.05, alpha=1.0):
    n = len(h)
    total = 0.0
    for i in range(n):
        terms = [dot(h[i], hp[j]) / t for j in range(n)]
        if hn is not None:
            for j in range(n):
                w = alpha if i == j else 1.0
                if w > 0:
                    terms.append(math.log(w) + dot(h[i], hn[j]) / t)
        total -= dot(h[i], hp[i]) / t - lse(terms)
    return total / n


# --------------------------------------------------------------------------------- exact values
@pytest.mark.parametrize(
    "params", [{}, {"k": 3}, {"k": 2, "temperature": 0.3}, {"threshold": 0.2}, {"k": 1, "threshold": -0.5}]
)
def test_tic_matches_nested_loop_reference(params):
    t = unit(8, 4)
    t[5] = t[2]  # an exact duplicate: its similarity 1 > 0.95 is zeroed
    out = make("tic", **params)(EmbeddingBatch(text=t))
    assert out.loss.item() == pytest.approx(tic_reference(t, **params), rel=1e-10)


def test_tic_equals_official_code():
    """FG-CLIP 2 ``hard_category_contrastive_loss`` + ``PNTextLoss`` (no temperature, k = 10)."""
    t = unit(16, 6)

    def official(x):
        b = x.shape[0]
        sim = (torch.ones(b, b, dtype=x.dtype) - torch.eye(b, dtype=x.dtype)) * (x @ x.T)
        sim = torch.where(sim > 0.95, torch.zeros_like(sim), sim)
        values = sim.topk(10, dim=1, largest=True, sorted=True).values
        return torch.mean(-1.0 * torch.log(1.0 / values.exp().sum(1)))

    assert make("tic")(EmbeddingBatch(text=t)).loss.item() == pytest.approx(official(t).item(), rel=1e-12)


def test_tic_clips_k_and_zeroes_near_duplicates():
    # k = 10 is clipped to B - 1 = 3; with positive similarities these are the off-diagonal entries
    t = F.normalize(
        torch.tensor(
            [[1.0, 0.2, 0.1, 0.0], [0.3, 1.0, 0.0, 0.2], [0.0, 0.4, 1.0, 0.1], [0.2, 0.0, 0.3, 1.0]],
            dtype=torch.float64,
        ),
        dim=-1,
    )
    assert ((t @ t.T) > 0).all() and ((t @ t.T).fill_diagonal_(0) < 0.95).all()
    off = [[dot(t[i], t[j]) for j in range(4) if j != i] for i in range(4)]
    expect = sum(lse(r) for r in off) / 4
    assert make("tic")(EmbeddingBatch(text=t)).loss.item() == pytest.approx(expect, rel=1e-10)
    # as in the official code the zeroed diagonal stays a candidate: it displaces a negative similarity
    u = F.normalize(torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0]], dtype=torch.float64), dim=-1)
    rows = [sorted([0.0] + [dot(u[i], u[j]) for j in range(3) if j != i], reverse=True)[:2] for i in range(3)]
    expect = sum(lse(r) for r in rows) / 3
    assert make("tic")(EmbeddingBatch(text=u)).loss.item() == pytest.approx(expect, rel=1e-10)
    # two copies of a caption: their similarity 1 > 0.95 counts as 0, i.e. exp(0) = 1 in the sum
    t = torch.cat([t, t[:1]])
    off = [[0.0 if {i, j} == {0, 4} else dot(t[i], t[j]) for j in range(5) if j != i] for i in range(5)]
    expect = sum(lse(sorted(r, reverse=True)[:4]) for r in off) / 5
    assert make("tic")(EmbeddingBatch(text=t)).loss.item() == pytest.approx(expect, rel=1e-10)
    with pytest.raises(ValueError, match="at least 2"):
        make("tic")(EmbeddingBatch(text=unit(1, 3)))


def test_tic_modality_and_clip_composition():
    tic = OBJECTIVES.get("tic")
    assert tic.modality == "text" and tic.requires == frozenset({"text"})
    obj = build_objective("clip + 0.1*tic", {"tic.k": 4})
    assert isinstance(obj, WeightedSum)
    assert obj.modality == "image-text" and obj.requires == frozenset({"image", "text"})
    assert obj.terms[1].params["k"] == 4
    b = full_batch(n=9, dtype=torch.float32)
    out = obj(b)
    expect = obj.terms[0](b).loss + 0.1 * obj.terms[1](b).loss
    assert out.loss.item() == pytest.approx(expect.item(), rel=1e-6)
    assert {"clip/loss", "tic/loss", "tic/hardest_similarity"} <= set(out.logs)


@pytest.mark.parametrize("wi,wt", [(0.5, 0.5), (1.0, 0.0), (0.0, 2.0), (0.3, 1.7)])
def test_intra_modal_matches_nested_loop_reference(wi, wt):
    b = full_batch()
    obj = make("intra-modal", temperature=0.2, image_weight=wi, text_weight=wt)
    s = obj.scale().item()
    expect = (
        nce_reference(b.image, b.text, s)
        + wi * nce_reference(b.image, b.image_view, s)
        + wt * nce_reference(b.text, b.text_view, s)
    )
    out = obj(b)
    assert out.loss.item() == pytest.approx(expect, rel=1e-10)
    assert out.logs["inter"].item() == pytest.approx(nce_reference(b.image, b.text, s), rel=1e-10)


def test_intra_modal_with_zero_weights_equals_clip():
    b = full_batch(n=10)
    ours = make("intra-modal", image_weight=0.0, text_weight=0.0, temperature=0.1)(b).loss
    clip = make("clip", temperature=0.1)(b).loss
    assert ours.item() == pytest.approx(clip.item(), rel=1e-12)
    # and each intra-modal term is CLIP's loss on the pair of views
    obj = make("intra-modal")
    c = make("clip")
    expect = (
        c(b).loss
        + 0.5 * c(EmbeddingBatch(image=b.image, text=b.image_view)).loss
        + 0.5 * c(EmbeddingBatch(image=b.text, text=b.text_view)).loss
    )
    assert obj(b).loss.item() == pytest.approx(expect.item(), rel=1e-12)
    obj.scale.log_scale.data.fill_(10.0)
    obj.after_step()
    assert obj.scale().item() == pytest.approx(100.0)


@pytest.mark.parametrize("t", [0.5, 0.1, 2.0])
def test_ntxent_matches_nested_loop_reference(t):
    b = full_batch()
    out = make("nt-xent", temperature=t)(b)
    assert out.loss.item() == pytest.approx(ntxent_reference(b.image, b.image_view, t), rel=1e-10)


def test_ntxent_equals_pytorch_metric_learning_with_gradients():
    x = unit(12, 8, dtype=torch.float32).requires_grad_()
    y = unit(12, 8, dtype=torch.float32).requires_grad_()
    # pml's CosineSimilarity normalises its input: normalise here too so the gradients compare
    batch = EmbeddingBatch(image=F.normalize(x, dim=-1), image_view=F.normalize(y, dim=-1))
    ours = OBJECTIVES.get("nt-xent")(temperature=0.3)(batch).loss
    labels = torch.arange(12).repeat(2)
    ref = NTXentLoss(temperature=0.3)(torch.cat([x, y]), labels)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, r in zip(torch.autograd.grad(ours, (x, y)), torch.autograd.grad(ref, (x, y))):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("t,tb,n_labels", [(0.1, 0.07, 3), (0.5, 0.5, 2), (0.2, 0.1, 100)])
def test_supcon_matches_nested_loop_reference(t, tb, n_labels):
    b = full_batch(n=8, n_labels=n_labels)
    out = make("supcon", temperature=t, base_temperature=tb)(b)
    expect = supcon_reference(b.image, b.image_view, b.labels, t, tb)
    assert out.loss.item() == pytest.approx(expect, rel=1e-10)


def test_supcon_equals_pytorch_metric_learning_up_to_the_base_temperature_factor():
    b = full_batch(n=16, n_labels=4)
    obj = make("supcon")  # t = 0.1, t_b = 0.07
    ref = SupConLoss(temperature=0.1)(torch.cat([b.image, b.image_view]), torch.cat([b.labels, b.labels]))
    assert obj(b).loss.item() == pytest.approx(ref.item() * 0.1 / 0.07, rel=1e-9)
    same = make("supcon", temperature=0.1, base_temperature=0.1)(b).loss
    assert same.item() == pytest.approx(ref.item(), rel=1e-9)


def test_supcon_with_distinct_labels_is_ntxent():
    b = full_batch(n=9)
    b.labels = torch.randperm(9) * 3
    sup = make("supcon", temperature=0.3, base_temperature=0.07)(b).loss
    nt = make("nt-xent", temperature=0.3)(b).loss
    assert sup.item() == pytest.approx(nt.item() * 0.3 / 0.07, rel=1e-12)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"temperature": 0.2},
        {"supervised": True},
        {"supervised": True, "hard_negative_weight": 0.0},
        {"supervised": True, "hard_negative_weight": 2.5, "temperature": 0.1},
    ],
)
def test_simcse_matches_nested_loop_reference(params):
    b = full_batch()
    out = make("simcse", **params)(b)
    hn = b.hard_negative_text[:, 0] if params.get("supervised") else None
    expect = simcse_reference(
        b.text, b.text_view, hn, params.get("temperature", 0.05), params.get("hard_negative_weight", 1.0)
    )
    assert out.loss.item() == pytest.approx(expect, rel=1e-10)


def test_simcse_equals_official_code_and_alpha_behaviour():
    """Official ``cl_forward``: hard-negative logits get ``hard_negative_weight`` = log(alpha)
    added on the diagonal (its default 0 is alpha = 1); one direction, CE over [z1.z2 | z1.z3]."""
    b = full_batch(n=10)
    z1, z2, z3 = b.text, b.text_view, b.hard_negative_text[:, 0]

    def official(log_alpha):
        cos = torch.cat([z1 @ z2.T, z1 @ z3.T], 1) / 0.05
        eye = torch.eye(10, dtype=cos.dtype)
        weights = torch.cat([torch.zeros_like(eye), log_alpha * eye], 1)
        return F.cross_entropy(cos + weights, torch.arange(10))

    sup = lambda a: make("simcse", supervised=True, hard_negative_weight=a)(b).loss.item()  # noqa
    for a in (1.0, 0.5, 2.0):
        assert sup(a) == pytest.approx(official(math.log(a)).item(), rel=1e-12)
    # alpha = 0 drops only the own hard negative; more weight on it raises the loss
    assert sup(0.0) < sup(0.5) < sup(1.0) < sup(2.0)
    assert sup(0.0) > make("simcse")(b).loss.item()  # other samples' hard negatives remain
    unsup = F.cross_entropy(z1 @ z2.T / 0.05, torch.arange(10))
    assert make("simcse")(b).loss.item() == pytest.approx(unsup.item(), rel=1e-12)


def test_simcse_requires_follow_supervised():
    cls = OBJECTIVES.get("simcse")
    assert cls().requires == frozenset({"text", "text_view"})
    sup = cls(supervised=True)
    assert sup.requires == frozenset({"text", "text_view", "hard_negative_text"})
    assert sup.modality == "text" and cls.describe()["requires"] == ["text", "text_view"]
    with pytest.raises(ValueError, match="hard_negative_text"):
        sup(EmbeddingBatch(text=unit(4, 3), text_view=unit(4, 3)))


def test_modalities_and_requirements():
    expect = {
        "tic": ("text", {"text"}),
        "intra-modal": ("image-text", {"image", "text", "image_view", "text_view"}),
        "nt-xent": ("image", {"image", "image_view"}),
        "supcon": ("image", {"image", "image_view", "labels"}),
        "simcse": ("text", {"text", "text_view"}),
    }
    for name, (modality, requires) in expect.items():
        obj = OBJECTIVES.get(name)()
        assert obj.modality == modality and obj.requires == frozenset(requires), name
        assert obj.distributed == "global" and obj.citation and obj.__doc__
        d = OBJECTIVES.get(name).describe()
        assert d["modality"] == modality and d["requires"] == sorted(requires)


# -------------------------------------------------------------------------------- generic checks
def checked(name, **params):
    obj = make(name, **params)
    fields = sorted(OBJECTIVES.get(name)(**params).requires - {"labels"})

    def fn(*tensors):
        kw = {f: F.normalize(x, dim=-1) for f, x in zip(fields, tensors)}
        return obj(EmbeddingBatch(labels=torch.tensor([0, 1, 0, 2, 1]), **kw)).loss

    shapes = {"hard_negative_text": (5, 2, 3)}
    inputs = [torch.randn(*shapes.get(f, (5, 3)), dtype=torch.float64, requires_grad=True) for f in fields]
    return fn, inputs


@pytest.mark.parametrize(
    "name,params",
    [
        ("tic", {"k": 2}),
        ("tic", {"temperature": 0.5}),
        ("intra-modal", {"temperature": 0.5}),
        ("nt-xent", {}),
        ("supcon", {"temperature": 0.5}),
        ("simcse", {"temperature": 0.5}),
        ("simcse", {"temperature": 0.5, "supervised": True, "hard_negative_weight": 0.5}),
    ],
)
def test_gradcheck(name, params):
    torch.manual_seed(1)
    fn, inputs = checked(name, **params)
    assert torch.autograd.gradcheck(fn, tuple(inputs))


@pytest.mark.parametrize("name,params", [(n, {}) for n in NAMES] + [("simcse", {"supervised": True})])
def test_permuting_the_batch_leaves_the_loss_unchanged(name, params):
    b = full_batch(n=9)
    perm = torch.randperm(9)
    obj = make(name, **params)
    assert obj(b).loss.item() == pytest.approx(obj(permute(b, perm)).loss.item(), rel=1e-12)


@pytest.mark.parametrize(
    "name,param,value",
    [
        ("tic", "k", 0),
        ("tic", "threshold", 1.5),
        ("tic", "temperature", 0.0),
        ("intra-modal", "temperature", -0.1),
        ("intra-modal", "image_weight", -1.0),
        ("intra-modal", "text_weight", float("nan")),
        ("nt-xent", "temperature", 0.0),
        ("supcon", "temperature", -1.0),
        ("supcon", "base_temperature", 0.0),
        ("simcse", "temperature", 0.0),
        ("simcse", "hard_negative_weight", -0.5),
        ("simcse", "supervised", "yes"),
    ],
)
def test_invalid_hyperparameters_name_the_parameter(name, param, value):
    with pytest.raises(HyperparameterError, match=param):
        OBJECTIVES.get(name)(**{param: value})


@pytest.mark.parametrize("name", NAMES)
def test_search_space_yields_valid_configurations(name):
    cls = OBJECTIVES.get(name)
    fixed = {
        k: hp.default
        for k, hp in cls.hparams.items()
        if hp.tunable and (hp.search is not None or hp.choices is not None)
    }
    assert cls.search_space(optuna.trial.FixedTrial(fixed)) == fixed
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        params = cls.search_space(study.ask())
        assert params  # every objective has at least one searched hyperparameter
        obj = cls(**params).double()
        assert math.isfinite(obj(full_batch(n=12)).loss.item())


# ----------------------------------------------------------------------- training with the trainer
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from harness.data.shapes import ShapesSpec, ShapesWorld

    spec = ShapesSpec(n_train=512, n_val=32, n_test=32, n_heldout=32, n_zeroshot=32)
    return ShapesWorld(spec, tmp_path_factory.mktemp("w"))


@pytest.mark.parametrize(
    "expr,params",
    [
        ("tic", {}),
        ("clip + 0.1*tic", {}),
        ("intra-modal", {}),
        ("nt-xent", {}),
        ("supcon", {}),
        ("simcse", {}),
        ("simcse", {"supervised": True}),
    ],
)
def test_training_loss_is_finite_and_falls(world, expr, params):
    from harness.config import Budget
    from harness.data.batches import ShapesTrainData
    from harness.data.shapes import vocabulary
    from harness.engine.models import Encoder, ModelConfig, build_model
    from harness.engine.trainer import train

    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    enc = Encoder(model, tok, size, mean, std)
    data = ShapesTrainData(world, tok, seed=0)
    obj = build_objective(expr, params)
    budget = Budget(steps=30, batch_size=32, lr=2e-3, warmup_steps=3, log_every=1)
    res = train(model, obj, enc, data, budget, seed=0, device=torch.device("cpu"))
    losses = [v for _, v in res.loss_curve]
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, (expr, first, last)


def test_text_tower_variants_of_nt_xent_and_align_uniform():
    """``tower="text"`` / ``pairs="text"``: the same losses over (text, text_view), text tower only,
    never searched by the tuner."""
    from objectives import build_objective

    b = full_batch(n=10)
    img = build_objective("nt-xent", {})
    txt = build_objective("nt-xent", {"tower": "text"})
    assert txt.modality == "text" and txt.requires == {"text", "text_view"}
    swapped = EmbeddingBatch(image=b.text, image_view=b.text_view)
    assert torch.allclose(txt(b).loss, img(swapped).loss)
    au = build_objective("align-uniform", {"pairs": "text"})
    assert au.modality == "text" and au.requires == {"text", "text_view"}
    ref = build_objective("align-uniform", {})(EmbeddingBatch(image=b.text, text=b.text_view)).loss
    assert torch.allclose(au(b).loss, ref)
    assert "tower" not in OBJECTIVES.get("nt-xent").search_space(
        optuna.trial.FixedTrial({"temperature": 0.5})
    )
