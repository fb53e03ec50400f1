"""Every registered objective: declared metadata, a valid search space, and a short training run
on the shapes world whose loss is finite and falls."""

import optuna
import pytest
import torch

from harness.config import Budget
from harness.core.batch import FIELDS
from harness.data.batches import ShapesTrainData
from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
from harness.engine.models import Encoder, ModelConfig, build_model
from harness.engine.trainer import train
from objectives import OBJECTIVES

NAMES = OBJECTIVES.names()
EXPECTED = {
    "clip",
    "siglip",
    "focal",
    "dcl",
    "hcl",
    "hn-nce",
    "negclip",
    "mochi",
    "cwcl",
    "isogclr",
    "macl",
    "amcl",
    "tic",
    "intra-modal",
    "cua",
    "auc",
    "catlip",
    "dispersive",
    "kernel-infonce",
    "align-uniform",
    "nt-xent",
    "supcon",
    "simcse",
}


def test_every_objective_of_the_library_is_registered():
    assert EXPECTED <= set(NAMES), sorted(EXPECTED - set(NAMES))
    assert not OBJECTIVES.failures


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_metadata_and_search_space(name):
    cls = OBJECTIVES.get(name)
    d = cls.describe()
    assert d["family"] and d["citation"] and d["modality"] in ("image-text", "image", "text")
    assert set(d["requires"]) <= set(FIELDS)
    assert d["distributed"] in ("global", "local", "unsupported")
    assert "istributed" in (cls.__doc__ or ""), "the docstring states the distributed behaviour"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        params = cls.search_space(study.ask())
        cls(**params)  # every proposal is a valid configuration


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ShapesWorld(
        ShapesSpec(n_train=640, n_val=32, n_test=32, n_heldout=32, n_zeroshot=32),
        tmp_path_factory.mktemp("w"),
    )


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_short_training_run_loss_falls(world, name):
    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    data = ShapesTrainData(world, tok, seed=0)
    res = train(
        model,
        OBJECTIVES.get(name)(),
        Encoder(model, tok, size, mean, std),
        data,
        Budget(steps=30, batch_size=32, lr=2e-3, warmup_steps=3, log_every=1),
        seed=0,
        device=torch.device("cpu"),
    )
    losses = [v for _, v in res.loss_curve]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
