"""SugarCrepe, ARO and Winoground on fixtures in their Hugging Face layouts: metrics on hand-computed
cases (a fake encoder returning chosen vectors), each task end to end with the micro model, bbox
crops, missing columns, undecodable images, validation refusal and the gated-dataset message."""

import copy
import io
import math

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from harness.data.sources import (
    DataError,
    DataOptions,
    DatasetUnavailableError,
    ImageColumn,
    MissingColumnsError,
    UndecodableImageError,
)
from harness.engine.models import Encoder, ModelConfig, build_model
from tasks import TASKS, EvalContext
from tasks.aro import (
    ARO_EXCLUDED_RELATIONS,
    AROAttribution,
    AROCocoOrder,
    ARORelation,
    attribute_pair,
    macro_accuracy,
)
from tasks.compositionality import TIES
from tasks.compositionality_real import SugarCrepeAddObj, SugarCrepeSwapAtt
from tasks.winoground import Winoground, winoground_scores

# ----------------------------------------------------------------------------------- fixtures


def png(value: int, size=(16, 12)) -> dict:
    """A solid image whose red channel is ``value`` (the fake encoder's key), PNG-encoded."""
    b = io.BytesIO()
    Image.new("RGB", size, (value, 40, 80)).save(b, "PNG")
    return {"bytes": b.getvalue(), "path": None}


BAD = {"bytes": b"this is not an image", "path": None}


def write(root, data: dict, features: dict):
    """``data/test-00000-of-00001.parquet`` under ``root``, as the Hub stores these sets."""
    ds = datasets.Dataset.from_dict(data, features=datasets.Features(features))
    (root / "data").mkdir(parents=True)
    ds.to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


class FakeEncoder:
    """``encode_image(ImageColumn)`` decodes every item and returns the vector chosen for its red
    value (NaN for undecodable ones, as the real encoder); ``encode_text`` looks captions up."""

    def __init__(self, images: dict[int, list[float]], texts: dict[str, list[float]]):
        self.images, self.texts, self.sizes = images, texts, []

    def encode_image(self, column):
        d = len(next(iter(self.images.values())))
        rows = []
        for i in range(len(column)):
            img = column.load(i)
            if img is None:
                rows.append([float("nan")] * d)
            else:
                self.sizes.append(img.size)
                rows.append(self.images[img.getpixel((0, 0))[0]])
        return torch.tensor(rows, dtype=torch.float32)

    def encode_text(self, texts):
        return torch.tensor([self.texts[t] for t in texts], dtype=torch.float32)


def ctx_for(encoder, name, path, **kw):
    return EvalContext(encoder=encoder, data=DataOptions(paths={name: str(path)}, **kw))


@pytest.fixture(scope="module")
def micro():
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro", tokenizer="open_clip"))
    return Encoder(model, tok, size, mean, std)


# -------------------------------------------------------------------------------- SugarCrepe

SC_FEATURES = {
    "image": datasets.Image(),
    "tested_labels": datasets.Sequence(datasets.Value("string")),
    "true_label": None,
}


def sugarcrepe_fixture(root, rows, images=None):
    """rows: (positive, negative, positive_first). The ClassLabel vocabulary holds every caption,
    negatives included, as in HuggingFaceM4's push script."""
    names = sorted({c for p, n, _ in rows for c in (p, n)})
    feats = {**SC_FEATURES, "true_label": datasets.ClassLabel(names=names)}
    data = {
        "image": images or [png(i) for i in range(len(rows))],
        "tested_labels": [[p, n] if first else [n, p] for p, n, first in rows],
        "true_label": [p for p, _, _ in rows],
    }
    return write(root, data, feats)


SC_ROWS = [
    ("a dog on a sofa", "a cat on a sofa", True),  # pos 10deg, neg 40deg: right
    ("a red bus", "a blue bus", False),  # pos 50deg, neg 20deg: wrong
    ("two men and a horse", "two horses and a man", True),  # identical vectors: a tie, wrong
    ("a bowl of soup", "a bowl of soup and a spoon", False),
]  # pos 0deg, neg 90deg: right
SC_TEXTS = {
    "a dog on a sofa": unit(10),
    "a cat on a sofa": unit(40),
    "a red bus": unit(50),
    "a blue bus": unit(20),
    "two men and a horse": unit(30),
    "two horses and a man": unit(30),
    "a bowl of soup": unit(0),
    "a bowl of soup and a spoon": unit(90),
}


