"""COCO / Flickr30k retrieval (tasks/retrieval_real.py) and the bounded-memory retrieval metrics.

Fixtures are written in the exact upstream layouts (nlphuji parquet conversion
``TEST/test/0000.parquet`` with an ``Image`` feature and a ``caption`` list; the full
``nlphuji/flickr30k`` with a ``split`` column; CLIP_benchmark webdataset ``test/0.tar``) and loaded
through :func:`harness.data.sources.load_table`, as real data is.
"""

from __future__ import annotations

import io
import tarfile

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.data.sources import DataOptions, MissingColumnsError, UndecodableImageError
from tasks.base import EvalContext
from tasks.retrieval import first_positive_rank, retrieval_metrics, retrieval_ranks
from tasks.retrieval_real import CocoRetrieval, Flickr30kRetrieval, parse_captions, retrieval_item_scores

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def image_bytes(colour: str, fmt: str = "PNG", size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[colour]).save(buf, format=fmt)
    return buf.getvalue()


class ColourEncoder:
    """A fake encoder with known embeddings: an image is its normalised mean RGB colour, a caption
    the colour it names (so ranks can be worked out by hand)."""

    def encode_image(self, column) -> torch.Tensor:
        out = []
        for j in range(len(column)):
            img = column.load(j)
            out.append(
                torch.full((3,), float("nan"))
                if img is None
                else torch.tensor(np.asarray(img, dtype=np.float32).reshape(-1, 3).mean(0) / 255)
            )
        return F.normalize(torch.stack(out), dim=1)

    def encode_text(self, texts) -> torch.Tensor:
        vec = []
        for t in texts:
            name = next(c for c in COLOURS if c in t.split())
            vec.append(torch.tensor(COLOURS[name], dtype=torch.float32))
        return F.normalize(torch.stack(vec), dim=1)


def micro_encoder():
    from harness.engine.models import Encoder, ModelConfig, build_model

    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro", tokenizer="open_clip"))
    return Encoder(model, tok, size, mean, std)


# ------------------------------------------------------------------------------- metrics


def test_metrics_hand_computed_with_varying_caption_counts():
    image = torch.eye(3)
    text = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # image 0: rank 1
            [0.0, 1.0, 0.0],  # image 0 scores 0, image 1 above -> rank 2 (image 2 ties, later index)
            [0.5, 0.5, 0.0],  # image 1 ties with image 0 (lower index first) -> rank 2
            [0.0, 0.0, 1.0],  # image 2: rank 1
            [0.0, 0.0, 0.0],  # all tie: images 0, 1 come first -> rank 3
            [0.2, 0.3, 0.1],
        ]
    )  # image 2 last -> rank 3
    text_to_image = torch.tensor([0, 0, 1, 2, 2, 2])
    m, t2i, i2t = retrieval_metrics(image, text, text_to_image, ks=(1, 2))
    assert t2i.tolist() == [1, 2, 2, 1, 3, 3]
    # image 0: texts 0 (1.0) best of its captions -> 1; image 1: its text 2 (0.5) after text 1 (1.0) -> 2;
    # image 2: text 3 (1.0) -> 1
    assert i2t.tolist() == [1, 2, 1]
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 6)
    assert m["image_retrieval_recall@2"] == pytest.approx(4 / 6)
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["text_retrieval_recall@2"] == pytest.approx(1.0)
    assert m["image_retrieval_mean_rank"] == pytest.approx(2.0)
    assert m["image_retrieval_median_rank"] == pytest.approx(2.0)
    assert m["text_retrieval_mean_rank"] == pytest.approx(4 / 3)
    assert m["text_retrieval_median_rank"] == pytest.approx(1.0)
    assert m["mean_recall@1"] == pytest.approx(0.5)
    assert m["mean_recall@2"] == pytest.approx(5 / 6)
    assert m["rsum"] == pytest.approx(100 * (2 / 6 + 4 / 6 + 2 / 3 + 1.0))
    # the same positives as a dense matrix give the same result
    dense = torch.zeros(6, 3, dtype=torch.bool)
    dense[torch.arange(6), text_to_image] = True
    m2, t2, i2 = retrieval_metrics(image, text, dense, ks=(1, 2), chunk=2)
    assert m2 == m and torch.equal(t2, t2i) and torch.equal(i2, i2t)
    # per image, at k=2: t2i hits (2, 1, 1 of 2, 1, 3 captions), i2t hits all -> 1.0, 0.75, 0.75
    items = retrieval_item_scores(t2i, i2t, text_to_image, k=2)
    assert items == pytest.approx([1.0, 0.75, 0.75])
    assert np.mean(items) == pytest.approx(m["mean_recall@2"])


