"""SimCSE training data (harness/text_data.py) on fixtures in the upstream layouts: SimCSE's
``wiki1m_for_simcse.txt`` (one sentence per line), ``sentence-transformers/nli-for-simcse`` and
``sentence-transformers/all-nli`` parquet (``triplet/train-00000-of-00001.parquet``), SimCSE's
``nli_for_simcse.csv`` (``sent0,sent1,hard_neg``), and the shapes world's captions."""

import datasets
import numpy as np
import pytest
import torch

import harness.data.text as td
from harness.data.batches import MissingFieldError, ShapesTrainData
from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
from harness.data.sources import DataOptions, HubSource, MissingColumnsError
from harness.data.text import NLITrainData, SentenceTrainData, load_nli_triplets, load_sentence_corpus
from harness.engine.models import WordTokenizer

WORDS = [f"w{i}" for i in range(40)]


def sentences(n, offset=0):
    return [f"w{(i + offset) % 40} w{(3 * i + 1) % 40} w{(7 * i + 2) % 40}" for i in range(n)]


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer(WORDS, context_length=8)


# ----------------------------------------------------------------------------- loaders


def test_wiki1m_txt_one_sentence_per_line(tmp_path):
    f = tmp_path / "wiki1m_for_simcse.txt"
    f.write_text(
        "YMCA in South Australia\n\n  The station opened in 1890.  \nA third sentence.\n", encoding="utf-8"
    )
    got = load_sentence_corpus("wiki1m", path=f)
    assert got == ["YMCA in South Australia", "The station opened in 1890.", "A third sentence."]
    assert load_sentence_corpus("wiki1m", path=f, max_samples=2) == got[:2]
    # a mirror of princeton-nlp/datasets-for-simcse: the data_files glob picks the corpus
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "wiki1m_for_simcse.txt").write_text("one\ntwo\n")
    (mirror / "nli_for_simcse.csv").write_text("sent0,sent1,hard_neg\na,b,c\n")
    assert load_sentence_corpus("wiki1m", DataOptions(paths={"wiki1m": str(mirror)})) == ["one", "two"]
    with pytest.raises(ValueError, match="max_samples"):
        load_sentence_corpus("wiki1m", path=f, max_samples=0)


@pytest.mark.parametrize("column", ["text", "sentence"])
def test_sentence_table_with_text_or_sentence_column(tmp_path, column):
    path = tmp_path / "corpus" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    datasets.Dataset.from_dict(
        {column: ["a b", " ", "c d ", "e"], "id": [0, 1, 2, 3]},
        features=datasets.Features({column: datasets.Value("string"), "id": datasets.Value("int64")}),
    ).to_parquet(str(path))
    src = HubSource("someone/corpus", split="train")
    opts = DataOptions(paths={"corpus": str(path.parent)})
    assert load_sentence_corpus("corpus", opts, source=src) == ["a b", "c d", "e"]
    assert load_sentence_corpus("corpus", opts, source=src, max_samples=2) == ["a b", "c d"]


def test_sentence_table_without_a_sentence_column(tmp_path):
    path = tmp_path / "bad.parquet"
    datasets.Dataset.from_dict({"body": ["x"], "id": [1]}).to_parquet(str(path))
    with pytest.raises(MissingColumnsError, match=r"expected one of text, sentence; found body, id"):
        load_sentence_corpus("bad", source=HubSource("x/y", split="train"), path=path)


def test_empty_corpora_are_refused_as_empty_not_missing(tmp_path):
    from harness.data.sources import DatasetUnavailableError, EmptyDatasetError

    blank = tmp_path / "wiki1m_for_simcse.txt"
    blank.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(EmptyDatasetError, match=f"corpus 'wiki1m' \\({blank}\\) has no sentences") as e:
        load_sentence_corpus("wiki1m", path=blank)
    assert not isinstance(e.value, DatasetUnavailableError)  # the runner lists missing sets apart
    # a 0-row NLI parquet: refused with the task and the path, before any builder traceback
    (tmp_path / "nli").mkdir()
    empty = datasets.Dataset.from_dict({c: [] for c in NLI_FEATURES}, features=NLI_FEATURES)
    empty.to_parquet(str(tmp_path / "nli" / "train-00000-of-00001.parquet"))
    with pytest.raises(EmptyDatasetError, match=f"dataset for 'nli' at {tmp_path / 'nli'} has no rows"):
        load_nli_triplets("nli", DataOptions(paths={"nli": str(tmp_path / "nli")}))


