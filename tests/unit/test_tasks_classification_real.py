"""Real-dataset zero-shot classification and linear probes (CIFAR-10/100, ImageNet-1k, any
CLIP_benchmark webdataset): metrics on hand-computed cases with a fake encoder, the tasks end to end
on fixtures in the exact upstream layouts (HF parquet for CIFAR, CLIP_benchmark webdataset shards
with their own class names and templates) with the micro encoder, errors, undecodable images, the
embedding cache shared across tasks, the protocol each result records, and validation mode never
reading the test split."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import tasks.base
from harness.data.sources import (
    DataError,
    DataOptions,
    DatasetUnavailableError,
    MissingColumnsError,
    UndecodableImageError,
)
from harness.engine.models import Encoder, ModelConfig, build_model
from tasks import TASKS, EvalContext
from tasks.classification_real import (
    Cifar10ZeroShot,
    Cifar100ZeroShot,
    Cifar100ZeroShotTV,
    ImageNetZeroShot,
    WdsZeroShot,
)
from tasks.classnames import (
    CIFAR10_CLASSNAMES,
    CIFAR100_CLASSNAMES,
    CIFAR100_TORCHVISION_CLASSNAMES,
    CIFAR_TEMPLATES,
    imagenet_classnames,
    imagenet_templates,
    same_classes,
    template_strings,
)
from tasks.linear_real import Cifar10Linear, Cifar10LinearCB, Cifar100Linear, Cifar100LinearCB
from tasks.probe import CB_WEIGHT_DECAYS

#: the Hugging Face ClassLabel names (uoft-cs/cifar10, uoft-cs/cifar100 fine / coarse labels)
HF_CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
HF_CIFAR100_FINE = [n.replace(" ", "_") for n in CIFAR100_CLASSNAMES]
HF_CIFAR100_COARSE = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
]
BAD = b"this is not an image"

# ----------------------------------------------------------------------------------- fixtures


def png(rgb, size: int = 32, seed: int | None = None) -> bytes:
    """A PNG (lossless, as HF's CIFAR parquet stores) of one colour, with optional jitter."""
    arr = np.empty((size, size, 3), dtype=np.uint8)
    arr[:] = np.asarray(rgb, dtype=np.uint8)
    if seed is not None:
        noise = np.random.default_rng(seed).integers(-20, 21, size=arr.shape)
        arr = np.clip(arr.astype(int) + noise, 0, 255).astype(np.uint8)
        arr[0, 0] = rgb  # the code pixel stays exact
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def code_png(code: int, size: int = 32) -> bytes:
    """An image whose top-left pixel encodes ``code`` (read back by :class:`FakeEncoder`)."""
    return png((code % 256, code // 256, 7), size)


def jpg(rgb, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), rgb, dtype=np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def class_image(label: int, i: int) -> bytes:
    """Class-coloured CIFAR-like image: a learnable signal for the micro encoder."""
    hue = np.random.default_rng(1000 + label).integers(0, 256, size=3)
    return png(hue, seed=i)


def _image_value(b: bytes) -> dict:
    return {"bytes": b, "path": None}


def write_cifar10(root: Path, train=None, test=None, image_column: str = "img", names=HF_CIFAR10) -> Path:
    """``uoft-cs/cifar10``'s layout: ``plain_text/{split}-00000-of-00001.parquet``, features
    ``img`` (Image) and ``label`` (ClassLabel). ``train`` / ``test``: lists of (bytes, label)."""
    features = datasets.Features(
        {image_column: datasets.Image(), "label": datasets.ClassLabel(names=list(names))}
    )
    for split, rows in (("train", train), ("test", test)):
        if rows is None:
            continue
        d = root / "plain_text"
        d.mkdir(parents=True, exist_ok=True)
        ds = datasets.Dataset.from_dict(
            {image_column: [_image_value(b) for b, _ in rows], "label": [int(y) for _, y in rows]},
            features=features,
        )
        ds.to_parquet(str(d / f"{split}-00000-of-00001.parquet"))
    return root


def write_cifar100(root: Path, train=None, test=None) -> Path:
    """``uoft-cs/cifar100``'s layout: ``cifar100/{split}-00000-of-00001.parquet``, features ``img``,
    ``fine_label`` (100 classes), ``coarse_label`` (20). Rows: (bytes, fine label)."""
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=HF_CIFAR100_FINE),
            "coarse_label": datasets.ClassLabel(names=HF_CIFAR100_COARSE),
        }
    )
    for split, rows in (("train", train), ("test", test)):
        if rows is None:
            continue
        d = root / "cifar100"
        d.mkdir(parents=True, exist_ok=True)
        ds = datasets.Dataset.from_dict(
            {
                "img": [_image_value(b) for b, _ in rows],
                "fine_label": [int(y) for _, y in rows],
                "coarse_label": [int(y) % 20 for _, y in rows],
            },
            features=features,
        )
        ds.to_parquet(str(d / f"{split}-00000-of-00001.parquet"))
    return root