def _reference(image, text, dense):
    """The pre-existing implementation: full score matrix, stable argsort (first_positive_rank)."""
    s = text @ image.T
    return first_positive_rank(s, dense), first_positive_rank(s.T, dense.T)


@pytest.mark.parametrize("kind", ["integer", "gaussian"])
def test_chunked_counting_equals_full_argsort(kind):
    g = torch.Generator().manual_seed(0)
    for trial in range(12):
        n_img = int(torch.randint(1, 30, (1,), generator=g))
        extra = torch.randint(0, n_img, (int(torch.randint(0, 50, (1,), generator=g)),), generator=g)
        t2i_index = torch.cat([torch.arange(n_img), extra])  # every image has >= 1 caption
        t2i_index = t2i_index[torch.randperm(len(t2i_index), generator=g)]
        n_txt = len(t2i_index)
        if kind == "integer":  # small integers: many exact ties, exact dot products
            image = torch.randint(-2, 3, (n_img, 4), generator=g).float()
            text = torch.randint(-2, 3, (n_txt, 4), generator=g).float()
        else:
            image = F.normalize(torch.randn(n_img, 16, generator=g), dim=1)
            text = F.normalize(torch.randn(n_txt, 16, generator=g), dim=1)
            text[::3] = image[t2i_index[::3]]  # exact ties between a caption and its image's duplicates
        dense = torch.zeros(n_txt, n_img, dtype=torch.bool)
        dense[torch.arange(n_txt), t2i_index] = True
        ref_t2i, ref_i2t = _reference(image, text, dense)
        for chunk in (1, 3, 7, 10_000):
            for pos in (t2i_index, dense):
                t2i, i2t = retrieval_ranks(image, text, pos, chunk=chunk)
                assert torch.equal(t2i, ref_t2i), (trial, chunk)
                assert torch.equal(i2t, ref_i2t), (trial, chunk)
    # dense positives shared by several images (the shapes world case)
    image = torch.randint(-1, 2, (20, 3), generator=g).float()
    text = torch.randint(-1, 2, (20, 3), generator=g).float()
    labels = torch.randint(0, 5, (20,), generator=g)
    dense = labels[:, None] == labels[None, :]
    ref = _reference(image, text, dense)
    got = retrieval_ranks(image, text, dense, chunk=6)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_ranks_reject_bad_positives():
    with pytest.raises(ValueError, match="positive"):
        retrieval_ranks(torch.eye(3), torch.eye(3)[:2], torch.tensor([0, 1]))  # image 2 has no caption
    with pytest.raises(ValueError, match="index"):
        retrieval_ranks(torch.eye(2), torch.eye(2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="positive"):
        retrieval_ranks(torch.eye(2), torch.eye(2), torch.tensor([[True, False], [False, False]]))


def test_parse_captions():
    assert parse_captions(["a cat ", "", "a dog"], "caption") == ["a cat", "a dog"]
    assert parse_captions("a cat\n\n a dog \n", "txt") == ["a cat", "a dog"]
    assert parse_captions('["a cat", "a dog"]', "caption") == ["a cat", "a dog"]  # nlphuji CSV encoding
    assert parse_captions(None, "caption") == []


# ------------------------------------------------------------------------------ fixtures

COCO_ORDER = ["red", "green", "blue", "white"]


def coco_captions() -> list[list[str]]:
    caps = [[f"a {c} square number {k}" for k in range(5)] for c in COCO_ORDER]
    caps[1][4] = "a blue square that is mislabeled"  # a green image's caption naming blue
    return caps


def write_coco(root, broken: str | None = None):
    """nlphuji/mscoco_2014_5k_test_image_text_retrieval's parquet conversion layout."""
    caps = coco_captions()
    feats = datasets.Features(
        {
            "image": datasets.Image(),
            "filepath": datasets.Value("string"),
            "sentids": datasets.Sequence(datasets.Value("int64")),
            "filename": datasets.Value("string"),
            "imgid": datasets.Value("int64"),
            "split": datasets.Value("string"),
            "cocoid": datasets.Value("int64"),
            "caption": datasets.Sequence(datasets.Value("string")),
        }
    )
    data = {
        "image": [
            {"bytes": b"not an image at all" if c == broken else image_bytes(c), "path": None}
            for c in COCO_ORDER
        ],
        "filepath": ["val2014"] * 4,
        "sentids": [[5 * i + k for k in range(5)] for i in range(4)],
        "filename": [f"COCO_val2014_{i:012d}.jpg" for i in range(4)],
        "imgid": list(range(4)),
        "split": ["test"] * 4,
        "cocoid": [100 + i for i in range(4)],
        "caption": caps,
    }
    (root / "TEST" / "test").mkdir(parents=True)
    datasets.Dataset.from_dict(data, features=feats).to_parquet(str(root / "TEST" / "test" / "0000.parquet"))
    return root


FLICKR_ROWS = [
    ("red", "test"),
    ("green", "train"),
    ("blue", "test"),
    ("white", "val"),
    ("green", "test"),
    ("red", "val"),
    ("blue", "train"),
]


def write_flickr_full(root):
    """nlphuji/flickr30k's layout: all Karpathy splits in one table with a ``split`` column."""
    feats = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "sentids": datasets.Sequence(datasets.Value("string")),
            "split": datasets.Value("string"),
            "img_id": datasets.Value("string"),
            "filename": datasets.Value("string"),
        }
    )
    data = {
        "image": [{"bytes": image_bytes(c, "JPEG"), "path": None} for c, _ in FLICKR_ROWS],
        "caption": [[f"a {c} photo {i} {k}" for k in range(5)] for i, (c, _) in enumerate(FLICKR_ROWS)],
        "sentids": [[str(5 * i + k) for k in range(5)] for i in range(len(FLICKR_ROWS))],
        "split": [s for _, s in FLICKR_ROWS],
        "img_id": [str(i) for i in range(len(FLICKR_ROWS))],
        "filename": [f"{1000 + i}.jpg" for i in range(len(FLICKR_ROWS))],
    }
    (root / "TEST" / "test").mkdir(parents=True)
    datasets.Dataset.from_dict(data, features=feats).to_parquet(str(root / "TEST" / "test" / "0000.parquet"))
    return root


