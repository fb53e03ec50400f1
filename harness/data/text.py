"""Text-only training data for SimCSE (Gao et al. 2021): unsupervised sentences and NLI triplets.

Same interface as :class:`harness.data.batches.ShapesTrainData`: ``name``, ``provides``, ``len()``,
``check_static`` (raises :class:`harness.data.batches.MissingFieldError` before training),
``indices(step, batch_size)`` (epochs of seeded permutations, ragged tail dropped: the very same
function as the shapes data, so the order depends only on the run seed and the step) and
``batch(step, batch_size, fields) -> Batch`` (under torch.distributed ``batch_size`` is the global
batch; every rank draws it identically and keeps its own rows). Texts are tokenised once, at
construction (``tokenizer(list[str]) -> LongTensor (N, L)``, as :class:`harness.engine.models.WordTokenizer`
and open_clip's tokenizers), and held in memory.

* :class:`SentenceTrainData` (unsupervised SimCSE): ``text`` and ``text_view`` are the *same*
  sentence, tokenised identically; the two views come from two dropout passes through the text
  tower (the trainer encodes ``text`` and ``text_view`` in one forward, so each copy gets its own
  dropout mask), so the model must have dropout for the objective to be meaningful (SimCSE: p=0.1).
  For the shapes world (:meth:`SentenceTrainData.from_shapes`), ``views="paraphrase"`` makes
  ``text_view`` the caption's other phrasing (``alt_captions``) instead.
* :class:`NLITrainData` (supervised SimCSE): ``text`` = premise (anchor), ``text_view`` = its
  entailment (positive), ``hard_negative_text`` = its contradiction, shape (B, 1, L).

Sources: :func:`load_sentence_corpus` (SimCSE's ``wiki1m_for_simcse.txt``, one sentence per line,
or a table with a ``text`` / ``sentence`` column) and :func:`load_nli_triplets`
(``sentence-transformers/nli-for-simcse`` or ``sentence-transformers/all-nli``, config ``triplet``:
``anchor``, ``positive``, ``negative``; SimCSE's own ``nli_for_simcse.csv`` columns ``sent0``,
``sent1``, ``hard_neg`` are accepted too). Both read local copies or the Hub through
:func:`harness.data.sources.load_table` (``.txt`` files are read directly) and take ``max_samples``:
keep the first N rows (file order, after dropping blank lines), for short runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from harness.data.batches import Batch, MissingFieldError, ShapesTrainData, shard
from harness.data.sources import (
    BUILDERS,
    DataOptions,
    DatasetUnavailableError,
    EmptyDatasetError,
    HubSource,
    MissingColumnsError,
    _suffix,
    check_columns,
    load_table,
)

#: SimCSE's unsupervised corpus (``data/download_wiki.sh``): 10^6 Wikipedia sentences, one per line
WIKI1M = HubSource("princeton-nlp/datasets-for-simcse", split="train", data_files="wiki1m_for_simcse.txt")
#: supervised SimCSE triplets (SNLI + MNLI: premise, entailment, contradiction), 274,951 rows
NLI_FOR_SIMCSE = HubSource("sentence-transformers/nli-for-simcse", config="triplet", split="train")
#: AllNLI triplets (SNLI + MultiNLI), 557,850 train rows
ALL_NLI = HubSource("sentence-transformers/all-nli", config="triplet", split="train")

SENTENCE_COLUMNS = ("text", "sentence")
NLI_COLUMNS = ("anchor", "positive", "negative")
#: SimCSE's ``nli_for_simcse.csv`` header -> the sentence-transformers names
NLI_ALIASES = {"sent0": "anchor", "sent1": "positive", "hard_neg": "negative"}


class TextTrainData:
    """Pre-tokenised texts in a seeded order (base of the SimCSE data classes).

    Subclasses fill :attr:`tensors` (field name -> token ids whose first dimension is the sample;
    any text field, including one a plugin declares) and list them in ``provides``."""

    name = "text"
    provides: frozenset[str] = frozenset()

    def __init__(self, n: int, seed: int, name: str | None = None):
        if n == 0:
            raise ValueError(f"training data {name or self.name!r} is empty")
        self.n = n
        self.seed = seed
        if name is not None:
            self.name = name
        self.tensors: dict[str, torch.Tensor] = {}
        self._order_epoch = -1
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        return self.n

    @classmethod
    def check_static(cls, requires, objective: str, train_data: str | None = None) -> None:
        """Raise :class:`MissingFieldError` before training if ``objective`` needs fields this data
        cannot supply (e.g. supervised SimCSE's ``hard_negative_text`` from plain sentences)."""
        ShapesTrainData.check_static.__func__(cls, requires, objective, train_data or cls.name)

    #: epochs of seeded permutations consumed in order, ragged tail dropped (shared with the shapes data)
    indices = ShapesTrainData.indices

    def batch(self, step: int, batch_size: int, fields: set[str] | frozenset[str]) -> Batch:
        """The inputs of ``step``. Under torch.distributed ``batch_size`` is the global batch: every
        rank draws it identically and keeps rows ``rank*B/W .. (rank+1)*B/W``."""
        unknown = set(fields) - set(self.provides)
        if unknown:
            raise MissingFieldError(
                f"training data {self.name!r} does not supply "
                f"{', '.join(sorted(unknown))} "
                f"(it supplies {', '.join(sorted(self.provides))})"
            )
        return shard(self._global_batch(step, batch_size, fields), batch_size)

    def _global_batch(self, step: int, batch_size: int, fields) -> Batch:
        idx = torch.from_numpy(self.indices(step, batch_size))
        out = Batch(index=idx if "index" in fields else None)
        for name, tokens in self.tensors.items():  # any text field, built in or declared by a plugin
            if name in fields:
                out[name] = tokens[idx].long()
        return out


def _check_texts(texts: Sequence, what: str) -> list[str]:
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{what}: item {i} is empty or not a string ({t!r})")
    return out


def tokenise(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """``tokenizer(texts)`` as a (N, L) integer tensor, stored as int32 when the ids fit (half the
    memory of int64 for a 10^6-sentence corpus; batches are returned as int64)."""
    tok = torch.as_tensor(tokenizer(list(texts)))
    if tok.ndim != 2 or len(tok) != len(texts):
        raise ValueError(
            f"tokenizer returned shape {tuple(tok.shape)} for {len(texts)} texts; expected (N, L)"
        )
    if tok.numel() and int(tok.max()) < 2**31 and int(tok.min()) >= -(2**31):
        tok = tok.to(torch.int32)
    return tok


class SentenceTrainData(TextTrainData):
    """Unsupervised SimCSE: one sentence per sample, ``text`` = ``text_view`` (dropout makes the
    two views). ``views`` (optional, same length) replaces ``text_view`` with another phrasing of
    each sentence (used for the shapes world's ``views="paraphrase"``)."""

    name = "sentences"
    provides = frozenset({"text", "text_view", "index"})

    def __init__(
        self,
        sentences: Sequence[str],
        tokenizer,
        seed: int,
        views: Sequence[str] | None = None,
        name: str | None = None,
    ):
        sentences = _check_texts(sentences, f"training data {name or self.name!r}")
        super().__init__(len(sentences), seed, name)
        self.sentences = sentences
        self.view_mode = "dropout" if views is None else "paraphrase"
        tokens = tokenise(tokenizer, sentences)
        self.tensors["text"] = tokens
        if views is None:
            self.tensors["text_view"] = tokens
        else:
            views = _check_texts(views, f"views of training data {self.name!r}")
            if len(views) != len(sentences):
                raise ValueError(f"{len(views)} views for {len(sentences)} sentences")
            self.tensors["text_view"] = tokenise(tokenizer, views)

    @classmethod
    def from_shapes(cls, world, tokenizer, seed: int, views: str = "dropout", split: str = "train"):
        """The shapes world's training captions (``world.split(split).captions``), so the text track
        runs offline. ``views="dropout"``: ``text_view`` is the caption itself (SimCSE proper);
        ``views="paraphrase"``: the caption's other phrasing (``alt_captions``: the complete
        description in the other mention order)."""
        if views not in ("dropout", "paraphrase"):
            raise ValueError(f"views must be 'dropout' or 'paraphrase', not {views!r}")
        sp = world.split(split)
        alt = [str(c) for c in sp.alt_captions] if views == "paraphrase" else None
        return cls([str(c) for c in sp.captions], tokenizer, seed, views=alt, name=f"shapes-captions-{views}")


class NLITrainData(TextTrainData):
    """Supervised SimCSE: (premise, entailment, contradiction) triplets as ``text``, ``text_view``
    and ``hard_negative_text`` (B, 1, L)."""

    name = "nli"
    provides = frozenset({"text", "text_view", "hard_negative_text", "index"})

    def __init__(
        self,
        anchor: Sequence[str],
        positive: Sequence[str],
        negative: Sequence[str],
        tokenizer,
        seed: int,
        name: str | None = None,
    ):
        what = f"training data {name or self.name!r}"
        anchor, positive, negative = (
            _check_texts(x, f"{what} ({col})")
            for x, col in ((anchor, "anchor"), (positive, "positive"), (negative, "negative"))
        )
        if not len(anchor) == len(positive) == len(negative):
            raise ValueError(
                f"{what}: {len(anchor)} anchors, {len(positive)} positives, {len(negative)} negatives"
            )
        super().__init__(len(anchor), seed, name)
        self.triplets = (anchor, positive, negative)
        self.tensors["text"] = tokenise(tokenizer, anchor)
        self.tensors["text_view"] = tokenise(tokenizer, positive)
        self.tensors["hard_negative_text"] = tokenise(tokenizer, negative)[:, None, :]

    @classmethod
    def from_shapes(cls, world, tokenizer, seed: int, negative: int = 0, split: str = "train"):
        """Triplets from the shapes world: the caption, its other phrasing (the "entailment") and
        generated hard negative ``negative`` (0 attribute swap, 1 relation swap, 2 object
        replacement; single objects: colour / size replacement) as the "contradiction", as the
        shapes variant of the ``simcse`` objective describes."""
        sp = world.split(split)
        negs = [str(c) for c in sp.negatives[:, negative]]
        return cls(
            [str(c) for c in sp.captions],
            [str(c) for c in sp.alt_captions],
            negs,
            tokenizer,
            seed,
            name=f"shapes-triplets-{negative}",
        )


# ----------------------------------------------------------------------------------- loading


def _local(name: str, options: DataOptions, source: HubSource | None, path: str | Path | None) -> Path | None:
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DatasetUnavailableError(
                f"local data for {name!r} does not exist: {p}; fix the path (--data {name}=PATH)"
            )
        return p
    return options.local_path(name, source.repo if source else "")


def _txt_files(p: Path, source: HubSource | None) -> list[Path]:
    """The ``.txt`` files of a local corpus (a file, or a directory holding only text data; a
    directory mirroring the source's repository is narrowed to its ``data_files`` glob)."""
    if p.is_file():
        return [p] if p.suffix.lower() == ".txt" else []
    files = [
        f
        for f in sorted(p.rglob("*"))
        if f.is_file() and not any(x.startswith(".") for x in f.relative_to(p).parts)
    ]
    if source is not None and source.data_files:
        chosen = [
            f for f in files if f.match(source.data_files) or f.relative_to(p).as_posix() == source.data_files
        ]
        files = chosen or files
    txt = [f for f in files if f.suffix.lower() == ".txt"]
    tables = [f for f in files if _suffix(f) in BUILDERS]
    return txt if not tables else []


def read_lines(files: Sequence[Path], max_samples: int | None = None) -> list[str]:
    """Sentences of text files, one per line (line breaks removed, surrounding whitespace
    stripped); blank lines are dropped (SimCSE keeps them as empty inputs; they carry nothing)."""
    out: list[str] = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                s = line.strip()
                if s:
                    out.append(s)
                    if max_samples is not None and len(out) >= max_samples:
                        return out
    return out


def _check_max_samples(max_samples: int | None) -> None:
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive integer or None, not {max_samples!r}")


def load_sentence_corpus(
    name: str = "wiki1m",
    options: DataOptions | None = None,
    source: HubSource | None = WIKI1M,
    path: str | Path | None = None,
    max_samples: int | None = None,
) -> list[str]:
    """Sentences for unsupervised SimCSE, from (in order) ``path``, a local path in ``options`` for
    ``name`` or the source's id, ``$HARNESS_DATA_DIR/<id>``, or the Hub (``source``; None = local
    only). A ``.txt`` file (or a directory of them) holds one sentence per line, like SimCSE's
    ``wiki1m_for_simcse.txt``; any other table needs a ``text`` or ``sentence`` column. Blank
    entries are dropped; ``max_samples`` keeps the first N."""
    options = options or DataOptions()
    local = _local(name, options, source, path)
    _check_max_samples(max_samples)
    txt = _txt_files(local, source) if local is not None else []
    if txt:
        sentences = read_lines(txt, max_samples)
    else:
        if local is None and source is None:
            raise DatasetUnavailableError(
                f"no sentences for {name!r}: pass a path (one sentence per line, e.g. SimCSE's "
                f"wiki1m_for_simcse.txt from {WIKI1M.repo}) or a table with a 'text' column"
            )
        src = source or HubSource(name, split="train")
        opts = (
            DataOptions(paths={**options.paths, name: str(local)}, strict_images=options.strict_images)
            if local is not None
            else options
        )
        table = load_table(name, src, opts, split=src.split)
        col = next((c for c in SENTENCE_COLUMNS if c in table.column_names), None)
        if col is None:
            raise MissingColumnsError(
                f"sentence corpus {name} ({local or src.describe()}) has no sentence column: expected one of "
                f"{', '.join(SENTENCE_COLUMNS)}; found {', '.join(table.column_names) or '(none)'}"
            )
        sentences = [s.strip() for s in table[col] if isinstance(s, str) and s.strip()]
        if max_samples is not None:
            sentences = sentences[:max_samples]
    if not sentences:
        raise EmptyDatasetError(
            f"sentence corpus {name!r} ({local or source and source.describe()}) has no "
            "sentences: give a .txt file with one sentence per line or a table with a "
            "non-empty 'text' or 'sentence' column"
        )
    return sentences


def load_nli_triplets(
    name: str = "nli-for-simcse",
    options: DataOptions | None = None,
    source: HubSource = NLI_FOR_SIMCSE,
    path: str | Path | None = None,
    max_samples: int | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """``(anchor, positive, negative)`` lists for supervised SimCSE, from ``path``, a local path for
    ``name`` / the source id, ``$HARNESS_DATA_DIR/<id>`` or the Hub. Columns ``anchor``,
    ``positive``, ``negative`` (sentence-transformers ``nli-for-simcse`` / ``all-nli`` config
    ``triplet``) or SimCSE's ``sent0``, ``sent1``, ``hard_neg``. A row with an empty member is an
    error naming the row. ``max_samples`` keeps the first N rows."""
    options = options or DataOptions()
    local = _local(name, options, source, path)
    opts = (
        DataOptions(paths={**options.paths, name: str(local)}, strict_images=options.strict_images)
        if local is not None
        else options
    )
    table = load_table(name, source, opts, split=source.split)
    found = table.column_names
    if not all(c in found for c in NLI_COLUMNS) and all(c in found for c in NLI_ALIASES):
        cols = list(NLI_ALIASES)
    else:
        check_columns(table, NLI_COLUMNS, f"{name} ({local or source.describe()})")
        cols = list(NLI_COLUMNS)
    _check_max_samples(max_samples)
    if max_samples is not None and max_samples < len(table):
        table = table.select(range(max_samples))
    out = tuple(list(table[c]) for c in cols)
    for i, row in enumerate(zip(*out)):
        for c, s in zip(NLI_COLUMNS, row):
            if not isinstance(s, str) or not s.strip():
                raise ValueError(
                    f"NLI triplets {name} ({local or source.describe()}): row {i} has an empty "
                    f"or missing {c} ({s!r})"
                )
    return out  # type: ignore[return-value]


__all__ = [
    "TextTrainData",
    "SentenceTrainData",
    "NLITrainData",
    "load_sentence_corpus",
    "load_nli_triplets",
    "read_lines",
    "tokenise",
    "WIKI1M",
    "NLI_FOR_SIMCSE",
    "ALL_NLI",
]
