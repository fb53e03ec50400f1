"""The shapes world: the embedded, procedurally rendered default dataset.

Scenes hold one or two coloured shapes. A two-object scene places its objects in a spatial relation
(one left of / right of / above / below the other) and is described by a caption from a small
grammar, e.g. ``"a small red circle left of a large blue square"``. Every scene comes with

* a class label (``labels``: the id of its canonical description, so two scenes share a label
  exactly when the same complete caption is true of both),
* three generated hard-negative captions (attribute swap, relation swap, object replacement;
  the construction follows the negative types of NegCLIP / SugarCrepe, Yuksekgonul et al. 2023 and
  Hsieh et al. 2023), and
* the structured facts (colour, shape, size, position of each object) the tasks score against.

A held-out set of (colour, shape) combinations never appears in the training split; the
``heldout`` split consists of scenes that contain at least one of them and so tests compositional
generalisation. Everything is a pure function of the :class:`ShapesSpec` (which includes the seed):
rendering is vectorised numpy and the result is cached on disk, keyed by the spec's hash, with a
checksum so that a damaged cache is detected and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.core.errors import UserError

log = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 20),
    "cyan": (40, 205, 215),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
SIZES: tuple[str, ...] = ("small", "large")
#: relation words, indexed by (axis, first-mentioned object is the left/top one)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NEGATIVE_TYPES: tuple[str, ...] = ("attribute_swap", "relation_swap", "object_replace")
SPLITS: tuple[str, ...] = ("train", "val", "test", "heldout", "zeroshot")
CACHE_FORMAT = 1

COLOUR_NAMES = tuple(COLOURS)
_RGB = np.array(list(COLOURS.values()), dtype=np.uint8)


class ShapesSpec(BaseModel):
    """Everything that defines a shapes world. Part of the run identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, description="world seed: scenes, captions and held-out combinations")
    image_size: int = Field(32, ge=16, le=256, description="image side in pixels")
    two_object_fraction: float = Field(
        0.8, ge=0.0, le=1.0, description="objects per scene: share of scenes with two objects"
    )
    attributes: Literal[2, 3] = Field(
        3, description="attributes per object: 2 = colour+shape, 3 = size+colour+shape"
    )
    caption_completeness: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="probability that a training caption mentions each non-shape attribute",
    )
    mention_order: Literal["random", "fixed"] = Field(
        "random",
        description="random: either object may be mentioned first (all four relation words); "
        "fixed: the left/top object is always mentioned first",
    )
    heldout_combos: int = Field(
        5, ge=0, le=len(SHAPES), description="(colour, shape) pairs never seen in training"
    )
    n_train: int = Field(20000, ge=16)
    n_val: int = Field(1000, ge=16)
    n_test: int = Field(1000, ge=16)
    n_heldout: int = Field(1000, ge=16)
    n_zeroshot: int = Field(1000, ge=16)

    def fingerprint(self) -> str:
        payload = json.dumps({"format": CACHE_FORMAT, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def split_size(self, split: str) -> int:
        return int(getattr(self, f"n_{split}"))


def heldout_pairs(spec: ShapesSpec) -> np.ndarray:
    """(colour, shape) pairs excluded from training: one per shape, distinct colours."""
    rng = np.random.default_rng([spec.seed, 7919])
    colours = rng.permutation(len(COLOURS))[: spec.heldout_combos]
    shapes = rng.permutation(len(SHAPES))[: spec.heldout_combos]
    return np.stack([colours, shapes], axis=1).astype(np.int64).reshape(-1, 2)


@dataclass
class ShapesSplit:
    """One split of the world: images and the facts behind every caption."""

    name: str
    images: np.ndarray  # (N, S, S, 3) uint8
    n_objects: np.ndarray  # (N,) 1 or 2
    colour: np.ndarray  # (N, 2) int, -1 for an absent object
    shape: np.ndarray  # (N, 2)
    size: np.ndarray  # (N, 2)
    centre: np.ndarray  # (N, 2, 2) float (x, y) in pixels
    axis: np.ndarray  # (N,) 0 horizontal (object 0 left of object 1), 1 vertical (0 above 1), -1
    first: np.ndarray  # (N,) which object the caption mentions first
    captions: np.ndarray  # (N,) str: the caption the data provides (training knobs applied)
    full_captions: np.ndarray  # (N,) str: the complete caption in the scene's mention order
    alt_captions: np.ndarray  # (N,) str: the same facts, other mention order (a text view)
    negatives: np.ndarray  # (N, 3) str: hard-negative captions, NEGATIVE_TYPES order
    negative_types: np.ndarray  # (N, 3) str: what each negative actually is
    labels: np.ndarray  # (N,) int: id of the canonical complete description

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}


# ----------------------------------------------------------------------------- captions


def object_phrase(colour: int, shape: int, size: int, *, colour_on=True, size_on=True) -> str:
    words = ["a"]
    if size_on and size >= 0:
        words.append(SIZES[size])
    if colour_on:
        words.append(COLOUR_NAMES[colour])
    words.append(SHAPES[shape])
    return " ".join(words)


def relation_word(axis: int, first_is_zero: bool) -> str:
    return RELATIONS[2 * axis + (0 if first_is_zero else 1)]


def describe(colour, shape, size, axis, first, n_objects, colour_on=(True, True), size_on=(True, True)):
    """The caption of one scene, mentioning object ``first`` first."""
    if n_objects == 1:
        return object_phrase(colour[0], shape[0], size[0], colour_on=colour_on[0], size_on=size_on[0])
    a, b = first, 1 - first
    pa = object_phrase(colour[a], shape[a], size[a], colour_on=colour_on[a], size_on=size_on[a])
    pb = object_phrase(colour[b], shape[b], size[b], colour_on=colour_on[b], size_on=size_on[b])
    return f"{pa} {relation_word(axis, a == 0)} {pb}"


def flip_caption(caption: str) -> str:
    """The caption of the horizontally mirrored image: "left of" and "right of" trade places."""
    return caption.replace("left of", "\0").replace("right of", "left of").replace("\0", "right of")


def vocabulary() -> list[str]:
    """Every word the grammar can produce (captions, negatives, prompts)."""
    words = ["a", "the", "photo", "of", "shape", "object", "thing", "picture", "an", "image", "with"]
    words += list(SIZES) + list(COLOUR_NAMES) + list(SHAPES)
    for r in RELATIONS:
        words += r.split()
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return list(seen)


# ----------------------------------------------------------------------------- sampling


def _sample_objects(rng, n, allowed_pairs):
    """n objects whose (colour, shape) pair is drawn uniformly from ``allowed_pairs``."""
    pick = allowed_pairs[rng.integers(0, len(allowed_pairs), n)]
    return pick[:, 0], pick[:, 1]


def _sample_scenes(spec: ShapesSpec, split: str, n: int) -> tuple[dict[str, np.ndarray], np.random.Generator]:
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), 104729])
    n_col, n_sh = len(COLOURS), len(SHAPES)
    all_pairs = np.array([(c, s) for c in range(n_col) for s in range(n_sh)], dtype=np.int64)
    held = heldout_pairs(spec)
    is_held = np.zeros((n_col, n_sh), dtype=bool)
    is_held[held[:, 0], held[:, 1]] = True
    seen_pairs = all_pairs[~is_held[all_pairs[:, 0], all_pairs[:, 1]]]

    if split == "zeroshot":
        n_objects = np.ones(n, dtype=np.int64)
    else:
        n_objects = np.where(rng.random(n) < spec.two_object_fraction, 2, 1)
    colour = np.full((n, 2), -1, dtype=np.int64)
    shape = np.full((n, 2), -1, dtype=np.int64)
    for k in range(2):
        c, s = _sample_objects(rng, n, seen_pairs)
        colour[:, k], shape[:, k] = c, s
    if split == "heldout" and len(held):
        # at least one object of every held-out scene is an unseen combination
        k = np.where(n_objects == 2, rng.integers(0, 2, n), 0)
        c, s = _sample_objects(rng, n, held)
        colour[np.arange(n), k], shape[np.arange(n), k] = c, s
    # two objects of one scene always differ in colour, so an attribute swap changes the caption
    same = colour[:, 0] == colour[:, 1]
    while same.any():
        idx = np.flatnonzero(same)
        keep = _held_slot(colour, shape, is_held, idx) if split == "heldout" else 0
        other = 1 - keep
        pick = seen_pairs[rng.integers(0, len(seen_pairs), len(idx))]
        colour[idx, other], shape[idx, other] = pick[:, 0], pick[:, 1]
        same = colour[:, 0] == colour[:, 1]
    if spec.attributes == 3:
        size = rng.integers(0, len(SIZES), (n, 2))
    else:
        size = np.ones((n, 2), dtype=np.int64)  # every object rendered large, size never mentioned
    single = n_objects == 1
    colour[single, 1] = shape[single, 1] = size[single, 1] = -1

    axis = np.where(single, -1, rng.integers(0, 2, n))
    first = np.zeros(n, dtype=np.int64) if spec.mention_order == "fixed" else rng.integers(0, 2, n)
    first = np.where(single, 0, first)
    centre = _place(rng, spec.image_size, n_objects, axis, size)
    background = rng.integers(40, 90, n).astype(np.uint8)
    scenes = dict(
        n_objects=n_objects,
        colour=colour,
        shape=shape,
        size=size,
        centre=centre,
        axis=axis,
        first=first,
        background=background,
    )
    return scenes, rng


