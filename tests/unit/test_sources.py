"""Bad datasets are refused early, each with one message naming the task and the path
(harness/sources.py): empty and unreadable local files in every format :func:`load_table` reads,
and missing Hub datasets refused at once when the Hub is offline or unreachable (no retry loop)."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import sys
import tarfile
import urllib.error
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.data import sources
from harness.data.sources import (
    DataError,
    DataOptions,
    DatasetUnavailableError,
    EmptyDatasetError,
    HubSource,
    UnreadableDataError,
    load_table,
)
from tasks.retrieval_real import CocoRetrieval
from tasks.sts_real import STS12, STSB

SOURCE = HubSource("example/some-set", split="test")


def empty_parquet(path: Path) -> Path:
    """A valid parquet file of 0 rows with COCO test's columns (what an interrupted export leaves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    captions = pa.array([], pa.list_(pa.string()))
    pq.write_table(pa.table({"image": pa.array([], image), "caption": captions}), path)
    return path


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _empty_image_folder(root: Path) -> Path:
    (root / "imgs" / "cat").mkdir(parents=True)
    return root / "imgs"


def _empty_dir(root: Path) -> Path:
    (root / "nothing").mkdir()
    return root / "nothing"


def _empty_save_to_disk(root: Path) -> Path:
    datasets.Dataset.from_dict({"a": []}).save_to_disk(str(root / "saved"))
    return root / "saved"


