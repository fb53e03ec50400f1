"""Training sets as registered, pluggable kinds (entry-point group ``harness.train_data``) and open
batch fields: a plugin training set that declares a new field (``caption_b``, a text field) and a
plugin objective that requires it are listed, checked, built and trained with no edit to the harness."""

import dataclasses
import json
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomllib
import torch
import torch.nn.functional as F
from conftest import runs, smoke_args

import harness.core.registry as registry_mod
from harness.cli.main import main
from harness.core.batch import BATCH_FIELDS, BatchField, EmbeddingBatch, LossOutput, register_field
from harness.core.objective import OBJECTIVES, HParam, Objective
from harness.core.train_set import TRAIN_SETS, MissingFieldError, TrainContext, TrainSet
from harness.data import train_sets as td
from harness.data.batches import Batch, ShapesTrainData
from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
from harness.data.sources import DataOptions
from harness.engine.gradcache import gradcache_step
from harness.engine.models import Encoder, ModelConfig, build_model
from harness.engine.trainer import embed

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- the plugin


class CaptionPairData:
    """The shapes world's batches plus ``caption_b``: each caption's other phrasing."""

    def __init__(self, shapes: ShapesTrainData):
        self.shapes = shapes

    def __len__(self) -> int:
        return len(self.shapes)

    def batch(self, step: int, batch_size: int, fields) -> Batch:
        b = self.shapes.batch(step, batch_size, (set(fields) - {"caption_b"}) | {"text_view"})
        b["caption_b"] = b.text_view if "caption_b" in fields else None
        b.text_view = b.text_view if "text_view" in fields else None
        return b


class CaptionPairs(TrainSet):
    """A plugin training set that declares a new text field."""

    kind = "caption-pairs"
    provides = frozenset({"image", "text", "caption_b", "index"})
    fields = (BatchField("caption_b", "text", "the caption's other phrasing (a test plugin)"),)
    license, doc, shapes_vocabulary = "generated", "shapes captions with a second phrasing", True

    def check_data(self, ctx: TrainContext) -> None:
        if ctx.batch_size is not None and ctx.batch_size > 4096:
            raise td.TooFewSamplesError(f"{self.name!r} has fewer than {ctx.batch_size} samples")

    def build(self, ctx: TrainContext) -> CaptionPairData:
        return CaptionPairData(ShapesTrainData(ctx.world, ctx.tokenizer, seed=ctx.seed))


class CaptionPairLoss(Objective):
    """InfoNCE image->text plus text->caption_b (a test plugin). Distributed: unsupported."""

    family, citation, distributed = "softmax", "a test plugin", "unsupported"
    requires = frozenset({"image", "text", "caption_b"})
    hparams = {"temperature": HParam(0.1, low=0.0, low_open=True)}

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        t, target = self.params["temperature"], torch.arange(batch.size, device=batch.image.device)
        pair = F.cross_entropy(batch.text @ batch.caption_b.T / t, target)
        clip = F.cross_entropy(batch.image @ batch.text.T / t, target)
        return LossOutput(clip + pair, {"pair": pair.detach()})


@pytest.fixture
def plugin():
    TRAIN_SETS.register("caption-pairs")(CaptionPairs)
    OBJECTIVES.register("caption-pair-loss")(CaptionPairLoss)
    yield
    TRAIN_SETS.unregister("caption-pairs")
    OBJECTIVES.unregister("caption-pair-loss")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ShapesWorld(
        ShapesSpec(n_train=64, n_val=16, n_test=16, n_heldout=16, n_zeroshot=16), tmp_path_factory.mktemp("w")
    )


# ----------------------------------------------------------------------------- the registry