def test_sugarcrepe_accuracy_hand_computed_tie_is_wrong(tmp_path):
    root = sugarcrepe_fixture(tmp_path / "sc", SC_ROWS)
    enc = FakeEncoder({i: unit(0) for i in range(4)}, SC_TEXTS)
    res = SugarCrepeAddObj().evaluate(ctx_for(enc, "sugarcrepe-add-obj", root))
    assert res.main_metric == "acc" and res.main_score == pytest.approx(0.5)
    assert res.metrics["n_undecodable"] == 0.0 and res.n_items == 4
    assert [p["correct"] for p in res.predictions] == [True, False, False, True]
    # the negative is the other element of tested_labels, whatever its position
    assert [(p["caption"], p["negatives"]) for p in res.predictions] == [(p, [n]) for p, n, _ in SC_ROWS]
    tie = res.predictions[2]["scores"]
    assert tie[0] == tie[1]  # an argmax would call this correct (CLIP_benchmark); strict: wrong
    assert res.item_scores == [1.0, 0.0, 0.0, 1.0]
    assert res.predictions[1]["scores"] == pytest.approx(
        [math.cos(math.radians(50)), math.cos(math.radians(20))]
    )
    assert res.dataset.endswith("sc") and len(res.dataset_fingerprint) == 16


def test_sugarcrepe_registered_names_suite_and_sources():
    names = ["add-obj", "add-att", "replace-obj", "replace-att", "replace-rel", "swap-obj", "swap-att"]
    suite = TASKS.get("sugarcrepe")
    assert suite.members == tuple(f"sugarcrepe-{n}" for n in names)
    for n in names:
        cls = TASKS.get(f"sugarcrepe-{n}")
        assert (
            cls.source.repo == f"HuggingFaceM4/SugarCrepe_{n.replace('-', '_')}"
            and cls.source.split == "test"
        )
        assert (
            cls.family == "compositionality" and cls.validation_split is None and cls.modality == "image-text"
        )
    from harness.run.runner import expand_tasks

    assert [t.name for t in expand_tasks(["sugarcrepe"])] == list(suite.members)
    assert [t.name for t in expand_tasks(["aro"])] == ["aro-relation", "aro-attribution", "aro-coco-order"]


def test_sugarcrepe_true_label_must_decode(tmp_path):
    root = write(
        tmp_path / "sc",
        {"image": [png(0)], "tested_labels": [["a", "b"]], "true_label": [3]},
        {**SC_FEATURES, "true_label": datasets.Value("int64")},
    )
    with pytest.raises(DataError, match="ClassLabel"):
        SugarCrepeSwapAtt().check_data(DataOptions(paths={"sugarcrepe-swap-att": str(root)}))


def test_sugarcrepe_undecodable_skipped_and_counted_or_strict(tmp_path, micro):
    images = [png(0), BAD, png(2), png(3)]
    root = sugarcrepe_fixture(tmp_path / "sc", SC_ROWS, images=images)
    enc = FakeEncoder({i: unit(0) for i in range(4)}, SC_TEXTS)
    res = SugarCrepeAddObj().evaluate(ctx_for(enc, "sugarcrepe-add-obj", root))
    assert res.metrics["n_undecodable"] == 1.0 and res.n_items == 3
    assert [p["item"] for p in res.predictions] == [0, 2, 3]
    assert res.main_score == pytest.approx(2 / 3)  # rows 0 and 3 right, the tie wrong
    with pytest.raises(UndecodableImageError):
        SugarCrepeAddObj().evaluate(ctx_for(micro, "sugarcrepe-add-obj", root, strict_images=True))