def write_wds(
    root: Path,
    samples,
    split: str = "test",
    ext: str = "jpg",
    label_field: str = "cls",
    classnames=None,
    templates=None,
) -> Path:
    """CLIP_benchmark's webdataset layout: ``{split}/0.tar`` of ``000000.jpg`` + ``000000.cls`` (the
    label as text), ``{split}/nshards.txt``, ``classnames.txt``, ``zeroshot_classification_templates.txt``
    (ImageNet's names and templates unless given; ``()`` leaves the file out)."""
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    with tarfile.open(d / "0.tar", "w") as tar:
        for i, (image, label) in enumerate(samples):
            for name, data in ((f"{i:06d}.{ext}", image), (f"{i:06d}.{label_field}", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (d / "nshards.txt").write_text("1\n")
    for name, lines, default in (
        ("classnames.txt", classnames, imagenet_classnames()),
        ("zeroshot_classification_templates.txt", templates, imagenet_templates()),
    ):
        lines = default if lines is None else lines
        if lines != ():
            (root / name).write_text("\n".join(lines) + "\n")
    return root


class FakeEncoder:
    """Chosen embeddings: an image's vector is looked up by the code in its top-left pixel; a
    prompt's vector by the class it names (``text_vector(class index)``). Undecodable images give
    NaN rows, as :class:`harness.engine.models.Encoder` does."""

    def __init__(self, image_vectors: dict[int, list[float]], classnames, templates, text_vector):
        self.image_vectors = {k: torch.tensor(v, dtype=torch.float32) for k, v in image_vectors.items()}
        self.prompt_class = {t.format(c=c): k for k, c in enumerate(classnames) for t in templates}
        self.text_vector = text_vector
        self.image_calls = 0

    def encode_image(self, column) -> torch.Tensor:
        self.image_calls += 1
        rows = []
        for j in range(len(column)):
            img = column.load(j)
            if img is None:
                rows.append(torch.full_like(next(iter(self.image_vectors.values())), float("nan")))
            else:
                r, g, _ = img.getpixel((0, 0))
                rows.append(self.image_vectors[r + 256 * g])
        return F.normalize(torch.stack(rows), dim=-1)

    def encode_text(self, texts) -> torch.Tensor:
        return F.normalize(torch.stack([self.text_vector(self.prompt_class[t]) for t in texts]), dim=-1)


def one_hot(dim: int):
    return lambda k: F.one_hot(torch.tensor(k), dim).float()


def ranked(order: list[int]) -> list[float]:
    """A vector whose components rank the classes in ``order`` (distinct values, no ties)."""
    v = [0.0] * len(order)
    for pos, c in enumerate(order):
        v[c] = float(len(order) - pos)
    return v


@pytest.fixture(scope="module")
def micro() -> Encoder:
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro", tokenizer="open_clip"))
    return Encoder(model, tok, size, mean, std, batch_size=64)


@pytest.fixture
def cifar10_dir(tmp_path) -> Path:
    train = [(class_image(i % 10, i), i % 10) for i in range(60)]
    test = [(class_image(i % 10, 500 + i), i % 10) for i in range(20)]
    return write_cifar10(tmp_path / "cifar10", train, test)


def ctx_for(encoder, name: str, path: Path, validation: bool = False, strict: bool = False) -> EvalContext:
    return EvalContext(
        encoder=encoder,
        validation=validation,
        data=DataOptions(paths={name: str(path)}, strict_images=strict),
    )


# ------------------------------------------------------------------------- names and templates


def test_registered_and_described():
    for name, cls in (
        ("cifar10-zeroshot", Cifar10ZeroShot),
        ("cifar100-zeroshot", Cifar100ZeroShot),
        ("imagenet-zeroshot", ImageNetZeroShot),
        ("cifar10-linear", Cifar10Linear),
        ("cifar100-linear", Cifar100Linear),
        ("cifar10-linear-cb", Cifar10LinearCB),
        ("cifar100-linear-cb", Cifar100LinearCB),
        ("cifar100-zeroshot-tv", Cifar100ZeroShotTV),
        ("wds-zeroshot", WdsZeroShot),
    ):
        assert TASKS.get(name) is cls and cls.name == name
        d = cls.describe()
        assert d["dataset"] == cls.source.repo and d["split"] == "test" and d["license"]
    assert Cifar10Linear.modality == "image" and Cifar10ZeroShot.modality == "image-text"
    assert Cifar10LinearCB.modality == "image" and Cifar10LinearCB.main_score == "lp_acc1"
    assert not WdsZeroShot.has_validation()


def test_classnames_and_templates():
    # the CLIP paper's prompts (OpenAI data/prompts.md, CLIP_benchmark's templates json)
    assert (
        len(CIFAR_TEMPLATES) == 18
        and CIFAR_TEMPLATES[0] == "a photo of a {c}."
        and CIFAR_TEMPLATES[-1] == "a photo of the big {c}."
    )
    assert len(CIFAR100_CLASSNAMES) == 100 and len(set(CIFAR100_CLASSNAMES)) == 100
    assert CIFAR100_CLASSNAMES[1] == "aquarium fish" and CIFAR100_CLASSNAMES[-1] == "worm"
    assert sorted(CIFAR100_CLASSNAMES) == list(CIFAR100_CLASSNAMES)  # torchvision's order is alphabetical
    assert same_classes(HF_CIFAR10, CIFAR10_CLASSNAMES) and same_classes(
        HF_CIFAR100_FINE, CIFAR100_CLASSNAMES
    )
    assert not same_classes(HF_CIFAR10[::-1], CIFAR10_CLASSNAMES)
    # open_clip's 80 callables become {c} strings that format back to the callable's output
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    t = imagenet_templates()
    assert len(t) == 80 and len(imagenet_classnames()) == 1000
    for s, f in zip(t, OPENAI_IMAGENET_TEMPLATES):
        assert s.format(c="kite (bird of prey)") == f("kite (bird of prey)")
    assert t[0] == "a bad photo of a {c}."
    with pytest.raises(ValueError):
        template_strings(["no placeholder"])
    with pytest.raises(ValueError):
        template_strings([lambda c: "{x} " + c])  # would not survive str.format


# ------------------------------------------------------------------- zero-shot, hand-computed

# (code, label, class ranking): acc1 3/5, acc5 4/5, recalls {0: 1, 1: 0/2, 2: 1, 3: 1} -> 0.75
ZS_CASES = [
    (1000, 0, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
    (1001, 1, [2, 1, 0, 3, 4, 5, 6, 7, 8, 9]),  # top-1 miss, top-5 hit
    (1002, 2, [2, 0, 1, 3, 4, 5, 6, 7, 8, 9]),
    (1003, 1, [3, 4, 5, 6, 7, 1, 0, 2, 8, 9]),  # the true class ranks 6th: top-5 miss
    (1004, 3, [3, 0, 1, 2, 4, 5, 6, 7, 8, 9]),
]


def _zs_fixture(tmp_path, bad: bool = False):
    test = [(code_png(code), label) for code, label, _ in ZS_CASES]
    if bad:
        test.insert(2, (BAD, 0))
    train = [(code_png(i), i % 10) for i in range(30)]
    root = write_cifar10(tmp_path / "c10", train, test)
    vectors = {code: ranked(order) for code, _, order in ZS_CASES}
    vectors.update({i: ranked(list(range(10))) for i in range(30)})
    return root, FakeEncoder(vectors, CIFAR10_CLASSNAMES, CIFAR_TEMPLATES, one_hot(10))


@pytest.mark.parametrize("bad", [False, True])
def test_zeroshot_metrics_hand_computed(tmp_path, bad):
    root, enc = _zs_fixture(tmp_path, bad)
    res = Cifar10ZeroShot().evaluate(ctx_for(enc, "cifar10-zeroshot", root))
    m = res.metrics
    assert m["acc1"] == pytest.approx(3 / 5) and res.main_score == pytest.approx(0.6)
    assert m["acc5"] == pytest.approx(4 / 5)
    assert m["mean_per_class_recall"] == pytest.approx(3 / 4)
    assert m["n_undecodable"] == (1.0 if bad else 0.0)
    assert res.n_items == 5 and res.item_scores == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert np.mean(res.item_scores) == pytest.approx(m["acc1"])
    assert [(p["true"], p["pred"]) for p in res.predictions] == [
        ("airplane", "airplane"),
        ("automobile", "bird"),
        ("bird", "bird"),
        ("automobile", "cat"),
        ("cat", "cat"),
    ]
    # item ids are rows of the test table: the undecodable row (2) is skipped
    assert [p["item"] for p in res.predictions] == ([0, 1, 3, 4, 5] if bad else [0, 1, 2, 3, 4])
    assert res.dataset == str(root) and len(res.dataset_fingerprint) == 16


def test_zeroshot_strict_images_raises(tmp_path):
    root, enc = _zs_fixture(tmp_path, bad=True)
    with pytest.raises(UndecodableImageError):
        Cifar10ZeroShot().evaluate(ctx_for(enc, "cifar10-zeroshot", root, strict=True))


# ---------------------------------------------------------------------- ImageNet (webdataset)


def angle(k: int) -> list[float]:
    """Class ``k`` of 1000 as a direction in the plane: neighbours in k are neighbours in angle."""
    a = 2 * math.pi * k / 1000
    return [math.cos(a), math.sin(a)]


def test_imagenet_webdataset_hand_computed(tmp_path):
    # (code, label, image direction): at its class; at class+2 (top-5 hit only); at class+3 (miss)
    cases = [(2000, 3, 3), (2001, 998, 998), (2002, 10, 12), (2003, 500, 503), (2004, 7, 7)]
    root = write_wds(
        tmp_path / "wds_imagenet1k", [(code_png(c, 24), label) for c, label, _ in cases] + [(BAD, 5)]
    )
    enc = FakeEncoder(
        {c: angle(at) for c, _, at in cases},
        imagenet_classnames(),
        imagenet_templates(),
        lambda k: torch.tensor(angle(k)),
    )
    res = ImageNetZeroShot().evaluate(ctx_for(enc, "imagenet-zeroshot", root))
    m = res.metrics
    assert m["acc1"] == pytest.approx(3 / 5) and m["acc5"] == pytest.approx(4 / 5)
    assert m["mean_per_class_recall"] == pytest.approx(3 / 5)  # five classes, one sample each
    assert m["n_undecodable"] == 1.0 and res.n_items == 5
    names = imagenet_classnames()
    assert res.predictions[2] == {"item": 2, "true": names[10], "pred": names[12]}
    assert res.item_scores == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_imagenet_wds_real_images_micro_encoder(tmp_path, micro):
    root = write_wds(
        tmp_path / "wds", [(jpg((40 * i % 255, 90, 200 - 30 * i)), 100 * i + 7) for i in range(6)]
    )
    res = ImageNetZeroShot().evaluate(ctx_for(micro, "imagenet-zeroshot", root))
    assert res.n_items == 6 and set(res.metrics) == {"acc1", "acc5", "mean_per_class_recall", "n_undecodable"}
    assert 0.0 <= res.metrics["acc1"] <= res.metrics["acc5"] <= 1.0
    assert np.mean(res.item_scores) == pytest.approx(res.metrics["acc1"])
    assert {p["true"] for p in res.predictions} == {imagenet_classnames()[100 * i + 7] for i in range(6)}


def test_imagenet_ilsvrc_style_table(tmp_path):
    """A local ILSVRC/imagenet-1k-style parquet (``image``, ``label`` ClassLabel of 1000 WordNet
    names) is read by column detection; its unlabelled test split (label -1) is refused."""
    synonyms = [f"{n}, n{i:08d}" for i, n in enumerate(imagenet_classnames())]  # unique, as WordNet ids
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=synonyms)})
    cases = [(3000, 1, 1), (3001, 2, 2), (3002, 3, 9)]
    path = tmp_path / "validation-00000-of-00001.parquet"
    datasets.Dataset.from_dict(
        {"image": [_image_value(code_png(c)) for c, _, _ in cases], "label": [y for _, y, _ in cases]},
        features=features,
    ).to_parquet(str(path))
    enc = FakeEncoder(
        {c: angle(at) for c, _, at in cases},
        imagenet_classnames(),
        imagenet_templates(),
        lambda k: torch.tensor(angle(k)),
    )
    res = ImageNetZeroShot().evaluate(ctx_for(enc, "imagenet-zeroshot", path))
    assert res.metrics["acc1"] == pytest.approx(2 / 3) and res.metrics["acc5"] == pytest.approx(2 / 3)

    unlabelled = tmp_path / "ilsvrc-test.parquet"
    datasets.Dataset.from_dict(
        {"image": [_image_value(code_png(1))], "label": [-1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    ).to_parquet(str(unlabelled))
    with pytest.raises(DataError, match="outside"):
        ImageNetZeroShot().check_data(DataOptions(paths={"imagenet-zeroshot": str(unlabelled)}))


def test_imagenet_missing_columns_and_no_validation(tmp_path, micro):
    root = write_wds(tmp_path / "wds", [(jpg((1, 2, 3)), 4)], label_field="txt")
    with pytest.raises(MissingColumnsError) as e:
        ImageNetZeroShot().check_data(DataOptions(paths={"imagenet-zeroshot": str(root)}))
    msg = str(e.value)
    assert "label column" in msg and "cls" in msg and "jpg" in msg and "txt" in msg  # expected and found
    with pytest.raises(ValueError, match="no validation split"):
        ImageNetZeroShot().evaluate(ctx_for(micro, "imagenet-zeroshot", root, validation=True))


# ------------------------------------------------------------------ CIFAR end to end (micro)


def test_cifar10_zeroshot_and_linear_share_test_embeddings(cifar10_dir, micro):
    ctx = ctx_for(micro, "uoft-cs/cifar10", cifar10_dir)  # one path for both tasks (by dataset id)
    zs = Cifar10ZeroShot().evaluate(ctx)
    assert zs.n_items == 20 and zs.metrics["n_undecodable"] == 0.0
    assert 0.0 <= zs.metrics["acc1"] <= zs.metrics["acc5"] <= 1.0
    assert np.mean(zs.item_scores) == pytest.approx(zs.metrics["acc1"])
    assert all(p["true"] in CIFAR10_CLASSNAMES and p["pred"] in CIFAR10_CLASSNAMES for p in zs.predictions)
    assert [p["true"] for p in zs.predictions] == [CIFAR10_CLASSNAMES[i % 10] for i in range(20)]
    hits = ctx.cache.hits
    lp = Cifar10Linear().evaluate(ctx)
    assert ctx.cache.hits == hits + 1  # the test split's image embeddings came from the cache
    m = lp.metrics
    assert lp.n_items == 20 and m["n_fit"] == 54 and m["n_val"] == 6 and m["n_undecodable"] == 0.0
    assert {"acc1", "acc5", "mean_per_class_recall", "weight_decay", "val_acc1"} <= set(m)
    assert m["weight_decay"] in Cifar10Linear.weight_decays
    assert m["log10_weight_decay"] == pytest.approx(math.log10(m["weight_decay"]))
    assert np.mean(lp.item_scores) == pytest.approx(m["acc1"]) and lp.main_score == m["acc1"]
    # class-coloured images: a probe on random micro features still beats chance (10%) clearly
    assert m["acc1"] >= 0.5


def test_cifar100_fine_labels(tmp_path, micro):
    train = [(class_image(i % 7 * 13, i), i % 7 * 13) for i in range(28)]
    test = [(class_image(i % 7 * 13, 900 + i), i % 7 * 13) for i in range(14)]
    root = write_cifar100(tmp_path / "c100", train, test)
    ctx = ctx_for(micro, "uoft-cs/cifar100", root)
    zs = Cifar100ZeroShot().evaluate(ctx)
    assert zs.n_items == 14 and "acc5" in zs.metrics
    assert {p["true"] for p in zs.predictions} == {CIFAR100_CLASSNAMES[k * 13] for k in range(7)}
    assert all(p["pred"] in CIFAR100_CLASSNAMES for p in zs.predictions)
    lp = Cifar100Linear().evaluate(ctx)
    assert lp.n_items == 14 and lp.metrics["n_val"] == 3 and lp.metrics["n_fit"] == 25


def test_cifar_missing_column_and_wrong_class_order(tmp_path):
    root = write_cifar10(tmp_path / "a", test=[(class_image(0, 0), 0)], image_column="image")
    with pytest.raises(MissingColumnsError) as e:
        Cifar10ZeroShot().check_data(DataOptions(paths={"cifar10-zeroshot": str(root)}))
    assert "'img'" in str(e.value) and "found image, label" in str(e.value)
    root = write_cifar10(tmp_path / "b", test=[(class_image(0, 0), 0)], names=HF_CIFAR10[::-1])
    with pytest.raises(DataError, match="in that order"):
        Cifar10ZeroShot().check_data(DataOptions(paths={"cifar10-zeroshot": str(root)}))
    # the linear probe also needs the train split
    root = write_cifar10(tmp_path / "c", test=[(class_image(0, 0), 0)])
    Cifar10ZeroShot().check_data(DataOptions(paths={"cifar10-zeroshot": str(root)}))
    with pytest.raises(DataError, match="split 'train'"):
        Cifar10Linear().check_data(DataOptions(paths={"cifar10-linear": str(root)}))


def test_undecodable_images_skipped_and_strict(tmp_path, micro):
    train = [(class_image(i % 10, i), i % 10) for i in range(40)]
    val_rows, rest = Cifar10Linear().holdout(40)
    train[int(rest[0])] = (BAD, train[int(rest[0])][1])  # one fit image, one test image are corrupt
    test = [(class_image(i % 10, 700 + i), i % 10) for i in range(10)]
    test[3] = (BAD, 3)
    root = write_cifar10(tmp_path / "c10", train, test)
    ctx = ctx_for(micro, "uoft-cs/cifar10", root)
    zs = Cifar10ZeroShot().evaluate(ctx)
    assert (
        zs.metrics["n_undecodable"] == 1.0
        and zs.n_items == 9
        and 3 not in [p["item"] for p in zs.predictions]
    )
    lp = Cifar10Linear().evaluate(ctx)
    assert lp.metrics["n_undecodable"] == 2.0 and lp.n_items == 9 and lp.metrics["n_fit"] == 35
    strict = ctx_for(micro, "uoft-cs/cifar10", root, strict=True)
    with pytest.raises(UndecodableImageError):
        Cifar10Linear().evaluate(strict)


# -------------------------------------------------------------------------------- validation


def test_validation_never_reads_test(cifar10_dir, micro, monkeypatch):
    splits = []
    real = tasks.base.load_table

    def spy(name, source, options, columns, split=None):
        splits.append(split)
        return real(name, source, options, columns, split=split)

    monkeypatch.setattr(tasks.base, "load_table", spy)
    ctx = ctx_for(micro, "uoft-cs/cifar10", cifar10_dir, validation=True)
    zs = Cifar10ZeroShot().evaluate(ctx)
    hits = ctx.cache.hits
    lp = Cifar10Linear().evaluate(ctx)
    assert splits and set(splits) == {"train"}
    val_rows, _ = Cifar10Linear().holdout(60)
    # both report on the same held-out part of train, whose embeddings the probe reused
    assert [p["item"] for p in zs.predictions] == [p["item"] for p in lp.predictions] == val_rows.tolist()
    assert ctx.cache.hits == hits + 1
    assert lp.metrics["acc1"] == lp.metrics["val_acc1"]
    assert "held-out validation part" in zs.dataset and "held-out validation part" in lp.dataset

    # with no test split at all, validation mode still runs
    only_train = write_cifar10(
        cifar10_dir.parent / "only-train", train=[(class_image(i % 10, i), i % 10) for i in range(30)]
    )
    ctx = ctx_for(micro, "uoft-cs/cifar10", only_train, validation=True)
    assert Cifar10ZeroShot().evaluate(ctx).n_items == 3
    with pytest.raises(DataError):
        Cifar10ZeroShot().evaluate(ctx_for(micro, "uoft-cs/cifar10", only_train))


def test_holdout_is_seeded_disjoint_and_capped():
    task = Cifar10Linear()
    val, rest = task.holdout(50_000)
    assert len(val) == 5000 and len(rest) == 45_000
    assert not set(val.tolist()) & set(rest.tolist())
    v2, r2 = Cifar10ZeroShot().holdout(50_000)  # the zero-shot task holds out the same rows
    assert np.array_equal(val, v2) and np.array_equal(rest, r2)
    assert len(task.holdout(60)[0]) == 6 and len(task.holdout(2)[0]) == 1
    with pytest.raises(DataError):
        task.holdout(1)


# ------------------------------------------------------------- linear probe: selection on val


@pytest.mark.parametrize("scenario", ["val-wants-strong", "val-wants-weak"])
def test_linear_probe_chooses_weight_decay_on_validation_only(tmp_path, scenario):
    """The validation part and the test split disagree on purpose: a probe chosen on validation
    scores 0 on test, one chosen on test would score 1.

    Fit set: 40 class-0 images near e0, 14 class-1 images near e1. Validation and test images all
    lie near e1. ``val-wants-strong``: validation labels are 0 (only a probe shrunk to its class
    prior, i.e. the largest weight decay, predicts 0 there), test labels are 1. ``val-wants-weak``:
    validation labels are 1 (a weakly regularised probe follows the features), test labels 0.
    """
    n_train, n_test = 60, 20
    val_rows, rest = Cifar10Linear().holdout(n_train)
    fit_rows = np.sort(rest)
    rng = np.random.default_rng(0)
    e = np.eye(10)
    labels, vectors = {}, {}
    for j, r in enumerate(fit_rows):
        labels[int(r)] = 0 if j < 40 else 1
        vectors[int(r)] = (e[labels[int(r)]] + 0.1 * rng.standard_normal(10)).tolist()
    near_e1 = [(e[1] + 0.01 * rng.standard_normal(10)).tolist() for _ in range(n_test)]
    val_label, test_label = (0, 1) if scenario == "val-wants-strong" else (1, 0)
    for j, r in enumerate(val_rows):
        labels[int(r)], vectors[int(r)] = val_label, near_e1[j]
    for i in range(n_test):
        vectors[1000 + i] = near_e1[i]
    root = write_cifar10(
        tmp_path / "c10",
        [(code_png(i), labels[i]) for i in range(n_train)],
        [(code_png(1000 + i), test_label) for i in range(n_test)],
    )
    enc = FakeEncoder(vectors, CIFAR10_CLASSNAMES, CIFAR_TEMPLATES, one_hot(10))
    res = Cifar10Linear().evaluate(ctx_for(enc, "cifar10-linear", root))
    m = res.metrics
    assert m["val_acc1"] == 1.0
    assert m["acc1"] == 0.0 and m["mean_per_class_recall"] == 0.0 and res.item_scores == [0.0] * n_test
    if scenario == "val-wants-strong":
        assert m["weight_decay"] == max(Cifar10Linear.weight_decays)  # ties keep the largest
        assert m["acc5"] == 1.0  # class 1 is the runner-up prior
        assert {p["pred"] for p in res.predictions} == {"airplane"}
    else:
        assert m["weight_decay"] < max(Cifar10Linear.weight_decays)
        assert {p["pred"] for p in res.predictions} == {"automobile"}
    assert (m["n_fit"], m["n_val"]) == (54.0, 6.0)


def test_linear_probe_n_fit_cap(tmp_path):
    train = [(code_png(i), i % 2) for i in range(60)]
    vectors = {i: np.eye(10)[i % 2].tolist() for i in range(60)}
    vectors.update({1000 + i: np.eye(10)[i % 2].tolist() for i in range(4)})
    root = write_cifar10(tmp_path / "c10", train, [(code_png(1000 + i), i % 2) for i in range(4)])
    enc = FakeEncoder(vectors, CIFAR10_CLASSNAMES, CIFAR_TEMPLATES, one_hot(10))

    class Small(Cifar10Linear):  # a subclass has no entry point: it names itself to find its data
        name, n_fit = "cifar10-linear", 20

    res = Small().evaluate(ctx_for(enc, "cifar10-linear", root))
    assert res.metrics["n_fit"] == 20.0 and res.metrics["acc1"] == 1.0 and res.metrics["val_acc1"] == 1.0


# ------------------------------------------------- any CLIP_benchmark webdataset, its own names

TEN = ("cat", "dog", "bird", "car", "boat", "tree", "lake", "cake", "shoe", "lamp")
TEN_TEMPLATES = ("a photo of a {c}.", "a drawing of the {c}.")


def _ten_class_wds(tmp_path, extra=(), **kw):
    """A 10-class CLIP_benchmark webdataset (its own classnames.txt and templates) with the images
    of :data:`ZS_CASES` (acc1 3/5, acc5 4/5, mean per-class recall 3/4 with these names)."""
    samples = [(code_png(code), label) for code, label, _ in ZS_CASES] + list(extra)
    kw = {"classnames": TEN, "templates": TEN_TEMPLATES, **kw}
    root = write_wds(tmp_path / "wds_ten", samples, ext="png", **kw)
    enc = FakeEncoder({code: ranked(order) for code, _, order in ZS_CASES}, TEN, TEN_TEMPLATES, one_hot(10))
    return root, enc


@pytest.mark.parametrize("task", [WdsZeroShot, ImageNetZeroShot])
def test_webdataset_zeroshot_with_its_own_classnames_and_templates(tmp_path, task):
    """Both tasks prompt with the webdataset's 10 names and 2 templates (imagenet-zeroshot used to
    prompt with ImageNet's 1,000 names here, and scored 0)."""
    root, enc = _ten_class_wds(tmp_path)
    res = task().evaluate(ctx_for(enc, task.name, root))
    m = res.metrics
    assert (m["acc1"], m["acc5"], m["mean_per_class_recall"]) == pytest.approx((3 / 5, 4 / 5, 3 / 4))
    assert [(p["true"], p["pred"]) for p in res.predictions] == [
        ("cat", "cat"),
        ("dog", "bird"),
        ("bird", "bird"),
        ("dog", "car"),
        ("car", "car"),
    ]
    assert res.protocol["classnames"] == "classnames.txt (10 names)"
    assert res.protocol["templates"] == "zeroshot_classification_templates.txt (2)"
    assert res.protocol["metadata"] == str(root) and res.dataset == str(root)
    # the test split folder itself names the dataset too (its metadata is one level up)
    again = task().evaluate(ctx_for(enc, task.name, root / "test"))
    assert again.metrics == m


def test_imagenet_protocol_names_open_clip_when_the_files_are_its_own(tmp_path):
    cases = [(2000, 3, 3), (2001, 998, 998)]
    root = write_wds(tmp_path / "wds_imagenet1k", [(code_png(c, 24), label) for c, label, _ in cases])
    enc = FakeEncoder(
        {c: angle(at) for c, _, at in cases},
        imagenet_classnames(),
        imagenet_templates(),
        lambda k: torch.tensor(angle(k)),
    )
    res = ImageNetZeroShot().evaluate(ctx_for(enc, "imagenet-zeroshot", root))
    assert res.protocol["classnames"] == "open_clip-openai" and res.protocol["templates"] == "openai-80"
    assert res.metrics["acc1"] == 1.0


@pytest.mark.parametrize("task", [WdsZeroShot, ImageNetZeroShot])
def test_labels_beyond_the_class_names_are_refused_before_training(tmp_path, task):
    root, _ = _ten_class_wds(tmp_path, extra=[(code_png(7), 12)])
    with pytest.raises(DataError) as e:
        task().check_data(DataOptions(paths={task.name: str(root)}))
    msg = str(e.value)
    assert task.name in msg and str(root) in msg and "max label 12" in msg and "10 class names" in msg


def test_wds_zeroshot_refuses_missing_or_malformed_metadata(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="--data wds-zeroshot=DIR"):
        WdsZeroShot().check_data(DataOptions())
    root = write_wds(tmp_path / "no-names", [(code_png(1), 0)], classnames=())
    with pytest.raises(DataError, match="has no classnames.txt"):
        WdsZeroShot().check_data(DataOptions(paths={"wds-zeroshot": str(root)}))
    root = write_wds(tmp_path / "no-templates", [(code_png(1), 0)], classnames=TEN, templates=())
    with pytest.raises(DataError, match="has no zeroshot_classification_templates.txt"):
        WdsZeroShot().check_data(DataOptions(paths={"wds-zeroshot": str(root)}))
    root = write_wds(
        tmp_path / "bad-template",
        [(code_png(1), 0)],
        classnames=TEN,
        templates=("a photo of a {c}.", "a photo."),
    )
    with pytest.raises(DataError, match="line 2"):
        WdsZeroShot().check_data(DataOptions(paths={"wds-zeroshot": str(root)}))
    root = write_wds(tmp_path / "retrieval", [(code_png(1), 0)], classnames=TEN, templates=TEN_TEMPLATES)
    (root / "dataset_type.txt").write_text("retrieval\n")
    with pytest.raises(DataError, match="'retrieval' webdataset"):
        WdsZeroShot().check_data(DataOptions(paths={"wds-zeroshot": str(root)}))


# ------------------------------------------------------------- the protocol in every result


def test_cifar100_class_names_are_recorded(tmp_path, micro):
    """CLIP's names by default; torchvision's (CLIP_benchmark 1.6.2's) under cifar100-zeroshot-tv."""
    assert [n for n in CIFAR100_TORCHVISION_CLASSNAMES if n not in CIFAR100_CLASSNAMES] == [
        "aquarium_fish",
        "lawn_mower",
        "maple_tree",
        "oak_tree",
        "palm_tree",
        "pickup_truck",
        "pine_tree",
        "sweet_pepper",
        "willow_tree",
    ]
    root = write_cifar100(tmp_path / "c100", test=[(class_image(1, i), 1) for i in range(3)])
    ctx = ctx_for(micro, "uoft-cs/cifar100", root)
    clip = Cifar100ZeroShot().evaluate(ctx)
    tv = Cifar100ZeroShotTV().evaluate(ctx)
    assert clip.protocol == {"classnames": "clip", "templates": "clip-18"}
    assert tv.protocol == {"classnames": "torchvision", "templates": "clip-18"}
    assert {p["true"] for p in clip.predictions} == {"aquarium fish"}
    assert {p["true"] for p in tv.predictions} == {"aquarium_fish"}
    prompts = [k[-1] for k in ctx.cache._store if "prompts" in k]
    assert len(prompts) == 2  # two different prompt sets were encoded


def test_harness_probe_records_its_solver(cifar10_dir, micro):
    res = Cifar10Linear().evaluate(ctx_for(micro, "uoft-cs/cifar10", cifar10_dir))
    m, p = res.metrics, res.protocol
    assert res.version == "2" and p["linear_probe"] == "harness"
    assert p["tol"] == 1e-6 and p["max_iter"] == 1000
    assert p["weight_decay"] == m["weight_decay"] and p["converged"] is True and m["probe_converged"] == 1.0
    assert 0 < m["probe_iterations"] == p["iterations"] < 1000
    # 54 separable fit images: at the smallest weight decay the optimum lies far out and the cap is
    # hit; such fits are counted (and logged), not hidden
    assert m["probe_unconverged_fits"] == len(p["unconverged_weight_decays"])


# ----------------------------------------------------------- CLIP_benchmark's probe on CIFAR


def test_cifar10_linear_cb_end_to_end(cifar10_dir, micro, monkeypatch):
    ctx = ctx_for(micro, "uoft-cs/cifar10", cifar10_dir)
    res = Cifar10LinearCB().evaluate(ctx)
    m = res.metrics
    # CLIP_benchmark's keys, and its constants
    assert {
        "lp_acc1",
        "lp_acc5",
        "lp_mean_per_class_recall",
        "weight_decay",
        "epochs",
        "seed",
        "fewshot_k",
        "normalized",
    } <= set(m)
    assert (m["epochs"], m["seed"], m["fewshot_k"], m["normalized"]) == (10.0, 0.0, -1.0, 1.0)
    assert res.main_metric == "lp_acc1" and res.main_score == m["lp_acc1"]
    assert m["weight_decay"] in CB_WEIGHT_DECAYS
    assert (m["n_fit"], m["n_val"]) == (54.0, 6.0) and res.n_items == 20 and m["lp_acc1"] >= 0.5
    assert np.mean(res.item_scores) == pytest.approx(m["lp_acc1"])
    p = res.protocol
    assert p["linear_probe"] == "clip_benchmark" and p["refit"] == "train + validation" and p["amp"] is False
    assert (p["lr"], p["epochs"], p["batch_size"], p["seed"]) == (0.1, 10, 64, 0)
    assert p["weight_decay"] == m["weight_decay"]
    json.dumps(res.to_dict())

    splits = []
    real = tasks.base.load_table
    monkeypatch.setattr(
        tasks.base,
        "load_table",
        lambda name, source, options, columns, split=None: (
            splits.append(split) or real(name, source, options, columns, split=split)
        ),
    )
    val = Cifar10LinearCB().evaluate(ctx_for(micro, "uoft-cs/cifar10", cifar10_dir, validation=True))
    assert set(splits) == {"train"} and val.metrics["lp_acc1"] == val.metrics["val_acc1"]
    assert val.protocol["refit"].startswith("none") and val.n_items == 6
