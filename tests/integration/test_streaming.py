"""Streaming webdataset training data (``--train-data wds``): shard patterns, determinism, the
rank / worker split, exactly ``steps`` batches, bad shards, and a smoke run end to end. The shards
are written here in img2dataset's layout ({key}.jpg, {key}.txt, {key}.json per sample)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.core.errors import DataError, UndecodableImageError
from harness.data import streaming as st


def _jpeg(i: int, size=(24, 20)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), (17 * i % 255, 90, 255 - 13 * i % 255), np.uint8)).save(
        buf, format="JPEG"
    )
    return buf.getvalue()


def write_shard(path: Path, shard: int, n: int, no_caption=(), bad_image=()) -> list[str]:
    """One img2dataset shard: keys SSSSSIIII; sample ``i`` in ``no_caption`` has no .txt, in
    ``bad_image`` a .jpg that is not a JPEG. Returns the keys."""
    keys = []
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            key = f"{shard:05d}{i:04d}"
            keys.append(key)
            files = {f"{key}.jpg": b"not a jpeg" if i in bad_image else _jpeg(shard * 100 + i)}
            if i not in no_caption:
                files[f"{key}.txt"] = f"caption of {key}".encode()
            files[f"{key}.json"] = json.dumps({"key": key, "status": "success"}).encode()
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return keys


def shards(root: Path, count: int, n: int) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(count):
        write_shard(root / f"{s:05d}.tar", s, n)
    return str(root / ("{00000..%05d}.tar" % (count - 1)))


class Tok:
    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.inv: dict[int, str] = {}

    def __call__(self, texts):
        ids = []
        for t in texts:
            if t not in self.vocab:
                self.vocab[t] = len(self.vocab) + 1
                self.inv[self.vocab[t]] = t
            ids.append(self.vocab[t])
        return torch.tensor(ids)[:, None]


def data(pattern: str, seed=0, workers=0, shuffle=4, strict=False, tok=None):
    return st.StreamingTrainData(
        "wds", st.shard_list("wds", pattern), tok or Tok(), seed, 16, None, strict=strict, workers=workers,
        shuffle=shuffle,
    )  # fmt: skip


def keys_of(d, steps: int, batch: int) -> list[list[str]]:
    out = []
    for step in range(steps):
        raw = d.raw(step, batch)
        out.append([c[0].split()[-1] for c in raw["captions"]])
    return out


# ----------------------------------------------------------------------------- patterns


def test_brace_patterns_expand_with_padding_and_lists():
    assert st.expand_braces("a/{000..002}.tar") == ["a/000.tar", "a/001.tar", "a/002.tar"]
    assert st.expand_braces("{x,y}-{8..10}") == ["x-8", "x-9", "x-10", "y-8", "y-9", "y-10"]
    assert st.expand_braces("pipe:aws s3 cp s3://b/{0..1}.tar -") == [
        "pipe:aws s3 cp s3://b/0.tar -",
        "pipe:aws s3 cp s3://b/1.tar -",
    ]
    for bad in ("a{00..", "a}b", "{5..2}.tar", "{abc}.tar"):
        with pytest.raises(st.ShardPatternError):
            st.expand_braces(bad)


def test_shard_list_sizes_fingerprint_and_errors(tmp_path):
    pattern = shards(tmp_path / "s", 3, 4)
    got = st.shard_list("wds", pattern)
    assert [Path(u).name for u, _ in got] == ["00000.tar", "00001.tar", "00002.tar"]
    assert all(size == Path(u).stat().st_size for u, size in got)
    assert st.shard_list("wds", str(tmp_path / "s")) == got  # a directory: its .tar files
    fp = st.shards_fingerprint(got)
    write_shard(tmp_path / "s" / "00001.tar", 1, 5)  # one more sample: another size, another fingerprint
    assert st.shards_fingerprint(st.shard_list("wds", pattern)) != fp
    with pytest.raises(st.ShardPatternError, match="matches no shard"):
        st.shard_list("wds", str(tmp_path / "nowhere" / "{0..3}.tar"))
    with pytest.raises(st.ShardPatternError, match="missing"):
        st.shard_list("wds", str(tmp_path / "s" / "{00000..00009}.tar"))
    with pytest.raises(st.ShardPatternError, match="--data wds=PATTERN"):
        st.shard_list("wds", None)
    assert st.shard_list("wds", "pipe:cat x.tar") == [("pipe:cat x.tar", None)]


# ----------------------------------------------------------------------------- the stream


def test_same_seed_same_batches_and_workers_do_not_change_them(tmp_path):
    pattern = shards(tmp_path / "s", 3, 10)
    a = keys_of(data(pattern, seed=1), 6, 4)
    assert a == keys_of(data(pattern, seed=1), 6, 4)
    assert a == keys_of(data(pattern, seed=1, workers=2), 6, 4)
    assert a != keys_of(data(pattern, seed=2), 6, 4)
    d = data(pattern, seed=1)  # steps asked out of order (the trainer's prefetch threads) or again
    order = [1, 0, 3, 2, 5, 4]
    got = {s: [c[0].split()[-1] for c in d.raw(s, 4)["captions"]] for s in order}
    assert [got[s] for s in range(6)] == a
    assert [c[0].split()[-1] for c in d.raw(2, 4)["captions"]] == a[2]  # restarts the stream


def test_ranks_and_streams_split_each_epoch_without_overlap(tmp_path):
    """Every logical stream of every rank (world size 2) reads its parts of epoch 0: together they
    read each sample exactly once."""
    n, count = 10, 3
    pattern = shards(tmp_path / "s", count, n)
    urls = [u for u, _ in st.shard_list("wds", pattern)]
    world, slots = 2, 2 * st.STREAMS
    units = count * -(-slots // count)
    seen: list[str] = []
    for rank in range(world):
        ds = st.ShardStream(urls, 0, rank, world, 2, 16, None, False)
        for s in range(st.STREAMS):
            g = rank * st.STREAMS + s
            parts = ds.parts(g)
            for _ in range(len(range(g, units, slots))):
                shard, part, k = next(parts)
                seen += [
                    x["__key__"] for i, x in st.tar_samples(urls[shard]) if i is not None and i % k == part
                ]
    assert len(seen) == len(set(seen)) == n * count


def test_rank_batches_do_not_overlap(tmp_path, monkeypatch):
    pattern = shards(tmp_path / "s", 2, 24)
    got = {}
    for rank in range(2):
        monkeypatch.setattr(st, "world_info", lambda r=rank: (r, 2))
        got[rank] = {k for b in keys_of(data(pattern, shuffle=1), 4, 2) for k in b}
    assert got[0] and got[1] and not got[0] & got[1]


@pytest.mark.parametrize("count", [1, 3])
def test_exactly_steps_batches_whatever_the_shard_count(tmp_path, count):
    """10 samples in all (1 shard) or 3 x 4: 12 steps of 4 run through several epochs."""
    pattern = shards(tmp_path / "s", count, 10 if count == 1 else 4)
    d = data(pattern, workers=1)
    tok = d.tokenizer
    for step in range(12):
        b = d.batch(step, 4, {"image", "text", "image_view", "labels"})
        assert b.images.shape == (4, 16, 16, 3) and b.images.dtype == torch.uint8
        assert b.image_view.shape == b.images.shape and b.tokens.shape == (4, 1)
        assert all(tok.inv[int(t)].startswith("caption of ") for t in b.tokens[:, 0])
        assert b.labels.tolist() == list(range(step * 4, step * 4 + 4))
    assert d.counts == {"bad_shards": 0, "no_caption": 0, "undecodable": 0}
    d.close()


def test_bad_shards_and_samples_are_skipped_and_counted(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    write_shard(root / "00000.tar", 0, 12, no_caption={3}, bad_image={5})
    write_shard(root / "00001.tar", 1, 12)
    raw = (root / "00001.tar").read_bytes()
    (root / "00001.tar").write_bytes(raw[: len(raw) // 2 + 100])  # truncated mid-member
    d = data(str(root / "{00000..00001}.tar"), shuffle=1)
    for step in range(16):
        assert d.raw(step, 3)["images"].shape[0] == 3
    counts = d.counts
    assert counts["no_caption"] >= 1 and counts["undecodable"] >= 1 and counts["bad_shards"] >= 1
    # strict: each is an error naming the shard and the key
    with pytest.raises(DataError, match="cannot be read to its end|has no caption|cannot be decoded"):
        strict = data(str(root / "{00000..00001}.tar"), shuffle=1, strict=True)
        for step in range(8):
            strict.raw(step, 3)
    bad_only = tmp_path / "b"
    bad_only.mkdir()
    write_shard(bad_only / "0.tar", 0, 6, bad_image={0, 1, 2, 3, 4, 5})
    with pytest.raises(UndecodableImageError, match="image cannot be decoded"):
        data(str(bad_only / "0.tar"), shuffle=1, strict=True).raw(0, 2)


def test_pipe_shards(tmp_path):
    pattern = shards(tmp_path / "s", 2, 6)
    a = keys_of(data(pattern), 3, 4)
    assert a == keys_of(data(f"pipe:cat {tmp_path / 's'}/{{00000..00001}}.tar"), 3, 4)


# ----------------------------------------------------------------------------- the command


def _run(workdir, tmp_path, *extra):
    from harness.cli.main import main

    return main(
        [
            "-q", "run", "--budget", "smoke", "--output-dir", str(workdir), "--train-data", "wds",
            "--objective", "clip", "--task", "shapes-retrieval", "--batch-size", "8", "--steps", "3", *extra,
        ]
    )  # fmt: skip


@pytest.mark.parametrize(
    "pattern, message",
    [("{00000..", "unbalanced"), ("nowhere/{0..3}.tar", "matches no shard")],
)
def test_bad_patterns_exit_2_before_any_run(workdir, tmp_path, capsys, pattern, message):
    from conftest import runs

    rc = _run(workdir, tmp_path, "--data", f"wds={tmp_path / pattern}")
    assert rc == 2 and message in capsys.readouterr().err
    assert runs(workdir) == []


def test_smoke_run_streams_one_shard(workdir, tmp_path, monkeypatch):
    from conftest import runs

    monkeypatch.setenv("HARNESS_WDS_WORKERS", "1")
    pattern = shards(tmp_path / "s", 1, 6)
    assert _run(workdir, tmp_path, "--data", f"wds={pattern}") == 0
    (run,) = runs(workdir)
    assert run.info.status == "FINISHED" and run.data.tags["harness.train_data"] == "wds"
    assert run.data.metrics["cost/samples_seen"] == 24
    assert run.data.tags["harness.dataset_fingerprint"] == st.shards_fingerprint(
        st.shard_list("wds", pattern)
    )


def test_budget_loader_workers_sets_the_stream_workers_and_no_prefetch_threads(
    workdir, tmp_path, monkeypatch
):
    """budget.loader_workers is the stream's DataLoader worker count (it overrides the environment);
    the trainer adds no prefetch threads on top; the batches, so the metrics, do not change."""
    from conftest import runs

    import harness.engine.trainer as trainer_mod

    seen = []
    real_init = st.StreamingTrainData.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        seen.append(self.workers)

    class NoPrefetch(trainer_mod.Prefetcher):
        def __init__(self, *a, **kw):
            raise AssertionError("a stream must not be wrapped in prefetch threads")

    monkeypatch.setattr(st.StreamingTrainData, "__init__", init)
    monkeypatch.setattr(trainer_mod, "Prefetcher", NoPrefetch)
    monkeypatch.setenv("HARNESS_WDS_WORKERS", "0")
    pattern = shards(tmp_path / "s", 1, 6)
    assert _run(workdir, tmp_path, "--data", f"wds={pattern}", "--set", "budget.loader_workers=2") == 0
    assert _run(workdir, tmp_path, "--data", f"wds={pattern}") == 0
    assert seen == [2, 0]
    a, b = runs(workdir)
    assert a.data.metrics["train/loss"] == b.data.metrics["train/loss"]


def test_strict_images_fails_the_run_on_a_bad_sample(workdir, tmp_path, monkeypatch, capsys):
    from conftest import runs

    monkeypatch.setenv("HARNESS_WDS_WORKERS", "0")
    (tmp_path / "s").mkdir()
    write_shard(tmp_path / "s" / "0.tar", 0, 12, bad_image=set(range(12)))
    rc = _run(workdir, tmp_path, "--data", f"wds={tmp_path / 's' / '0.tar'}", "--strict-images")
    assert rc != 0 and "cannot be decoded" in capsys.readouterr().err
    (run,) = runs(workdir)
    assert run.info.status == "FAILED"
