"""Streaming image-text training data: webdataset ``.tar`` shards read as a stream (``wds``).

``--train-data wds --data wds=/data/cc3m/{00000..00331}.tar`` trains on img2dataset's layout
(``{key}.jpg`` + ``{key}.txt``, a ``{key}.json`` beside them; ``png`` / ``webp`` and a json
``caption`` / ``captions`` work too) without decoding the whole set first: shards are read as tar
streams, images decoded and resized in torch DataLoader worker processes, and the trainer gets
exactly ``budget.steps`` batches whatever the number of shards.

Shards: a brace pattern (``{00000..00331}`` zero-padded ranges, ``{a,b}`` lists), several
patterns joined by ``::``, a directory (its ``*.tar``), ``pipe:CMD`` (a command writing the tar to
stdout: ``pipe:aws s3 cp s3://bucket/cc3m/{00000..00331}.tar -``) or an ``http(s)://`` URL (read
with ``curl``). The pattern is checked before anything is written: an unbalanced brace, or local
shards that are missing or unreadable, and a pattern matching no shard are each a
:class:`~harness.core.errors.DataError` (exit 2).

The stream. Each shard is cut into ``k = ceil(slots / shards)`` parts (sample ``i`` of a shard is
in part ``i % k``) so there are at least as many parts as logical streams (``slots`` =
``STREAMS`` per rank x world size). Each epoch is a seeded permutation of the parts, the epochs
follow each other forever (resampled shards: an infinite seeded stream, cut at ``steps``), and
logical stream ``g`` takes the parts at positions ``g, g + slots, ...`` of that sequence, so within
an epoch no sample is read by two streams (ranks never overlap). Each stream shuffles its samples
with a seeded buffer (``shuffle`` samples) and cuts them into local batches; rank batch ``k`` is
stream ``k % STREAMS``'s batch ``k // STREAMS``. DataLoader worker ``w`` of ``W`` (``W`` divides
``STREAMS``) runs the streams ``s`` with ``s % W == w``, so the batches depend on the seed, the
world size and the shards only, never on the number of workers: same seed, same batches.

Bad data is skipped and counted (:attr:`StreamingTrainData.counts`): a shard that is not a tar or
is truncated (the samples read before the damage are kept; ``bad_shards``), a sample without a
caption or an image (``no_caption``), an image PIL cannot decode (``undecodable``). With
``--strict-images`` each is an error naming the shard and the key.

The fingerprint is the shard list with each local shard's size and a hash of its first and last
64 KiB (a ``pipe:`` shard: its command), never a read of every image.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
import re
import subprocess
import tarfile
import zlib
from itertools import count
from pathlib import Path

import numpy as np
import torch

from harness.core.errors import DataError, UndecodableImageError
from harness.core.train_set import TrainContext, TrainSet
from harness.data.batches import Batch, jitter, world_info
from harness.data.image_text import _captions_of
from harness.data.images import pil_transform

#: logical streams per rank; the number of DataLoader workers is rounded down to a divisor of it
STREAMS = 8
#: samples (undecoded) in each stream's shuffle buffer
SHUFFLE = 512
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class ShardPatternError(DataError):
    """A shard pattern that cannot be read, or that matches no shard."""


# ----------------------------------------------------------------------------- shard lists


def expand_braces(pattern: str) -> list[str]:
    """``a{1..3}b`` -> a1b a2b a3b (zero padding kept: ``{00..02}``), ``{x,y}`` -> x y; several
    braces multiply. :class:`ShardPatternError` for an unbalanced brace or an empty range."""
    start = pattern.find("{")
    if start < 0:
        if "}" in pattern:
            raise ShardPatternError(f"shard pattern {pattern!r} has a '}}' without its '{{'")
        return [pattern]
    end = pattern.find("}", start)
    if end < 0 or "{" in pattern[start + 1 : end]:
        raise ShardPatternError(f"shard pattern {pattern!r} has an unbalanced '{{' (at {start})")
    body, head, tail = pattern[start + 1 : end], pattern[:start], pattern[end + 1 :]
    m = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if m:
        lo, hi = m.groups()
        if int(lo) > int(hi):
            raise ShardPatternError(f"shard pattern {pattern!r}: empty range {{{body}}}")
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        raise ShardPatternError(
            f"shard pattern {pattern!r}: {{{body}}} is neither a range {{000..099}} nor a list {{a,b}}"
        )
    return [head + item + rest for item in items for rest in expand_braces(tail)]


def _is_remote(url: str) -> bool:
    return url.startswith(("pipe:", "http://", "https://"))


def shard_list(name: str, spec: str | None) -> list[tuple[str, int | None]]:
    """The shards of ``spec`` (``--data NAME=SPEC``), each with its size in bytes (None for a
    ``pipe:`` / URL shard). Raises :class:`ShardPatternError` (exit 2) when there is no spec, it
    cannot be parsed, local shards are missing or unreadable, or nothing matches."""
    if not spec:
        raise ShardPatternError(
            f"training data {name!r} streams webdataset shards: pass --data {name}=PATTERN, e.g. "
            f"--data '{name}=/data/cc3m/{{00000..00331}}.tar' or "
            f"--data '{name}=pipe:aws s3 cp s3://bucket/cc3m/{{00000..00331}}.tar -'"
        )
    urls: list[str] = []
    for part in spec.split("::"):
        part = part.strip()
        if not part:
            continue
        if _is_remote(part):
            urls += expand_braces(part)
            continue
        p = Path(part).expanduser()
        if p.is_dir():
            found = sorted(glob.glob(str(p / "*.tar"))) or sorted(
                glob.glob(str(p / "**" / "*.tar"), recursive=True)
            )
            if not found:
                raise ShardPatternError(f"training data {name!r}: directory {part} holds no .tar shard")
            urls += found
        elif any(c in part for c in "*?["):
            urls += sorted(glob.glob(str(p)))
        else:
            urls += [str(Path(u).expanduser()) for u in expand_braces(part)]
    if not urls:
        raise ShardPatternError(f"training data {name!r}: shard pattern {spec!r} matches no shard")
    local = [u for u in urls if not _is_remote(u)]
    missing = [u for u in local if not os.path.isfile(u)]
    if missing:
        what = "matches no shard" if len(missing) == len(urls) else f"names {len(missing)} missing shard(s)"
        raise ShardPatternError(
            f"training data {name!r}: shard pattern {spec!r} {what} (first: {missing[0]}); "
            f"check --data {name}=PATTERN"
        )
    unreadable = [u for u in local if not os.access(u, os.R_OK)]
    if unreadable:
        raise ShardPatternError(
            f"training data {name!r}: {len(unreadable)} shard(s) cannot be read (first: {unreadable[0]})"
        )
    return [(u, None if _is_remote(u) else os.path.getsize(u)) for u in urls]


def _ends(path: str, n: int = 1 << 16) -> str:
    """A hash of the first and last ``n`` bytes of a file."""
    with open(path, "rb") as f:
        head = f.read(n)
        f.seek(max(0, os.path.getsize(path) - n))
        return hashlib.sha256(head + f.read(n)).hexdigest()[:16]


def shards_fingerprint(shards) -> str:
    """The shard list: each shard's name, and for a local shard its size and a hash of its first
    and last 64 KiB (a ``pipe:`` shard: its command); no image is read."""
    rows = [
        [Path(u).name if size is not None else u, size, _ends(u) if size is not None else None]
        for u, size in shards
    ]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- reading a shard


def _open(url: str):
    """A binary stream of the shard, and the subprocess behind it (None for a local file)."""
    if url.startswith(("http://", "https://")):
        url = f"pipe:curl -sfL {url}"
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return proc.stdout, proc
    return open(url, "rb"), None


def tar_samples(url: str):
    """Yield ``(index, sample)`` for each complete sample of shard ``url`` (files grouped by key:
    the name up to the first dot of its base name), then a final ``(None, error)``: None if the
    shard was read to its end, else why not (a truncated or non-tar shard, a failed command)."""
    error = None
    try:
        stream, proc = _open(url)
    except OSError as e:
        yield None, f"{type(e).__name__}: {e}"
        return
    i, key, sample = 0, None, {}
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                d, base = os.path.split(member.name)
                if base.startswith(".") or "." not in base:
                    continue
                k, ext = os.path.join(d, base.split(".", 1)[0]), base.split(".", 1)[1].lower()
                data = tar.extractfile(member).read()
                if k != key:
                    if sample:
                        yield i, sample
                        i += 1
                    key, sample = k, {"__key__": k}
                sample[ext] = data
        if sample:
            yield i, sample
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        stream.close()
        if proc is not None:
            rc = proc.wait()
            if rc and error is None:
                error = f"command exited with status {rc}"
    yield None, error


def decode(sample: dict, transform, shard: str, strict: bool):
    """``(uint8 image, captions)`` of a sample, or ``(None, reason)`` with reason ``no_caption`` /
    ``undecodable``; under ``strict`` a bad sample raises instead."""
    from PIL import Image

    where = f"{shard}, key {sample['__key__']}"
    image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
    captions = _captions_of(sample["txt"]) if "txt" in sample else []
    if not captions and "json" in sample:
        try:
            captions = _captions_of(json.loads(sample["json"]))
        except ValueError:
            captions = []
    if image is None or not captions:
        if strict:
            raise DataError(f"webdataset sample {where} has no {'image' if image is None else 'caption'}")
        return None, "no_caption"
    try:
        with Image.open(io.BytesIO(image)) as img:
            img.load()
            return transform(img.convert("RGB")), captions
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds
        if strict:
            raise UndecodableImageError(
                f"webdataset sample {where}: image cannot be decoded ({type(e).__name__}: {e}); drop "
                "--strict-images to skip and count such samples"
            ) from None
        return None, "undecodable"


# ----------------------------------------------------------------------------- the stream


class ShardStream(torch.utils.data.IterableDataset):
    """This rank's local batches, in order, as dicts (``images``, ``captions``, ``stream``,
    ``counts``); see the module doc for the split and the order."""

    def __init__(
        self, urls, seed, rank, world, local_batch, image_size, preprocess_cfg, strict, shuffle=SHUFFLE
    ):
        self.urls, self.seed, self.rank, self.world = list(urls), int(seed), rank, world
        self.local_batch, self.image_size, self.preprocess_cfg = local_batch, image_size, preprocess_cfg
        self.strict, self.shuffle = strict, max(1, int(shuffle))

    def parts(self, g: int):
        """The (shard, part, parts) sequence of logical stream ``g`` (of ``STREAMS * world``)."""
        slots = STREAMS * self.world
        k = math.ceil(slots / len(self.urls))
        units = [(s, p) for s in range(len(self.urls)) for p in range(k)]
        for epoch in count():
            perm = np.random.default_rng([self.seed, epoch, 4242]).permutation(len(units))
            for pos in range(len(units)):
                if (epoch * len(units) + pos) % slots == g:
                    yield (*units[perm[pos]], k)

    def samples(self, g: int, counts: dict):
        """Raw samples ``(shard, sample)`` of stream ``g``, its parts in order."""
        empty, limit = 0, 4 * len(self.urls) * math.ceil(STREAMS * self.world / len(self.urls)) + 8
        for shard, part, k in self.parts(g):
            url, got = self.urls[shard], 0
            for i, sample in tar_samples(url):
                if i is None:
                    if sample is not None:
                        if self.strict:
                            raise DataError(f"webdataset shard {url} cannot be read to its end: {sample}")
                        counts["bad_shards"] += 1
                    break
                if i % k == part:
                    got += 1
                    yield url, sample
            empty = 0 if got else empty + 1
            if empty > limit:
                raise DataError(
                    f"webdataset stream: {empty} shard parts in a row gave no sample "
                    f"(shards {self.urls[0]} ...; {dict(counts)}); check the shards"
                )

    def batches(self, g: int):
        """Local batches of stream ``g``: raw samples through a seeded shuffle buffer, then
        decoded; bad samples skipped and counted."""
        counts = {"bad_shards": 0, "no_caption": 0, "undecodable": 0}
        transform = pil_transform(self.preprocess_cfg, self.image_size)
        rng = np.random.default_rng([self.seed, g, 999])
        buf, out, bad = [], [], 0
        for item in self.samples(g, counts):
            if len(buf) < self.shuffle:
                buf.append(item)
                continue
            j = int(rng.integers(len(buf)))
            buf[j], (url, sample) = item, buf[j]
            image, captions = decode(sample, transform, url, self.strict)
            if image is None:
                counts[captions] += 1
                bad += 1
                if bad > max(1000, 4 * self.shuffle):
                    raise DataError(
                        f"webdataset stream: the last {bad} samples were all unusable ({counts}); "
                        "check the shards"
                    )
                continue
            bad = 0
            out.append((image, captions))
            if len(out) == self.local_batch:
                yield {
                    "images": torch.from_numpy(np.stack([o[0] for o in out])),
                    "captions": [o[1] for o in out],
                    "stream": g % STREAMS,
                    "counts": dict(counts),
                }
                out = []

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        gens = {s: self.batches(self.rank * STREAMS + s) for s in range(STREAMS) if s % n == w}
        for k in count(w, n):
            yield next(gens[k % STREAMS])


def worker_count(requested: int | None = None) -> int:
    """DataLoader workers: ``requested`` (``budget.loader_workers`` when set; default
    ``$HARNESS_WDS_WORKERS``, else up to 4 of the CPUs), rounded down to a divisor of
    :data:`STREAMS` (0: decode in the training process)."""
    if requested is None:
        env = os.environ.get("HARNESS_WDS_WORKERS")
        requested = int(env) if env else min(4, max(1, (os.cpu_count() or 1) - 1))
    requested = max(0, min(int(requested), STREAMS))
    return max(d for d in (0, 1, 2, 4, 8) if d <= requested)


class StreamingTrainData:
    """The trainer's view of the stream: ``batch(step, ...)`` for steps in order (a step asked out
    of order is served from the batches kept ahead, or by restarting the stream and skipping)."""

    provides = frozenset({"image", "text", "image_view", "labels"})
    #: decodes ahead in its own DataLoader workers: the trainer adds no prefetch threads on top
    prefetches = True

    def __init__(
        self,
        name,
        shards,
        tokenizer,
        seed,
        image_size,
        preprocess_cfg,
        strict=False,
        workers=None,
        shuffle=SHUFFLE,
    ):
        self.name, self.shards, self.tokenizer, self.seed = name, list(shards), tokenizer, int(seed)
        self.image_size, self.preprocess_cfg, self.strict = image_size, preprocess_cfg, strict
        self.workers, self.shuffle = worker_count(workers), shuffle
        self.fingerprint = shards_fingerprint(self.shards)
        self._it, self._next, self._ahead = None, 0, {}
        self._counts: dict[int, dict] = {}

    def __len__(self) -> int:  # unknown without reading every shard; objectives needing it need `index`
        return 1 << 30

    @property
    def counts(self) -> dict[str, int]:
        """Samples and shards skipped so far, summed over the streams seen."""
        out = {"bad_shards": 0, "no_caption": 0, "undecodable": 0}
        for c in self._counts.values():
            for k, v in c.items():
                out[k] += v
        return out

    @property
    def n_undecodable(self) -> int:
        return self.counts["undecodable"]

    def _start(self, local_batch: int) -> None:
        self.close()
        rank, world = world_info()
        ds = ShardStream(
            [u for u, _ in self.shards], self.seed, rank, world, local_batch,
            self.image_size, self.preprocess_cfg, self.strict, self.shuffle,
        )  # fmt: skip
        kw = {"prefetch_factor": 4, "persistent_workers": False} if self.workers else {}
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.workers, **kw)
        self._it, self._next, self._ahead, self._local = iter(loader), 0, {}, local_batch

    def raw(self, step: int, local_batch: int) -> dict:
        if self._it is None or self._local != local_batch or (step < self._next and step not in self._ahead):
            self._start(local_batch)
        while step not in self._ahead:
            self._ahead[self._next] = next(self._it)
            self._next += 1
        out = self._ahead.pop(step)
        self._ahead = {s: b for s, b in self._ahead.items() if s > step - 64}  # skipped long ago
        self._counts[out["stream"]] = out["counts"]
        return out

    def batch(self, step: int, batch_size: int, fields) -> Batch:
        rank, world = world_info()
        if batch_size % world:
            raise DataError(f"global batch {batch_size} is not divisible by the world size {world}")
        local = batch_size // world
        raw = self.raw(step, local)
        out = Batch()
        images = raw["images"]
        if "image" in fields:
            out.images = images
        if "image_view" in fields:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1009 + rank)
            out.image_view = jitter(images, g)
        if "text" in fields:
            rng = np.random.default_rng([self.seed, step, rank, 31337])
            out.tokens = self.tokenizer([c[int(rng.integers(len(c)))] for c in raw["captions"]])
        if "labels" in fields:  # each sample its own class
            out.labels = torch.arange(local) + step * batch_size + rank * local
        return out

    def close(self) -> None:
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class WebDatasetSet(TrainSet):
    """Webdataset shards streamed from disk or an object store (``--data wds=PATTERN``)."""

    kind, provides, license = "image-text (stream)", StreamingTrainData.provides, "that of the shards"
    doc = (
        "webdataset shards in img2dataset's layout (jpg + txt/json), streamed: --data "
        "wds='/data/cc3m/{00000..00331}.tar' or 'pipe:aws s3 cp s3://.../{00000..00331}.tar -'; "
        "decoded in DataLoader workers, exactly budget.steps batches"
    )

    @classmethod
    def describe(cls) -> dict:
        return {**super().describe(), "dataset": f"--data {cls.name}=PATTERN (webdataset shards)"}

    def check_data(self, ctx: TrainContext) -> None:
        shard_list(self.name, ctx.options.paths.get(self.name))

    def build(self, ctx: TrainContext):
        shards = shard_list(self.name, ctx.options.paths.get(self.name))
        return StreamingTrainData(
            self.name, shards, ctx.tokenizer, ctx.seed, ctx.image_size, ctx.preprocess_cfg,
            strict=ctx.options.strict_images, workers=ctx.loader_workers or None,
        )  # fmt: skip

    def fingerprint(self, data, ctx: TrainContext) -> str:
        return data.fingerprint