def _held_slot(colour, shape, is_held, idx):
    """For held-out scenes: the slot that holds the unseen pair (the other one may be resampled)."""
    slot0 = is_held[colour[idx, 0], shape[idx, 0]]
    return np.where(slot0, 0, 1)


def _radius(size: np.ndarray, s: int) -> np.ndarray:
    return np.where(size == 0, 0.13 * s, 0.21 * s)


def _place(rng, s, n_objects, axis, size):
    n = len(n_objects)
    r = _radius(np.maximum(size, 0), s)
    margin = 0.06 * s
    centre = np.full((n, 2, 2), -1.0)
    # single objects: anywhere inside the canvas
    lo, hi = r[:, 0] + margin, s - r[:, 0] - margin
    centre[:, 0, 0] = lo + rng.random(n) * (hi - lo)
    centre[:, 0, 1] = lo + rng.random(n) * (hi - lo)
    two = n_objects == 2
    # two objects: object 0 in the left (top) half, object 1 in the right (bottom) half,
    # cross-axis offsets small enough that the relation is unambiguous
    main0 = r[:, 0] + margin + rng.random(n) * np.maximum(s / 2 - 2 * r[:, 0] - margin, 0)
    main1 = s / 2 + r[:, 1] + rng.random(n) * np.maximum(s / 2 - 2 * r[:, 1] - margin, 0)
    rmax = r.max(axis=1)
    cross_c = rmax + margin + rng.random(n) * np.maximum(s - 2 * (rmax + margin), 0)
    jitter = (rng.random((n, 2)) - 0.5) * (s / 8)
    cross = np.clip(cross_c[:, None] + jitter, r + margin, s - r - margin)
    horiz = axis == 0
    for k, main in enumerate((main0, main1)):
        centre[two, k, 0] = np.where(horiz, main, cross[:, k])[two]
        centre[two, k, 1] = np.where(horiz, cross[:, k], main)[two]
    return centre