def test_builtins_are_entry_points_named_once():
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    declared = eps["harness.train_data"]
    assert set(declared) == {
        "shapes",
        "shapes-sentences",
        "shapes-nli",
        "coco",
        "flickr30k",
        "nli",
        "all-nli",
        "wiki1m",
        "wds",
    }
    for name, target in declared.items():
        cls = TRAIN_SETS.get(name)
        assert f"{cls.__module__}:{cls.__qualname__}" == target and cls.name == name
    assert set(declared) <= set(td.TRAIN_DATA) and "coco" in td.TRAIN_DATA and "cocoo" not in td.TRAIN_DATA
    coco = td.TRAIN_DATA["coco"]  # the mapping's values keep the old spec's attributes
    assert (coco.kind, coco.modality) == ("image-text", "image-text")
    assert coco.source.repo == "undefined443/coco-karpathy-wds"
    assert td.TRAIN_DATA["flickr30k"].split_value == "train" and td.TRAIN_DATA["wiki1m"].modality == "text"
    with pytest.raises(KeyError, match="unknown training data 'cocoo'. Did you mean 'coco'"):
        td.spec("cocoo")


def test_list_train_data_shows_the_fields_each_provides(capsys, plugin):
    assert main(["list", "train-data", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["entries"]}
    assert rows["coco"]["dataset"].startswith("undefined443/coco-karpathy-wds") and rows["coco"]["license"]
    assert rows["shapes-nli"]["provides"] == ["hard_negative_text", "index", "text", "text_view"]
    assert rows["caption-pairs"] == {
        "name": "caption-pairs",
        "kind": "caption-pairs",
        "modality": "image-text",
        "dataset": "(generated)",
        "license": "generated",
        "doc": "shapes captions with a second phrasing",
        "provides": ["caption_b", "image", "index", "text"],
    }
    assert main(["list", "train-data"]) == 0
    out = capsys.readouterr().out
    assert "provides" in out and "caption-pairs" in out


# ----------------------------------------------------------------------------- open batch fields


def test_batch_fields_are_open():
    assert BATCH_FIELDS["caption_b"].tower == "text"  # declared by CaptionPairs when it was defined
    assert register_field("caption_b", "text") is BATCH_FIELDS["caption_b"]  # again: a no-op
    with pytest.raises(ValueError, match="declared for the text tower already"):
        register_field("caption_b", "image")
    with pytest.raises(ValueError, match="identifier"):
        register_field("rank")
    with pytest.raises(ValueError, match="declared for the text tower"):
        type("Clash", (TrainSet,), {"fields": (BatchField("caption_b", "image"),)})
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    e = EmbeddingBatch(image=x, caption_b=y)
    assert e.caption_b is y and e["caption_b"] is y and e.text is None
    assert e.present() == {"image", "caption_b"}
    assert list(e.tensors()) == ["image", "caption_b"] and e.size == 3
    e2 = dataclasses.replace(e, caption_b=x)
    assert e2.caption_b is x and e.caption_b is y  # never shares its fields with the original
    e2.caption_b = None
    assert "caption_b" not in e2.present() and e.present() == {"image", "caption_b"}
    with pytest.raises(TypeError, match="not a batch field"):
        EmbeddingBatch(audio=x)
    with pytest.raises(KeyError, match="unknown batch field 'audio'"):
        e["audio"] = x
    b = Batch(image=x, tokens=y, caption_b=y)  # the training Batch holds image / text as images / tokens
    assert b.images is x and b["text"] is y and b.image is x
    assert list(b.tensors()) == ["image", "text", "caption_b"]
    assert b.map(lambda t: t[:2]).caption_b.shape == (2, 4)


def test_embed_and_gradcache_encode_a_declared_field(world):
    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    enc = Encoder(model, tok, size, mean, std)
    shapes = ShapesTrainData(world, tok, seed=0)
    batch = CaptionPairData(shapes).batch(0, 16, {"image", "text", "caption_b"})
    model.eval()
    e = embed(model, enc, batch, torch.device("cpu"))
    ref = embed(model, enc, Batch(tokens=batch.caption_b), torch.device("cpu"))
    torch.testing.assert_close(e.caption_b, ref.text)
    # a declared field of shape (B, k, L) comes back (B, k, d); an image field goes through the image tower
    register_field("crop_b", "image", "a test image field")
    e = embed(
        model,
        enc,
        Batch(images=batch.images, crop_b=batch.images, caption_b=batch.caption_b[:, None]),
        torch.device("cpu"),
    )
    torch.testing.assert_close(e.crop_b, e.image)
    assert e.caption_b.shape == (16, 1, e.image.shape[1])
    # GradCache pushes the declared field's gradient back through the text tower
    obj = CaptionPairLoss()
    towers = SimpleNamespace(encode_image=model.encode_image, encode_text=model.encode_text)
    encode = lambda b: embed(towers, enc, b, torch.device("cpu"))  # noqa: E731
    model.zero_grad()
    obj(encode(batch)).loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    gradcache_step(encode, obj, batch, 4)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- a plugin end to end


def test_plugin_training_set_is_checked_and_built(world, plugin, tmp_path):
    from objectives import build_objective

    td.check("caption-pairs", CaptionPairLoss(), "caption-pair-loss", DataOptions(), batch_size=32)
    with pytest.raises(MissingFieldError, match="hard_negative_text .*does not supply"):
        td.check("caption-pairs", build_objective("negclip", {}), "negclip", DataOptions())
    with pytest.raises(MissingFieldError, match="caption_b .the caption's other phrasing"):
        td.check("shapes", CaptionPairLoss(), "caption-pair-loss", DataOptions())
    with pytest.raises(td.TooFewSamplesError):
        td.check("caption-pairs", CaptionPairLoss(), "caption-pair-loss", DataOptions(), batch_size=5000)
    tok = lambda texts: torch.arange(len(texts))[:, None]  # noqa: E731
    data = td.build(
        "caption-pairs",
        world=world,
        tokenizer=tok,
        seed=0,
        options=DataOptions(),
        image_size=32,
        preprocess_cfg=None,
        cache_dir=tmp_path,
    )
    assert data.fingerprint == world.fingerprint and len(data) == 64
    b = data.batch(1, 8, {"image", "text", "caption_b"})
    assert b.caption_b.shape == b.tokens.shape and b.text_view is None and b.index is None
    assert td.uses_shapes_vocabulary("caption-pairs", []) and not td.uses_shapes_vocabulary("coco", [])


def test_plugin_training_set_and_objective_train_end_to_end(workdir, capsys, plugin):
    args = (
        "--objective",
        "caption-pair-loss",
        "--task",
        "shapes-retrieval",
        "--train-data",
        "caption-pairs",
        "--no-checkpoint",
    )
    assert main(smoke_args(workdir, *args)) == 0
    (run,) = runs(workdir)
    assert run.info.status == "FINISHED" and run.data.tags["harness.train_data"] == "caption-pairs"
    assert "train/pair" in run.data.metrics
    # an objective that needs what the plugin set lacks is refused before anything is recorded
    assert main(smoke_args(workdir, "--objective", "negclip", "--train-data", "caption-pairs")) == 2
    assert "hard_negative_text" in capsys.readouterr().err and len(runs(workdir)) == 1


def test_plugin_training_set_from_an_entry_point(monkeypatch, world):
    import sys
    import types

    mod = types.ModuleType("plug_train_sets")
    mod.Pairs = type("Pairs", (CaptionPairs,), {})
    monkeypatch.setitem(sys.modules, "plug_train_sets", mod)
    real = registry_mod.entry_points
    fake = EntryPoint("ep-pairs", "plug_train_sets:Pairs", "harness.train_data")
    extra = lambda group: [fake] if group == "harness.train_data" else []  # noqa: E731
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [*real(group=group), *extra(group)])
    TRAIN_SETS.discover(refresh=True)
    try:
        assert "ep-pairs" in td.TRAIN_DATA and td.spec("ep-pairs") is mod.Pairs
        assert mod.Pairs.name == "ep-pairs"
        td.check("ep-pairs", CaptionPairLoss(), "caption-pair-loss", DataOptions())
    finally:
        TRAIN_SETS.unregister("ep-pairs")