def test_sugarcrepe_missing_column_and_validation_refusal(tmp_path):
    root = write(
        tmp_path / "sc",
        {"image": [png(0)], "tested_labels": [["a", "b"]]},
        {"image": datasets.Image(), "tested_labels": datasets.Sequence(datasets.Value("string"))},
    )
    with pytest.raises(MissingColumnsError) as e:
        SugarCrepeAddObj().check_data(DataOptions(paths={"sugarcrepe-add-obj": str(root)}))
    assert "'true_label'" in str(e.value) and "found image, tested_labels" in str(e.value)
    ok = sugarcrepe_fixture(tmp_path / "ok", SC_ROWS)
    ctx = ctx_for(FakeEncoder({0: unit(0)}, SC_TEXTS), "sugarcrepe-add-obj", ok)
    ctx.validation = True
    with pytest.raises(ValueError, match="no validation split"):
        SugarCrepeAddObj().evaluate(ctx)


# -------------------------------------------------------------------------------------- ARO


def test_macro_accuracy_hand_computed():
    correct = [True, False, True, False, False, True]
    groups = ["on", "on", "above", "near", "next to", "under"]
    macro, acc, counts, items = macro_accuracy(correct, groups, exclude={"near", "next to"})
    assert acc == {"on": 0.5, "above": 1.0, "under": 1.0} and counts == {"on": 2, "above": 1, "under": 1}
    assert macro == pytest.approx((0.5 + 1 + 1) / 3)
    assert items.mean() == pytest.approx(macro) and len(items) == 4
    # min_count drops the singleton groups
    macro2, acc2, _, items2 = macro_accuracy(correct, groups, exclude={"near"}, min_count=2)
    assert acc2 == {"on": 0.5} and macro2 == 0.5 and items2.tolist() == [1.0, 0.0]
    with pytest.raises(DataError, match="no group"):
        macro_accuracy(correct, groups, min_count=3)


def test_excluded_relations_are_the_notebook_list():
    assert len(ARO_EXCLUDED_RELATIONS) == 157  # the notebook list has no duplicates
    assert {
        "near",
        "next to",
        "with",
        "by",
        "beside",
        "on the side of",
        "around",
        "of",
    } <= ARO_EXCLUDED_RELATIONS
    assert not {"on", "above", "below", "behind", "holding", "eating", "wearing"} & ARO_EXCLUDED_RELATIONS


REL_FEATURES = {
    "image": datasets.Image(),
    "true_caption": datasets.Value("string"),
    "false_caption": datasets.Value("string"),
    "relation_name": datasets.Value("string"),
    "bbox": {
        "x": datasets.Value("float32"),
        "y": datasets.Value("float32"),
        "w": datasets.Value("float32"),
        "h": datasets.Value("float32"),
    },
}

# relation, true angle, false angle, bbox (x, y, w, h) on a 40 x 30 image
REL_ROWS = [
    ("on", 10, 40, (0, 0, 40, 30)),  # right
    ("on", 50, 20, (3, 4, 10, 7)),  # wrong
    ("above", 0, 90, (2.4, 1.0, 10.2, 5.0)),  # right; fractional box
    ("near", 60, 10, (5, 5, 20, 20)),  # wrong, excluded
    ("next to", 60, 10, (0, 10, 8, 8)),
]  # wrong, excluded


def relation_fixture(root, rows=REL_ROWS, images=None, drop=()):
    data = {
        "image": images or [png(i, (40, 30)) for i in range(len(rows))],
        "true_caption": [f"the t{i} is {r} the x" for i, (r, *_) in enumerate(rows)],
        "false_caption": [f"the x is {r} the t{i}" for i, (r, *_) in enumerate(rows)],
        "relation_name": [r for r, *_ in rows],
        "bbox": [dict(zip("xywh", b)) for *_, b in rows],
    }
    feats = {k: v for k, v in REL_FEATURES.items() if k not in drop}
    return write(root, {k: v for k, v in data.items() if k not in drop}, feats)


def relation_texts(rows=REL_ROWS):
    texts = {}
    for i, (r, t, f, _) in enumerate(rows):
        texts[f"the t{i} is {r} the x"], texts[f"the x is {r} the t{i}"] = unit(t), unit(f)
    return texts


