"""Class names and prompt templates for zero-shot classification on real datasets.

Sources (checked against the upstream files, see the module's tests):

* CIFAR-10 / CIFAR-100 class names and the 18 templates: OpenAI CLIP's ``data/prompts.md``
  (sections ``CIFAR10`` / ``CIFAR100``), identical to CLIP_benchmark's
  ``clip_benchmark/datasets/cifar10.py`` / ``cifar100.py`` (adapted from SLIP) and to the
  ``cifar10`` / ``cifar100`` entries of CLIP_benchmark's
  ``datasets/en_zeroshot_classification_templates.json``. The names are the torchvision / Hugging
  Face ``ClassLabel`` names with ``_`` read as a space (``aquarium_fish`` -> ``aquarium fish``).
  CLIP_benchmark 1.6.2's builder has no ``cifar100`` entry in ``en_classnames.json`` and so
  prompts with torchvision's ``CIFAR100.classes`` unchanged, underscores included, for nine
  CIFAR-100 classes (:data:`CIFAR100_TORCHVISION_CLASSNAMES`, task ``cifar100-zeroshot-tv``); the
  default names here follow the CLIP paper's prompts (docs/zero-shot.md).
* CLIP_benchmark webdatasets carry their own ``classnames.txt`` and
  ``zeroshot_classification_templates.txt`` (:func:`read_wds_metadata`, read as its
  ``build_wds_dataset`` reads them).
* ImageNet-1k: ``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES`` (the OpenAI CLIP notebook's
  cleaned names, also CLIP_benchmark's ``en_classnames.json["imagenet1k"]``) and
  ``OPENAI_IMAGENET_TEMPLATES`` (80 prompts; callables there, converted to ``{c}`` strings here).

Templates use ``{c}`` for the class name, as CLIP_benchmark and
:func:`tasks.zeroshot.zeroshot_classifier` (``template.format(c=name)``) do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

CIFAR10_CLASSNAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

CIFAR100_CLASSNAMES: tuple[str, ...] = (
    "apple",
    "aquarium fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak tree",
    "orange",
    "orchid",
    "otter",
    "palm tree",
    "pear",
    "pickup truck",
    "pine tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow tree",
    "wolf",
    "woman",
    "worm",
)

#: torchvision's ``CIFAR100.classes`` (the dataset's own meta file), which CLIP_benchmark 1.6.2 prompts
#: with: :data:`CIFAR100_CLASSNAMES` with the nine two-word names spelled with ``_``
CIFAR100_TORCHVISION_CLASSNAMES: tuple[str, ...] = tuple(n.replace(" ", "_") for n in CIFAR100_CLASSNAMES)

#: the 18 CIFAR-10 / CIFAR-100 prompts of the CLIP paper (OpenAI ``data/prompts.md``)
CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a blurry photo of a {c}.",
    "a black and white photo of a {c}.",
    "a low contrast photo of a {c}.",
    "a high contrast photo of a {c}.",
    "a bad photo of a {c}.",
    "a good photo of a {c}.",
    "a photo of a small {c}.",
    "a photo of a big {c}.",
    "a photo of the {c}.",
    "a blurry photo of the {c}.",
    "a black and white photo of the {c}.",
    "a low contrast photo of the {c}.",
    "a high contrast photo of the {c}.",
    "a bad photo of the {c}.",
    "a good photo of the {c}.",
    "a photo of the small {c}.",
    "a photo of the big {c}.",
)


def template_strings(templates: Iterable[str | Callable[[str], str]]) -> tuple[str, ...]:
    """Templates as ``{c}`` format strings: strings pass through; a callable ``t`` (open_clip's
    ``lambda c: f"a photo of a {c}."``) becomes ``t("{c}")``, checked to format back to ``t(name)``."""
    out = []
    for t in templates:
        if isinstance(t, str):
            s = t
        elif callable(t):
            s = t("{c}")
            probe = "x {y} z"  # braces in a name must survive: format() substitutes the value verbatim
            try:
                ok = s.format(c=probe) == t(probe)
            except (KeyError, IndexError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"template {s!r} does not round-trip through str.format")
        else:
            raise TypeError(f"a template must be a string or a callable, got {type(t).__name__}")
        if "{c}" not in s:
            raise ValueError(f"template {s!r} has no {{c}} placeholder")
        out.append(s)
    return tuple(out)


def imagenet_classnames() -> tuple[str, ...]:
    """open_clip's 1,000 ImageNet class names (OpenAI CLIP's cleaned names), in label order."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


