"""Winoground on real data (see :mod:`tasks.compositionality_real` for the scoring and tie
conventions it shares with SugarCrepe and ARO):

* **Winoground** (Thrush et al., CVPR 2022; ``facebook/winoground``, gated): text, image and group
  scores (chance 0.25 / 0.25 / 1/6).
"""

from __future__ import annotations

import numpy as np
import torch

from harness.data.sources import DataError, HubSource, fingerprint

from .base import DatasetTask, EvalContext
from .compositionality import TIES, caption_scores

# ------------------------------------------------------------------------------ metric helpers


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


# ------------------------------------------------------------------------------------ tasks


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
