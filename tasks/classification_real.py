"""Zero-shot classification on real image datasets, and the base its linear probes share: CIFAR-10,
CIFAR-100 and ImageNet-1k (CLIP_benchmark's definitions, LAION-AI/CLIP_benchmark; Radford et al. 2021, CLIP).

Zero-shot (``cifar10-zeroshot``, ``cifar100-zeroshot``, ``imagenet-zeroshot``), as CLIP_benchmark's
``metrics/zeroshot_classification.py``: per class the re-normalised mean of the normalised prompt
embeddings over the templates (:func:`tasks.zeroshot.zeroshot_classifier`), ``logits = 100 * image
@ W``; metrics ``acc1``, ``acc5`` (with at least 5 classes) and ``mean_per_class_recall``
(sklearn's balanced accuracy), :func:`tasks.zeroshot.classification_metrics`. Class names and
templates: :mod:`tasks.classnames`; each result records which in ``protocol`` (docs/zero-shot.md).
``wds-zeroshot`` evaluates any CLIP_benchmark zero-shot webdataset with its own ``classnames.txt``
and ``zeroshot_classification_templates.txt`` (``--data wds-zeroshot=DIR``); ``imagenet-zeroshot``
uses them too when its webdataset has them. Labels outside the class names are refused before
training (:meth:`RealClassification.labels`).

Linear probes (``cifar10-linear``, ``cifar100-linear`` and the ``-cb`` variants) are in
:mod:`tasks.linear_real`; they share :class:`RealClassification` and the CIFAR declarations.

Validation (tuning, checkpoint selection): CIFAR has no validation split, so a seeded held-out part
of ``train`` (:meth:`RealClassification.holdout`, the same rows for the zero-shot and the probe
tasks) stands in for it and the test split is never read. ImageNet's webdataset
(``clip-benchmark/wds_imagenet1k``) is read for its ``test`` split only: the task refuses
validation mode.

Images that do not decode are skipped and counted (``n_undecodable``), or raise under
``strict_images``. Image embeddings go through the shared cache under a key that names the dataset
and split (not the task), so ``cifar10-zeroshot`` and ``cifar10-linear`` encode the test split once.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np
import torch

from harness.data.sources import (
    DataError,
    DataOptions,
    DatasetUnavailableError,
    HubSource,
    MissingColumnsError,
    load_table,
)

from .base import DatasetTask, EvalContext
from .classnames import (
    CIFAR10_CLASSNAMES,
    CIFAR100_CLASSNAMES,
    CIFAR100_TORCHVISION_CLASSNAMES,
    CIFAR_TEMPLATES,
    WDS_CLASSNAMES,
    WDS_TEMPLATES,
    imagenet_classnames,
    imagenet_templates,
    read_wds_metadata,
    same_classes,
)
from .zeroshot import CLASSIFICATION_METRICS, classification_metrics, zeroshot_classifier

# Revisions: the Hub's main-branch commits of these repositories are known here only by short hash
# (uoft-cs/cifar10 0b27149 and uoft-cs/cifar100 aadb3af, "Convert dataset to Parquet"); datasets
# needs a full hash, so they stay unpinned (revision None = main) until someone with Hub access pins them.
CIFAR10_SOURCE = HubSource("uoft-cs/cifar10", split="test")
CIFAR100_SOURCE = HubSource("uoft-cs/cifar100", split="test")
IMAGENET_SOURCE = HubSource("clip-benchmark/wds_imagenet1k", split="test")

CIFAR_LICENSE = (
    "unknown (no formal license; Krizhevsky 2009, 'Learning Multiple Layers of Features "
    "from Tiny Images', tech. report; use for research)"
)
CIFAR_CITATION = (
    "Krizhevsky 2009 (CIFAR); CLIP_benchmark (LAION-AI/CLIP_benchmark) zero-shot / linear "
    "probe; Radford et al. 2021 (CLIP) prompts"
)
IMAGENET_LICENSE = (
    "ImageNet terms of access: non-commercial research and educational use only "
    "(image-net.org; ILSVRC/imagenet-1k is gated on the Hub)"
)
IMAGENET_CITATION = (
    "Russakovsky et al. 2015 (ILSVRC 2012); CLIP_benchmark (LAION-AI/CLIP_benchmark) "
    "wds_imagenet1k; Radford et al. 2021 (CLIP) 80 prompts via open_clip"
)


class RealClassification(DatasetTask):
    """Shared by the real-data classification tasks: column detection, labels, the validation
    hold-out of the train split, and cached image embeddings keyed by dataset and split."""

    #: image-text tasks on real photographs train on COCO captions by default (--train-data overrides)
    default_train_data = "coco"

    #: candidate image / label columns, first present wins (webdataset fields are named by extension)
    image_columns: ClassVar[tuple[str, ...]] = ()
    label_columns: ClassVar[tuple[str, ...]] = ()
    classnames: ClassVar[tuple[str, ...]] = ()
    templates: ClassVar[tuple[str, ...]] = ()
    #: which class names and templates these are, recorded in every result's ``protocol``
    naming: ClassVar[dict[str, Any]] = {}
    #: whether a ``ClassLabel`` label column must name :attr:`classnames` in order (up to ``_``/case)
    check_label_names: ClassVar[bool] = True
    train_split: ClassVar[str] = "train"
    #: the validation part of the train split: a ``holdout_seed`` permutation's first
    #: ``min(max_val, round(val_fraction * n))`` rows (at least one)
    holdout_seed: ClassVar[int] = 0
    val_fraction: ClassVar[float] = 0.1
    max_val: ClassVar[int] = 5000
    #: splits :meth:`check_data` loads
    check_splits: ClassVar[tuple[str, ...]] = ("test",)

    # -- data --------------------------------------------------------------------------------
    def bind(self, options: DataOptions) -> None:
        """Settle the class names and templates for the data ``options`` point to (tasks that read a
        webdataset's own files override this); :meth:`check_data` and ``evaluate`` call it first."""
        self._names, self._templates = tuple(self.classnames), tuple(self.templates)
        self._naming = dict(self.naming)

    def class_names(self) -> tuple[str, ...]:
        if not hasattr(self, "_names"):
            self.bind(DataOptions())
        return self._names

    def prompt_templates(self) -> tuple[str, ...]:
        if not hasattr(self, "_templates"):
            self.bind(DataOptions())
        return self._templates

    def naming_protocol(self) -> dict[str, Any]:
        """``protocol`` entries naming the class names and templates used (docs/zero-shot.md)."""
        if not hasattr(self, "_naming"):
            self.bind(DataOptions())
        return dict(self._naming)

    def check_data(self, options) -> None:
        self.bind(options)
        for split in self.check_splits:
            table = load_table(self.name, self.source, options, self.columns, split=split)
            _, label = self.detect_columns(table)
            self.labels(table, label)

    def detect_columns(self, table) -> tuple[str, str]:
        """(image column, label column): the first present of :attr:`image_columns` /
        :attr:`label_columns`; :class:`MissingColumnsError` names what was expected and found."""
        found = list(table.column_names)
        image = next((c for c in self.image_columns if c in found), None)
        label = next((c for c in self.label_columns if c in found), None)
        missing = [
            f"an image column (one of {', '.join(self.image_columns)})" if image is None else "",
            f"a label column (one of {', '.join(self.label_columns)})" if label is None else "",
        ]
        missing = [m for m in missing if m]
        if missing:
            raise MissingColumnsError(
                f"dataset {self.where(table)} lacks "
                f"{' and '.join(missing)}; found {', '.join(found) or '(none)'}"
            )
        return image, label

    def labels(self, table, column: str) -> np.ndarray:
        """Integer labels of ``column``, checked against the task's classes."""
        import datasets

        names = self.class_names()
        feature = table.features.get(column)
        if isinstance(feature, datasets.ClassLabel):
            if feature.num_classes != len(names) or (
                self.check_label_names and not same_classes(feature.names, names)
            ):
                shown = ", ".join(feature.names[:5]) + (", ..." if feature.num_classes > 5 else "")
                raise DataError(
                    f"dataset for {self.name!r}: label column {column!r} has {feature.num_classes} "
                    f"classes ({shown}); the task's prompts are for {len(names)} classes "
                    f"({', '.join(names[:5])}, ...) in that order"
                )
        if len(table) == 0:
            raise DataError(f"dataset for {self.name!r} has no rows")
        y = np.asarray(table.select_columns([column]).with_format("numpy")[:][column])
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"dataset for {self.name!r}: label column {column!r} must hold one integer class "
                f"id per row, got dtype {y.dtype} and shape {y.shape}"
            )
        bad = (y < 0) | (y >= len(names))
        if bad.any():
            if y.min() < 0:
                hint = (
                    "an unlabelled split (ImageNet's test split has label -1) cannot be evaluated: use "
                    "the labelled validation images"
                )
            elif "metadata" in self.naming_protocol():
                hint = (
                    f"the dataset's own {WDS_CLASSNAMES} ({self.naming_protocol()['metadata']}) and its "
                    "shards disagree: fix one of them"
                )
            else:
                named = self.naming_protocol().get("classnames", "the task's")
                hint = (
                    f"the class names ({named}) do not fit these labels: a CLIP_benchmark webdataset "
                    f"should carry its own {WDS_CLASSNAMES} (evaluate it with task wds-zeroshot)"
                )
            raise DataError(
                f"dataset {self.where(table)}: {int(bad.sum())} label(s) in {column!r} outside "
                f"[0, {len(names)}): labels range from {int(y.min())} to {int(y.max())} "
                f"(max label {int(y.max())}) but there are {len(names)} class names; {hint}"
            )
        return y.astype(np.int64)

    def holdout(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(validation rows, the other rows) of a train split of ``n`` rows. The validation rows are
        the first ``min(max_val, round(val_fraction * n))`` of a permutation seeded with
        ``holdout_seed`` (sorted); the other rows keep the permutation's order, so a prefix of
        them is a random subset."""
        if n < 2:
            raise DataError(
                f"task {self.name!r} needs at least 2 rows in its train split to hold out a "
                f"validation part, found {n}"
            )
        perm = np.random.default_rng(self.holdout_seed).permutation(n)
        n_val = min(self.max_val, max(1, int(round(self.val_fraction * n))), n - 1)
        return np.sort(perm[:n_val]), perm[n_val:]

    def embed(
        self, ctx: EvalContext, table, split: str, column: str, rows: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached embeddings of ``rows`` (all when None) and the mask of rows whose image decoded.
        The image column is named by dataset and split, not task, so tasks share the entry."""
        images = self.images(
            ctx, table, column, split=split, rows=None if rows is None else [int(r) for r in rows]
        )
        return self.image_embeddings(ctx, images, table)

    @staticmethod
    def _nonempty(ok: torch.Tensor, what: str) -> None:
        if not bool(ok.any()):
            raise DataError(f"no image of {what} could be decoded")


class RealZeroShot(RealClassification):
    """Zero-shot classification (CLIP_benchmark): prompt-ensemble classifier, ``100 * img @ W``;
    ``acc1``, ``acc5`` (>= 5 classes), ``mean_per_class_recall``, ``n_undecodable``; main score
    ``acc1``. Predictions name the true and predicted class per item; item scores are the top-1
    hits (their mean is ``acc1``). ``protocol`` names the class names and templates."""

    family = "zeroshot"
    version = "1"
    main_score = "acc1"
    metrics = CLASSIFICATION_METRICS + ("n_undecodable",)
    modality = "image-text"

    def score(self, ctx: EvalContext, split: str):
        """On ``split``: the test split, or the train split's hold-out under validation."""
        self.bind(ctx.data)
        table = self.table(ctx, split)
        image_col, label_col = self.detect_columns(table)
        y = self.labels(table, label_col)
        rows = self.holdout(len(table))[0] if ctx.validation else None
        emb, ok = self.embed(ctx, table, split, image_col, rows)
        rows = np.arange(len(table)) if rows is None else rows
        self._nonempty(ok, f"{self.name} ({split})")

        names, templates = self.class_names(), self.prompt_templates()
        w = zeroshot_classifier(
            lambda texts: ctx.cache.text(ctx.encoder, self.source.repo, "prompts", "zeroshot", texts),
            names,
            templates,
        )
        keep = ok.numpy()
        logits = 100.0 * emb[ok].float() @ w.float()
        target = torch.from_numpy(y[rows][keep])
        metrics = classification_metrics(logits, target)
        metrics["n_undecodable"] = float((~ok).sum())

        pred = logits.argmax(dim=1).numpy()
        items = rows[keep]
        predictions = [
            {"item": int(i), "true": names[int(t)], "pred": names[int(p)]}
            for i, t, p in zip(items, target.numpy(), pred)
        ]
        hits = (pred == target.numpy()).astype(float)
        prov = self.provenance(table)
        if ctx.validation:
            prov["dataset"] += f" ({split} split, held-out validation part)"
        return metrics, dict(
            predictions=predictions,
            item_scores=hits.tolist(),
            n_items=len(items),
            protocol=self.naming_protocol(),
            **prov,
        )


class CifarData:
    """CIFAR's columns, checks, license and validation hold-out (mixin)."""

    image_columns = ("img",)
    check_label_names = True
    validation_split = "train"  # its seeded hold-out (RealClassification.holdout)
    license = CIFAR_LICENSE
    citation = CIFAR_CITATION


class Cifar10Data(CifarData):
    source = CIFAR10_SOURCE
    columns = ("img", "label")
    label_columns = ("label",)
    classnames = CIFAR10_CLASSNAMES
    naming = {"classnames": "clip", "templates": "clip-18"}  # CLIP's and torchvision's names agree here


class Cifar100Data(CifarData):
    source = CIFAR100_SOURCE
    columns = ("img", "fine_label")
    label_columns = ("fine_label",)
    classnames = CIFAR100_CLASSNAMES
    #: CLIP's names ("aquarium fish"); CLIP_benchmark 1.6.2 prompts with torchvision's ("aquarium_fish")
    naming = {"classnames": "clip", "templates": "clip-18"}


class Cifar10ZeroShot(Cifar10Data, RealZeroShot):
    """CIFAR-10 zero-shot classification on the 10,000 test images (``uoft-cs/cifar10``, columns
    ``img``, ``label``), with the CLIP paper's 18 prompts. Validation mode evaluates a seeded
    held-out part of the train split (the one ``cifar10-linear`` selects its weight decay on)."""

    templates = CIFAR_TEMPLATES


class Cifar100ZeroShot(Cifar100Data, RealZeroShot):
    """CIFAR-100 zero-shot classification over the 100 fine classes (``uoft-cs/cifar100``, columns
    ``img``, ``fine_label``), with the CLIP paper's 18 prompts and class names (``protocol``:
    ``classnames: clip``); validation as ``cifar10-zeroshot``."""

    templates = CIFAR_TEMPLATES


class Cifar100ZeroShotTV(Cifar100ZeroShot):
    """``cifar100-zeroshot`` prompting with torchvision's class names, as CLIP_benchmark 1.6.2 does
    (``aquarium_fish``, ``lawn_mower``, ... for nine classes; ``protocol``: ``classnames:
    torchvision``), so its numbers can be set beside CLIP_benchmark's."""

    classnames = CIFAR100_TORCHVISION_CLASSNAMES
    naming = {"classnames": "torchvision", "templates": "clip-18"}


class ImageNetZeroShot(RealZeroShot):
    """ImageNet-1k zero-shot classification on the 50,000 validation images as CLIP_benchmark ships
    them (``clip-benchmark/wds_imagenet1k``, split ``test``: webdataset shards with ``webp``/``jpg``
    images and ``cls`` labels), with open_clip's OpenAI class names and 80 prompts. A local
    ``ILSVRC/imagenet-1k``-style table (``image``, ``label``; its labelled validation files) is read
    too. A local webdataset's own ``classnames.txt`` / ``zeroshot_classification_templates.txt`` are
    used when present (as CLIP_benchmark does), each recorded in ``protocol``. Only a test split:
    refuses validation mode."""

    source = IMAGENET_SOURCE
    columns = ()
    image_columns = ("webp", "jpg", "jpeg", "png", "image")
    label_columns = ("cls", "label")
    validation_split = None
    check_label_names = False  # ILSVRC's ClassLabel names are WordNet synonyms ("tench, Tinca tinca")
    license = IMAGENET_LICENSE
    citation = IMAGENET_CITATION

    def bind(self, options: DataOptions) -> None:
        local = options.local_path(self.name, self.source.repo)
        try:
            meta = read_wds_metadata(local) if local is not None else None
        except ValueError as e:
            raise DataError(f"dataset for {self.name!r} ({local}): {e}") from None
        names, templates = imagenet_classnames(), imagenet_templates()
        self._naming = {"classnames": "open_clip-openai", "templates": "openai-80"}
        if meta is not None:
            same = meta.classnames == names
            names = meta.classnames
            self._naming["classnames"] = (
                "open_clip-openai" if same else f"{WDS_CLASSNAMES} ({len(names)} names)"
            )
            if meta.templates is not None:
                same = meta.templates == templates
                templates = meta.templates
                self._naming["templates"] = "openai-80" if same else f"{WDS_TEMPLATES} ({len(templates)})"
            self._naming["metadata"] = str(meta.root)
        self._names, self._templates = tuple(names), tuple(templates)


class WdsZeroShot(RealZeroShot):
    """Zero-shot classification on any CLIP_benchmark webdataset, named by path: ``--data
    wds-zeroshot=DIR`` (or ``data.paths.wds-zeroshot``). ``DIR`` has CLIP_benchmark's layout
    (``build_wds_dataset``): ``classnames.txt`` (one class name per line, label ``i`` is line ``i``),
    ``zeroshot_classification_templates.txt`` (one template per line, ``{c}`` for the name) and split
    folders of ``.tar`` shards (``test/0.tar``, ...) whose samples hold a ``webp``/``png``/``jpg``
    image and a ``cls`` label; a download of a ``clip-benchmark/wds_*`` Hub repository is one. The
    ``test`` split is evaluated with the dataset's own names and templates, as CLIP_benchmark does;
    labels outside ``[0, number of class names)`` are refused before training. Only a test split:
    refuses validation mode. ``protocol`` records the files and their line counts."""

    source = HubSource("clip-benchmark/wds_*", split="test")
    columns = ()
    image_columns = ("webp", "png", "jpg", "jpeg")
    label_columns = ("cls",)
    validation_split = None
    check_label_names = False
    license = "the dataset's own (see its card)"
    citation = "CLIP_benchmark webdataset zero-shot classification (LAION-AI/CLIP_benchmark)"

    def bind(self, options: DataOptions) -> None:
        local = options.local_path(self.name)
        layout = (
            f"a CLIP_benchmark webdataset directory ({WDS_CLASSNAMES}, {WDS_TEMPLATES}, test/*.tar; "
            "e.g. `huggingface-cli download clip-benchmark/wds_cars --repo-type dataset "
            "--local-dir DIR`)"
        )
        if local is None:
            raise DatasetUnavailableError(
                f"task {self.name!r} evaluates a local webdataset: pass --data "
                f"{self.name}=DIR (or set data.paths.{self.name}), DIR being "
                f"{layout}"
            )
        try:
            meta = read_wds_metadata(local)
        except ValueError as e:
            raise DataError(f"dataset for {self.name!r} ({local}): {e}") from None
        if meta is None:
            raise DataError(f"dataset for {self.name!r} ({local}) has no {WDS_CLASSNAMES}; expected {layout}")
        if meta.templates is None:
            raise DataError(
                f"dataset for {self.name!r} ({meta.root}) has no {WDS_TEMPLATES} (CLIP_benchmark "
                f"refuses a webdataset without templates too); expected {layout}"
            )
        if meta.dataset_type != "classification":
            raise DataError(
                f"dataset for {self.name!r} ({meta.root}) is a {meta.dataset_type!r} webdataset "
                "(dataset_type.txt); wds-zeroshot evaluates single-label classification sets "
                "only"
            )
        self._names, self._templates = meta.classnames, meta.templates
        digest = hashlib.sha256("\n".join(meta.classnames + ("",) + meta.templates).encode()).hexdigest()[:16]
        self._naming = {
            "classnames": f"{WDS_CLASSNAMES} ({len(meta.classnames)} names)",
            "templates": f"{WDS_TEMPLATES} ({len(meta.templates)})",
            "metadata": str(meta.root),
            "metadata_sha256": digest,
        }
