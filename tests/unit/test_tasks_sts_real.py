"""The SimCSE STS tasks (tasks/sts_real.py) on fixtures in the upstream layouts:
``sentence-transformers/stsb`` parquet (``data/{split}-00000-of-00001.parquet``, score 0-1),
``mteb/stsbenchmark-sts`` and ``mteb/stsNN-sts`` / ``mteb/sickr-sts`` (``{split}.jsonl.gz``,
score 0-5)."""

import gzip
import hashlib
import json
import math

import datasets
import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from harness.data.sources import DataOptions, DatasetUnavailableError, MissingColumnsError
from tasks import TASKS, EmbeddingCache, EvalContext
from tasks.sts import sts_metrics
from tasks.sts_real import SICKR, STS12, STS13, STS_TASKS, STSB, InvalidPairError, STSAverage, STSSuite

FEATURES = datasets.Features(
    {
        "sentence1": datasets.Value("string"),
        "sentence2": datasets.Value("string"),
        "score": datasets.Value("float64"),
    }
)


class FakeEncoder:
    """encode_text with chosen vectors (``table``) or, for other sentences, a fixed pseudo-random
    unit vector per sentence; counts the sentences it encodes."""

    def __init__(self, table=None, dim=8):
        self.table, self.dim = table or {}, dim
        self.calls, self.encoded = 0, 0

    def vector(self, s):
        if s in self.table:
            return torch.tensor(self.table[s], dtype=torch.float32)
        seed = int(hashlib.sha1(s.encode()).hexdigest()[:8], 16)
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))

    def encode_text(self, texts):
        self.calls += 1
        self.encoded += len(texts)
        return torch.nn.functional.normalize(torch.stack([self.vector(t) for t in texts]), dim=-1)


def _rows(n, seed, prefix="s", scale=1.0):
    rng = np.random.default_rng(seed)
    return {
        "sentence1": [f"{prefix} first sentence {i}" for i in range(n)],
        "sentence2": [f"{prefix} second sentence {i}" for i in range(n)],
        "score": [float(round(v, 2)) * scale for v in rng.random(n)],
    }


def write_st_stsb(root, splits):
    """sentence-transformers/stsb layout: data/{split}-00000-of-00001.parquet."""
    (root / "data").mkdir(parents=True)
    for split, rows in splits.items():
        datasets.Dataset.from_dict(rows, features=FEATURES).to_parquet(
            str(root / "data" / f"{split}-00000-of-00001.parquet")
        )
    return root


def write_mteb(root, splits, extra=None):
    """MTEB STS layout: {split}.jsonl.gz, one JSON object per line."""
    root.mkdir(parents=True)
    for split, rows in splits.items():
        with gzip.open(root / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            for i in range(len(rows["sentence1"])):
                rec = {k: rows[k][i] for k in rows}
                rec.update({k: v[i] for k, v in (extra or {}).get(split, {}).items()})
                f.write(json.dumps(rec) + "\n")
    return root


# ----------------------------------------------------------------------------- metric by hand

COS = [1.0, 0.5, 0.8, 0.0]
GOLD = [5.0, 4.0, 3.0, 0.0]


def hand_fixture(tmp_path):
    """Four pairs whose cosine is COS exactly: sentence1 is [1, 0], sentence2 is [c, sqrt(1-c^2)]."""
    table = {f"anchor {i}": [1.0, 0.0] for i in range(4)}
    table.update({f"other {i}": [c, math.sqrt(1 - c * c)] for i, c in enumerate(COS)})
    rows = {
        "sentence1": [f"  anchor {i} " for i in range(4)],  # stripped before encoding
        "sentence2": [f"other {i}" for i in range(4)],
        "score": GOLD,
    }
    return write_mteb(tmp_path / "sts12", {"test": rows}), FakeEncoder(table)


def test_sts_metrics_on_a_hand_computed_case(tmp_path):
    # ranks: cos (4, 2, 3, 1), gold (4, 3, 2, 1): sum d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8
    # Pearson: centred cos (.425, -.075, .225, -.575), gold (2, 1, 0, -3): 2.5 / sqrt(.5675 * 14)
    path, enc = hand_fixture(tmp_path)
    ctx = EvalContext(encoder=enc, data=DataOptions(paths={"sts12": str(path)}))
    r = STS12().evaluate(ctx)
    assert r.metrics["spearman"] == pytest.approx(80.0)
    assert r.metrics["pearson"] == pytest.approx(100 * 2.5 / math.sqrt(0.5675 * 14))
    assert r.metrics["spearman"] == pytest.approx(100 * spearmanr(COS, GOLD)[0])
    assert r.metrics["pearson"] == pytest.approx(100 * pearsonr(COS, GOLD)[0])
    assert r.main_score == r.metrics["spearman"] and r.main_metric == "spearman"
    assert r.item_scores is None and r.n_items == 4
    assert [p["cosine"] for p in r.predictions] == pytest.approx(COS, abs=1e-6)
    assert [p["gold"] for p in r.predictions] == GOLD
    assert r.predictions[0]["sentence1"] == "anchor 0"
    assert enc.encoded == 8  # each distinct (stripped) sentence once
    assert "test" in r.dataset and r.dataset_fingerprint


def test_metrics_are_invariant_to_the_score_scale(tmp_path):
    """STS-B in the sentence-transformers layout (gold/5) and the MTEB layout (0-5) agree."""
    rows = _rows(12, 0)
    st = write_st_stsb(tmp_path / "st", {"test": rows})
    mteb_rows = {**rows, "score": [5 * s for s in rows["score"]]}
    extra = {
        "test": {
            "split": ["test"] * 12,
            "genre": ["main-news"] * 12,
            "dataset": ["MSRpar"] * 12,
            "year": ["2012"] * 12,
            "sid": [f"{i:04d}" for i in range(12)],
        }
    }
    mt = write_mteb(tmp_path / "mteb", {"test": mteb_rows}, extra)
    enc = FakeEncoder()
    a = STSB().evaluate(EvalContext(encoder=enc, data=DataOptions(paths={"stsb": str(st)})))
    b = STSB().evaluate(EvalContext(encoder=enc, data=DataOptions(paths={"stsb": str(mt)})))
    assert a.metrics["spearman"] == pytest.approx(b.metrics["spearman"])
    assert a.metrics["pearson"] == pytest.approx(b.metrics["pearson"])
    assert abs(a.metrics["spearman"]) > 0  # not the degenerate 0


def test_stsb_finds_the_mteb_layout_under_harness_data_dir(tmp_path, monkeypatch):
    rows = _rows(10, 1)
    write_mteb(tmp_path / "mirror" / "mteb" / "stsbenchmark-sts", {"validation": rows, "test": rows})
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "mirror"))
    task = STSB()
    task.check_data(DataOptions())
    r = task.evaluate(EvalContext(encoder=FakeEncoder(), data=DataOptions()))
    assert r.n_items == 10 and "stsbenchmark-sts" in r.dataset