NLI_FEATURES = datasets.Features({c: datasets.Value("string") for c in ("anchor", "positive", "negative")})
TRIPLETS = {
    "anchor": ["w1 w2", "w3 w4", "w5 w6"],
    "positive": ["w1", "w3", "w5"],
    "negative": ["w9", "w8", "w7"],
}


def test_nli_for_simcse_parquet_layout(tmp_path):
    root = tmp_path / "nli-for-simcse"
    (root / "triplet").mkdir(parents=True)
    datasets.Dataset.from_dict(TRIPLETS, features=NLI_FEATURES).to_parquet(
        str(root / "triplet" / "train-00000-of-00001.parquet")
    )
    a, p, n = load_nli_triplets("nli", DataOptions(paths={"nli": str(root)}))
    assert (a, p, n) == (TRIPLETS["anchor"], TRIPLETS["positive"], TRIPLETS["negative"])
    a2, _, n2 = load_nli_triplets("nli", path=root, max_samples=2)
    assert a2 == a[:2] and n2 == n[:2]


def test_all_nli_triplet_config_and_split(tmp_path):
    root = tmp_path / "all-nli"
    for config, split, rows in [
        ("triplet", "train", TRIPLETS),
        ("triplet", "dev", {k: v[:1] for k, v in TRIPLETS.items()}),
        ("pair", "train", {"anchor": ["q"] * 5, "positive": ["r"] * 5}),
    ]:
        (root / config).mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(rows).to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
    a, p, n = load_nli_triplets("all-nli", path=root, source=td.ALL_NLI)
    assert a == TRIPLETS["anchor"] and n == TRIPLETS["negative"]


def test_simcse_csv_columns_are_accepted(tmp_path):
    f = tmp_path / "nli_for_simcse.csv"
    f.write_text("sent0,sent1,hard_neg\nw1 w2,w1,w9\nw3 w4,w3,w8\n")
    assert load_nli_triplets("nli", path=f) == (["w1 w2", "w3 w4"], ["w1", "w3"], ["w9", "w8"])


def test_nli_missing_column_and_empty_member(tmp_path):
    f = tmp_path / "pairs.parquet"
    datasets.Dataset.from_dict({"anchor": ["a"], "positive": ["b"]}).to_parquet(str(f))
    with pytest.raises(MissingColumnsError) as e:
        load_nli_triplets("nli", path=f)
    msg = str(e.value)
    assert "'negative'" in msg and "expected anchor, positive, negative; found anchor, positive" in msg
    g = tmp_path / "holes.parquet"
    datasets.Dataset.from_dict(
        {"anchor": ["a", "c"], "positive": ["b", "d"], "negative": ["x", ""]}
    ).to_parquet(str(g))
    with pytest.raises(ValueError, match="row 1 has an empty or missing negative"):
        load_nli_triplets("nli", path=g)


# ----------------------------------------------------------------------------- order and batches


def test_indices_are_seeded_epochs_with_the_ragged_tail_dropped(tok):
    data = SentenceTrainData(sentences(10), tok, seed=3)
    assert len(data) == 10
    per_epoch = 10 // 4
    for epoch in range(3):
        perm = np.random.default_rng([3, epoch, 2718]).permutation(10)
        got = np.concatenate([data.indices(epoch * per_epoch + s, 4) for s in range(per_epoch)])
        assert np.array_equal(got, perm[:8])  # same order as the shapes data; last 2 dropped
    with pytest.raises(ValueError, match="exceeds"):
        data.indices(0, 11)


