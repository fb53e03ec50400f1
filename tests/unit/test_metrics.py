import pytest
import torch
import torch.nn.functional as F

from tasks.retrieval import first_positive_rank, retrieval_metrics
from tasks.zeroshot import classification_metrics, zeroshot_classifier


def test_retrieval_hand_computed():
    # 3 images, 4 texts; texts 0,1 describe image 0, text 2 image 1, text 3 image 2
    image = torch.eye(3)
    text = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # -> image 0 first          (rank 1)
            [0.0, 0.9, 0.1],  # -> image 1, 2, then 0     (rank 3)
            [0.2, 0.1, 0.7],  # -> image 2, 0, then 1     (rank 3)
            [0.0, 0.0, 1.0],
        ]
    )  # -> image 2 first          (rank 1)
    pos = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    m, t2i, i2t = retrieval_metrics(image, text, pos, ks=(1, 2))
    assert t2i.tolist() == [1, 3, 3, 1]
    # image->text: scores column-wise. image 0: texts 0 (1.0), 2 (0.2) -> text 0 rank 1
    # image 1: text 1 (0.9), 2 (0.1) -> its caption text 2 is rank 2
    # image 2: text 3 (1.0), 2 (0.7), 1 (0.1) -> rank 1
    assert i2t.tolist() == [1, 2, 1]
    assert m["image_retrieval_recall@1"] == pytest.approx(0.5)
    assert m["image_retrieval_recall@2"] == pytest.approx(0.5)
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["text_retrieval_recall@2"] == pytest.approx(1.0)
    assert m["image_retrieval_mean_rank"] == pytest.approx(2.0)
    assert m["text_retrieval_median_rank"] == pytest.approx(1.0)
    assert m["mean_recall@1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["rsum"] == pytest.approx(100 * (0.5 + 0.5 + 2 / 3 + 1.0))


def test_any_positive_counts_as_a_hit():
    scores = torch.tensor([[0.1, 0.9, 0.8, 0.7]])
    pos = torch.tensor([[True, False, False, True]])
    assert first_positive_rank(scores, pos).tolist() == [3]
    with pytest.raises(ValueError, match="positive"):
        first_positive_rank(scores, torch.zeros_like(pos))


def test_ranks_are_chunk_invariant():
    s = torch.randn(50, 30)
    p = torch.rand(50, 30) < 0.2
    p[:, 0] = True
    assert torch.equal(first_positive_rank(s, p, chunk=7), first_positive_rank(s, p, chunk=1000))


def test_classification_metrics_hand_computed():
    logits = torch.tensor(
        [
            [3.0, 1, 0, 0, 0, 0],
            [0.0, 3, 1, 0, 0, 0],
            [2.0, 0, 1, 0, 0, 0],  # true 2, predicted 0 (rank 2)
            [0.0, 0, 0, 0, -1, 5],
        ]
    )  # true 4, ranked last
    target = torch.tensor([0, 1, 2, 4])
    m = classification_metrics(logits, target)
    assert m["acc1"] == pytest.approx(0.5)
    assert m["acc5"] == pytest.approx(0.75)  # only row 3 misses: class 4 ranks 6th
    # per-class recall over the true classes {0,1,2,4}: 1, 1, 0, 0 -> 0.5
    assert m["mean_per_class_recall"] == pytest.approx(0.5)
    m3 = classification_metrics(logits[:, :3], torch.tensor([0, 1, 2, 0]))
    assert "acc5" not in m3


def test_zeroshot_classifier_averages_normalised_prompts():
    table = {"a cat": [1.0, 0.0], "the cat": [0.0, 1.0], "a dog": [-1.0, 0.0], "the dog": [-1.0, 0.0]}
    encode = lambda texts: torch.tensor([table[t] for t in texts])  # noqa: E731
    w = zeroshot_classifier(encode, ["cat", "dog"], ["a {c}", "the {c}"])
    assert w.shape == (2, 2)
    torch.testing.assert_close(w[:, 0], F.normalize(torch.tensor([0.5, 0.5]), dim=0))
    torch.testing.assert_close(w[:, 1], torch.tensor([-1.0, 0.0]))


def test_caption_choice_is_strict():
    from tasks.compositionality import caption_choice

    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    neg = torch.tensor(
        [
            [[0.0, 1.0], [1.0, 0.0]],  # beaten; tie with the true caption -> wrong
            [[0.0, 1.0], [1.0, 0.0]],
        ]
    )  # 0.8 < 1.0 -> wrong; 0.8 > 0.0 -> right
    assert caption_choice(img, pos, neg).tolist() == [[True, False], [False, True]]


def test_item_scores_average_to_the_main_score(tmp_path):
    """Paired bootstrap over items needs per-item values whose mean is the main score."""
    import numpy as np

    from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
    from harness.engine.models import Encoder, ModelConfig, build_model
    from tasks import TASKS, EvalContext

    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    world = ShapesWorld(ShapesSpec(n_train=64, n_val=32, n_test=96, n_heldout=64, n_zeroshot=64), tmp_path)
    ctx = EvalContext(encoder=Encoder(model, tok, size, mean, std), world=world)
    for name in ("shapes-retrieval", "shapes-zeroshot", "shapes-compositionality"):
        r = TASKS.get(name)().evaluate(ctx)
        assert r.item_scores, name
        assert np.mean(r.item_scores) == pytest.approx(r.main_score, abs=1e-6), name


def test_validation_mode_never_reads_a_test_split(tmp_path, monkeypatch):
    """Tuning evaluates with validation=True: every shapes task must then read train/val only."""
    from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
    from harness.engine.models import Encoder, ModelConfig, build_model
    from tasks import TASKS, EvalContext

    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    world = ShapesWorld(ShapesSpec(n_train=256, n_val=96, n_test=64, n_heldout=64, n_zeroshot=64), tmp_path)
    real = ShapesWorld.split
    read = []

    def guarded(self, name):
        read.append(name)
        assert name in ("train", "val"), f"validation mode read the {name} split"
        return real(self, name)

    monkeypatch.setattr(ShapesWorld, "split", guarded)
    ctx = EvalContext(encoder=Encoder(model, tok, size, mean, std), world=world, validation=True)
    for name in TASKS.get("shapes").members:
        r = TASKS.get(name)().evaluate(ctx)
        assert r.main_metric in r.metrics, name
    assert "val" in read
