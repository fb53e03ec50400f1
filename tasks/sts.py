"""Semantic textual similarity on shapes-world captions (SimCSE / MTEB protocol: cosine vs gold)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr

from harness.data.shapes import COLOUR_NAMES, RELATIONS, SHAPES, SIZES

from .base import EvalContext, ShapesTask


def sts_metrics(emb1, emb2, gold) -> dict[str, float]:
    """``spearman`` and ``pearson`` (x100, as SimCSE reports them) of the pairwise cosine similarity
    of ``emb1[i]`` and ``emb2[i]`` against the gold scores (MTEB's ``cosine_spearman`` /
    ``cosine_pearson``). A correlation that is undefined (constant similarities or gold) is 0.
    """
    e1 = F.normalize(torch.as_tensor(emb1, dtype=torch.float64), dim=-1)
    e2 = F.normalize(torch.as_tensor(emb2, dtype=torch.float64), dim=-1)
    cos = (e1 * e2).sum(-1).numpy()
    gold = np.asarray(gold, dtype=np.float64)
    if len(cos) != len(gold):
        raise ValueError(f"{len(cos)} similarity scores but {len(gold)} gold scores")

    def corr(fn) -> float:
        if len(gold) < 2 or np.ptp(cos) == 0 or np.ptp(gold) == 0:
            return 0.0
        return 100.0 * float(fn(cos, gold)[0])

    return {"spearman": corr(spearmanr), "pearson": corr(pearsonr)}


# ----------------------------------------------------------------------------- gold similarity


@dataclass(frozen=True)
class Description:
    """The facts of one caption: its objects in canonical order (left/top first) and, for a pair,
    the axis of the relation (0 horizontal, 1 vertical). An object is a dict attribute -> word
    holding only the attributes the caption mentions."""

    objects: tuple[dict, ...]
    axis: int | None

    @property
    def n_facts(self) -> int:
        return sum(len(o) for o in self.objects) + (self.axis is not None)


_RELATION_WORDS = {
    r: (i // 2, i % 2 == 0) for i, r in enumerate(RELATIONS)
}  # word -> (axis, first is left/top)


def _parse_object(words: list[str]) -> dict:
    if not words or words[0] not in ("a", "an", "the"):
        raise ValueError(f"not an object phrase: {' '.join(words)!r}")
    obj: dict = {}
    for w in words[1:]:
        key = "size" if w in SIZES else "colour" if w in COLOUR_NAMES else "shape" if w in SHAPES else None
        if key is None or key in obj:
            raise ValueError(f"unexpected word {w!r} in object phrase {' '.join(words)!r}")
        obj[key] = w
    if "shape" not in obj:
        raise ValueError(f"object phrase without a shape: {' '.join(words)!r}")
    return obj


def parse_caption(caption: str) -> Description:
    """Parse a caption of the shapes grammar (``a [size] [colour] shape [relation a ...]``)."""
    text = f" {caption.strip().lower()} "
    for rel, (axis, first_is_lt) in _RELATION_WORDS.items():
        if f" {rel} " in text:
            left, right = text.split(f" {rel} ", 1)
            a, b = _parse_object(left.split()), _parse_object(right.split())
            return Description((a, b) if first_is_lt else (b, a), axis)
    return Description((_parse_object(text.split()),), None)


def gold_similarity(a: str | Description, b: str | Description) -> float:
    """Gold similarity in [0, 5]: the share of facts two captions agree on, times 5.

    The facts of a caption are each mentioned attribute (size, colour, shape) of each object, plus,
    for a two-object caption, its relation. Objects of ``a`` are matched one-to-one with objects of
    ``b`` by the matching that agrees on the most facts; an attribute agrees when both matched
    objects mention it with the same word; the relation agrees when both captions have two objects
    with the same axis and the match keeps the positions (left/top with left/top), i.e. both say
    the same object is left of (above) the same other object. Then

        gold = 5 * max_matching(agreeing facts) / max(n_facts(a), n_facts(b)).

    So a paraphrase (same scene, other mention order, or "the" for "a") is 5; the hard negatives
    of a two-object caption with sizes score 5 * 6/7 (relation swap: same objects, relation
    reversed; object replacement: one shape differs) or 5 * 5/7 (attribute swap: the colours of
    the two objects exchanged); a single object against a pair at most 5 * 3/7.
    """
    a = parse_caption(a) if isinstance(a, str) else a
    b = parse_caption(b) if isinstance(b, str) else b
    small, large = (a, b) if len(a.objects) <= len(b.objects) else (b, a)
    best = 0
    for match in permutations(range(len(large.objects)), len(small.objects)):
        agree = sum(
            sum(1 for k, v in small.objects[i].items() if large.objects[j].get(k) == v)
            for i, j in enumerate(match)
        )
        if small.axis is not None and small.axis == large.axis and tuple(match) == (0, 1):
            agree += 1
        best = max(best, agree)
    denom = max(a.n_facts, b.n_facts)
    return 5.0 * best / denom if denom else 5.0


def sts_pairs(sp, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic pairs over a split: for every scene i, its complete caption paired with
    (1) its alternative phrasing (``paraphrase``), (2) one of its three hard negatives, drawn at
    random (``negative``), and (3) the complete caption of a random other scene (``random``).

    Returns index arrays: ``left`` (scene of the first caption, always a complete caption),
    ``kind`` (0 paraphrase, 1 negative, 2 random), ``right`` (the scene / the negative slot /
    the other scene), and ``gold``.
    """
    n = len(sp)
    rng = np.random.default_rng([seed, 2718])
    neg_slot = rng.integers(0, sp.negatives.shape[1], n)
    other = (np.arange(n) + 1 + rng.integers(0, max(n - 1, 1), n)) % n
    left = np.tile(np.arange(n), 3)
    kind = np.repeat(np.arange(3), n)
    right = np.concatenate([np.arange(n), neg_slot, other])
    full = [parse_caption(c) for c in sp.full_captions]
    gold = np.array(
        [
            gold_similarity(full[i], full[r] if kd == 2 else pair_text(sp, i, kd, r))
            for i, kd, r in zip(left, kind, right)
        ]
    )
    return {"left": left, "kind": kind, "right": right, "gold": gold}


