"""Linear probes: the harness solver converges (and says when it does not), and CLIP_benchmark's
protocol (``metrics/linear_probe.py``) matches a plain re-implementation of its code line by line
(train loop, ``find_peak`` search, refit on train + validation, metrics keys), on small synthetic
features. The shapes task under CLIP_benchmark's protocol runs on a tiny world."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch.utils.data import DataLoader, Dataset

from tasks.linear import ShapesLinear, ShapesLinearCB
from tasks.probe import (
    CB_INIT_INDICES,
    CB_WEIGHT_DECAYS,
    cb_accuracy,
    cb_metrics,
    cb_search,
    cb_split,
    cb_train,
    clip_benchmark_probe,
    fit_logistic_regression,
    principal_axes,
    select_probe,
)


def anisotropic(n=1000, d=24, c=6, decay=6.0, noise=2.0, seed=0):
    """L2-normalised features whose variances span ``2 * decay`` orders of magnitude, as a random
    micro encoder's do (their covariance eigenvalues run from ~1 down to ~1e-12)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    mu = torch.randn(c, d, generator=g)
    spectrum = torch.logspace(0, -decay, d, dtype=torch.float64).float()
    x = (mu[y] + noise * torch.randn(n, d, generator=g)) * spectrum + 3 * spectrum
    return F.normalize(x, dim=-1), y


# --------------------------------------------------------------------------- harness solver


def test_fit_converges_and_is_reproducible_under_renormalisation():
    """The same features re-normalised in float32 (a ~1e-7 relative change) give the same probe:
    the same predictions and weights within 1e-4. Stopped at 200 iterations (the old cap), the raw
    L-BFGS moved 26 of 1000 predictions and the weights by 3.2 here."""
    x, y = anisotropic()
    assert float(principal_axes(x)[1].min()) < 1e-10  # badly conditioned on purpose
    x2 = F.normalize(x * (1 + 1e-7), dim=-1)
    assert 0 < (x2 - x).abs().max() < 1e-6
    a, b = fit_logistic_regression(x, y, 1e-6), fit_logistic_regression(x2, y, 1e-6)
    assert a.converged and b.converged and a.grad_max <= 1e-6 and a.n_iter < 1000
    assert torch.equal(a.predict(x), b.predict(x2))
    assert float((a.predict(x) == y).double().mean()) == float((b.predict(x2) == y).double().mean())
    assert float((a.weight - b.weight).abs().max()) < 1e-4
    assert float((a.bias - b.bias).abs().max()) < 1e-4


def test_preconditioning_keeps_sklearns_optimum():
    from sklearn.linear_model import LogisticRegression

    x, y = anisotropic(n=300, d=8, c=3, decay=2.0)
    wd = 1e-2
    probe = fit_logistic_regression(x, y, wd)
    sk = LogisticRegression(C=1.0 / (len(y) * wd), tol=1e-12, max_iter=100_000)
    sk.fit(x.double().numpy(), y.numpy())
    np.testing.assert_allclose(probe.weight.numpy(), sk.coef_, atol=1e-4)
    b = probe.bias.numpy()
    np.testing.assert_allclose(b - b.mean(), sk.intercept_ - sk.intercept_.mean(), atol=1e-4)


def test_unconverged_fit_is_flagged_and_logged(caplog):
    x, y = anisotropic(n=300)
    with caplog.at_level(logging.WARNING, logger="tasks.probe"):
        probe = fit_logistic_regression(x, y, 1e-6, max_iter=3)
    assert not probe.converged and probe.n_iter == 3 and probe.grad_max > 1e-6
    assert "did not converge" in caplog.text and "weight decay 1e-06" in caplog.text
    _, _, unconverged = select_probe(x, y, x, y, (1e-6, 1e-2), 6, max_iter=3)
    assert unconverged == [1e-2, 1e-6]  # strongest first, as fitted
    with pytest.raises(ValueError, match="labels must lie"):
        fit_logistic_regression(x, y, 1e-2, n_classes=3)
    with pytest.raises(ValueError, match="weight_decay"):
        fit_logistic_regression(x, y, float("nan"))


# ------------------------------------------------------- CLIP_benchmark, re-implemented plainly
# The code below follows clip_benchmark/metrics/linear_probe.py (LAION-AI/CLIP_benchmark @48de38c)
# statement by statement, on the CPU (its .cuda() / DataParallel / autocast dropped).


class FeatureDataset(Dataset):
    def __init__(self, features, targets):
        self.features, self.targets = features, targets

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i], self.targets[i]


