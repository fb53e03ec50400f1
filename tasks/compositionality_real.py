"""Compositionality on real data: SugarCrepe, ARO and Winoground.

Every task scores an image against its true caption and hard-negative captions with the encoder's
normalised embeddings (cosine similarity) and counts an item correct only when the true caption
scores *strictly* higher (:func:`tasks.compositionality.caption_scores`). SugarCrepe's
``main_eval.py`` uses the same strict ``pos_score > neg_score``; CLIP_benchmark's
``image_caption_selection`` and ARO's ``evaluate_scores`` take an ``argmax``, which resolves an
exact tie by index order (CLIP_benchmark: true caption first, so a tie counts as correct; ARO
VG-R/VG-A: ``[false, true]``, so a tie counts as wrong; ARO Order: original first, a tie counts as
correct). Here a tie is always wrong: a model that cannot tell the captions apart has not chosen
(:data:`tasks.compositionality.TIES`, recorded in each result's ``protocol``; docs/compositionality.md).
Ties are exact: the true and negative captions (Winoground: both captions, and both images) are
embedded in one encoder call, which embeds each distinct input once, so equal inputs get equal
scores. ``n_ties`` counts the items a tie decided (correct under an argmax with the true caption
first), so CLIP_benchmark's SugarCrepe accuracy is ``acc + n_ties / n_items``.

None of these datasets has a validation split: under ``ctx.validation`` (tuning, checkpoint
selection) every task refuses. An image that does not decode drops its item (``n_undecodable``
counts the dropped items), or raises under ``--strict-images``.

* **SugarCrepe** (Hsieh et al., NeurIPS 2023 D&B, arXiv 2306.14610; ``RAIVNLab/sugar-crepe``):
  seven categories, each on ``HuggingFaceM4/SugarCrepe_<category>`` (split ``test``; columns
  ``image``, ``tested_labels`` = [caption, negative_caption], ``true_label`` = a ``ClassLabel``
  whose names are the captions, decoded with ``int2str``; the negative is the other element of
  ``tested_labels``). Metric: accuracy (chance 0.5). The suite ``sugarcrepe`` runs all seven; the
  paper's overall number is the micro-average over categories (sugar-crepe issue #3), which the
  harness leaves to the report. The official JSON layout (``filename`` / ``caption`` /
  ``negative_caption`` + a COCO val2017 folder) is not read: convert it to the Hub layout.
* **ARO** (Yuksekgonul et al., ICLR 2023; ``mertyg/vision-language-models-are-bows``), suite
  ``aro``: ``aro-relation`` (VG-Relation, ``mteb/ARO-Visual-Relation``: image cropped to ``bbox``,
  macro accuracy over relation types outside the official notebook's list of symmetric /
  ambiguous relations, :data:`ARO_EXCLUDED_RELATIONS`), ``aro-attribution`` (VG-Attribution,
  ``mteb/ARO-Visual-Attribution``: image cropped to ``bbox``, macro accuracy over attribute pairs
  with at least :attr:`AROAttribution.min_pair_count` = 25 items) and ``aro-coco-order``
  (``mteb/ARO-COCO-order``: original caption against 4 word-order perturbations, accuracy, chance
  0.2). Flickr30k-Order (``gowitheflow/ARO-Flickr-Order``) is not included.
* **Winoground** (Thrush et al., CVPR 2022; ``facebook/winoground``, gated): text, image and group
  scores (chance 0.25 / 0.25 / 1/6).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from harness.data.sources import DataError, HubSource, fingerprint, load_table

from .base import DatasetTask, EvalContext, Suite
from .compositionality import TIES, caption_scores

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


def winoground_scores(sim: torch.Tensor) -> dict[str, torch.Tensor]:
    """Winoground's per-example scores (Thrush et al. 2022, Sec. 3) from ``sim`` of shape
    (N, 2, 2) with ``sim[n, c, i] = s(caption_c, image_i)``:

    * text:  ``s(c0,i0) > s(c1,i0)`` and ``s(c1,i1) > s(c0,i1)`` (each image prefers its caption),
    * image: ``s(c0,i0) > s(c0,i1)`` and ``s(c1,i1) > s(c1,i0)`` (each caption prefers its image),
    * group: both. Strict comparisons: a tie fails.
    """
    s00, s01, s10, s11 = sim[:, 0, 0], sim[:, 0, 1], sim[:, 1, 0], sim[:, 1, 1]
    text = (s00 > s10) & (s11 > s01)
    image = (s00 > s01) & (s11 > s10)
    return {"text": text, "image": image, "group": text & image}


def sugarcrepe_captions(table) -> tuple[list[str], list[str]]:
    """(positive, negative) caption of every row of a ``HuggingFaceM4/SugarCrepe_*`` table.

    The HF push script builds ``tested_labels = [caption, negative_caption]`` and
    ``true_label = ClassLabel(names=<all captions>)`` encoding the caption; the positive is
    ``int2str(true_label)`` and the negative the other element of ``tested_labels``."""
    decode = _true_label_decoder(table)
    pos, neg = [], []
    for i, (labels, t) in enumerate(zip(table["tested_labels"], table["true_label"])):
        labels = [str(x) for x in labels]
        true = decode(t)
        if len(labels) != 2 or true not in labels:
            raise DataError(
                f"SugarCrepe row {i}: tested_labels must hold the true caption {true!r} and one "
                f"negative, got {labels!r}"
            )
        others = [x for j, x in enumerate(labels) if j != labels.index(true)]
        pos.append(true)
        neg.append(others[0])
    return pos, neg


def _true_label_decoder(table):
    import datasets

    feature = table.features.get("true_label")
    if isinstance(feature, datasets.ClassLabel):
        return lambda v: feature.int2str(int(v))
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return str
    raise DataError(
        f"SugarCrepe column 'true_label' must be a ClassLabel whose names are the captions (as in "
        f"HuggingFaceM4/SugarCrepe_*) or the caption text; found {feature!r}. Keep the dataset's "
        "features when copying it (parquet files written by `datasets` carry them)."
    )


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


class _CaptionChoice(DatasetTask):
    """One image against its true caption and k negatives; shared by SugarCrepe and ARO. :meth:`score`
    reads the pairs of :meth:`captions` and reports ``acc`` (the true caption strictly above every
    negative), ``n_undecodable`` and ``n_ties``."""

    #: image-text tasks on real photographs train on COCO captions by default (--train-data overrides)
    default_train_data = "coco"

    family: ClassVar[str] = "compositionality"
    modality: ClassVar[str] = "image-text"
    version: ClassVar[str] = "1"
    main_score = "acc"
    metrics = ("acc", "n_undecodable", "n_ties")
    validation_split: ClassVar[str | None] = None
    image_column: ClassVar[str] = "image"

    def captions(self, table) -> tuple[list[str], list[list[str]]]:
        """The true caption and the negatives of every row."""
        raise NotImplementedError

    def score(self, ctx: EvalContext, split: str):
        table = self.table(ctx, split)
        true, negatives = self.captions(table)
        rows, correct, scores, bad, ties = self._choose(ctx, table, true, negatives)
        metrics = {"acc": float(correct.mean()), "n_undecodable": float(bad), "n_ties": float(ties)}
        return metrics, dict(
            predictions=self._predictions(rows, true, negatives, scores, correct),
            item_scores=correct.astype(float).tolist(),
            n_items=len(rows),
            protocol={"ties": TIES},
            **self.provenance(table),
        )

    def _choose(self, ctx: EvalContext, table, true: list[str], negatives: list[list[str]], crop=None):
        """Scores (true caption first), strict correctness and the number of tied items (the true
        caption equal to its best negative: correct under an argmax, wrong here) of the items whose
        image decoded. True and negative captions are embedded in one call, so a negative equal to
        its true caption gets the same embedding and score."""
        column = self.images(ctx, table, self.image_column, crop=crop)
        img, ok = self.image_embeddings(ctx, column, table)
        n, k = len(true), len(negatives[0]) if negatives else 0
        texts = list(true) + [c for row in negatives for c in row]
        emb = self.text_embeddings(ctx, table, "true+negatives", texts)
        rows = torch.nonzero(ok).flatten()
        if len(rows) == 0:
            raise DataError(f"task {self.name!r}: none of the {n} images could be decoded")
        candidates = torch.cat([emb[:n, None], emb[n:].view(n, k, -1)], dim=1)[rows]
        scores = caption_scores(img[rows], candidates)
        correct = (scores[:, :1] > scores[:, 1:]).all(dim=1)
        ties = int((scores[:, 0] == scores[:, 1:].max(dim=1).values).sum())
        return rows.tolist(), correct.numpy(), scores.numpy(), int(n - len(rows)), ties

    @staticmethod
    def _predictions(rows, true, negatives, scores, correct, **extra) -> list[dict[str, Any]]:
        return [
            {
                "item": r,
                "caption": true[r],
                "negatives": list(negatives[r]),
                "scores": [float(s) for s in scores[j]],
                "correct": bool(correct[j]),
                **{k: v[r] for k, v in extra.items()},
            }
            for j, r in enumerate(rows)
        ]


class SugarCrepe(_CaptionChoice):
    """SugarCrepe (Hsieh et al. 2023): a COCO val2017 image, its caption and one ChatGPT-generated,
    human-validated hard negative (``main_eval.py``: correct iff ``cos(image, pos) > cos(image, neg)``).
    Metric ``acc`` (chance 0.5); ``n_undecodable``. Predictions: per item the two captions, their
    scores and correctness; item scores: 0/1 correctness (mean = ``acc``)."""

    category: ClassVar[str] = ""
    columns = ("image", "tested_labels", "true_label")
    license = (
        "SugarCrepe annotations MIT; images COCO val2017 (COCO annotations CC BY 4.0, "
        "images under the Flickr terms of use)"
    )
    citation = (
        "Hsieh et al., SugarCrepe: Fixing Hackable Benchmarks for Vision-Language "
        "Compositionality, NeurIPS 2023 Datasets and Benchmarks (arXiv 2306.14610)"
    )

    def check_data(self, options) -> None:
        table = load_table(self.name, self.source, options, self.columns)
        _true_label_decoder(table)

    def captions(self, table):
        pos, neg = sugarcrepe_captions(table)
        return pos, [[c] for c in neg]


def _sugarcrepe(category: str) -> type[SugarCrepe]:
    """The class of one SugarCrepe category, named ``SugarCrepe<Category>`` in this module (its entry
    point names the task ``sugarcrepe-<category>`` when the class is defined)."""
    name = "SugarCrepe" + category.title().replace("_", "")
    source = HubSource(f"HuggingFaceM4/SugarCrepe_{category}", split="test")
    return type(SugarCrepe)(
        name,
        (SugarCrepe,),
        {
            "__module__": __name__,
            "__qualname__": name,
            "category": category,
            "source": source,
            "dataset": source.repo,
            "__doc__": f"SugarCrepe ``{category}``. " + SugarCrepe.__doc__,
        },
    )


SugarCrepeAddObj = _sugarcrepe("add_obj")
SugarCrepeAddAtt = _sugarcrepe("add_att")
SugarCrepeReplaceObj = _sugarcrepe("replace_obj")
SugarCrepeReplaceAtt = _sugarcrepe("replace_att")
SugarCrepeReplaceRel = _sugarcrepe("replace_rel")
SugarCrepeSwapObj = _sugarcrepe("swap_obj")
SugarCrepeSwapAtt = _sugarcrepe("swap_att")


class SugarCrepeSuite(Suite):
    """All seven SugarCrepe categories (Hsieh et al. 2023): add / replace / swap of objects,
    attributes and relations."""

    default_train_data = "coco"
    dataset = "HuggingFaceM4/SugarCrepe_*"
    members = (
        "sugarcrepe-add-obj",
        "sugarcrepe-add-att",
        "sugarcrepe-replace-obj",
        "sugarcrepe-replace-att",
        "sugarcrepe-replace-rel",
        "sugarcrepe-swap-obj",
        "sugarcrepe-swap-att",
    )


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


class Winoground(DatasetTask):
    """Winoground (Thrush et al., CVPR 2022): 400 examples of two images and two captions with the
    same words in a different order. With ``s(c, i)`` the cosine similarity, per example:
    text score ``s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1)``, image score
    ``s(c0,i0) > s(c0,i1) and s(c1,i1) > s(c1,i0)``, group score both (:func:`winoground_scores`).

    Metrics: ``text_score``, ``image_score``, ``group_score`` (fractions; chance 0.25, 0.25, 1/6;
    CLIP ViT-B/32: 0.3075 / 0.105 / 0.08), and the three per ``collapsed_tag`` (Object, Relation,
    Both) when the table has that column; ``n_undecodable`` counts examples dropped because either
    image failed; ``n_ties`` the examples with an exactly tied comparison (wrong, as every tie).
    Main score ``group_score``; item scores: 0/1 group correctness.

    The dataset is gated: accept its terms on the Hub (images licensed from Getty Images, research
    use only) and log in, or download it where you can and pass ``--data winoground=DIR``."""

    #: image-text tasks on real photographs train on COCO captions by default (--train-data overrides)
    default_train_data = "coco"

    source = HubSource("facebook/winoground", split="test", gated=True)
    dataset = source.repo
    columns = ("image_0", "image_1", "caption_0", "caption_1")
    validation_split = None
    family = "compositionality"
    modality = "image-text"
    version = "1"
    main_score = "group_score"
    metrics = (
        "{kind:text|image|group}_score",
        "n_undecodable",
        "n_ties",
        "{kind:text|image|group}_score/{tag:.+}",
    )
    license = (
        "gated (accept the terms on the Hugging Face Hub); images Getty Images licence, research use only"
    )
    citation = (
        "Thrush et al., Winoground: Probing Vision and Language Models for Visio-Linguistic "
        "Compositionality, CVPR 2022"
    )

    def score(self, ctx: EvalContext, split: str):
        table = self.table(ctx, split)
        caps = [[str(x) for x in table["caption_0"]], [str(x) for x in table["caption_1"]]]
        n = len(table)
        # both images of every example in one encoder call, and both captions in one: equal inputs
        # then get bit-identical embeddings, so a tie between them is exact
        images = self.images(ctx, self._both_images(table), "image_0")
        emb = ctx.cache.get(
            (id(ctx.encoder), fingerprint(table), "image_0+image_1", "image"),
            lambda: ctx.encoder.encode_image(images),
        )
        ok = ~torch.isnan(emb).any(dim=1)
        texts = self.text_embeddings(ctx, table, "caption_0+caption_1", caps[0] + caps[1])
        rows = torch.nonzero(ok[:n] & ok[n:]).flatten()
        if len(rows) == 0:
            raise DataError(f"task {self.name!r}: no example has two decodable images")
        cap = torch.stack([texts[:n][rows], texts[n:][rows]], dim=1)  # (N, caption, d)
        sim = torch.stack([caption_scores(emb[:n][rows], cap), caption_scores(emb[n:][rows], cap)], dim=2)
        ok = {k: v.numpy() for k, v in winoground_scores(sim).items()}
        metrics = {f"{k}_score": float(v.mean()) for k, v in ok.items()}
        metrics["n_undecodable"] = float(n - len(rows))
        s00, s01, s10, s11 = sim[:, 0, 0], sim[:, 0, 1], sim[:, 1, 0], sim[:, 1, 1]
        metrics["n_ties"] = float(((s00 == s10) | (s11 == s01) | (s00 == s01) | (s11 == s10)).sum())
        rows = rows.tolist()
        if "collapsed_tag" in table.column_names:
            column = [str(t) for t in table["collapsed_tag"]]
            tags = np.array([column[r] for r in rows], dtype=object)
            for tag in sorted(set(tags)):
                for k, v in ok.items():
                    metrics[f"{k}_score/{tag}"] = float(v[tags == tag].mean())
        ids = list(table["id"]) if "id" in table.column_names else list(range(len(table)))
        preds = [
            {
                "item": r,
                "id": ids[r],
                "caption_0": caps[0][r],
                "caption_1": caps[1][r],
                "scores": sim[j].tolist(),
                "text": bool(ok["text"][j]),
                "image": bool(ok["image"][j]),
                "group": bool(ok["group"][j]),
                "correct": bool(ok["group"][j]),
            }
            for j, r in enumerate(rows)
        ]
        return metrics, dict(
            predictions=preds,
            item_scores=ok["group"].astype(float).tolist(),
            n_items=len(rows),
            protocol={"ties": TIES},
            **self.provenance(table),
        )

    @staticmethod
    def _both_images(table):
        """A one-column table: every ``image_0``, then every ``image_1`` (as column ``image_0``)."""
        import datasets

        second = table.select_columns(["image_1"]).rename_column("image_1", "image_0")
        return datasets.concatenate_datasets([table.select_columns(["image_0"]), second])