def test_aro_relation_macro_excludes_symmetric_and_crops_to_bbox(tmp_path):
    root = relation_fixture(tmp_path / "rel")
    enc = FakeEncoder({i: unit(0) for i in range(5)}, relation_texts())
    res = ARORelation().evaluate(ctx_for(enc, "aro-relation", root))
    assert res.main_metric == "macro_acc" and res.main_score == pytest.approx((0.5 + 1.0) / 2)
    assert res.metrics["acc"] == pytest.approx(2 / 5)  # micro, every item
    assert res.metrics["acc/on"] == 0.5 and res.metrics["acc/above"] == 1.0 and "acc/near" not in res.metrics
    assert res.metrics["n_groups"] == 2 and res.metrics["n_scored"] == 3
    # item scores: correctness * N / (R * n_r) over scored items: on 3/(2*2), above 3/(2*1)
    assert res.item_scores == pytest.approx([0.75, 0.0, 1.5])
    assert np.mean(res.item_scores) == pytest.approx(res.main_score)
    assert [p["group"] for p in res.predictions] == [r for r, *_ in REL_ROWS]
    # the crop is applied, and equals PIL's own crop of ARO's box (x, y, x + w, y + h)
    want = [Image.new("RGB", (40, 30)).crop((x, y, x + w, y + h)).size for *_, (x, y, w, h) in REL_ROWS]
    assert enc.sizes == want == [(40, 30), (10, 7), (11, 5), (20, 20), (8, 8)]


def test_aro_relation_missing_column_undecodable_and_strict(tmp_path, micro):
    root = relation_fixture(tmp_path / "rel", drop=("relation_name",))
    with pytest.raises(MissingColumnsError) as e:
        ARORelation().check_data(DataOptions(paths={"aro-relation": str(root)}))
    assert "'relation_name'" in str(e.value) and "expected image, true_caption" in str(e.value)
    images = [png(i, (40, 30)) for i in range(5)]
    images[2] = BAD
    root = relation_fixture(tmp_path / "bad", images=images)
    enc = FakeEncoder({i: unit(0) for i in range(5)}, relation_texts())
    res = ARORelation().evaluate(ctx_for(enc, "aro-relation", root))
    assert res.metrics["n_undecodable"] == 1.0 and res.n_items == 4
    assert (
        res.main_score == pytest.approx(0.5) and res.metrics["n_groups"] == 1
    )  # 'above' gone with its image
    with pytest.raises(UndecodableImageError):
        ARORelation().evaluate(ctx_for(micro, "aro-relation", root, strict_images=True))


ATT_FEATURES = {
    **{k: v for k, v in REL_FEATURES.items() if k != "relation_name"},
    "attributes": datasets.Sequence(datasets.Value("string")),
}
# attributes, true angle, false angle
ATT_ROWS = [
    (("red", "blue"), 10, 40),
    (("red", "blue"), 50, 20),
    (("big", "small"), 0, 90),
    (("big", "small"), 5, 80),
    (("big", "small"), 20, 60),
    (("old", "new"), 0, 90),
]


def attribution_fixture(root, with_attributes=True):
    data = {
        "image": [png(i, (20, 20)) for i in range(len(ATT_ROWS))],
        "true_caption": [f"the {a} car{i} and the {b} house" for i, ((a, b), *_) in enumerate(ATT_ROWS)],
        "false_caption": [f"the {b} car{i} and the {a} house" for i, ((a, b), *_) in enumerate(ATT_ROWS)],
        "bbox": [{"x": 2, "y": 3, "w": 12, "h": 9}] * len(ATT_ROWS),
        "attributes": [list(a) for a, *_ in ATT_ROWS],
    }
    feats = dict(ATT_FEATURES)
    if not with_attributes:
        del data["attributes"], feats["attributes"]
    return write(root, data, feats)


def attribution_texts():
    texts = {}
    for i, ((a, b), t, f) in enumerate(ATT_ROWS):
        texts[f"the {a} car{i} and the {b} house"], texts[f"the {b} car{i} and the {a} house"] = (
            unit(t),
            unit(f),
        )
    return texts