# ----------------------------------------------------------------------------- end to end


def test_stsb_end_to_end_with_the_micro_encoder(tmp_path):
    from harness.engine.models import Encoder, ModelConfig, build_model

    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro", tokenizer="open_clip"))
    enc = Encoder(model, tok, size, mean, std)
    rows = {
        "sentence1": [
            "A man is playing a flute.",
            "A woman slices an onion.",
            "Two dogs run.",
            "A cat sleeps on a sofa.",
            "The sun is shining.",
        ],
        "sentence2": [
            "A man is playing a large flute.",
            "A man is cooking.",
            "Dogs are running.",
            "A kitten naps on a couch.",
            "It is raining heavily.",
        ],
        "score": [0.76, 0.2, 0.9, 0.8, 0.05],
    }
    path = write_st_stsb(tmp_path / "stsb", {"validation": rows, "test": rows})
    ctx = EvalContext(encoder=enc, data=DataOptions(paths={"stsb": str(path)}))
    r = STSB().evaluate(ctx)
    e1, e2 = enc.encode_text(rows["sentence1"]), enc.encode_text(rows["sentence2"])
    expect = sts_metrics(e1, e2, rows["score"])
    assert r.metrics["spearman"] == pytest.approx(expect["spearman"], abs=1e-4)
    assert r.metrics["pearson"] == pytest.approx(expect["pearson"], abs=1e-4)
    assert -100 <= r.main_score <= 100 and r.n_items == 5 and len(r.predictions) == 5
    assert set(r.predictions[0]) == {"pair", "sentence1", "sentence2", "gold", "cosine"}


# ----------------------------------------------------------------------------- validation


def test_stsb_validation_reads_only_the_validation_split(tmp_path):
    val, test = _rows(8, 2, prefix="dev"), _rows(6, 3, prefix="test")
    full = write_st_stsb(tmp_path / "full", {"train": _rows(5, 4, "train"), "validation": val, "test": test})
    enc = FakeEncoder()
    r = STSB().evaluate(
        EvalContext(encoder=enc, validation=True, data=DataOptions(paths={"stsb": str(full)}))
    )
    assert r.n_items == 8 and "validation" in r.dataset
    assert all(p["sentence1"].startswith("dev ") for p in r.predictions)
    # a copy without a test split: validation works, the test evaluation cannot find its split
    no_test = write_st_stsb(tmp_path / "no-test", {"validation": val})
    opts = DataOptions(paths={"stsb": str(no_test)})
    assert STSB().evaluate(EvalContext(encoder=enc, validation=True, data=opts)).n_items == 8
    with pytest.raises(DatasetUnavailableError, match="split 'test'"):
        STSB().evaluate(EvalContext(encoder=enc, data=opts))