WDS = [
    ("red", "a red kite\na red ball\n"),
    ("blue", "a blue sky\n\na blue car\na blue door"),
    ("green", "a green field"),
]


def write_wds(root):
    """CLIP_benchmark's retrieval webdataset: ``test/0.tar`` with ``<key>.jpg`` + ``<key>.txt``."""
    (root / "test").mkdir(parents=True)
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i, (colour, txt) in enumerate(WDS, start=1):
            for ext, payload in (("jpg", image_bytes(colour, "JPEG")), ("txt", txt.encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (root / "test" / "nshards.txt").write_text("1\n")
    return root


def ctx_for(encoder, name, path, **kw) -> EvalContext:
    strict = kw.pop("strict_images", False)
    return EvalContext(encoder=encoder, data=DataOptions(paths={name: str(path)}, strict_images=strict), **kw)


# ------------------------------------------------------------------------------ end to end


def test_coco_nlphuji_layout_hand_computed(tmp_path):
    ctx = ctx_for(ColourEncoder(), "coco-retrieval", write_coco(tmp_path / "coco"))
    CocoRetrieval().check_data(ctx.data)
    r = CocoRetrieval().evaluate(ctx)
    m = r.metrics
    # t2i: all captions rank 1 except the green image's "blue" caption (index 9): blue (1.0) and
    # white (0.577) score above green (0), red ties with green at a lower index -> rank 4
    t2i = [p["t2i_rank"] for p in r.predictions if p["kind"] == "caption"]
    assert t2i == [1] * 9 + [4] + [1] * 10
    # i2t: the blue image's captions score 1.0, but caption 9 (also "blue") comes first -> rank 2
    i2t = [p["i2t_rank"] for p in r.predictions if p["kind"] == "image"]
    assert i2t == [1, 1, 2, 1]
    assert m["image_retrieval_recall@1"] == pytest.approx(19 / 20)
    assert m["image_retrieval_recall@5"] == pytest.approx(1.0)
    assert m["text_retrieval_recall@1"] == pytest.approx(0.75)
    assert m["image_retrieval_mean_rank"] == pytest.approx(23 / 20)
    assert m["mean_recall@1"] == pytest.approx(0.85)
    assert r.main_metric == "mean_recall@5" and r.main_score == pytest.approx(1.0)
    assert m["n_images"] == 4 and m["n_captions"] == 20 and m["n_undecodable"] == 0
    assert {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)} <= set(m)
    assert r.n_items == 4 and len(r.item_scores) == 4
    assert np.mean(r.item_scores) == pytest.approx(r.main_score)
    assert r.dataset.endswith("coco") and r.dataset_fingerprint
    caption9 = [p for p in r.predictions if p["kind"] == "caption"][9]
    assert caption9["caption"] == "a blue square that is mislabeled" and caption9["image"] == 1


def test_coco_end_to_end_micro_encoder_and_cache(tmp_path):
    from harness.data.sources import ImageColumn, load_table

    enc = micro_encoder()
    ctx = ctx_for(enc, "coco-retrieval", write_coco(tmp_path / "coco"))
    task = CocoRetrieval()
    r = task.evaluate(ctx)
    misses = ctx.cache.misses
    again = task.evaluate(ctx)
    assert ctx.cache.misses == misses and ctx.cache.hits >= 2  # images and captions encoded once
    assert again.metrics == r.metrics
    # the same numbers straight from the encoder and the metric function
    table = load_table("coco-retrieval", task.source, ctx.data)
    img = enc.encode_image(ImageColumn(table, "image"))
    caps = coco_captions()
    txt = enc.encode_text([c for row in caps for c in row])
    expected, _, _ = retrieval_metrics(img, txt, torch.arange(4).repeat_interleave(5))
    for k, v in expected.items():
        assert r.metrics[k] == pytest.approx(v), k
    assert 0 <= r.main_score <= 1 and np.mean(r.item_scores) == pytest.approx(r.main_score)
    assert len(r.predictions) == 4 + 20


def test_undecodable_image_is_dropped_with_its_captions(tmp_path):
    path = write_coco(tmp_path / "coco", broken="white")
    r = CocoRetrieval().evaluate(ctx_for(ColourEncoder(), "coco-retrieval", path))
    assert r.metrics["n_undecodable"] == 1 and r.metrics["n_images"] == 3 and r.metrics["n_captions"] == 15
    caps = [p["caption"] for p in r.predictions if p["kind"] == "caption"]
    assert not any("white" in c for c in caps)
    # without white: caption 9 ("blue") ranks blue (1) above green (0), red ties before -> 3
    assert [p["t2i_rank"] for p in r.predictions if p["kind"] == "caption"][9] == 3
    with pytest.raises(UndecodableImageError):
        CocoRetrieval().evaluate(ctx_for(ColourEncoder(), "coco-retrieval", path, strict_images=True))


def test_flickr30k_full_layout_uses_the_split_column(tmp_path):
    path = write_flickr_full(tmp_path / "flickr30k")
    r = Flickr30kRetrieval().evaluate(ctx_for(ColourEncoder(), "flickr30k-retrieval", path))
    rows = [p["row"] for p in r.predictions if p["kind"] == "image"]
    assert rows == [0, 2, 4]  # the test rows only
    assert r.metrics["n_images"] == 3 and r.metrics["n_captions"] == 15
    assert r.metrics["image_retrieval_recall@1"] == pytest.approx(1.0)  # distinct colours
    val = Flickr30kRetrieval().evaluate(
        ctx_for(ColourEncoder(), "flickr30k-retrieval", path, validation=True)
    )
    assert [p["row"] for p in val.predictions if p["kind"] == "image"] == [3, 5]
    for p in val.predictions:  # each val caption belongs to its own row's image
        if p["kind"] == "caption":
            assert f" photo {(3, 5)[p['image']]} " in p["caption"]


def test_webdataset_layout(tmp_path):
    path = write_wds(tmp_path / "wds_flickr30k")
    r = Flickr30kRetrieval().evaluate(ctx_for(ColourEncoder(), "flickr30k-retrieval", path))
    caps = [(p["caption"], p["image"]) for p in r.predictions if p["kind"] == "caption"]
    assert caps == [
        ("a red kite", 0),
        ("a red ball", 0),
        ("a blue sky", 1),
        ("a blue car", 1),
        ("a blue door", 1),
        ("a green field", 2),
    ]
    assert r.metrics["n_images"] == 3 and r.metrics["n_captions"] == 6
    assert r.metrics["mean_recall@1"] == pytest.approx(1.0)
    assert np.mean(r.item_scores) == pytest.approx(r.main_score)  # 2, 3 and 1 captions per image
    with pytest.raises(ValueError, match="no validation split"):
        Flickr30kRetrieval().evaluate(ctx_for(ColourEncoder(), "flickr30k-retrieval", path, validation=True))


def test_missing_columns_name_both_layouts(tmp_path):
    root = tmp_path / "bad"
    (root / "TEST" / "test").mkdir(parents=True)
    feats = datasets.Features({"image": datasets.Image(), "sentence": datasets.Value("string")})
    datasets.Dataset.from_dict(
        {"image": [{"bytes": image_bytes("red"), "path": None}], "sentence": ["a red"]}, features=feats
    ).to_parquet(str(root / "TEST" / "test" / "0000.parquet"))
    data = DataOptions(paths={"coco-retrieval": str(root)})
    for call in (
        lambda: CocoRetrieval().check_data(data),
        lambda: CocoRetrieval().evaluate(EvalContext(encoder=ColourEncoder(), data=data)),
    ):
        with pytest.raises(MissingColumnsError) as e:
            call()
        msg = str(e.value)
        assert "'caption'" in msg and "'txt'" in msg and "'jpg'" in msg and "sentence" in msg


def test_validation_refused_for_coco_and_the_1k_set(tmp_path):
    path = write_coco(tmp_path / "coco")
    with pytest.raises(ValueError, match="no validation split"):
        CocoRetrieval().evaluate(ctx_for(ColourEncoder(), "coco-retrieval", path, validation=True))
    # the flickr 1k test set has a split column with test rows only: no val rows -> refused
    with pytest.raises(ValueError, match="no 'val' rows"):
        Flickr30kRetrieval().evaluate(ctx_for(ColourEncoder(), "flickr30k-retrieval", path, validation=True))


def test_task_metadata():
    d = CocoRetrieval.describe()
    assert d["dataset"] == "nlphuji/mscoco_2014_5k_test_image_text_retrieval"
    assert d["revision"] == "refs/convert/parquet" and d["config"] == "TEST" and d["split"] == "test"
    assert d["main_score"] == "mean_recall@5" and d["family"] == "retrieval"
    assert CocoRetrieval.default_train_data == "coco" and Flickr30kRetrieval.default_train_data == "flickr30k"
    assert CocoRetrieval.validation_split is None
    assert CocoRetrieval.source.data_files == "TEST/test/*.parquet"
    assert Flickr30kRetrieval.source.repo == "nlphuji/flickr_1k_test_image_text_retrieval"
