"""What an objective sees: :class:`EmbeddingBatch`, and what it returns: :class:`LossOutput`; and
the batch fields, an open set.

A batch field is declared once, in :data:`BATCH_FIELDS` (:func:`register_field`), with the tower
that encodes it: ``"image"`` (uint8 images, (B, ..., H, W, 3)), ``"text"`` (token ids, (B, ..., L))
or None (a tensor handed to the objective as it is: labels, indices, targets). The trainer and
GradCache treat every field by its declaration, so a training set that supplies a new field (a
second caption, a second crop) declares it and needs no edit to the core or the engine. The eight
built-in fields are declared below.

Both batch types (this :class:`EmbeddingBatch` and the training data's ``Batch``) hold the built-in
fields as dataclass attributes and any later field in ``more``; :class:`FieldAccess` reads and
writes both alike: ``batch.caption_b``, ``batch["caption_b"]``, :meth:`~FieldAccess.tensors`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch


@dataclass(frozen=True)
class BatchField:
    """A batch field: its name, the tower that encodes it (None: passed through) and what supplies it."""

    name: str
    tower: str | None = None
    doc: str = ""


#: every batch field, in the order the trainer encodes them (built-ins first)
BATCH_FIELDS: dict[str, BatchField] = {}
#: field name -> what supplies it (the docs of :data:`BATCH_FIELDS`, kept for existing callers)
FIELDS: dict[str, str] = {}
_RESERVED = {"rank", "world_size", "extras", "more", "size", "present", "tensors", "map", "images", "tokens"}


def register_field(name: str, tower: str | None = None, doc: str = "") -> BatchField:
    """Declare batch field ``name``, encoded by ``tower`` (``"image"``, ``"text"`` or None: passed to
    the objective as is). Declaring a field again with the same tower is a no-op."""
    if not name.isidentifier() or name.startswith("_") or name in _RESERVED:
        raise ValueError(
            f"batch field name {name!r} must be an identifier, not private nor one of "
            f"{', '.join(sorted(_RESERVED))}"
        )
    if tower not in (None, "image", "text"):
        raise ValueError(f"batch field {name!r}: tower must be 'image', 'text' or None, not {tower!r}")
    old = BATCH_FIELDS.get(name)
    if old is not None:
        if old.tower != tower:
            raise ValueError(
                f"batch field {name!r} is declared for the {old.tower or 'no'} tower already, "
                f"not {tower or 'no'} tower"
            )
        return old
    BATCH_FIELDS[name] = f = BatchField(name, tower, doc)
    FIELDS[name] = doc
    return f


def unregister_field(name: str) -> None:
    """Forget a field declared after the built-ins (tests)."""
    if name in BUILTIN_FIELDS:
        raise ValueError(f"batch field {name!r} is built in")
    BATCH_FIELDS.pop(name, None)
    FIELDS.pop(name, None)


for _args in (
    ("image", "image", "every image-text dataset"),
    ("text", "text", "every dataset with captions"),
    ("image_view", "image", "a second augmented view of each image (shapes world: truth-preserving jitter)"),
    ("text_view", "text", "a second phrasing of each caption (shapes world: the other mention order)"),
    (
        "hard_negative_text",
        "text",
        "generated hard-negative captions, (B, k) (shapes world: attribute swap, "
        "relation swap, object replacement)",
    ),
    ("labels", None, "class labels (shapes world: the id of each scene's complete description)"),
    ("index", None, "the sample's index in the training set (per-sample state, e.g. learned temperatures)"),
    (
        "concepts",
        None,
        "multi-hot caption concepts, (B, C) float (shapes world: the colour, shape, size and "
        "relation words of the caption; CatLIP-style classification targets)",
    ),
):
    register_field(*_args)
BUILTIN_FIELDS = frozenset(BATCH_FIELDS)


def _known(name: str) -> str:
    if name not in BATCH_FIELDS:
        raise KeyError(f"unknown batch field {name!r} (declare it with harness.core.batch.register_field)")
    return name


class FieldAccess:
    """Field access shared by the batch types: built-in fields are dataclass attributes (``_ALIAS``
    maps a field to the attribute holding it, e.g. the training ``Batch``'s ``images``), any other
    registered field lives in the ``more`` dict, read and written as an attribute all the same."""

    _ALIAS: ClassVar[dict[str, str]] = {}

    def __getattr__(self, name: str):  # only reached when normal lookup fails
        if name.startswith("_") or name == "more":
            raise AttributeError(name)
        if name in self._ALIAS:
            return getattr(self, self._ALIAS[name])
        more = self.__dict__.get("more") or {}
        if name in more:
            return more[name]
        if name in BATCH_FIELDS:
            return None
        raise AttributeError(f"{type(self).__name__!r} has no attribute or batch field {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name in type(self).__dataclass_fields__ or name not in BATCH_FIELDS:
            object.__setattr__(self, name, value)
        elif name in self._ALIAS:
            object.__setattr__(self, self._ALIAS[name], value)
        elif value is None:
            self.more.pop(name, None)
        else:
            self.more[name] = value

    def __getitem__(self, name: str) -> torch.Tensor | None:
        return getattr(self, _known(name))

    def __setitem__(self, name: str, value: torch.Tensor | None) -> None:
        setattr(self, _known(name), value)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields present, by field name, in the order of :data:`BATCH_FIELDS`."""
        out = {}
        for name in BATCH_FIELDS:
            t = getattr(self, name)
            if t is not None:
                out[name] = t
        return out

    def present(self) -> set[str]:
        return set(self.tensors())

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        """A copy with ``fn(t)`` for every present field (other attributes kept)."""
        return dataclasses.replace(self, **{self._ALIAS.get(n, n): fn(t) for n, t in self.tensors().items()})


def open_fields(cls):
    """Let a :class:`FieldAccess` dataclass take any registered field as a keyword argument (and
    ``dataclasses.replace`` work with them); ``more`` is copied, never shared with another batch."""
    init = cls.__init__
    names = {f.name for f in dataclasses.fields(cls) if f.init}

    def __init__(self, *args, **kwargs):
        extra = {k: kwargs.pop(k) for k in [k for k in kwargs if k not in names]}
        init(self, *args, **kwargs)
        object.__setattr__(self, "more", dict(self.more))
        for k, v in extra.items():
            if k not in BATCH_FIELDS:
                raise TypeError(
                    f"{cls.__name__}() got an unexpected keyword argument {k!r} (not a batch "
                    "field: declare it with harness.core.batch.register_field)"
                )
            self[k] = v

    __init__.__doc__ = init.__doc__
    cls.__init__ = __init__
    return cls


@open_fields
@dataclass
class EmbeddingBatch(FieldAccess):
    """L2-normalised embeddings of one training batch.

    ``image`` and ``text`` are (B, d); ``image_view``/``text_view`` are second views (B, d);
    ``hard_negative_text`` is (B, k, d); ``labels`` and ``index`` are (B,) integer tensors. A field
    declared later (:func:`register_field`) is read the same way (``batch.caption_b``): encoded
    fields are (B, ..., d), the others as the training data gave them.
    Under torch.distributed, ``rank``/``world_size`` say where this shard sits in the global batch.
    """

    image: torch.Tensor | None = None
    text: torch.Tensor | None = None
    image_view: torch.Tensor | None = None
    text_view: torch.Tensor | None = None
    hard_negative_text: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    index: torch.Tensor | None = None
    concepts: torch.Tensor | None = None
    rank: int = 0
    world_size: int = 1
    extras: dict = field(default_factory=dict)
    #: fields declared after the built-ins, by name
    more: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        for name, t in self.tensors().items():
            if BATCH_FIELDS[name].tower is not None:
                return int(t.shape[0])
        raise ValueError("empty EmbeddingBatch")


@dataclass
class LossOutput:
    """A scalar ``loss`` to minimise and ``logs``: values worth plotting (temperature, terms).

    Log values may be detached 0-d tensors: the trainer reads them back only at logging steps,
    so an objective never forces a device sync per step.
    """

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)
