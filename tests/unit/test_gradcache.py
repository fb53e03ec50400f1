"""harness.engine.gradcache: sub-batched GradCache gradients equal the full-batch gradients."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from open_clip.transformer import PatchDropout

from harness.core.batch import EmbeddingBatch, LossOutput
from harness.data.batches import Batch
from harness.data.shapes import vocabulary
from harness.engine.gradcache import RandContext, concat_embeddings, gradcache_step, split_batch
from harness.engine.models import Encoder, ModelConfig, build_model
from harness.engine.trainer import embed

B, CHUNK = 16, 4


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    encoder = Encoder(model, tok, size, mean, std)
    g = torch.Generator().manual_seed(1)
    words = vocabulary()
    captions = [
        " ".join(words[int(i)] for i in torch.randint(len(words), (6,), generator=g)) for _ in range(B)
    ]
    batch = Batch(
        images=torch.randint(0, 256, (B, size, size, 3), generator=g, dtype=torch.uint8),
        tokens=tok(captions),
        labels=torch.arange(B) % 5,
        index=torch.arange(B) + 7,
    )
    return model, encoder, batch


def make_objective(name):
    if name == "clip":
        from objectives.infonce import CLIP

        return CLIP()
    from objectives.sigmoid import SigLIP

    return SigLIP(bias=-3.0)


def towers_of(model, text_dropout: float = 0.0):
    if not text_dropout:
        return SimpleNamespace(encode_image=model.encode_image, encode_text=model.encode_text)

    def encode_text(tok, normalize=True):  # dropout on the text features: a plain RNG consumer
        f = torch.nn.functional.dropout(model.encode_text(tok), text_dropout, training=True)
        return torch.nn.functional.normalize(f, dim=-1) if normalize else f

    return SimpleNamespace(encode_image=model.encode_image, encode_text=encode_text)


def grads(model, objective):
    out = {f"model.{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    out.update(
        {f"objective.{n}": p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}
    )
    return out


def zero(model, objective):
    model.zero_grad(set_to_none=True)
    objective.zero_grad(set_to_none=True)


def assert_grads_close(got, want, rtol=1e-4):
    assert got.keys() == want.keys() and len(want) > 10
    for k in want:
        scale = want[k].abs().max().clamp_min(1e-12)
        assert (got[k] - want[k]).abs().max() <= rtol * scale + 1e-7, k


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_equals_full_batch(setup, name):
    model, encoder, batch = setup
    model.train()
    objective = make_objective(name)
    towers = towers_of(model)
    encode = lambda b: embed(towers, encoder, b, "cpu")  # noqa: E731

    zero(model, objective)
    ref = objective(encode(batch))
    ref.loss.backward()
    want = grads(model, objective)

    zero(model, objective)
    out = gradcache_step(encode, objective, batch, CHUNK)
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss, ref.loss.detach(), rtol=1e-5, atol=1e-6)
    assert out.logs.keys() == ref.logs.keys()
    assert_grads_close(grads(model, objective), want)

    zero(model, objective)  # uneven last sub-batch (16 = 5 + 5 + 5 + 1) and chunk >= B
    gradcache_step(encode, objective, batch, 5)
    assert_grads_close(grads(model, objective), want)
    zero(model, objective)
    gradcache_step(encode, objective, batch, 64)
    assert_grads_close(grads(model, objective), want)


def chunked_reference(encode, objective, batch, chunk):
    """The exact large-batch gradient with the dropout masks of sub-batch-wise forwards: every
    sub-batch embedded with autograd in the same order (what GradCache's first pass draws)."""
    parts = [encode(sub) for sub in split_batch(batch, chunk)]
    out = objective(concat_embeddings(parts))
    out.loss.backward()
    return out


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_rng_restore_makes_dropout_equal(setup, name):
    model, encoder, batch = setup
    model = copy.deepcopy(model)
    model.visual.patch_dropout = PatchDropout(0.5)  # torch.randn per forward
    for block in model.transformer.resblocks:
        block.attn.dropout = 0.2  # nn.MultiheadAttention dropout on the text tower
    model.train()
    objective = make_objective(name)
    towers = towers_of(model, text_dropout=0.1)
    encode = lambda b: embed(towers, encoder, b, "cpu")  # noqa: E731

    zero(model, objective)
    torch.manual_seed(123)
    ref = chunked_reference(encode, objective, batch, CHUNK)
    want = grads(model, objective)
    rng_after_ref = torch.get_rng_state()

    zero(model, objective)
    torch.manual_seed(123)
    out = gradcache_step(encode, objective, batch, CHUNK)
    torch.testing.assert_close(out.loss, ref.loss.detach(), rtol=1e-5, atol=1e-6)
    assert_grads_close(grads(model, objective), want)
    # the re-forward replays the RNG and puts it back: the step consumes the stream of one pass
    assert torch.equal(torch.get_rng_state(), rng_after_ref)

    zero(model, objective)
    torch.manual_seed(123)
    gradcache_step(encode, objective, batch, CHUNK, restore_rng=False)
    got = grads(model, objective)
    rel = max(
        float((got[k] - want[k]).abs().max() / want[k].abs().max().clamp_min(1e-12))
        for k in want
        if k.startswith("model.")
    )
    assert rel > 1e-2  # without the restore the re-forward draws other masks: wrong gradients


def test_split_and_concat_fields():
    b = Batch(
        images=torch.zeros(10, 4, 4, 3, dtype=torch.uint8),
        tokens=torch.arange(10)[:, None].repeat(1, 3),
        hard_negative_text=torch.arange(10)[:, None, None].repeat(1, 2, 3),
        labels=torch.arange(10),
        concepts=torch.rand(10, 6),
    )
    subs = split_batch(b, 4)
    assert [len(s.tokens) for s in subs] == [4, 4, 2]
    assert subs[2].image_view is None and subs[2].hard_negative_text.shape == (2, 2, 3)
    assert torch.equal(torch.cat([s.labels for s in subs]), b.labels)
    assert torch.equal(torch.cat([s.concepts for s in subs]), b.concepts)
    parts = [
        EmbeddingBatch(image=torch.full((n, 2), float(i)), labels=torch.arange(n), extras={"k": i})
        for i, n in enumerate((4, 4, 2))
    ]
    full = concat_embeddings(parts)
    assert full.image.shape == (10, 2) and full.labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert full.text is None and full.extras == {"k": 0}
    with pytest.raises(ValueError):
        split_batch(Batch(images=torch.zeros(3, 1), tokens=torch.zeros(2, 1)), 2)


def test_rand_context_replays_and_restores():
    torch.manual_seed(5)
    ctx = RandContext()
    first = torch.rand(3)
    after = torch.get_rng_state()
    with ctx:
        assert torch.equal(torch.rand(3), first)
    assert torch.equal(torch.get_rng_state(), after)


def test_objective_grads_accumulate_once():
    """The objective's own parameters get dL/dtheta once (from the cached-embedding loss)."""
    from objectives.infonce import CLIP

    obj = CLIP()
    feats = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1)
    w = torch.nn.Parameter(torch.eye(8))
    encode = lambda sub: EmbeddingBatch(image=sub.images @ w, text=sub.tokens @ w)  # noqa: E731
    batch = Batch(images=feats, tokens=feats.flip(0))
    out = obj(encode(batch))
    out.loss.backward()
    want_w, want_s = w.grad.clone(), obj.scale.log_scale.grad.clone()
    w.grad = None
    obj.zero_grad(set_to_none=True)
    res = gradcache_step(encode, obj, batch, 5)
    assert isinstance(res, LossOutput)
    torch.testing.assert_close(w.grad, want_w, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(obj.scale.log_scale.grad, want_s, rtol=1e-5, atol=1e-7)
