import numpy as np
import pytest
import torch

from harness.data.batches import ShapesTrainData, jitter
from harness.data.shapes import (
    COLOURS,
    RELATIONS,
    SHAPES,
    ShapesSpec,
    ShapesWorld,
    build_split,
    flip_caption,
    heldout_pairs,
    vocabulary,
)
from harness.engine.models import WordTokenizer

SMALL = dict(n_train=600, n_val=64, n_test=200, n_heldout=200, n_zeroshot=100)


def test_world_has_required_variety():
    assert len(COLOURS) >= 8 and len(SHAPES) >= 4 and len(RELATIONS) == 4
    sp = build_split(ShapesSpec(**SMALL), "train")
    words = " ".join(sp.captions)
    for r in RELATIONS:
        assert f" {r} " in words
    assert set(np.unique(sp.size[sp.size >= 0])) == {0, 1}
    assert set(np.unique(sp.n_objects)) == {1, 2}


def test_deterministic_from_seed():
    a = build_split(ShapesSpec(**SMALL), "test")
    b = build_split(ShapesSpec(**SMALL), "test")
    c = build_split(ShapesSpec(seed=1, **SMALL), "test")
    for k, v in a.arrays.items():
        assert np.array_equal(v, b.arrays[k]), k
    assert not np.array_equal(a.images, c.images)


def test_heldout_combinations_never_in_training():
    spec = ShapesSpec(**SMALL)
    held = {tuple(p) for p in heldout_pairs(spec)}
    assert len(held) == spec.heldout_combos
    train = build_split(spec, "train")
    pairs = {(c, s) for cs, ss in zip(train.colour, train.shape) for c, s in zip(cs, ss) if c >= 0}
    assert not pairs & held
    ho = build_split(spec, "heldout")
    for cs, ss, n in zip(ho.colour, ho.shape, ho.n_objects):
        assert any((cs[k], ss[k]) in held for k in range(n))


def test_captions_match_geometry_and_negatives_are_false():
    sp = build_split(ShapesSpec(**SMALL), "test")
    for i in range(len(sp)):
        cap = sp.full_captions[i]
        assert cap not in set(sp.negatives[i])
        if sp.n_objects[i] == 2:
            a = sp.first[i]
            (xa, ya), (xb, yb) = sp.centre[i, a], sp.centre[i, 1 - a]
            if " left of " in cap:
                assert xa < xb and abs(xa - xb) > abs(ya - yb)
            elif " right of " in cap:
                assert xa > xb and abs(xa - xb) > abs(ya - yb)
            elif " above " in cap:
                assert ya < yb
            else:
                assert " below " in cap and ya > yb
            assert list(sp.negative_types[i]) == ["attribute_swap", "relation_swap", "object_replace"]
            assert sp.colour[i, 0] != sp.colour[i, 1]


def test_rendered_pixels_have_object_colours():
    spec = ShapesSpec(**SMALL)
    sp = build_split(spec, "zeroshot")
    rgb = np.array(list(COLOURS.values()))
    for i in range(20):
        cx, cy = sp.centre[i, 0].astype(int)
        assert np.array_equal(sp.images[i, cy, cx], rgb[sp.colour[i, 0]]) or sp.shape[i, 0] == 2


def test_flip_keeps_captions_true():
    assert flip_caption("a red circle left of a blue square") == "a red circle right of a blue square"
    assert flip_caption("a red circle right of a blue square") == "a red circle left of a blue square"
    assert flip_caption("a red circle above a blue square") == "a red circle above a blue square"
    # a mirrored image of "A left of B" is rendered "A right of B" in the training batch
    spec = ShapesSpec(**SMALL)
    world = ShapesWorld(spec, cache_dir=None)
    world._splits["train"] = build_split(spec, "train")
    tok = WordTokenizer(vocabulary())
    data = ShapesTrainData(world, tok, seed=0)
    b = data.batch(0, 64, {"image", "text"})
    sp = world.split("train")
    for row, i in enumerate(data.indices(0, 64)):
        flipped = not torch.equal(b.images[row], torch.from_numpy(sp.images[i]))
        text = " ".join(tok.itos[t] for t in b.tokens[row] if t > 1 and t != tok.eot)
        expect = flip_caption(sp.captions[i]) if flipped else sp.captions[i]
        if flipped or sp.n_objects[i] == 2:
            assert text == expect


def test_vocabulary_covers_every_caption():
    sp = build_split(ShapesSpec(**SMALL), "train")
    tok = WordTokenizer(vocabulary())
    for texts in (sp.captions, sp.alt_captions, sp.negatives.reshape(-1)):
        ids = tok(list(texts))
        assert not (ids == tok.unk).any()
        assert (ids.argmax(dim=1) == (ids > 0).sum(dim=1) - 1).all()  # eot is the largest id, last


def test_cache_roundtrip_and_damage_is_rebuilt(tmp_path):
    spec = ShapesSpec(**SMALL)
    w = ShapesWorld(spec, tmp_path)
    a = w.split("val")
    path = w.dir / "val.npz"
    assert path.stat().st_size > 1000
    again = ShapesWorld(spec, tmp_path).split("val")
    assert np.array_equal(a.images, again.images)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    w2 = ShapesWorld(spec, tmp_path)
    rebuilt = w2.split("val")
    assert w2.render_seconds > 0  # rebuilt, not loaded
    assert np.array_equal(a.images, rebuilt.images)


def test_knobs_change_the_world_and_identity():
    base = ShapesSpec(**SMALL)
    two = build_split(ShapesSpec(**{**SMALL, "attributes": 2}), "test")
    assert not any(w in " ".join(two.captions) for w in ("small", "large"))
    fixed = build_split(ShapesSpec(**{**SMALL, "mention_order": "fixed"}), "test")
    assert not any(" right of " in c or " below " in c for c in fixed.captions)
    partial = build_split(ShapesSpec(**{**SMALL, "caption_completeness": 0.3}), "train")
    assert np.mean([len(c.split()) for c in partial.captions]) < np.mean(
        [len(c.split()) for c in partial.full_captions]
    )
    ones = build_split(ShapesSpec(**{**SMALL, "two_object_fraction": 0.0}), "test")
    assert (ones.n_objects == 1).all()
    big = build_split(ShapesSpec(**{**SMALL, "image_size": 48}), "val")
    assert big.images.shape[1:] == (48, 48, 3)
    fps = {
        ShapesSpec(**{**SMALL, k: v}).fingerprint()
        for k, v in [
            ("seed", 0),
            ("attributes", 2),
            ("mention_order", "fixed"),
            ("caption_completeness", 0.5),
            ("two_object_fraction", 0.1),
            ("image_size", 48),
        ]
    }
    assert len(fps) == 6 and base.fingerprint() in fps


def test_invalid_spec_names_the_field():
    with pytest.raises(Exception, match="image_size"):
        ShapesSpec(image_size=4)
    with pytest.raises(Exception, match="colour_count|extra|colour_count"):
        ShapesSpec(colour_count=3)


def test_image_view_is_a_small_jitter():
    imgs = torch.from_numpy(build_split(ShapesSpec(**SMALL), "val").images[:16])
    v = jitter(imgs, torch.Generator().manual_seed(0))
    assert v.shape == imgs.shape and v.dtype == torch.uint8
    assert 0 < (v.float() - imgs.float()).abs().mean() < 40
