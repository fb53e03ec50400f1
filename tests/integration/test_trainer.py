import math

import pytest
import torch

from harness.config import Budget
from harness.data.batches import ShapesTrainData
from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
from harness.engine.models import Encoder, ModelConfig, build_model
from harness.engine.trainer import NonFiniteLossError, train, warmup_cosine
from objectives import OBJECTIVES

SPEC = ShapesSpec(n_train=512, n_val=32, n_test=32, n_heldout=32, n_zeroshot=32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ShapesWorld(SPEC, tmp_path_factory.mktemp("w"))


def setup(world, seed=0):
    torch.manual_seed(seed)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    return model, tok, Encoder(model, tok, size, mean, std)


class CountingData:
    def __init__(self, inner):
        self.inner, self.steps = inner, []

    def __len__(self):
        return len(self.inner)

    def batch(self, step, bs, fields):
        self.steps.append(step)
        return self.inner.batch(step, bs, fields)


def test_exactly_budget_steps_and_objective_params_are_trained(world):
    model, tok, enc = setup(world)
    data = CountingData(ShapesTrainData(world, tok, seed=0))
    obj = OBJECTIVES.get("siglip")()
    before = obj.bias.item()
    budget = Budget(steps=7, batch_size=16, warmup_steps=2, log_every=3)
    res = train(model, obj, enc, data, budget, seed=0, device=torch.device("cpu"))
    assert data.steps == list(range(7))
    assert res.samples_seen == 7 * 16 and res.steps == 7
    assert [s for s, _ in res.loss_curve] == [0, 3, 6]
    assert obj.bias.item() != before  # the objective's own parameter moved
    assert res.flops_per_step > 0 and res.peak_memory_mb > 0


def test_warmup_then_cosine_to_zero():
    f = warmup_cosine(4, 14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.0)


def test_data_order_depends_on_seed_only(world):
    _, tok, _ = setup(world)
    a = ShapesTrainData(world, tok, seed=3)
    b = ShapesTrainData(world, tok, seed=3)
    c = ShapesTrainData(world, tok, seed=4)
    for step in (0, 5, 40):  # 40 crosses into the next epoch
        ba = a.batch(step, 32, {"image", "text"})
        bb = b.batch(step, 32, {"image", "text", "labels"})  # other fields requested: same samples
        assert torch.equal(ba.images, bb.images) and torch.equal(ba.tokens, bb.tokens)
    assert not torch.equal(a.batch(0, 32, {"image"}).images, c.batch(0, 32, {"image"}).images)
    # every sample of an epoch is seen once
    per_epoch = len(a) // 32
    seen = torch.cat([torch.from_numpy(a.indices(s, 32)) for s in range(per_epoch)])
    assert len(seen.unique()) == per_epoch * 32


def test_nan_guard_reports_step(world):
    model, tok, enc = setup(world)
    data = ShapesTrainData(world, tok, seed=0)
    obj = OBJECTIVES.get("clip")()
    budget = Budget(steps=3, batch_size=8, warmup_steps=0, lr=1e-3)
    with torch.no_grad():
        model.visual.proj.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError) as e:
        train(model, obj, enc, data, budget, seed=0, device=torch.device("cpu"))
    assert e.value.step == 0


def test_local_open_clip_checkpoint_with_open_clip_tokenizer(tmp_path):
    """Any open_clip architecture + a local checkpoint file, with open_clip's own tokenizer."""
    import open_clip

    from harness.engine.models import register_presets

    register_presets()
    src = open_clip.create_model("harness-micro")
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": src.state_dict()}, path)
    cfg = ModelConfig(name="harness-micro", pretrained=str(path), tokenizer="open_clip")
    model, tok, size, mean, std = build_model(cfg, words=vocabulary())
    torch.testing.assert_close(model.state_dict()["visual.proj"], src.state_dict()["visual.proj"])
    assert tok("a red circle").shape[1] == 16 and tok("a red circle").max() == 49407
    enc = Encoder(model, tok, size, mean, std)
    imgs = torch.zeros(3, 48, 48, 3, dtype=torch.uint8)  # resized to the model's 32 px
    assert enc.encode_image(imgs).shape == (3, 32)
    assert torch.allclose(enc.encode_text(["a red circle"]).norm(dim=-1), torch.ones(1))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_model(ModelConfig(name="no-such-arch"))


@pytest.mark.parametrize("objective", ["clip", "siglip"])
@pytest.mark.parametrize("option", ["loss_chunk_size", "gradcache_chunk"])
def test_tiled_loss_and_gradcache_train_like_the_plain_step(world, objective, option):
    """budget.loss_chunk_size (tiled loss) and budget.gradcache_chunk (GradCache) are exact: the
    loss curve of a short run matches the plain step's."""
    curves = []
    for value in (None, 8):
        model, tok, enc = setup(world)
        data = ShapesTrainData(world, tok, seed=0)
        budget = Budget(steps=5, batch_size=32, warmup_steps=1, log_every=1, **{option: value})
        res = train(model, OBJECTIVES.get(objective)(), enc, data, budget, seed=0, device=torch.device("cpu"))
        curves.append([v for _, v in res.loss_curve])
    assert curves[0] == pytest.approx(curves[1], rel=1e-4)


def test_prefetching_loader_trains_identically(world):
    curves = []
    for workers in (0, 2):
        model, tok, enc = setup(world)
        data = ShapesTrainData(world, tok, seed=0)
        budget = Budget(steps=6, batch_size=16, warmup_steps=1, log_every=1, loader_workers=workers)
        res = train(model, OBJECTIVES.get("clip")(), enc, data, budget, seed=0, device=torch.device("cpu"))
        curves.append([v for _, v in res.loss_curve])
    assert curves[0] == curves[1]
