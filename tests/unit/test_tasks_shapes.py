"""The linear-probe, STS, intra-modal retrieval and geometry tasks: metric functions on
hand-computed cases, each task once on a tiny world, and the ``shapes`` suite through the CLI."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import runs, smoke_args

from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
from harness.engine.models import Encoder, ModelConfig, build_model
from tasks import TASKS, EmbeddingCache, EvalContext
from tasks.geometry import alignment, effective_rank, modality_gap, pair_cosines, uniformity
from tasks.intramodal import average_precision, intra_modal_metrics
from tasks.linear import ShapesLinear
from tasks.probe import fit_logistic_regression, probe_metrics
from tasks.sts import gold_similarity, parse_caption, sts_metrics, sts_pairs

# ----------------------------------------------------------------------------- linear probe


def _blobs(n=240, d=5, c=3, seed=0, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    mu = 1.5 * torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return mu[y] + noise * torch.randn(n, d, generator=g), y


@pytest.mark.parametrize("wd", [1e-3, 1e-1])
def test_logistic_regression_matches_sklearn(wd):
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs()
    n = len(y)
    probe = fit_logistic_regression(x, y, wd)
    sk = LogisticRegression(C=1.0 / (n * wd), tol=1e-12, max_iter=10000).fit(x.double().numpy(), y.numpy())
    assert np.array_equal(probe.predict(x).numpy(), sk.predict(x.double().numpy()))
    np.testing.assert_allclose(probe.weight.numpy(), sk.coef_, atol=1e-4)
    # the cross-entropy is invariant to a common shift of the intercepts: compare them centred
    b = probe.bias.numpy()
    np.testing.assert_allclose(b - b.mean(), sk.intercept_ - sk.intercept_.mean(), atol=1e-4)


def test_logistic_regression_is_deterministic_and_regularised():
    x, y = _blobs(seed=1)
    a, b = fit_logistic_regression(x, y, 1e-2), fit_logistic_regression(x, y, 1e-2)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    strong = fit_logistic_regression(x, y, 10.0)
    assert strong.weight.norm() < a.weight.norm()
    # classes absent from the fit still get a (never predicted) row
    assert fit_logistic_regression(x, y, 1e-2, n_classes=5).weight.shape == (5, x.shape[1])
    with pytest.raises(ValueError):
        fit_logistic_regression(x, y, -1.0)


def test_probe_metrics_acc5_only_above_five_classes():
    logits = torch.tensor([[2.0, 1, 0, 0, 0, 0], [0.0, 0, 0, 0, 1, 2]])
    target = torch.tensor([1, 5])
    m6 = probe_metrics(logits, target)
    assert m6["acc1"] == pytest.approx(0.5) and m6["acc5"] == pytest.approx(1.0)
    assert m6["mean_per_class_recall"] == pytest.approx(0.5)
    assert "acc5" not in probe_metrics(logits[:, :5], torch.tensor([1, 4]))


# ----------------------------------------------------------------------------- STS


def test_sts_metrics_hand_computed():
    e1 = torch.tensor([[1.0, 0.0]] * 4)
    e2 = torch.tensor([[2.0, 0.0], [0.6, 0.8], [0.0, 3.0], [-1.0, 0.0]])  # cos 1, .6, 0, -1 (scale-free)
    gold = [5.0, 3.0, 4.0, 0.0]
    m = sts_metrics(e1, e2, gold)
    # ranks of cos 4,3,2,1 vs gold 4,2,3,1: sum d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8
    assert m["spearman"] == pytest.approx(80.0)
    # deviations cos (.85,.45,-.15,-1.15), gold (2,0,1,-3): cov 5.0, ss 2.27 and 14
    assert m["pearson"] == pytest.approx(100 * 5.0 / math.sqrt(2.27 * 14))
    assert sts_metrics(e1, e1, gold) == {"spearman": 0.0, "pearson": 0.0}  # constant similarity
    with pytest.raises(ValueError):
        sts_metrics(e1, e2, gold[:3])


def test_caption_parsing_is_canonical():
    a = parse_caption("a small red circle right of a large blue square")
    assert a.axis == 0 and a.objects[0] == {"size": "large", "colour": "blue", "shape": "square"}
    assert parse_caption("a large blue square left of a small red circle") == a
    b = parse_caption("the red circle")
    assert b.axis is None and b.objects == ({"colour": "red", "shape": "circle"},) and b.n_facts == 2
    assert parse_caption("a red circle below a cross").objects[0] == {"shape": "cross"}
    with pytest.raises(ValueError):
        parse_caption("a red")


def test_gold_similarity_hand_computed():
    cap = "a small red circle left of a large blue square"
    assert gold_similarity(cap, "a large blue square right of a small red circle") == 5.0  # paraphrase
    assert gold_similarity("a small red circle", "the small red circle") == 5.0
    # relation swap: same objects, relation reversed -> 6 of 7 facts
    assert gold_similarity(cap, "a small red circle right of a large blue square") == pytest.approx(30 / 7)
    # object replacement: one shape differs -> 6 of 7
    assert gold_similarity(cap, "a small red circle left of a large blue cross") == pytest.approx(30 / 7)
    # attribute swap: the colours exchanged -> sizes, shapes, relation agree: 5 of 7
    assert gold_similarity(cap, "a small blue circle left of a large red square") == pytest.approx(25 / 7)
    # other axis: objects agree, relation does not
    assert gold_similarity(cap, "a small red circle above a large blue square") == pytest.approx(30 / 7)
    # single vs pair: the best-matching object, over the pair's 7 facts
    assert gold_similarity("a large blue square", cap) == pytest.approx(15 / 7)
    assert gold_similarity("a large green square", cap) == pytest.approx(10 / 7)
    assert gold_similarity("a small red circle", "a large red square") == pytest.approx(5 / 3)
    assert gold_similarity("a small red circle", "a large green square") == 0.0
    # nothing shared but the sizes, and those only under the crossed matching (which drops the relation)
    assert gold_similarity(cap, "a large green cross above a small white triangle") == pytest.approx(10 / 7)
    # straight matching: the right objects' size and the relation agree
    assert gold_similarity(cap, "a large green cross left of a large white triangle") == pytest.approx(10 / 7)


def test_sts_pairs_deterministic_and_graded(tiny_world):
    sp = tiny_world.split("test")
    p, q = sts_pairs(sp), sts_pairs(sp)
    assert all(np.array_equal(p[k], q[k]) for k in p)
    n = len(sp)
    assert len(p["gold"]) == 3 * n and np.all(p["gold"][:n] == 5.0)
    assert np.all((p["gold"] >= 0) & (p["gold"] <= 5))
    assert np.all(p["gold"][n : 2 * n] < 5.0)  # every hard negative changes at least one fact
    assert np.all(p["right"][2 * n :] != np.arange(n))  # a random *other* caption


# ----------------------------------------------------------------------------- intra-modal


def test_average_precision_hand_computed():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]])
    pos = torch.tensor([[1, 0, 1, 0, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    ap = average_precision(scores, pos)
    # row 0: precision 1/1, 2/3, 3/5 at the positives; row 1: its positive ranks last, 1/5
    assert ap.tolist() == pytest.approx([(1 + 2 / 3 + 3 / 5) / 3, 1 / 5])
    assert torch.allclose(average_precision(scores, pos, chunk=1), ap)
    # ties broken by index order, as in first_positive_rank
    assert average_precision(torch.zeros(1, 3), torch.tensor([[False, True, False]])).tolist() == [0.5]
    with pytest.raises(ValueError, match="positive"):
        average_precision(scores, torch.zeros_like(pos))


def test_intra_modal_metrics_hand_computed():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]])
    pos = torch.tensor([[0, 1, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    m, ranks, ap = intra_modal_metrics(scores, pos, ks=(1, 2))
    assert ranks.tolist() == [2, 2]
    assert m["recall@1"] == 0.0 and m["recall@2"] == 1.0
    assert m["map"] == pytest.approx(((1 / 2 + 2 / 5) / 2 + 1 / 2) / 2)
    assert m["mean_rank"] == 2.0 and m["median_rank"] == 2.0


# ----------------------------------------------------------------------------- geometry


def test_effective_rank_hand_computed():
    d = 6
    assert effective_rank(torch.eye(d), center=False) == pytest.approx(d)
    assert effective_rank(torch.eye(d)) == pytest.approx(d - 1)  # centring removes the mean direction
    assert effective_rank(torch.cat([torch.eye(d), -torch.eye(d)])) == pytest.approx(d)  # already centred
    rank1 = torch.arange(1.0, 6.0)[:, None] * torch.randn(1, d, generator=torch.Generator().manual_seed(0))
    assert effective_rank(rank1, center=False) == pytest.approx(1.0)
    assert effective_rank(rank1) == pytest.approx(1.0)
    # singular values (2, 1): p = (2/3, 1/3) -> exp(H)
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert effective_rank(torch.diag(torch.tensor([2.0, 1.0])), center=False) == pytest.approx(math.exp(h))
    assert effective_rank(torch.ones(4, 3)) == 0.0


def test_modality_gap_of_shifted_clouds_is_the_shift():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    shift = torch.tensor([0.3, -0.4, 0.0, 1.2])
    assert modality_gap(x, x + shift) == pytest.approx(float(shift.norm()))
    assert modality_gap(x, x) == 0.0


def test_alignment_uniformity_cosines_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert alignment(x, y) == pytest.approx((2.0 + 0.0) / 2)
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])  # squared distances 4, 2, 2
    assert uniformity(z) == pytest.approx(math.log((math.exp(-8) + 2 * math.exp(-4)) / 3))
    assert uniformity(z, t=1.0) == pytest.approx(math.log((math.exp(-4) + 2 * math.exp(-2)) / 3))
    # far-apart points: the log-mean-exp stays finite
    assert math.isfinite(uniformity(torch.tensor([[0.0], [1000.0]])))
    pos, neg = pair_cosines(torch.eye(2), torch.tensor([[2.0, 0.0], [0.6, 0.8]]))
    # S = [[1, .6], [0, .8]]: diagonal mean .9, off-diagonal mean .3
    assert pos == pytest.approx(0.9) and neg == pytest.approx(0.3)


# ----------------------------------------------------------------------------- tasks on a tiny world


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    spec = ShapesSpec(n_train=512, n_val=64, n_test=128, n_heldout=64, n_zeroshot=64)
    return ShapesWorld(spec, tmp_path_factory.mktemp("tiny-world"))


@pytest.fixture(scope="module")
def ctx(tiny_world):
    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    return EvalContext(encoder=Encoder(model, tok, size, mean, std), world=tiny_world)


EXPECTED = {
    "shapes-linear": (
        "linear_probe",
        "image",
        "acc1",
        [
            "shape/acc1",
            "shape/mean_per_class_recall",
            "colour/acc1",
            "colour/acc5",
            "colour/mean_per_class_recall",
            "layout/acc1",
            "layout/mean_per_class_recall",
            "shape/weight_decay",
            "colour/weight_decay",
            "layout/weight_decay",
        ],
    ),
    "shapes-sts": ("sts", "text", "spearman", ["spearman", "pearson"]),
    "shapes-i2i": (
        "intra_modal_retrieval",
        "image",
        "map",
        ["recall@1", "recall@5", "recall@10", "map", "mean_rank", "n_queries"],
    ),
    "shapes-t2t": (
        "intra_modal_retrieval",
        "text",
        "map",
        ["recall@1", "recall@5", "recall@10", "map", "mean_rank", "n_queries"],
    ),
    "shapes-geometry": (
        "geometry",
        "image-text",
        "modality_gap",
        [
            "alignment",
            "uniformity_image",
            "uniformity_text",
            "modality_gap",
            "effective_rank_image",
            "effective_rank_text",
            "mean_cosine_positive",
            "mean_cosine_negative",
        ],
    ),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_task_runs_on_tiny_world(name, ctx, tiny_world):
    family, modality, main, keys = EXPECTED[name]
    cls = TASKS.get(name)
    assert (cls.family, cls.modality, cls.main_score, cls.dataset, cls.license) == (
        family,
        modality,
        main,
        "shapes-world",
        "generated",
    )
    assert cls.citation and cls.describe()["modality"] == modality
    res = cls().evaluate(ctx)
    m = res.metrics
    assert set(keys) <= set(m), set(keys) - set(m)
    assert res.main_score == m[main] and res.dataset_fingerprint == tiny_world.fingerprint
    assert res.n_items > 0 and len(res.predictions) == res.n_items
    assert all(math.isfinite(v) for v in m.values()), m
    json.dumps(res.to_dict())  # results documents are JSON
    test = tiny_world.split("test")
    n = len(test)
    if name == "shapes-linear":
        assert res.higher_is_better and len(res.item_scores) == n
        assert np.mean(res.item_scores) == pytest.approx(m["acc1"])
        for t in ("shape", "colour", "layout"):
            assert 0 <= m[f"{t}/acc1"] <= 1 and 0 <= m[f"{t}/mean_per_class_recall"] <= 1
            assert m[f"{t}/weight_decay"] in ShapesLinear.weight_decays
        assert "shape/acc5" not in m and "layout/acc5" not in m and m["colour/acc5"] >= m["colour/acc1"]
        assert m["acc1"] == pytest.approx(np.mean([m[f"{t}/acc1"] for t in ("shape", "colour", "layout")]))
    elif name == "shapes-sts":
        assert -100 <= m["spearman"] <= 100 and -100 <= m["pearson"] <= 100 and res.n_items == 3 * n
    elif name in ("shapes-i2i", "shapes-t2t"):
        for k in (1, 5, 10):
            assert 0 <= m[f"recall@{k}"] <= 1
        assert m["recall@1"] <= m["recall@5"] <= m["recall@10"]
        assert 0 < m["map"] <= 1 and m["mean_rank"] >= 1
        assert res.n_items == m["n_queries"] and np.mean(res.item_scores) == pytest.approx(m["map"])
        if name == "shapes-t2t":
            assert m["n_queries"] == n
        else:
            counts = np.unique(test.labels, return_counts=True)[1]
            assert m["n_queries"] == counts[counts > 1].sum() and m["n_queries"] + m["n_skipped"] == n
    else:
        assert not res.higher_is_better
        assert 0 <= m["modality_gap"] <= 2 and 0 <= m["alignment"] <= 4
        assert -4 <= m["uniformity_image"] <= 0 and -4 <= m["uniformity_text"] <= 0
        assert 1 <= m["effective_rank_image"] <= 32 and 1 <= m["effective_rank_text"] <= 32
        assert -1 <= m["mean_cosine_negative"] <= 1 and -1 <= m["mean_cosine_positive"] <= 1


def test_intra_modal_excludes_the_query_itself(ctx):
    """With the query excluded, a perfect encoder (embedding = one-hot label) has map 1 on i2i."""
    sp = ctx.world.split("test")
    labels = torch.from_numpy(sp.labels)
    onehot = torch.nn.functional.one_hot(torch.unique(labels, return_inverse=True)[1]).float()
    cache = EmbeddingCache()
    cache._store[(id(ctx.encoder), "shapes", "test", "image")] = onehot
    res = TASKS.get("shapes-i2i")().evaluate(EvalContext(ctx.encoder, ctx.world, cache))
    assert res.metrics["map"] == 1.0 and res.metrics["recall@1"] == 1.0 and res.metrics["mean_rank"] == 1.0


def test_compositionality_identical_negative_is_an_exact_tie_counted_wrong(ctx, tiny_world):
    """A negative equal to its caption must score exactly as the caption, whatever batch each falls
    in (with a model whose rounding depends on the batch), and the tie counts as wrong."""
    import copy
    import dataclasses
    from types import SimpleNamespace

    from test_tasks_compositionality_real import BatchDependent

    from tasks.compositionality import TIES

    splits, same = {}, {}
    for split in ("test", "heldout"):
        sp = tiny_world.split(split)
        neg = sp.negatives.copy()
        same[split] = np.zeros(neg.shape, dtype=bool)
        same[split][::9, 1] = True  # every ninth relation swap is the caption itself
        neg[same[split]] = np.broadcast_to(sp.full_captions[:, None], neg.shape)[same[split]]
        splits[split] = dataclasses.replace(sp, negatives=neg)
    world = SimpleNamespace(split=splits.__getitem__, fingerprint=tiny_world.fingerprint)
    encoder = copy.copy(ctx.encoder)
    encoder.model, encoder.batch_size = BatchDependent(ctx.encoder.model), 100
    res = TASKS.get("shapes-compositionality")().evaluate(EvalContext(encoder, world, EmbeddingCache()))
    for split, sp in splits.items():
        preds = [p for p in res.predictions if p["split"] == split]
        assert not any(preds[i][str(sp.negative_types[i, j])] for i, j in zip(*np.nonzero(same[split])))
        assert res.metrics[f"{split}/n_ties"] == same[split].sum()
    assert res.protocol == {"ties": TIES}


class _GarbageTest(EmbeddingCache):
    """Test-split image features replaced by noise (fixed seed)."""

    def image(self, encoder, dataset, split, images):
        if split == "test":
            g = torch.Generator().manual_seed(123)
            return torch.randn(len(images), 32, generator=g)
        return super().image(encoder, dataset, split, images)


def test_linear_probe_never_selects_on_test(ctx):
    task = ShapesLinear()
    task.weight_decays = (1e-4, 1e-2, 1.0)  # a short grid keeps the test fast
    clean = task.evaluate(EvalContext(ctx.encoder, ctx.world, EmbeddingCache()))
    garbage = task.evaluate(EvalContext(ctx.encoder, ctx.world, _GarbageTest()))
    for t in task.targets:
        assert clean.metrics[f"{t}/weight_decay"] == garbage.metrics[f"{t}/weight_decay"]
        assert clean.metrics[f"{t}/val_acc1"] == garbage.metrics[f"{t}/val_acc1"]
    assert clean.metrics != garbage.metrics  # the test features did change what is reported


def test_linear_probe_uses_its_own_cache_key_for_the_fit_subset(ctx):
    task = ShapesLinear()
    task.n_fit, task.weight_decays = 100, (1e-2,)
    cache = EmbeddingCache()
    task.evaluate(EvalContext(ctx.encoder, ctx.world, cache))
    keys = {k[2] for k in cache._store}
    assert "train[:100]" in keys and "train" not in keys
    assert len(cache._store[(id(ctx.encoder), "shapes", "train[:100]", "image")]) == 100


def test_suite_lists_every_task_once():
    from harness.run.runner import expand_tasks

    names = [t.name for t in expand_tasks(["shapes", "shapes-sts"])]
    assert set(EXPECTED) <= set(names) and len(names) == len(set(names))


# ----------------------------------------------------------------------------- CLI


def test_shapes_suite_through_the_cli(workdir, capsys):
    from harness.cli.main import main

    assert main(smoke_args(workdir, "--objective", "clip", "--task", "shapes", "--no-checkpoint")) == 0
    (run,) = runs(workdir)
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    for name in EXPECTED:
        assert f"{name}/main_score" in m, name
    result = json.loads(next((workdir / "results").glob("*.json")).read_text())
    assert set(EXPECTED) <= set(result["tasks"])
    print(capsys.readouterr().out)