@pytest.mark.parametrize("cls", [STS12, SICKR, STSAverage])
def test_test_only_sets_refuse_validation(tmp_path, cls):
    path, enc = hand_fixture(tmp_path)
    ctx = EvalContext(encoder=enc, validation=True, data=DataOptions(paths={"sts12": str(path)}))
    with pytest.raises(ValueError, match="validation split"):
        cls().evaluate(ctx)
    assert enc.calls == 0


# ----------------------------------------------------------------------------- bad data


def test_missing_column_names_expected_and_found(tmp_path):
    rows = _rows(4, 5)
    bad = {"sentence1": rows["sentence1"], "sentence2": rows["sentence2"], "similarity_score": rows["score"]}
    path = write_mteb(tmp_path / "sts13", {"test": bad})
    opts = DataOptions(paths={"sts13": str(path)})
    with pytest.raises(MissingColumnsError) as e:
        STS13().check_data(opts)
    msg = str(e.value)
    assert "'score'" in msg and "expected sentence1, sentence2, score" in msg and "similarity_score" in msg
    with pytest.raises(MissingColumnsError):
        STS13().evaluate(EvalContext(encoder=FakeEncoder(), data=opts))


@pytest.mark.parametrize("value", ["", "   ", None])
def test_empty_sentence_names_the_row_and_dataset(tmp_path, value):
    rows = _rows(4, 6)
    rows["sentence2"][2] = value
    path = write_mteb(tmp_path / "sickr", {"test": rows})
    with pytest.raises(InvalidPairError, match=r"sickr .*row 2 .*sentence2"):
        SICKR().evaluate(EvalContext(encoder=FakeEncoder(), data=DataOptions(paths={"sickr": str(path)})))


# ----------------------------------------------------------------------------- suite and average


def seven_fixtures(tmp_path):
    paths = {}
    for k, name in enumerate(STS_TASKS):
        rows = _rows(6 + k, 10 + k, prefix=name, scale=5.0)
        if name == "stsb":
            paths[name] = str(write_st_stsb(tmp_path / name, {"validation": rows, "test": rows}))
        else:
            paths[name] = str(write_mteb(tmp_path / name, {"test": rows}))
    return DataOptions(paths=paths)


def test_sts_avg_is_the_mean_of_the_seven_and_reuses_the_cache(tmp_path):
    opts = seven_fixtures(tmp_path)
    enc = FakeEncoder()
    ctx = EvalContext(encoder=enc, cache=EmbeddingCache(), data=opts)
    members = {name: cls().evaluate(ctx) for name, cls in STS_TASKS.items()}
    encoded, misses = enc.encoded, ctx.cache.misses
    assert misses == 7 and encoded == sum(2 * (6 + k) for k in range(7))
    avg_task = STSAverage()
    avg_task.check_data(opts)
    r = avg_task.evaluate(ctx)
    assert enc.encoded == encoded and ctx.cache.misses == misses and ctx.cache.hits == 7  # nothing re-encoded
    spearmans = [members[n].metrics["spearman"] for n in STS_TASKS]
    assert r.metrics["avg"] == pytest.approx(sum(spearmans) / 7) and r.main_score == r.metrics["avg"]
    assert r.metrics["avg_pearson"] == pytest.approx(
        np.mean([m.metrics["pearson"] for m in members.values()])
    )
    for n in STS_TASKS:
        assert r.metrics[f"{n}/spearman"] == members[n].metrics["spearman"]
    assert r.n_items == sum(m.n_items for m in members.values()) and len(r.predictions) == 7
    # the other order: sts-avg first fills the cache the member tasks then read
    enc2 = FakeEncoder()
    ctx2 = EvalContext(encoder=enc2, cache=EmbeddingCache(), data=opts)
    STSAverage().evaluate(ctx2)
    before = enc2.encoded
    for cls in STS_TASKS.values():
        cls().evaluate(ctx2)
    assert enc2.encoded == before


def test_sts_suite_and_registry():
    from harness.run.runner import expand_tasks

    assert STSSuite.members == ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr")
    assert [t.name for t in expand_tasks(["sts", "sts-avg"], "text")] == [*STSSuite.members, "sts-avg"]
    for name in STSSuite.members:
        cls = TASKS.get(name)
        d = cls.describe()
        assert d["family"] == "sts" and d["modality"] == "text" and d["main_score"] == "spearman"
        assert cls.license and d["dataset"].startswith(("mteb/", "sentence-transformers/"))
    assert TASKS.get("stsb").validation_split == "validation"
    assert all(TASKS.get(n).validation_split is None for n in STSSuite.members if n != "stsb")
    assert TASKS.get("sts-avg").main_score == "avg"