def pair_text(sp, i: int, kind: int, right: int) -> str:
    """The second caption of a pair built by :func:`sts_pairs`."""
    if kind == 0:
        return str(sp.alt_captions[i])
    if kind == 1:
        return str(sp.negatives[i, right])
    return str(sp.full_captions[right])


KINDS = ("paraphrase", "negative", "random")


class ShapesSTS(ShapesTask):
    """Graded caption similarity on the ``test`` split, evaluated like SimCSE / MTEB STS.

    Pairs (:func:`sts_pairs`, 3 per scene): each complete caption with its alternative phrasing,
    with one of its hard negatives, and with a random other caption. Gold scores in [0, 5] from
    shared facts (:func:`gold_similarity`). Metrics: Spearman and Pearson correlation (x100) of the
    cosine similarity of the two text embeddings against the gold, over all pairs pooled
    (SentEval's "all" setting); main score ``spearman``. Also the mean cosine per pair kind
    (``{kind}/mean_cosine``) and the mean gold per kind.
    """

    family = "sts"
    version = "1"
    main_score = "spearman"
    metrics = ("spearman", "pearson", "{kind:" + "|".join(KINDS) + "}/{stat:mean_cosine|mean_gold}")
    citation = (
        "Gao et al. 2021 (SimCSE) STS protocol; Muennighoff et al. 2023 (MTEB) STS evaluator; "
        "Cer et al. 2017 (STS-B 0-5 scale)"
    )
    modality = "text"
    seed = 0

    def score(self, ctx: EvalContext, split: str):
        sp = ctx.world.split(split)
        n, k = sp.negatives.shape
        full = self.text_embeddings(ctx, split, "captions", sp.full_captions)
        alt = self.text_embeddings(ctx, split, "alt_captions", sp.alt_captions)
        neg = self.text_embeddings(ctx, split, "negatives", sp.negatives.reshape(-1)).view(n, k, -1)
        pairs = sts_pairs(sp, self.seed)
        left, kind, right, gold = pairs["left"], pairs["kind"], pairs["right"], pairs["gold"]
        e1 = full[torch.from_numpy(left)]
        e2 = torch.empty_like(e1)
        for kd, table in ((0, alt), (2, full)):
            sel = kind == kd
            e2[torch.from_numpy(sel)] = table[torch.from_numpy(right[sel])]
        sel = kind == 1
        e2[torch.from_numpy(sel)] = neg[torch.from_numpy(left[sel]), torch.from_numpy(right[sel])]
        metrics = sts_metrics(e1, e2, gold)
        cos = (F.normalize(e1.double(), dim=-1) * F.normalize(e2.double(), dim=-1)).sum(-1).numpy()
        for kd, name in enumerate(KINDS):
            metrics[f"{name}/mean_cosine"] = float(cos[kind == kd].mean())
            metrics[f"{name}/mean_gold"] = float(gold[kind == kd].mean())

        def kind_name(p: int) -> str:
            return f"negative:{sp.negative_types[left[p], right[p]]}" if kind[p] == 1 else KINDS[kind[p]]

        preds = [
            {
                "pair": p,
                "kind": kind_name(p),
                "text1": str(sp.full_captions[left[p]]),
                "text2": pair_text(sp, left[p], kind[p], right[p]),
                "gold": float(gold[p]),
                "cosine": float(cos[p]),
            }
            for p in range(len(gold))
        ]
        return metrics, dict(predictions=preds, n_items=len(gold), **self.provenance(ctx, split))
