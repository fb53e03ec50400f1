"""ARO on real data (see :mod:`tasks.compositionality_real` for the scoring and tie conventions it
shares with SugarCrepe):

* **ARO** (Yuksekgonul et al., ICLR 2023; ``mertyg/vision-language-models-are-bows``), suite
  ``aro``: ``aro-relation`` (VG-Relation, ``mteb/ARO-Visual-Relation``: image cropped to ``bbox``,
  macro accuracy over relation types outside the official notebook's list of symmetric /
  ambiguous relations, :data:`ARO_EXCLUDED_RELATIONS`), ``aro-attribution`` (VG-Attribution,
  ``mteb/ARO-Visual-Attribution``: image cropped to ``bbox``, macro accuracy over attribute pairs
  with at least :attr:`AROAttribution.min_pair_count` = 25 items) and ``aro-coco-order``
  (``mteb/ARO-COCO-order``: original caption against 4 word-order perturbations, accuracy, chance
  0.2). Flickr30k-Order (``gowitheflow/ARO-Flickr-Order``) is not included.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np

from harness.data.sources import DataError, HubSource

from .base import EvalContext, Suite
from .compositionality import TIES
from .compositionality_real import _CaptionChoice

# ------------------------------------------------------------------------------ metric helpers


def macro_accuracy(
    correct: Sequence[bool],
    groups: Sequence[str],
    exclude: frozenset[str] | set[str] = frozenset(),
    min_count: int = 1,
) -> tuple[float, dict[str, float], dict[str, int], np.ndarray]:
    """ARO's macro accuracy: the mean over groups (relation types, attribute pairs) of the
    accuracy within the group, over the groups not in ``exclude`` that have ``>= min_count`` items
    (``VG_Relation`` / ``VG_Attribution.evaluate_scores`` and the replication notebook).

    Returns ``(macro, accuracy per kept group, count per kept group, item_scores)``. The item
    scores cover the items of kept groups (in input order): ``correct * N / (G * n_g)`` with ``N``
    the number of such items, ``G`` the number of kept groups and ``n_g`` the size of the item's
    group, so their mean is exactly the macro accuracy (each group weighs 1/G, as in the metric).
    """
    correct = np.asarray(correct, dtype=bool)
    groups = np.asarray(list(groups), dtype=object)
    if correct.shape != groups.shape:
        raise ValueError(f"{len(correct)} correctness values but {len(groups)} group labels")
    names, counts = np.unique(groups, return_counts=True) if len(groups) else (np.array([]), np.array([]))
    kept = {str(g): int(c) for g, c in zip(names, counts) if g not in exclude and c >= min_count}
    if not kept:
        raise DataError(
            f"no group is left for the macro accuracy (after excluding {len(exclude)} names and "
            f"requiring >= {min_count} items per group; {len(names)} groups present)"
        )
    acc = {g: float(correct[groups == g].mean()) for g in kept}
    macro = float(np.mean(list(acc.values())))
    mask = np.array([g in kept for g in groups], dtype=bool)
    n = int(mask.sum())
    weights = np.array([n / (len(kept) * kept[g]) for g in groups[mask]], dtype=np.float64)
    return macro, acc, kept, correct[mask] * weights


def attribute_pair(true_caption: str, false_caption: str) -> str:
    """The attribute pair of a VG-Attribution item recovered from its captions, used only when
    the table has no ``attributes`` column: the words of the true caption that the false caption
    swaps (``"the red car and the blue house"`` vs ``"the blue car and the red house"`` ->
    ``"red_blue"``), in true-caption order, joined with ``_`` as ARO joins ``attributes[0]`` and
    ``attributes[1]``.

    After the common prefix and suffix, the true middle must read ``A1 M A2`` and the false one
    ``A2 M A1``; the shortest such ``A1`` / ``A2`` are taken (so attributes sharing a leading word,
    "light blue" / "light green", lose it). A pair of captions of another shape keys on the whole
    true caption."""
    a, b = true_caption.split(), false_caption.split()
    if len(a) == len(b):
        p = 0
        while p < len(a) and a[p] == b[p]:
            p += 1
        s = 0
        while s < len(a) - p and a[-1 - s] == b[-1 - s]:
            s += 1
        am, bm = a[p : len(a) - s], b[p : len(b) - s]
        for i in range(1, len(am)):
            for j in range(1, len(am) - i + 1):
                if (
                    am[:i] == bm[len(bm) - i :]
                    and am[len(am) - j :] == bm[:j]
                    and am[i : len(am) - j] == bm[j : len(bm) - i]
                ):
                    return f"{' '.join(am[:i])}_{' '.join(am[len(am) - j :])}"
    return true_caption


# The relations the ARO authors leave out of the VG-Relation macro accuracy (symmetric or
# ambiguous, where the swapped caption may also be true): the ``symmetric`` list of
# ``notebooks/Replicate ARO! VG-Relation, VG-Attribution.ipynb`` in
# mertyg/vision-language-models-are-bows (commit 42dbb5e), in that order.
ARO_EXCLUDED_RELATIONS: frozenset[str] = frozenset(
    [
        "adjusting",
        "attached to",
        "between",
        "bigger than",
        "biting",
        "boarding",
        "brushing",
        "chewing",
        "cleaning",
        "climbing",
        "close to",
        "coming from",
        "coming out of",
        "contain",
        "crossing",
        "dragging",
        "draped over",
        "drinking",
        "drinking from",
        "driving",
        "driving down",
        "driving on",
        "eating from",
        "eating in",
        "enclosing",
        "exiting",
        "facing",
        "filled with",
        "floating in",
        "floating on",
        "flying",
        "flying above",
        "flying in",
        "flying over",
        "flying through",
        "full of",
        "going down",
        "going into",
        "going through",
        "grazing in",
        "growing in",
        "growing on",
        "guiding",
        "hanging from",
        "hanging in",
        "hanging off",
        "hanging over",
        "higher than",
        "holding onto",
        "hugging",
        "in between",
        "jumping off",
        "jumping on",
        "jumping over",
        "kept in",
        "larger than",
        "leading",
        "leaning over",
        "leaving",
        "licking",
        "longer than",
        "looking in",
        "looking into",
        "looking out",
        "looking over",
        "looking through",
        "lying next to",
        "lying on top of",
        "making",
        "mixed with",
        "mounted on",
        "moving",
        "on the back of",
        "on the edge of",
        "on the front of",
        "on the other side of",
        "opening",
        "painted on",
        "parked at",
        "parked beside",
        "parked by",
        "parked in",
        "parked in front of",
        "parked near",
        "parked next to",
        "perched on",
        "petting",
        "piled on",
        "playing",
        "playing in",
        "playing on",
        "playing with",
        "pouring",
        "reaching for",
        "reading",
        "reflected on",
        "riding on",
        "running in",
        "running on",
        "running through",
        "seen through",
        "sitting behind",
        "sitting beside",
        "sitting by",
        "sitting in front of",
        "sitting near",
        "sitting next to",
        "sitting under",
        "skiing down",
        "skiing on",
        "sleeping in",
        "sleeping on",
        "smiling at",
        "sniffing",
        "splashing",
        "sprinkled on",
        "stacked on",
        "standing against",
        "standing around",
        "standing behind",
        "standing beside",
        "standing in front of",
        "standing near",
        "standing next to",
        "staring at",
        "stuck in",
        "surrounding",
        "swimming in",
        "swinging",
        "talking to",
        "topped with",
        "touching",
        "traveling down",
        "traveling on",
        "tying",
        "typing on",
        "underneath",
        "wading in",
        "waiting for",
        "walking across",
        "walking by",
        "walking down",
        "walking next to",
        "walking through",
        "working in",
        "working on",
        "worn on",
        "wrapped around",
        "wrapped in",
        "by",
        "of",
        "near",
        "next to",
        "with",
        "beside",
        "on the side of",
        "around",
    ]
)


def bbox_box(bbox: dict[str, float]) -> tuple[float, float, float, float]:
    """ARO's crop box ``(x, y, x + w, y + h)`` from a ``{x, y, w, h}`` struct (``VG_Relation.__getitem__``;
    PIL rounds it to whole pixels). A degenerate box is widened to one pixel so the crop stays an image."""
    x, y, w, h = (float(bbox[k]) for k in ("x", "y", "w", "h"))
    return (x, y, x + max(w, 1.0), y + max(h, 1.0))


# ------------------------------------------------------------------------------------ tasks


_ARO_CITATION = (
    "Yuksekgonul et al., When and Why Vision-Language Models Behave like Bags-of-Words, and "
    "What to Do About It?, ICLR 2023"
)


class _AROVisualGenome(_CaptionChoice):
    """VG-Relation / VG-Attribution: the image cropped to the ``bbox`` {x, y, w, h} of the
    relation or attribute (``VG_Relation.__getitem__``: ``crop((x, y, x + w, y + h))``), its true
    caption against the false one."""

    columns = ("image", "true_caption", "false_caption", "bbox")
    main_score = "macro_acc"
    metrics = ("macro_acc", "acc", "n_groups", "n_scored", "n_undecodable", "n_ties", "acc/{group:.+}")
    license = "ARO annotations MIT (mteb task metadata); images Visual Genome / GQA (CC BY 4.0)"
    citation = _ARO_CITATION

    def _group_labels(self, table, true: list[str], false: list[str]) -> tuple[list[str], dict[str, float]]:
        raise NotImplementedError

    def _exclude(self) -> frozenset[str]:
        return frozenset()

    def _min_count(self) -> int:
        return 1

    def score(self, ctx: EvalContext, split: str):
        table = self.table(ctx, split)
        true, false = [str(x) for x in table["true_caption"]], [str(x) for x in table["false_caption"]]
        boxes = [bbox_box(b) for b in table["bbox"]]
        groups, extra_metrics = self._group_labels(table, true, false)
        negatives = [[c] for c in false]
        rows, correct, scores, bad, ties = self._choose(ctx, table, true, negatives, crop=lambda r: boxes[r])
        macro, per_group, counts, item_scores = macro_accuracy(
            correct, [groups[r] for r in rows], self._exclude(), self._min_count()
        )
        metrics = {
            "macro_acc": macro,
            "acc": float(correct.mean()),
            "n_groups": float(len(per_group)),
            "n_scored": float(sum(counts.values())),
            "n_undecodable": float(bad),
            "n_ties": float(ties),
            **extra_metrics,
        }
        metrics.update({f"acc/{g}": a for g, a in sorted(per_group.items())})
        preds = self._predictions(rows, true, negatives, scores, correct, group=groups)
        return metrics, dict(
            predictions=preds,
            item_scores=item_scores.tolist(),
            n_items=len(rows),
            protocol={"ties": TIES},
            **self.provenance(table),
        )


class ARORelation(_AROVisualGenome):
    """ARO VG-Relation (23,937 items): does the model prefer "the horse is eating the grass" over
    "the grass is eating the horse" on the crop of the relation? Main score ``macro_acc``: the mean
    over relation types of the per-type accuracy, leaving out :data:`ARO_EXCLUDED_RELATIONS` (the
    replication notebook's symmetric list). Also ``acc`` (micro, every decodable item),
    ``acc/<relation>``, ``n_groups`` (relation types scored), ``n_scored`` (their items).

    Item scores: for the items of scored relation types, correctness weighted by
    ``N / (R * n_r)`` (``N`` scored items, ``R`` types, ``n_r`` items of the type), so their mean
    is ``macro_acc``; predictions: every decodable item, with its relation in ``group``."""

    source = HubSource("mteb/ARO-Visual-Relation", split="test")
    dataset = source.repo
    columns = _AROVisualGenome.columns + ("relation_name",)
    excluded_relations: ClassVar[frozenset[str]] = ARO_EXCLUDED_RELATIONS

    def _group_labels(self, table, true, false):
        return [str(r) for r in table["relation_name"]], {}

    def _exclude(self):
        return self.excluded_relations


class AROAttribution(_AROVisualGenome):
    """ARO VG-Attribution: "the paved road and the white house" against
    "the white road and the paved house", on the crop of both objects. Main score ``macro_acc``:
    the mean over attribute pairs (``f"{attributes[0]}_{attributes[1]}"``, as ARO groups them) with
    at least :attr:`min_pair_count` items (25, ``VG_Attribution.evaluate_scores``) of the per-pair
    accuracy; also ``acc``, ``acc/<pair>``, ``n_groups``, ``n_scored``.

    The pair comes from the ``attributes`` column (two strings) when the table has one; otherwise
    from the words the false caption swaps (:func:`attribute_pair`), reported as
    ``pairs_from_captions = 1``. Item scores as for ``aro-relation``."""

    source = HubSource("mteb/ARO-Visual-Attribution", split="test")
    dataset = source.repo
    min_pair_count: ClassVar[int] = 25
    attributes_column: ClassVar[str] = "attributes"
    metrics = _AROVisualGenome.metrics + ("pairs_from_captions",)

    def _group_labels(self, table, true, false):
        if self.attributes_column in table.column_names:
            pairs = []
            for i, attrs in enumerate(table[self.attributes_column]):
                attrs = list(attrs) if not isinstance(attrs, str) else [attrs]
                if len(attrs) < 2:
                    raise DataError(
                        f"{self.name}: row {i} has {len(attrs)} attribute(s) in "
                        f"{self.attributes_column!r}; ARO pairs two"
                    )
                pairs.append(f"{attrs[0]}_{attrs[1]}")
            return pairs, {"pairs_from_captions": 0.0}
        return [attribute_pair(t, f) for t, f in zip(true, false)], {"pairs_from_captions": 1.0}

    def _min_count(self):
        return self.min_pair_count


class AROCocoOrder(_CaptionChoice):
    """ARO COCO-Order (25,010 items: every caption of the COCO Karpathy test images): the original
    caption against four perturbations of its word order (nouns and adjectives shuffled,
    everything but nouns and adjectives shuffled, words shuffled within trigrams, trigrams
    shuffled). Correct iff the original scores strictly above all four; metric ``acc`` (chance
    0.2). Columns of ``mteb/ARO-COCO-order`` (mteb's ``AROCocoOrder``): ``images``,
    ``correct_caption``, ``hard_text_1`` .. ``hard_text_4``. Item scores: 0/1 correctness."""

    source = HubSource("mteb/ARO-COCO-order", split="test")
    dataset = source.repo
    image_column = "images"
    negative_columns: ClassVar[tuple[str, ...]] = ("hard_text_1", "hard_text_2", "hard_text_3", "hard_text_4")
    columns = ("images", "correct_caption") + negative_columns
    license = "ARO annotations MIT (mteb task metadata); images COCO 2014 (Flickr terms of use)"
    citation = _ARO_CITATION

    def captions(self, table):
        return (
            [str(x) for x in table["correct_caption"]],
            [list(map(str, row)) for row in zip(*(table[c] for c in self.negative_columns))],
        )


class AROSuite(Suite):
    """ARO (Yuksekgonul et al., ICLR 2023): VG-Relation, VG-Attribution and COCO-Order."""

    default_train_data = "coco"
    dataset = "mteb/ARO-Visual-Relation, mteb/ARO-Visual-Attribution, mteb/ARO-COCO-order"
    members = ("aro-relation", "aro-attribution", "aro-coco-order")