def test_batches_are_deterministic_by_seed_and_step(tok):
    a, b, c = (SentenceTrainData(sentences(32), tok, seed=s) for s in (0, 0, 1))
    fields = {"text", "text_view", "index"}
    for step in (0, 5, 9):  # 8 steps per epoch: step 9 is in the second epoch
        x, y = a.batch(step, 4, fields), b.batch(step, 4, fields)
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.index, y.index)
    assert not torch.equal(a.batch(0, 4, fields).index, c.batch(0, 4, fields).index)
    assert not torch.equal(a.batch(0, 4, fields).index, a.batch(1, 4, fields).index)


def test_unsupervised_views_are_the_same_sentence(tok):
    sents = sentences(16)
    data = SentenceTrainData(sents, tok, seed=0)
    bt = data.batch(2, 8, {"text", "text_view", "index"})
    assert bt.tokens.dtype == torch.int64 and bt.tokens.shape == (8, 8)
    assert torch.equal(bt.tokens, bt.text_view)
    assert torch.equal(bt.tokens, tok([sents[i] for i in bt.index.tolist()]))
    assert bt.images is None and bt.hard_negative_text is None


def test_same_samples_whatever_fields_are_requested(tok):
    a, p, n = sentences(12), sentences(12, 5), sentences(12, 11)
    data = NLITrainData(a, p, n, tok, seed=7)
    full = data.batch(4, 3, {"text", "text_view", "hard_negative_text", "index"})
    only = data.batch(4, 3, {"hard_negative_text"})
    assert torch.equal(full.hard_negative_text, only.hard_negative_text) and only.tokens is None
    assert torch.equal(data.batch(4, 3, {"text"}).tokens, full.tokens)
    idx = full.index.tolist()
    assert full.hard_negative_text.shape == (3, 1, 8)
    assert torch.equal(full.tokens, tok([a[i] for i in idx]))
    assert torch.equal(full.text_view, tok([p[i] for i in idx]))
    assert torch.equal(full.hard_negative_text[:, 0], tok([n[i] for i in idx]))