# ----------------------------------------------------------------------------- rendering


def _shape_mask(shape_id: int, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    ax, ay = np.abs(dx), np.abs(dy)
    if shape_id == 0:  # circle
        return dx * dx + dy * dy <= r * r
    if shape_id == 1:  # square
        return np.maximum(ax, ay) <= 0.82 * r
    if shape_id == 2:  # triangle, apex up
        return (dy <= 0.8 * r) & (ax <= (dy + r) / 1.8)
    if shape_id == 3:  # diamond
        return ax + ay <= r
    if shape_id == 4:  # cross
        t = r / 3.0
        return ((ax <= t) & (ay <= r)) | ((ay <= t) & (ax <= r))
    raise ValueError(shape_id)


def render(scenes: dict[str, np.ndarray], image_size: int) -> np.ndarray:
    """Rasterise scenes to (N, S, S, 3) uint8, vectorised per (object slot, shape)."""
    n = len(scenes["n_objects"])
    s = image_size
    images = np.empty((n, s, s, 3), dtype=np.uint8)
    images[:] = scenes["background"][:, None, None, None]
    grid = np.arange(s, dtype=np.float32) + 0.5
    chunk = 4096
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        img = images[sl]
        for k in range(2):
            shp = scenes["shape"][sl, k]
            for shape_id in range(len(SHAPES)):
                idx = np.flatnonzero(shp == shape_id)
                if len(idx) == 0:
                    continue
                cx = scenes["centre"][sl][idx, k, 0].astype(np.float32)[:, None, None]
                cy = scenes["centre"][sl][idx, k, 1].astype(np.float32)[:, None, None]
                r = _radius(scenes["size"][sl][idx, k], s).astype(np.float32)[:, None, None]
                mask = _shape_mask(shape_id, grid[None, None, :] - cx, grid[None, :, None] - cy, r)
                rgb = _RGB[scenes["colour"][sl][idx, k]]  # (m, 3)
                sub = img[idx]
                np.copyto(sub, rgb[:, None, None, :], where=mask[..., None])
                img[idx] = sub
    return images


# ----------------------------------------------------------------------------- captions per split


def _captions(spec: ShapesSpec, split: str, sc: dict, rng) -> dict[str, np.ndarray]:
    n = len(sc["n_objects"])
    completeness = spec.caption_completeness if split == "train" else 1.0
    colour_on = rng.random((n, 2)) < completeness
    size_on = (rng.random((n, 2)) < completeness) & (spec.attributes == 3)
    full_size_on = np.full((n, 2), spec.attributes == 3)
    neg_choice = rng.integers(0, 2**31, (n, 3))
    captions, full, alt = [], [], []
    negs, neg_types = [], []
    n_col, n_sh = len(COLOURS), len(SHAPES)
    for i in range(n):
        col, shp, siz = sc["colour"][i], sc["shape"][i], sc["size"][i]
        ax, fi, no = int(sc["axis"][i]), int(sc["first"][i]), int(sc["n_objects"][i])
        fs = tuple(full_size_on[i])
        captions.append(describe(col, shp, siz, ax, fi, no, tuple(colour_on[i]), tuple(size_on[i])))
        full.append(describe(col, shp, siz, ax, fi, no, size_on=fs))
        if no == 2:
            alt.append(describe(col, shp, siz, ax, 1 - fi, no, size_on=fs))
            # attribute swap: the two objects trade colours
            neg_a = describe(col[::-1], shp, siz, ax, fi, no, size_on=fs)
            # relation swap: the relation word is inverted, mention order kept
            neg_r = _swap_relation(full[-1], ax)
            types = list(NEGATIVE_TYPES)
        else:
            alt.append("the" + full[-1][1:])
            # single objects: colour replacement and size/shape replacement stand in
            c2 = (col[0] + 1 + neg_choice[i, 0] % (n_col - 1)) % n_col
            neg_a = describe([c2, -1], shp, siz, ax, 0, 1, size_on=fs)
            if spec.attributes == 3:
                neg_r = describe(col, shp, [1 - siz[0], -1], ax, 0, 1, size_on=fs)
                types = ["colour_replace", "size_replace", "object_replace"]
            else:
                c3 = (c2 + 1 + neg_choice[i, 1] % (n_col - 2)) % n_col
                c3 = c3 if c3 != col[0] else (c3 + 1) % n_col
                neg_r = describe([c3, -1], shp, siz, ax, 0, 1, size_on=fs)
                types = ["colour_replace", "colour_replace", "object_replace"]
        # object replacement: one object's shape becomes another shape
        k = int(neg_choice[i, 2] % no)
        shp2 = np.array(shp, copy=True)
        shp2[k] = (shp[k] + 1 + neg_choice[i, 1] % (n_sh - 1)) % n_sh
        neg_o = describe(col, shp2, siz, ax, fi, no, size_on=fs)
        negs.append([neg_a, neg_r, neg_o])
        neg_types.append(types)
    return dict(
        captions=np.array(captions),
        full_captions=np.array(full),
        alt_captions=np.array(alt),
        negatives=np.array(negs),
        negative_types=np.array(neg_types),
    )


def _swap_relation(caption: str, axis: int) -> str:
    if axis == 0:
        return flip_caption(caption)
    return caption.replace("above", "\0").replace("below", "above").replace("\0", "below")


def scene_labels(spec: ShapesSpec, colour, shape, size, axis, n_objects) -> np.ndarray:
    """Id of each scene's canonical complete description (object 0 is the left/top one)."""
    n_sz = len(SIZES) if spec.attributes == 3 else 1
    sz = size if spec.attributes == 3 else np.zeros_like(size)
    obj = (np.maximum(colour, 0) * len(SHAPES) + np.maximum(shape, 0)) * n_sz + np.maximum(sz, 0)
    n_obj_types = len(COLOURS) * len(SHAPES) * n_sz
    pair = n_obj_types + (obj[:, 0] * 2 + np.maximum(axis, 0)) * n_obj_types + obj[:, 1]
    return np.where(n_objects == 1, obj[:, 0], pair).astype(np.int64)


def build_split(spec: ShapesSpec, split: str) -> ShapesSplit:
    n = spec.split_size(split)
    sc, rng = _sample_scenes(spec, split, n)
    images = render(sc, spec.image_size)
    caps = _captions(spec, split, sc, rng)
    labels = scene_labels(spec, sc["colour"], sc["shape"], sc["size"], sc["axis"], sc["n_objects"])
    return ShapesSplit(
        name=split,
        images=images,
        n_objects=sc["n_objects"],
        colour=sc["colour"],
        shape=sc["shape"],
        size=sc["size"],
        centre=sc["centre"],
        axis=sc["axis"],
        first=sc["first"],
        labels=labels,
        **caps,
    )


# ----------------------------------------------------------------------------- cache


def default_cache_dir(output_dir: str | Path = ".harness") -> Path:
    """``$HARNESS_CACHE`` if set, else ``<output_dir>/cache``."""
    return Path(os.environ.get("HARNESS_CACHE") or Path(output_dir) / "cache")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShapesWorld:
    """All splits of one world, rendered once and cached under ``cache_dir/shapes/<fingerprint>``."""

    def __init__(self, spec: ShapesSpec, cache_dir: Path | None = None, progress=None):
        self.spec = spec
        self.dir = Path(cache_dir or default_cache_dir()) / "shapes" / spec.fingerprint()
        self._splits: dict[str, ShapesSplit] = {}
        self._progress = progress
        self.render_seconds = 0.0

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint()

    def split(self, name: str) -> ShapesSplit:
        if name not in SPLITS:
            raise UserError(f"unknown shapes split {name!r}; valid: {', '.join(SPLITS)}")
        if name not in self._splits:
            self._splits[name] = self._load_or_build(name)
        return self._splits[name]

    def _load_or_build(self, name: str) -> ShapesSplit:
        path = self.dir / f"{name}.npz"
        manifest = self.dir / f"{name}.sha256"
        if path.exists() and manifest.exists():
            try:
                if _digest(path) != manifest.read_text().strip():
                    raise ValueError("checksum mismatch")
                with np.load(path, allow_pickle=False) as z:
                    return ShapesSplit(name=name, **{k: z[k] for k in z.files})
            except Exception as e:  # damaged: rebuild
                log.warning("shapes cache %s is damaged (%s); rebuilding", path, e)
        t0 = time.perf_counter()
        if self._progress is not None:
            self._progress(f"rendering shapes world {name} ({self.spec.split_size(name)} scenes)")
        split = build_split(self.spec, name)
        self.render_seconds += time.perf_counter() - t0
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **split.arrays)
        digest = _digest(Path(tmp))
        os.replace(tmp, path)
        manifest.write_text(digest + "\n")
        (self.dir / "spec.json").write_text(json.dumps(self.spec.model_dump(), indent=2, sort_keys=True))
        return split