def imagenet_templates() -> tuple[str, ...]:
    """open_clip's 80 ``OPENAI_IMAGENET_TEMPLATES`` as ``{c}`` format strings."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return template_strings(OPENAI_IMAGENET_TEMPLATES)


def normalise_name(name: str) -> str:
    """A class name compared across sources: ``_`` as a space, lower case, single spaces."""
    return " ".join(name.replace("_", " ").lower().split())


def same_classes(dataset_names: Sequence[str], names: Sequence[str]) -> bool:
    """Whether a dataset's ``ClassLabel`` names are ``names`` in the same order (up to
    :func:`normalise_name`)."""
    return len(dataset_names) == len(names) and all(
        normalise_name(a) == normalise_name(b) for a, b in zip(dataset_names, names)
    )


#: the metadata files of a CLIP_benchmark webdataset (``clip_benchmark/datasets/builder.py``,
#: ``build_wds_dataset``), beside its split folders (``test/0.tar``, ...)
WDS_CLASSNAMES, WDS_TEMPLATES = "classnames.txt", "zeroshot_classification_templates.txt"
WDS_TYPE = "dataset_type.txt"
_SPLIT_DIRS = {"test", "train", "val", "validation"}


@dataclass(frozen=True)
class WdsMetadata:
    """A CLIP_benchmark webdataset's own class names and templates (None: no templates file)."""

    root: Path
    classnames: tuple[str, ...]
    templates: tuple[str, ...] | None
    dataset_type: str  # "classification" unless dataset_type.txt says otherwise


def wds_root(path: Path) -> Path | None:
    """The directory holding a CLIP_benchmark webdataset's metadata for a path given with
    ``--data``: the directory itself, or, for a split folder (``.../test``) or a shard inside one,
    the dataset directory above it. None when none of them has a ``classnames.txt``."""
    path = Path(path)
    here = path if path.is_dir() else path.parent
    for d in (here, here.parent if here.name.lower() in _SPLIT_DIRS else None):
        if d is not None and (d / WDS_CLASSNAMES).is_file():
            return d
    return None


def read_wds_metadata(path: Path) -> WdsMetadata | None:
    """The class names and templates a CLIP_benchmark webdataset at ``path`` carries, read as its
    ``build_wds_dataset`` reads them: one per line, ``line.strip()``, every line kept (a blank line is
    a class named ""). Templates are checked to format with ``{c}``. None when there is no
    ``classnames.txt`` (see :func:`wds_root`)."""
    root = wds_root(path)
    if root is None:
        return None
    names = tuple(line.strip() for line in (root / WDS_CLASSNAMES).read_text(encoding="utf-8").splitlines())
    templates = None
    if (root / WDS_TEMPLATES).is_file():
        lines = [line.strip() for line in (root / WDS_TEMPLATES).read_text(encoding="utf-8").splitlines()]
        for i, t in enumerate(lines, 1):
            try:
                ok = "{c}" in t and t.format(c="x") is not None
            except (KeyError, IndexError, ValueError):
                ok = False
            if not ok:
                raise ValueError(
                    f"{root / WDS_TEMPLATES}, line {i}: template {t!r} must contain {{c}} (the "
                    "class name) and no other braces; fix the file"
                )
        templates = tuple(lines)
    kind = (
        (root / WDS_TYPE).read_text(encoding="utf-8").strip().lower() if (root / WDS_TYPE).is_file() else ""
    )
    return WdsMetadata(root, names, templates, kind or "classification")