import harness.data.batches as harness_data  # noqa: E402  (shard() reads world_info there)


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_sharding_of_the_global_batch(tok, monkeypatch, world):
    data = NLITrainData(sentences(24), sentences(24, 1), sentences(24, 2), tok, seed=0)
    fields = {"text", "text_view", "hard_negative_text", "index"}
    full = data.batch(3, 8, fields)
    shards = []
    for rank in range(world):
        monkeypatch.setattr(harness_data, "world_info", lambda r=rank: (r, world))
        shards.append(data.batch(3, 8, fields))
    for name in ("tokens", "text_view", "hard_negative_text", "index"):
        parts = [getattr(s, name) for s in shards]
        assert all(len(p) == 8 // world for p in parts)
        assert torch.equal(torch.cat(parts), getattr(full, name))
    monkeypatch.setattr(harness_data, "world_info", lambda: (0, 3))
    with pytest.raises(ValueError, match="divisible"):
        data.batch(3, 8, fields)


# ----------------------------------------------------------------------------- static checks


def test_check_static_refuses_missing_fields(tok):
    from objectives import OBJECTIVES

    sup = OBJECTIVES.get("simcse")(supervised=True)
    unsup = OBJECTIVES.get("simcse")()
    SentenceTrainData.check_static(unsup.requires, "simcse")
    NLITrainData.check_static(sup.requires, "simcse")
    with pytest.raises(MissingFieldError, match=r"needs hard_negative_text .*'sentences' does not supply"):
        SentenceTrainData.check_static(sup.requires, "simcse")
    with pytest.raises(MissingFieldError, match="image"):
        NLITrainData.check_static({"image", "text"}, "clip", "nli-for-simcse")
    data = SentenceTrainData(sentences(8), tok, seed=0)
    with pytest.raises(MissingFieldError, match="hard_negative_text"):
        data.batch(0, 4, {"text", "hard_negative_text"})


def test_a_declared_text_field_is_served_like_the_built_in_ones(tok):
    """A text set supplies any field in ``tensors``: a plugin declares ``paraphrase`` and serves it."""
    from harness.core.batch import register_field, unregister_field

    register_field("paraphrase", "text", "another phrasing (a test field)")
    try:
        data = SentenceTrainData(sentences(8), tok, seed=0, views=sentences(8, 5))
        data.tensors["paraphrase"] = data.tensors.pop("text_view")
        data.provides = frozenset({"text", "paraphrase", "index"})
        b = data.batch(1, 4, {"text", "paraphrase"})
        idx = data.indices(1, 4)
        assert torch.equal(b.paraphrase, tok([sentences(8, 5)[i] for i in idx]))
        assert b["paraphrase"].dtype == torch.long
        assert b.text_view is None and set(b.tensors()) == {"text", "paraphrase"}
    finally:
        unregister_field("paraphrase")


def test_bad_inputs(tok):
    with pytest.raises(ValueError, match="item 1 is empty"):
        SentenceTrainData(["w1", "  ", "w2"], tok, seed=0)
    with pytest.raises(ValueError, match="2 anchors, 2 positives, 1 negatives"):
        NLITrainData(["w1", "w2"], ["w1", "w2"], ["w3"], tok, seed=0)
    with pytest.raises(ValueError, match="empty"):
        SentenceTrainData([], tok, seed=0)


# ----------------------------------------------------------------------------- shapes corpus


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ShapesWorld(
        ShapesSpec(n_train=32, n_val=16, n_test=16, n_heldout=16, n_zeroshot=16),
        tmp_path_factory.mktemp("text-world"),
    )


def test_shapes_captions_dropout_and_paraphrase_views(world):
    tok = WordTokenizer(vocabulary(), context_length=16)
    sp = world.split("train")
    drop = SentenceTrainData.from_shapes(world, tok, seed=0)
    para = SentenceTrainData.from_shapes(world, tok, seed=0, views="paraphrase")
    assert len(drop) == len(sp) == 32 and drop.view_mode == "dropout" and para.view_mode == "paraphrase"
    bd, bp = (
        drop.batch(1, 8, {"text", "text_view", "index"}),
        para.batch(1, 8, {"text", "text_view", "index"}),
    )
    idx = bd.index.tolist()
    assert torch.equal(bd.index, bp.index) and torch.equal(bd.tokens, bp.tokens)
    assert torch.equal(bd.text_view, bd.tokens)
    assert torch.equal(bp.text_view, tok([str(sp.alt_captions[i]) for i in idx]))
    assert torch.equal(bd.tokens, tok([str(sp.captions[i]) for i in idx]))
    with pytest.raises(ValueError, match="views"):
        SentenceTrainData.from_shapes(world, tok, seed=0, views="backtranslation")
    trip = NLITrainData.from_shapes(world, tok, seed=0)
    bt = trip.batch(1, 8, {"hard_negative_text", "index"})
    assert torch.equal(bt.hard_negative_text[:, 0], tok([str(sp.negatives[i, 0]) for i in bt.index.tolist()]))


def test_a_batch_trains_through_the_trainer_embedding_and_simcse(world):
    """The open_clip tokenizer of the micro model, the trainer's ``embed`` and the ``simcse`` loss."""
    from harness.engine.models import Encoder, ModelConfig, build_model
    from harness.engine.trainer import embed
    from objectives import OBJECTIVES

    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro", tokenizer="open_clip"))
    enc = Encoder(model, tok, size, mean, std)
    data = NLITrainData.from_shapes(world, tok, seed=0)
    obj = OBJECTIVES.get("simcse")(supervised=True)
    b = data.batch(0, 8, set(obj.requires))
    e = embed(model, enc, b, torch.device("cpu"))
    assert e.text.shape[0] == 8 and e.hard_negative_text.shape[:2] == (8, 1)
    loss = obj(e).loss
    assert torch.isfinite(loss) and loss.requires_grad


def test_shares_the_shapes_order_function():
    assert SentenceTrainData.indices is ShapesTrainData.indices