def ref_cosine_lr(optimizer, base_lr, warmup_length, steps):
    def _lr_adjuster(step):
        for param_group in optimizer.param_groups:
            e, es = step - warmup_length, steps - warmup_length
            param_group["lr"] = 0.5 * (1 + np.cos(np.pi * e / es)) * base_lr

    return _lr_adjuster


def ref_train(dataloader, input_shape, output_shape, weight_decay, lr, epochs, seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(input_shape, output_shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    criterion = torch.nn.CrossEntropyLoss()
    len_loader = len(dataloader)
    scheduler = ref_cosine_lr(optimizer, lr, 0.0, epochs * len_loader)
    for epoch in range(epochs):
        for i, (x, y) in enumerate(dataloader):
            scheduler(i + epoch * len_loader)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
    return model


def ref_infer(model, dataloader):
    pred, true = [], []
    with torch.no_grad():
        for x, y in dataloader:
            pred.append(model(x))
            true.append(y)
    return torch.cat(pred), torch.cat(true)


def ref_evaluate(
    train_features,
    train_targets,
    features_val,
    targets_val,
    features_test,
    targets_test,
    batch_size,
    lr,
    epochs,
    seed,
    generator,
):
    perm = [p.item() for p in torch.randperm(len(train_features), generator=generator)]  # fewshot_k = -1
    train_features, train_labels = train_features[perm], train_targets[perm]
    loader = lambda x, y: DataLoader(FeatureDataset(x, y), batch_size=batch_size, shuffle=True)  # noqa: E731
    feature_val_loader = loader(features_val, targets_val)
    feature_train_val_loader = loader(
        np.concatenate((train_features, features_val)), np.concatenate((train_labels, targets_val))
    )
    feature_train_loader = loader(train_features, train_labels)
    feature_test_loader = loader(features_test, targets_test)
    input_shape, output_shape = train_features[0].shape[0], train_targets.max().item() + 1
    trained = []

    def find_peak(wd_list, idxs):
        best_wd_idx, max_acc = 0, 0
        for idx in idxs:
            model = ref_train(feature_train_loader, input_shape, output_shape, wd_list[idx], lr, epochs, seed)
            trained.append(idx)
            logits, target = ref_infer(model, feature_val_loader)
            (acc1,) = cb_accuracy(logits.float(), target.float(), topk=(1,))
            if max_acc < acc1:
                best_wd_idx, max_acc = idx, acc1
        return best_wd_idx

    wd_list = np.logspace(-6, 2, num=97).tolist()
    wd_list_init = np.logspace(-6, 2, num=7).tolist()
    wd_init_idx = [i for i, val in enumerate(wd_list) if val in wd_list_init]
    peak_idx = find_peak(wd_list, wd_init_idx)
    step_span = 8
    while step_span > 0:
        left, right = max(peak_idx - step_span, 0), min(peak_idx + step_span, len(wd_list) - 1)
        peak_idx = find_peak(wd_list, [left, peak_idx, right])
        step_span //= 2
    best_wd = wd_list[peak_idx]
    final_model = ref_train(feature_train_val_loader, input_shape, output_shape, best_wd, lr, epochs, seed)
    logits, target = ref_infer(final_model, feature_test_loader)
    pred = logits.argmax(axis=1)
    if target.max() >= 5:
        acc1, acc5 = cb_accuracy(logits.float(), target.float(), topk=(1, 5))
    else:
        (acc1,) = cb_accuracy(logits.float(), target.float(), topk=(1,))
        acc5 = float("nan")
    recall = balanced_accuracy_score(target, pred)
    metrics = {
        "lp_acc1": acc1,
        "lp_acc5": acc5,
        "lp_mean_per_class_recall": recall,
        "weight_decay": best_wd,
        "epochs": epochs,
        "seed": seed,
        "fewshot_k": -1,
        "normalized": True,
    }
    return metrics, final_model, trained


def blobs(n, c=7, d=12, seed=0, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    mu = torch.randn(c, d, generator=torch.Generator().manual_seed(99))
    return F.normalize(mu[y] + noise * torch.randn(n, d, generator=g), dim=-1), y


def test_clip_benchmark_probe_matches_its_code():
    """Same features, same seed: the same weight decay, bit-identical weights, the same metrics."""
    x_tr, y_tr = blobs(150, seed=1)
    x_va, y_va = blobs(40, seed=2)
    x_te, y_te = blobs(60, seed=3)
    with torch.random.fork_rng(devices=[]):
        ref, ref_model, trained = ref_evaluate(
            x_tr,
            y_tr,
            x_va,
            y_va,
            x_te,
            y_te,
            batch_size=64,
            lr=0.1,
            epochs=10,
            seed=0,
            generator=torch.Generator().manual_seed(0),
        )
    probe = clip_benchmark_probe(x_tr, y_tr, x_va, y_va)
    assert probe.weight_decay == ref["weight_decay"] and probe.refit
    assert set(probe.searched) == set(trained)  # the same grid points, each trained once here
    assert torch.equal(probe.model.weight, ref_model.weight) and torch.equal(probe.model.bias, ref_model.bias)
    m = cb_metrics(probe.model(x_te).detach(), y_te)
    assert set(m) == {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall"}
    for k in m:
        assert m[k] == pytest.approx(ref[k], abs=1e-12), k
    # same seed -> same numbers, and the global RNG is left as it was
    state = torch.get_rng_state()
    again = clip_benchmark_probe(x_tr, y_tr, x_va, y_va)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(again.model.weight, probe.model.weight) and again.searched == probe.searched
    # another seed trains other probes
    other = clip_benchmark_probe(x_tr, y_tr, x_va, y_va, seed=1)
    assert not torch.equal(other.model.weight, probe.model.weight)


def test_clip_benchmark_validation_mode_keeps_the_train_only_probe():
    x_tr, y_tr = blobs(100, seed=4)
    x_va, y_va = blobs(30, seed=5)
    probe = clip_benchmark_probe(x_tr, y_tr, x_va, y_va, refit=False)
    assert not probe.refit
    logits = probe.model(x_va).detach()
    assert torch.allclose(logits, probe.val_logits, atol=1e-6)
    assert cb_accuracy(logits, y_va.float())[0] == probe.val_acc1 == probe.searched[probe.index]
    # the train-only probe is the one CLIP_benchmark's train() gives at that weight decay
    perm = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(0))
    with torch.random.fork_rng(devices=[]):
        plain = cb_train(x_tr[perm], y_tr[perm], int(y_tr.max()) + 1, probe.weight_decay)
    assert torch.equal(plain.weight, probe.model.weight)


def _reference_search(score):
    """CLIP_benchmark's search loop, verbatim but for the training (``score`` instead)."""

    def find_peak(idxs):
        best_wd_idx, max_acc = 0, 0
        for idx in idxs:
            acc1 = score(idx)
            if max_acc < acc1:
                best_wd_idx, max_acc = idx, acc1
        return best_wd_idx

    wd_list = np.logspace(-6, 2, num=97).tolist()
    wd_init_idx = [i for i, val in enumerate(wd_list) if val in np.logspace(-6, 2, num=7).tolist()]
    peak_idx = find_peak(wd_init_idx)
    step_span = 8
    while step_span > 0:
        left, right = max(peak_idx - step_span, 0), min(peak_idx + step_span, len(wd_list) - 1)
        peak_idx = find_peak([left, peak_idx, right])
        step_span //= 2
    return peak_idx


@pytest.mark.parametrize("peak", [0, 5, 16, 37, 50, 63, 90, 96])
def test_weight_decay_search_finds_the_brute_force_peak(peak):
    """On a unimodal validation curve the search picks what trying all 97 weight decays picks, in
    CLIP_benchmark's order of evaluations."""
    assert CB_INIT_INDICES == (0, 16, 32, 48, 64, 80, 96) and len(CB_WEIGHT_DECAYS) == 97
    assert CB_WEIGHT_DECAYS[0] == 1e-6 and CB_WEIGHT_DECAYS[-1] == pytest.approx(100.0)
    acc = [1.0 - abs(i - peak) / 200 for i in range(97)]
    seen, seen_ref = [], []
    chosen = cb_search(lambda i: seen.append(i) or acc[i])
    assert chosen == int(np.argmax(acc)) == peak
    assert _reference_search(lambda i: seen_ref.append(i) or acc[i]) == chosen and seen == seen_ref


def test_weight_decay_search_ties_and_zero_accuracy():
    # a plateau over 20..40: find_peak keeps the first strictly better index (32 of the coarse grid,
    # then 24 of [24, 32, 40], 20 of [20, 24, 28], and 20 stays), i.e. the plateau's smallest weight decay
    plateau = [0.5 if 20 <= i <= 40 else 0.1 for i in range(97)]
    assert cb_search(lambda i: plateau[i]) == _reference_search(lambda i: plateau[i]) == 20
    # every accuracy 0: CLIP_benchmark returns index 0 (weight decay 1e-6)
    assert cb_search(lambda i: 0.0) == 0


def test_cb_split_is_torch_random_split():
    g = torch.Generator().manual_seed(0)
    train, val = cb_split(60, 0.1, g)
    assert (len(train), len(val)) == (54, 6) and not set(train) & set(val)
    assert set(train) | set(val) == set(range(60))
    ref = torch.utils.data.random_split(range(60), [0.9, 0.1], generator=torch.Generator().manual_seed(0))
    assert train.tolist() == ref[0].indices and val.tolist() == ref[1].indices
    with pytest.raises(ValueError, match="val_proportion"):
        cb_split(10, 0.0, g)


def test_cb_metrics_hand_computed():
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [0, 9, 8, 7, 6, 5], [9, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 9]])
    target = torch.tensor([0, 2, 5, 5])
    m = cb_metrics(logits, target)
    # top-1: rows 0, 3; top-5: rows 0, 1 (2 ranks 2nd), 2 (5 ranks 2nd), 3; recall: class 0 1, 2 0, 5 1/2
    assert m == pytest.approx({"lp_acc1": 0.5, "lp_acc5": 1.0, "lp_mean_per_class_recall": 0.5})
    four = cb_metrics(logits[:, :4], torch.tensor([0, 1, 2, 3]))
    assert set(four) == {"lp_acc1", "lp_mean_per_class_recall"}


# --------------------------------------------------------------------------- shapes tasks


@pytest.fixture(scope="module")
def tiny_ctx(tmp_path_factory):
    from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
    from harness.engine.models import Encoder, ModelConfig, build_model
    from tasks import EvalContext

    world = ShapesWorld(
        ShapesSpec(n_train=512, n_val=64, n_test=128, n_heldout=64, n_zeroshot=64),
        tmp_path_factory.mktemp("tiny-world"),
    )
    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    return EvalContext(encoder=Encoder(model, tok, size, mean, std), world=world)


def test_shapes_linear_records_convergence(tiny_ctx):
    res = ShapesLinear().evaluate(tiny_ctx)
    assert res.version == "2" and res.protocol["linear_probe"] == "harness"
    assert res.protocol["tol"] == 1e-6 and res.protocol["max_iter"] == 1000
    for t in ShapesLinear.targets:
        facts = res.protocol["targets"][t]
        assert res.metrics[f"{t}/probe_converged"] == 1.0 and facts["converged"] is True
        assert 0 < res.metrics[f"{t}/probe_iterations"] == facts["iterations"] < 1000
        assert facts["weight_decay"] == res.metrics[f"{t}/weight_decay"]
        assert facts["unconverged_weight_decays"] == []


def test_shapes_linear_cb(tiny_ctx):
    from tasks import TASKS, EvalContext

    assert TASKS.get("shapes-linear-cb") is ShapesLinearCB
    res = ShapesLinearCB().evaluate(tiny_ctx)
    m = res.metrics
    assert res.main_metric == "lp_acc1" and res.main_score == m["lp_acc1"]
    assert m["lp_acc1"] == pytest.approx(np.mean([m[f"{t}/lp_acc1"] for t in ShapesLinearCB.targets]))
    assert "colour/lp_acc5" in m and "shape/lp_acc5" not in m  # shape's labels stop at 4
    assert {k: m[k] for k in ("epochs", "seed", "fewshot_k", "normalized")} == {
        "epochs": 10.0,
        "seed": 0.0,
        "fewshot_k": -1.0,
        "normalized": 1.0,
    }
    for t in ShapesLinearCB.targets:
        assert m[f"{t}/weight_decay"] in CB_WEIGHT_DECAYS and 0 <= m[f"{t}/lp_acc1"] <= 1
        assert res.protocol["targets"][t]["refit"] == "train + validation"
    assert res.protocol["linear_probe"] == "clip_benchmark" and res.protocol["lr"] == 0.1
    json.dumps(res.to_dict())  # the protocol travels in the results JSON
    assert np.mean(res.item_scores) == pytest.approx(m["lp_acc1"])
    assert all(math.isfinite(v) for v in m.values())
    # validation mode reports on val without the refit (val is never trained on)
    val_ctx = EvalContext(tiny_ctx.encoder, tiny_ctx.world, tiny_ctx.cache, validation=True)
    val = ShapesLinearCB().evaluate(val_ctx)
    for t in ShapesLinearCB.targets:
        assert val.metrics[f"{t}/lp_acc1"] == val.metrics[f"{t}/val_acc1"]
        assert val.protocol["targets"][t]["refit"].startswith("none")