@pytest.mark.parametrize("with_attributes", [True, False])
def test_aro_attribution_macro_over_pairs_with_min_count(tmp_path, with_attributes):
    root = attribution_fixture(tmp_path / "att", with_attributes)
    enc = FakeEncoder({i: unit(0) for i in range(len(ATT_ROWS))}, attribution_texts())
    task = AROAttribution()
    assert task.min_pair_count == 25
    with pytest.raises(DataError, match=">= 25 items"):  # no pair of this tiny table reaches 25
        task.evaluate(ctx_for(enc, "aro-attribution", root))
    task.min_pair_count = 2
    enc.sizes.clear()
    res = task.evaluate(ctx_for(enc, "aro-attribution", root))
    # red_blue 1/2, big_small 3/3; old_new (1 item) is below the minimum
    assert res.main_score == pytest.approx(0.75) and res.metrics["acc"] == pytest.approx(5 / 6)
    assert res.metrics["acc/red_blue"] == 0.5 and res.metrics["acc/big_small"] == 1.0
    assert "acc/old_new" not in res.metrics and res.metrics["n_scored"] == 5
    assert res.metrics["pairs_from_captions"] == (0.0 if with_attributes else 1.0)
    assert np.mean(res.item_scores) == pytest.approx(res.main_score)
    assert enc.sizes == [(12, 9)] * len(ATT_ROWS)


def test_attribute_pair_from_captions():
    assert attribute_pair("the red car and the blue house", "the blue car and the red house") == "red_blue"
    assert (
        attribute_pair("the light blue car and the old house", "the old car and the light blue house")
        == "light blue_old"
    )
    assert (
        attribute_pair("the wooden table and the white wall", "the white table and the wooden wall")
        == "wooden_white"
    )
    assert attribute_pair("a b c", "a b d e") == "a b c"  # not a swap: keyed on the caption


ORDER_FEATURES = {
    "images": datasets.Image(),
    "correct_caption": datasets.Value("string"),
    **{f"hard_text_{k}": datasets.Value("string") for k in range(1, 5)},
}


def order_fixture(root, n=3):
    data = {
        "images": [png(i) for i in range(n)],
        "correct_caption": [f"a man rides a horse {i}" for i in range(n)],
        **{f"hard_text_{k}": [f"perturbation {k} of {i}" for i in range(n)] for k in range(1, 5)},
    }
    return write(root, data, ORDER_FEATURES)


def test_aro_coco_order_five_way_hand_computed(tmp_path):
    root = order_fixture(tmp_path / "order")
    texts = {f"a man rides a horse {i}": unit(10) for i in range(3)}
    texts.update({f"perturbation {k} of 0": unit(20 * k) for k in range(1, 5)})  # all below: right
    texts.update({f"perturbation {k} of 1": unit(10 if k == 3 else 60) for k in range(1, 5)})  # a tie: wrong
    texts.update(
        {f"perturbation {k} of 2": unit(5 if k == 4 else 60) for k in range(1, 5)}
    )  # one above: wrong
    res = AROCocoOrder().evaluate(
        ctx_for(FakeEncoder({i: unit(0) for i in range(3)}, texts), "aro-coco-order", root)
    )
    assert res.main_metric == "acc" and res.main_score == pytest.approx(1 / 3)
    assert [p["correct"] for p in res.predictions] == [True, False, False]
    assert res.predictions[0]["negatives"] == [f"perturbation {k} of 0" for k in range(1, 5)]
    assert len(res.predictions[0]["scores"]) == 5 and res.item_scores == [1.0, 0.0, 0.0]


# ------------------------------------------------------------------------------- Winoground

WINO_FEATURES = {
    "id": datasets.Value("int32"),
    "image_0": datasets.Image(),
    "image_1": datasets.Image(),
    "caption_0": datasets.Value("string"),
    "caption_1": datasets.Value("string"),
    "tag": datasets.Value("string"),
    "secondary_tag": datasets.Value("string"),
    "num_main_preds": datasets.Value("int32"),
    "collapsed_tag": datasets.Value("string"),
}
# (s(c0,i0), s(c0,i1)), (s(c1,i0), s(c1,i1)), collapsed tag; images are e1 / e2, so a caption's
# first two coordinates are its similarities to image_0 / image_1
WINO_ROWS = [
    ((0.9, 0.1), (0.2, 0.8), "Object"),  # text, image, group
    ((0.3, 0.5), (0.1, 0.6), "Object"),  # text only
    ((0.5, 0.1), (0.6, 0.7), "Relation"),  # image only
    ((0.2, 0.7), (0.7, 0.2), "Relation"),  # none
    ((0.5, 0.3), (0.5, 0.6), "Both"),
]  # a text tie (s(c0,i0) == s(c1,i0)): image only