# every case: (what to build under root, the error class, words the message must hold)
CASES = {
    "empty parquet": (
        lambda r: empty_parquet(r / "test-00000.parquet").parent,
        EmptyDatasetError,
        ["no rows", "empty parquet file", "test-00000.parquet"],
    ),
    "random bytes .parquet": (
        lambda r: _write(r / "x.parquet", os.urandom(300)),
        UnreadableDataError,
        ["is not a readable parquet file", "x.parquet", "magic bytes"],
    ),
    "empty csv": (lambda r: _write(r / "pairs.csv", b""), EmptyDatasetError, ["no rows", "empty csv file"]),
    "csv header only": (
        lambda r: _write(r / "pairs.csv", b"sentence1,sentence2,score\n"),
        EmptyDatasetError,
        ["no rows"],
    ),
    "empty jsonl": (
        lambda r: _write(r / "pairs.jsonl", b"\n\n"),
        EmptyDatasetError,
        ["no rows", "empty json file"],
    ),
    "empty jsonl.gz": (
        lambda r: _write(r / "test.jsonl.gz", gzip.compress(b"")),
        EmptyDatasetError,
        ["no rows"],
    ),
    "json of no records": (lambda r: _write(r / "rows.json", b"[]"), EmptyDatasetError, ["no rows"]),
    "empty image folder": (
        _empty_image_folder,
        EmptyDatasetError,
        ["is empty", "holds no files", "image folder"],
    ),
    "empty webdataset dir": (
        lambda r: _tar(r / "wds" / "test" / "0.tar", {}).parent.parent,
        EmptyDatasetError,
        ["no rows", "empty webdataset file", "0.tar"],
    ),
    "not a tar": (
        lambda r: _write(r / "wds" / "0.tar", b"<html>404</html>").parent,
        UnreadableDataError,
        ["is not a readable tar (webdataset) file", "0.tar"],
    ),
    "no data files": (
        lambda r: _write(r / "dl" / "README.md", b"# readme").parent,
        UnreadableDataError,
        ["holds no data file of a format the harness reads", "found .md", "parquet"],
    ),
    "empty directory": (_empty_dir, EmptyDatasetError, ["is empty"]),
    "empty save_to_disk": (_empty_save_to_disk, EmptyDatasetError, ["no rows"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_local_data_is_refused_naming_task_and_path(tmp_path, capfd, case):
    build, kind, words = CASES[case]
    path = build(tmp_path)
    with pytest.raises(kind) as e:
        load_table("my-task", SOURCE, DataOptions(paths={"my-task": str(path)}))
    msg = str(e.value)
    assert isinstance(e.value, DataError) and not isinstance(e.value, DatasetUnavailableError)
    assert f"dataset for 'my-task' at {path}" in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    assert "\n" not in msg
    # the one message is the only report: no traceback or log line of the datasets builder besides it
    err = capfd.readouterr().err
    assert "Failed to read schema" not in err and "Traceback" not in err


def test_good_files_beside_a_bad_one_still_name_the_bad_one(tmp_path):
    root = tmp_path / "stsb"
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "score": [0.5]}).to_parquet(
        str(root / "data" / "test-00000-of-00002.parquet")
    )
    _write(root / "data" / "test-00001-of-00002.parquet", b"PAR1 truncated")
    with pytest.raises(UnreadableDataError, match="test-00001-of-00002.parquet is not a readable parquet"):
        STSB().check_data(DataOptions(paths={"stsb": str(root)}))


def test_real_tasks_check_data_refuse_empty_upstream_layouts(tmp_path):
    # COCO 5k test, the nlphuji parquet conversion layout TEST/test/0000.parquet, with 0 rows
    coco = empty_parquet(tmp_path / "coco" / "TEST" / "test" / "0000.parquet").parents[2]
    with pytest.raises(EmptyDatasetError, match=f"dataset for 'coco-retrieval' at {coco} has no rows"):
        CocoRetrieval().check_data(DataOptions(paths={"coco-retrieval": str(coco)}))
    # a single empty parquet file given directly
    one = empty_parquet(tmp_path / "empty.parquet")
    with pytest.raises(EmptyDatasetError, match="'coco-retrieval' at .*empty.parquet has no rows"):
        CocoRetrieval().check_data(DataOptions(paths={"coco-retrieval": str(one)}))
    # MTEB STS layout {split}.jsonl.gz, with an empty test file
    sts = _write(tmp_path / "sts12" / "test.jsonl.gz", gzip.compress(b"")).parent
    with pytest.raises(EmptyDatasetError, match="dataset for 'sts12' at .*sts12 has no rows"):
        STS12().check_data(DataOptions(paths={"sts12": str(sts)}))


def test_cli_refuses_an_empty_parquet_with_exit_2_and_writes_nothing(workdir, tmp_path, capsys):
    from conftest import runs

    from harness.cli.main import main

    empty = empty_parquet(tmp_path / "empty.parquet")
    rc = main(
        [
            "-q",
            "run",
            "--budget",
            "smoke",
            "--output-dir",
            str(workdir),
            "--objective",
            "clip",
            "--task",
            "coco-retrieval",
            "--train-data",
            "shapes",
            "--data",
            f"coco-retrieval={empty}",
        ]
    )
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert rc == 2 and "'coco-retrieval'" in err and str(empty) in err and "no rows" in err
    assert "DatasetGenerationError" not in err and "Traceback" not in err
    assert runs(workdir) == []


# ------------------------------------------------------------------------------- the Hub


@pytest.fixture
def no_retry(monkeypatch):
    """Any retry sleep of huggingface_hub fails the test."""
    from huggingface_hub.utils import _http

    def sleep(seconds):
        raise AssertionError(f"huggingface_hub retried (sleep {seconds}s)")

    monkeypatch.setattr(_http.time, "sleep", sleep)
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.setattr(sources, "_HUB_STATE", {})


def test_offline_mode_refuses_at_once_with_the_download_command(monkeypatch, no_retry):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_probe_hub", lambda *a: pytest.fail("offline mode must not probe the Hub"))
    with pytest.raises(DatasetUnavailableError) as e:
        CocoRetrieval().check_data(DataOptions())
    msg = str(e.value)
    src = CocoRetrieval.source
    assert f"dataset for 'coco-retrieval', {src.repo}" in msg
    assert "is not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE=1;" in msg
    assert (
        f"`hf download {src.repo} --repo-type dataset --revision {src.revision} --include "
        f"'{src.data_files}' --local-dir DIR`"
    ) in msg
    assert "--data coco-retrieval=DIR" in msg and f"$HARNESS_DATA_DIR/{src.repo}" in msg
    assert "huggingface-cli" not in msg and "\n" not in msg
    assert Path(sys.executable).with_name("hf").exists() or shutil.which("hf"), "the advised command exists"


def test_data_files_glob_is_passed_to_hf_download(monkeypatch, no_retry):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    src = HubSource("nlphuji/flickr30k", revision="refs/convert/parquet", data_files="TEST/test/*.parquet")
    with pytest.raises(DatasetUnavailableError, match=r"--include 'TEST/test/\*.parquet' --local-dir DIR"):
        load_table("flickr30k-retrieval", src, DataOptions())


def test_unreachable_hub_is_probed_once_and_never_retried(monkeypatch, no_retry):
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    probes, loads = [], []

    def urlopen(request, timeout):
        probes.append((request.get_method(), request.full_url, timeout))
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: loads.append(a) or pytest.fail("Hub load"))
    for task, name in ((CocoRetrieval(), "coco-retrieval"), (STSB(), "stsb")):
        with pytest.raises(DatasetUnavailableError) as e:
            task.check_data(DataOptions())
        msg = str(e.value)
        assert f"dataset for {name!r}" in msg and "the Hugging Face Hub cannot be reached" in msg
        assert "Name or service not known" in msg and "set HF_HUB_OFFLINE=1" in msg
        assert f"--data {name}=DIR" in msg and "hf download" in msg
    # one HEAD request with a short timeout for the whole process; no Hub load, no retry
    assert len(probes) == 1 and probes[0][0] == "HEAD" and probes[0][2] <= 5
    assert loads == []


def test_reachable_hub_loads_and_reports_its_error(monkeypatch, no_retry):
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def urlopen(request, timeout):  # any HTTP status means the Hub answered
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", None, None)

    def load_dataset(*a, **k):
        raise FileNotFoundError("Dataset 'example/some-set' doesn't exist on the Hub")

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(
        DatasetUnavailableError,
        match="could not be loaded from the Hugging Face Hub "
        r"\(FileNotFoundError: Dataset 'example/some-set'",
    ):
        load_table("my-task", SOURCE, DataOptions())
    assert sources._HUB_STATE == {huggingface_hub.constants.ENDPOINT: None}


def test_hf_datasets_offline_overrides_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    assert not sources.offline_mode()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert sources.offline_mode()
