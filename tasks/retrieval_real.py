"""Zero-shot image-text retrieval on real data: COCO 5k (Karpathy test) and Flickr30k 1k.

Definitions follow LAION-AI/CLIP_benchmark ``metrics/zeroshot_retrieval.py`` (Radford et al.
2021, CLIP, Sec. 3.1.5 / Table 13): cosine similarity of the normalised embeddings, every caption a
text->image query with its image as the one positive (``image_retrieval_recall@k``), every image an
image->text query that hits when ANY of its captions is in the top k (``text_retrieval_recall@k``,
the "CLIP paper" recall), plus mean / median rank of the first positive, ``mean_recall@k`` (mean of
both directions) and ``rsum``. R@1, R@5 and R@10 are reported; the main score is
``mean_recall@5`` (CLIP_benchmark's default ``--recall_k 5``). Ranks are computed in bounded
memory (:func:`tasks.retrieval.retrieval_ranks`: row chunks, ranks counted rather than sorted; ties
go to the lower index as with a stable sort), so the 5,000 x 25,000 COCO matrix is never built.

Data layouts read (the same code path for Hub and local data, :func:`harness.data.sources.load_table`):

* the ``nlphuji`` sets on the Hub, through their parquet conversion (``refs/convert/parquet``;
  their loading scripts are refused by ``datasets>=4``): ``TEST/test/*.parquet`` with ``image``
  (an ``Image`` feature) and ``caption`` (a list of 5 strings) plus the Karpathy fields (``imgid``,
  ``sentids``, ``filename``, ``split`` ...). The full ``nlphuji/flickr30k`` (31,014 rows, one
  ``test`` split holding all of Karpathy's splits in a ``split`` column) is read too: when a table
  has a ``split`` column only its ``test`` rows are evaluated;
* CLIP_benchmark's webdatasets (``clip-benchmark/wds_mscoco_captions``, ``wds_flickr30k``):
  ``.tar`` shards with a ``jpg`` (or ``webp`` / ``png``) image and a ``txt`` of newline-separated
  captions per sample.

The number of captions per image may vary (COCO has images with 6 or 7); an image without any
caption cannot be an image->text query and is left out (``n_without_captions``). An image that
does not decode is left out with its captions (``n_undecodable``), or raises under
``--strict-images``.

Validation (tuning, checkpoint selection) never reads test rows: ``coco-retrieval`` refuses (the
5k set is the Karpathy test split only); ``flickr30k-retrieval`` evaluates the ``val`` rows of a
table with a ``split`` column (the full ``nlphuji/flickr30k`` layout, given locally) and refuses
for the 1k test set and the webdataset layout.

Per-item scores (for paired bootstrap over images): image i with n_i captions gets
``0.5 * hit_i2t@5(i) + 0.5 * (n_i * N_images / N_captions) * mean_c hit_t2i@5(c)``, i.e. half its own
image->text hit plus half its captions' text->image hits weighted by its share of the captions.
Their mean is exactly ``mean_recall@5`` for any caption counts; with the same number of captions
per image (the nlphuji sets: 5) the weight is 1 and the item is the plain average of its image's
hit and its captions' mean hit.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import torch

from harness.data.sources import DataError, DataOptions, HubSource, MissingColumnsError, load_table

from .base import DatasetTask, EvalContext
from .retrieval import RETRIEVAL_METRICS, retrieval_metrics

#: image columns: the nlphuji ``Image`` feature, then CLIP_benchmark webdataset fields
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "webp", "png")
#: caption columns: nlphuji's list of captions, CLIP_benchmark's newline-separated text
CAPTION_COLUMNS = ("caption", "txt")
LAYOUTS = (
    "'image' + 'caption' (list of captions; nlphuji parquet) or 'jpg'/'webp'/'png' + 'txt' "
    "(newline-separated captions; CLIP_benchmark webdataset)"
)


def caption_layout(table, what: str) -> tuple[str, str]:
    """(image column, caption column) of a retrieval table, or :class:`MissingColumnsError` naming
    the columns of both accepted layouts and those found."""
    found = list(table.column_names)
    image = next((c for c in IMAGE_COLUMNS if c in found), None)
    caption = next((c for c in CAPTION_COLUMNS if c in found), None)
    if image is None or caption is None:
        lacking = [x for x, c in (("an image column", image), ("a caption column", caption)) if c is None]
        raise MissingColumnsError(
            f"dataset {what} lacks {' and '.join(lacking)}: expected {LAYOUTS}; "
            f"found {', '.join(found) or '(none)'}"
        )
    return image, caption


def parse_captions(value: Any, column: str) -> list[str]:
    """The captions of one row: a list (nlphuji ``caption``), or a string of newline-separated
    captions (webdataset ``txt``; also a JSON-encoded list, as in the nlphuji CSV files). Blank
    captions are dropped."""
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        text = value.strip()
        if column != "txt" and text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                return [str(c).strip() for c in parsed if str(c).strip()]
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [str(c).strip() for c in value if c is not None and str(c).strip()]


def _column(table, name: str) -> list:
    """One column as Python values, without decoding the other (image) columns."""
    return list(table.select_columns([name])[name])


def retrieval_item_scores(
    t2i: torch.Tensor, i2t: torch.Tensor, text_to_image: torch.Tensor, k: int = 5
) -> list[float]:
    """Per image: ``0.5 * hit_i2t + 0.5 * (n_i * N_images / N_texts) * mean hit_t2i`` over its
    captions (see the module docstring); the mean over images is ``mean_recall@k`` exactly."""
    n_img, n_txt = len(i2t), len(t2i)
    hits = torch.zeros(n_img, dtype=torch.float64).index_add_(0, text_to_image, (t2i <= k).double())
    # (n_i * N_img / N_txt) * (hits_i / n_i) = hits_i * N_img / N_txt
    items = 0.5 * (i2t <= k).double() + 0.5 * hits * n_img / n_txt
    return items.tolist()


class _CaptionRetrieval(DatasetTask):
    """Shared by the COCO and Flickr30k retrieval tasks (see the module docstring)."""

    family: ClassVar[str] = "retrieval"
    version: ClassVar[str] = "1"
    main_score: ClassVar[str] = "mean_recall@5"
    metrics = RETRIEVAL_METRICS + ("n_images", "n_captions", "n_undecodable", "n_without_captions")
    modality: ClassVar[str] = "image-text"
    citation: ClassVar[str] = (
        "Radford et al. 2021 (CLIP), zero-shot retrieval; metrics as "
        "LAION-AI/CLIP_benchmark zeroshot_retrieval; Karpathy & Fei-Fei 2015 splits"
    )
    ks: ClassVar[tuple[int, ...]] = (1, 5, 10)
    #: rows of score matrix per step of the rank computation
    chunk: ClassVar[int] = 512

    def check_data(self, options: DataOptions) -> None:
        table = load_table(self.name, self.source, options)
        caption_layout(table, self.where(table))

    def _rows(self, ctx: EvalContext, table, want: str) -> list[int] | None:
        """Rows to evaluate: the ``want`` rows (``test``, or ``val`` under validation) of a table with
        a ``split`` column; all rows otherwise (validation then refuses)."""
        if "split" not in table.column_names:
            if ctx.validation:
                raise ValueError(
                    f"task {self.name!r} has no validation split in this layout: validation mode needs a "
                    f"table with a 'split' column holding '{want}' rows (the full nlphuji/flickr30k layout); "
                    "the 1k test set and the webdataset shards hold test images only"
                )
            return None
        values = [str(v) for v in _column(table, "split")]
        rows = [i for i, v in enumerate(values) if v == want]
        if not rows:
            kind = DataError if not ctx.validation else ValueError
            raise kind(
                f"task {self.name!r}: the table's 'split' column has no {want!r} rows "
                f"(values: {', '.join(sorted(set(values))[:8])})"
            )
        return rows

    def score(self, ctx: EvalContext, split: str):
        table = load_table(self.name, self.source, ctx.data, split=self.source.split)
        image_col, caption_col = caption_layout(table, self.where(table))
        rows = self._rows(ctx, table, split)
        all_captions = _column(table, caption_col)
        rows = list(range(len(table))) if rows is None else rows
        captions = {r: parse_captions(all_captions[r], caption_col) for r in rows}
        kept = [r for r in rows if captions[r]]
        if not kept:
            raise DataError(f"task {self.name!r}: none of the {len(rows)} images has a caption")

        column = self.images(ctx, table, image_col, rows=kept)
        img, ok = self.image_embeddings(ctx, column, table)
        texts = [c for r in kept for c in captions[r]]
        owner = torch.tensor([i for i, r in enumerate(kept) for _ in captions[r]], dtype=torch.long)
        txt = self.text_embeddings(ctx, table, caption_col, texts)
        if not bool(ok.any()):
            raise DataError(f"task {self.name!r}: none of the {len(kept)} images could be decoded")
        new_index = torch.cumsum(ok.long(), 0) - 1  # position among the decodable images
        keep_txt = ok[owner]
        text_to_image = new_index[owner[keep_txt]]
        img, txt = img[ok], txt[keep_txt]

        metrics, t2i, i2t = retrieval_metrics(img, txt, text_to_image, ks=self.ks, chunk=self.chunk)
        metrics.update(
            n_images=float(len(img)),
            n_captions=float(len(txt)),
            n_undecodable=float((~ok).sum()),
            n_without_captions=float(len(rows) - len(kept)),
        )

        image_rows = [r for r, good in zip(kept, ok.tolist()) if good]
        kept_texts = [t for t, good in zip(texts, keep_txt.tolist()) if good]
        preds: list[dict[str, Any]] = [
            {"kind": "image", "item": i, "row": r, "i2t_rank": int(i2t[i])} for i, r in enumerate(image_rows)
        ]
        preds += [
            {
                "kind": "caption",
                "item": j,
                "image": int(text_to_image[j]),
                "caption": kept_texts[j],
                "t2i_rank": int(t2i[j]),
            }
            for j in range(len(kept_texts))
        ]
        items = retrieval_item_scores(t2i, i2t, text_to_image, k=5)
        return metrics, dict(predictions=preds, item_scores=items, n_items=len(img), **self.provenance(table))


class CocoRetrieval(_CaptionRetrieval):
    """MS-COCO 2014 Karpathy 5k test: 5,000 images, 25,000 captions (Lin et al. 2014; Karpathy &
    Fei-Fei 2015), as ``nlphuji/mscoco_2014_5k_test_image_text_retrieval`` (parquet conversion) or
    CLIP_benchmark's ``clip-benchmark/wds_mscoco_captions`` given locally. No validation split."""

    source = HubSource(
        "nlphuji/mscoco_2014_5k_test_image_text_retrieval",
        config="TEST",
        split="test",
        revision="refs/convert/parquet",
        data_files="TEST/test/*.parquet",
    )
    dataset = "nlphuji/mscoco_2014_5k_test_image_text_retrieval"
    validation_split = None
    default_train_data = "coco"
    license = "CC BY 4.0 annotations; images under Flickr terms (COCO)"


class Flickr30kRetrieval(_CaptionRetrieval):
    """Flickr30k Karpathy 1k test: 1,000 images, 5,000 captions (Young et al. 2014; Karpathy &
    Fei-Fei 2015), as ``nlphuji/flickr_1k_test_image_text_retrieval`` (parquet conversion), the full
    ``nlphuji/flickr30k`` with its ``split`` column (test rows; ``val`` rows under validation) or
    CLIP_benchmark's ``clip-benchmark/wds_flickr30k`` given locally."""

    source = HubSource(
        "nlphuji/flickr_1k_test_image_text_retrieval",
        config="TEST",
        split="test",
        revision="refs/convert/parquet",
        data_files="TEST/test/*.parquet",
    )
    dataset = "nlphuji/flickr_1k_test_image_text_retrieval"
    #: the ``split`` column value read under validation (full ``nlphuji/flickr30k`` layout only)
    validation_split = "val"
    default_train_data = "flickr30k"
    license = "Flickr terms of use (images, non-commercial research); annotations per Young et al. 2014"