def caption_vec(x, y):
    return [x, y, math.sqrt(1 - x * x - y * y)]


def winoground_fixture(root, image_1=None):
    n = len(WINO_ROWS)
    data = {
        "id": list(range(n)),
        "image_0": [png(0)] * n,
        "image_1": image_1 or [png(1)] * n,
        "caption_0": [f"caption zero {i}" for i in range(n)],
        "caption_1": [f"caption one {i}" for i in range(n)],
        "tag": ["Noun"] * n,
        "secondary_tag": [""] * n,
        "num_main_preds": [1] * n,
        "collapsed_tag": [t for *_, t in WINO_ROWS],
    }
    return write(root, data, WINO_FEATURES)


def wino_encoder():
    texts = {}
    for i, (c0, c1, _) in enumerate(WINO_ROWS):
        texts[f"caption zero {i}"], texts[f"caption one {i}"] = caption_vec(*c0), caption_vec(*c1)
    return FakeEncoder({0: [1.0, 0.0, 0.0], 1: [0.0, 1.0, 0.0]}, texts)


def test_winoground_scores_function():
    sim = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.3, 0.5], [0.1, 0.6]]])
    s = winoground_scores(sim)
    assert s["text"].tolist() == [True, True] and s["image"].tolist() == [True, False]
    assert s["group"].tolist() == [True, False]


def test_winoground_text_image_group_hand_computed(tmp_path):
    root = winoground_fixture(tmp_path / "wino")
    res = Winoground().evaluate(ctx_for(wino_encoder(), "winoground", root))
    assert res.main_metric == "group_score"
    assert res.metrics["text_score"] == pytest.approx(2 / 5)
    assert res.metrics["image_score"] == pytest.approx(3 / 5)
    assert res.metrics["group_score"] == pytest.approx(1 / 5) == res.main_score
    assert res.metrics["group_score/Object"] == 0.5 and res.metrics["text_score/Object"] == 1.0
    assert res.metrics["image_score/Relation"] == 0.5 and res.metrics["image_score/Both"] == 1.0
    assert [(p["text"], p["image"], p["group"]) for p in res.predictions] == [
        (True, True, True),
        (True, False, False),
        (False, True, False),
        (False, False, False),
        (False, True, False),
    ]
    assert res.item_scores == [1.0, 0.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(res.predictions[1]["scores"], [[0.3, 0.5], [0.1, 0.6]], rtol=1e-6)


def test_winoground_undecodable_example_skipped(tmp_path, micro):
    image_1 = [png(1)] * len(WINO_ROWS)
    image_1[0] = BAD
    root = winoground_fixture(tmp_path / "wino", image_1=image_1)
    res = Winoground().evaluate(ctx_for(wino_encoder(), "winoground", root))
    assert res.metrics["n_undecodable"] == 1.0 and res.n_items == 4
    assert res.metrics["group_score"] == 0.0 and res.metrics["text_score"] == pytest.approx(1 / 4)
    with pytest.raises(UndecodableImageError):
        Winoground().evaluate(ctx_for(micro, "winoground", root, strict_images=True))


def test_winoground_gated_message_and_validation(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    with pytest.raises(DatasetUnavailableError) as e:
        Winoground().check_data(DataOptions())
    msg = str(e.value)
    assert "facebook/winoground" in msg and "is gated (accept its terms on the Hub" in msg
    assert "--data winoground=DIR" in msg and "download facebook/winoground" in msg  # hf / huggingface-cli
    ctx = ctx_for(wino_encoder(), "winoground", winoground_fixture(tmp_path / "wino"))
    ctx.validation = True
    with pytest.raises(ValueError, match="no validation split"):
        Winoground().evaluate(ctx)


# ------------------------------------------------------------------------ end to end, micro model


@pytest.mark.parametrize(
    "name", ["sugarcrepe-swap-att", "aro-relation", "aro-attribution", "aro-coco-order", "winoground"]
)
def test_end_to_end_with_micro_encoder(tmp_path, micro, name):
    root = tmp_path / name
    if name.startswith("sugarcrepe"):
        sugarcrepe_fixture(root, SC_ROWS)
    elif name == "aro-relation":
        relation_fixture(root)
    elif name == "aro-attribution":
        attribution_fixture(root)
    elif name == "aro-coco-order":
        order_fixture(root)
    else:
        winoground_fixture(root)
    task = TASKS.get(name)()
    if name == "aro-attribution":
        task.min_pair_count = 1
    ctx = ctx_for(micro, name, root)
    task.check_data(ctx.data)
    res = task.evaluate(ctx)
    assert res.task == name and res.n_items == len(res.predictions) > 0
    assert 0.0 <= res.main_score <= 1.0 and res.metrics["n_undecodable"] == 0.0
    assert np.mean(res.item_scores) == pytest.approx(res.main_score)
    assert all(np.isfinite(s).all() for p in res.predictions for s in [np.asarray(p["scores"])])
    # a second run hits the embedding cache and gives the same numbers
    again = task.evaluate(ctx)
    assert again.metrics == res.metrics and ctx.cache.hits > 0


# ------------------------------------------------------------------------------- exact ties


class BatchDependent(torch.nn.Module):
    """An open_clip model whose embedding of a row depends on the rest of its batch: float kernels'
    rounding can (a ragged batch of one takes a matrix-vector path; MKL's results depend on memory
    alignment), here exaggerated to 1e-3 so that it always shows."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.visual = model, model.visual

    def encode_text(self, tokens, normalize=False):
        emb = self.inner.encode_text(tokens, normalize=normalize)
        return emb + 1e-3 * emb.mean(0, keepdim=True)

    def encode_image(self, x, normalize=False):
        emb = self.inner.encode_image(x, normalize=normalize)
        return emb + 1e-3 * emb.mean(0, keepdim=True)


@pytest.fixture
def small_batches(micro):
    """The micro encoder over a :class:`BatchDependent` model, in batches of 4."""
    enc = copy.copy(micro)
    enc.model, enc.batch_size = BatchDependent(micro.model), 4
    return enc


def test_identical_inputs_get_bit_identical_embeddings(small_batches):
    cap = "a small red circle left of a large blue square"
    texts = [cap, "a red circle", "two horses and a man", "the big cross", cap, cap.capitalize()]
    emb = small_batches.encode_text(texts)  # batches [0:4] and [4:6]
    assert torch.equal(emb[0], emb[4]) and torch.equal(emb[0], emb[5])  # open_clip's tokenizer lower-cases
    assert not torch.equal(emb[0], emb[1])
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 20, 20, 3), dtype=torch.uint8, generator=g)
    images[4] = images[0]  # batches [0:4] and [4:5]
    img = small_batches.encode_image(images)
    assert torch.equal(img[0], img[4]) and not torch.equal(img[0], img[1])
    # decoded real images (an ImageColumn), with an undecodable one in between
    table = datasets.Dataset.from_dict(
        {"image": [png(0), png(1), png(2), BAD, png(0)]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    column = ImageColumn(table, "image")
    emb = small_batches.encode_image(column)
    assert torch.equal(emb[0], emb[4]) and not torch.equal(emb[0], emb[1])
    assert torch.isnan(emb[3]).all() and not torch.isnan(emb[[0, 1, 2, 4]]).any()
    assert column.undecodable == [3]


def _tied(res, item):
    scores = res.predictions[item]["scores"]
    return scores[0] == scores[1] and not res.predictions[item]["correct"]


def test_sugarcrepe_identical_negative_is_an_exact_tie_counted_wrong(tmp_path, small_batches):
    rows = SC_ROWS[:2] + [("two men and a horse", "two men and a horse", True)] + SC_ROWS[3:]
    ctx = ctx_for(small_batches, "sugarcrepe-add-obj", sugarcrepe_fixture(tmp_path, rows))
    res = SugarCrepeAddObj().evaluate(ctx)
    assert _tied(res, 2) and res.metrics["n_ties"] == 1.0 and res.item_scores[2] == 0.0
    assert res.protocol == {"ties": TIES}
    # CLIP_benchmark's argmax over [true, negative] (first index on ties) differs on the tie only
    argmax = [int(torch.tensor(p["scores"]).argmax()) == 0 for p in res.predictions]
    assert argmax == [p["correct"] or i == 2 for i, p in enumerate(res.predictions)]
    assert np.mean(argmax) == res.metrics["acc"] + res.metrics["n_ties"] / res.n_items


@pytest.mark.parametrize("cls", [ARORelation, AROAttribution])
def test_aro_vg_identical_false_caption_is_an_exact_tie_counted_wrong(tmp_path, small_batches, cls):
    n = 6
    true = [f"the dog{i} is on the sofa" for i in range(n)]
    false = [f"the sofa is on the dog{i}" for i in range(n)]
    false[4] = true[4]
    data = {
        "image": [png(i, (20, 20)) for i in range(n)],
        "true_caption": true,
        "false_caption": false,
        "bbox": [{"x": 0, "y": 0, "w": 20, "h": 20}] * n,
    }
    feats = {k: v for k, v in REL_FEATURES.items() if k != "relation_name"}
    if cls is ARORelation:
        data["relation_name"], feats["relation_name"] = ["on"] * n, REL_FEATURES["relation_name"]
    task = cls()
    task.min_pair_count = 1
    res = task.evaluate(ctx_for(small_batches, task.name, write(tmp_path / "vg", data, feats)))
    assert _tied(res, 4) and res.metrics["n_ties"] == 1.0 and res.protocol == {"ties": TIES}


def test_aro_coco_order_identical_perturbation_is_an_exact_tie_counted_wrong(tmp_path, small_batches):
    root = tmp_path / "order"
    n = 3
    data = {
        "images": [png(i) for i in range(n)],
        "correct_caption": [f"a man rides a horse {i}" for i in range(n)],
        **{f"hard_text_{k}": [f"horse a rides man a {i} {k}" for i in range(n)] for k in range(1, 5)},
    }
    data["hard_text_3"][1] = data["correct_caption"][1]  # the perturbation left the words in place
    res = AROCocoOrder().evaluate(ctx_for(small_batches, "aro-coco-order", write(root, data, ORDER_FEATURES)))
    scores = res.predictions[1]["scores"]
    assert scores[0] == scores[3] and not res.predictions[1]["correct"]
    # n_ties: the items an argmax with the true caption first would count correct, and this rule wrong
    assert res.metrics["n_ties"] == sum(p["scores"][0] == max(p["scores"][1:]) for p in res.predictions)
    assert res.protocol == {"ties": TIES}


def test_winoground_identical_captions_or_images_are_exact_ties_counted_wrong(tmp_path, small_batches):
    n = len(WINO_ROWS)
    data = {
        "id": list(range(n)),
        "image_0": [png(10 * i) for i in range(n)],
        "image_1": [png(10 * i + 5) for i in range(n)],
        "caption_0": [f"caption zero {i}" for i in range(n)],
        "caption_1": [f"caption one {i}" for i in range(n)],
        "tag": ["Noun"] * n,
        "secondary_tag": [""] * n,
        "num_main_preds": [1] * n,
        "collapsed_tag": [t for *_, t in WINO_ROWS],
    }
    data["caption_1"][1] = data["caption_0"][1]  # example 1: the same caption twice
    data["image_1"][3] = data["image_0"][3]  # example 3: the same image twice
    ctx = ctx_for(small_batches, "winoground", write(tmp_path / "w", data, WINO_FEATURES))
    res = Winoground().evaluate(ctx)
    (s00, s01), (s10, s11) = res.predictions[1]["scores"]
    assert s00 == s10 and s01 == s11 and not res.predictions[1]["text"]
    (s00, s01), (s10, s11) = res.predictions[3]["scores"]
    assert s00 == s01 and s10 == s11 and not res.predictions[3]["image"]
    assert res.metrics["n_ties"] == 2.0 and res.protocol == {"ties": TIES}
    # CLIP_benchmark's argmax (image_caption_selection) fails these ties too: the second image
    # (caption) loses its tie to the first, so on ties of identical inputs the two rules agree
    for p in res.predictions:
        scores = torch.tensor(p["scores"]).T  # (image, caption), as CLIP_benchmark's image @ text.T
        gt = torch.arange(2)
        assert bool((scores.argmax(1) == gt).all()) == p["text"]
        assert bool((scores.argmax(0) == gt).all()) == p["image"]
