"""``harness list`` and the CLI's start-up: the parser does not import torch, the catalogue cache lists
exactly what a fresh build lists and is rebuilt when what it depends on changes, and the docs' tables
are the generated ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.cli import catalogue
from harness.cli.main import main
from harness.core.objective import OBJECTIVES
from harness.core.registry import Registry, source_stamps
from harness.core.task import TASKS

ROOT = Path(__file__).resolve().parents[2]
REGEN = "python -m harness.cli.catalogue"


def fresh_registry(kind: str) -> Registry:
    """A registry that knows only the entry points (nothing a test registered in this process)."""
    reg = OBJECTIVES if kind == "objectives" else TASKS
    return Registry(reg.kind, reg.group, base=reg.base)


def run_py(code: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "catalogue"
    monkeypatch.setenv("HARNESS_CATALOGUE_DIR", str(d))
    monkeypatch.delenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    return d


def test_parser_help_and_argument_errors_do_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from harness.cli.main import build_parser, main
        build_parser()
        assert 'torch' not in sys.modules, 'build_parser imported torch'
        for argv in (['--help'], ['run', '--help'], ['list', '--help'], ['run', '--budget', 'nope'],
                     ['list', 'nope']):
            try:
                main(argv)
            except SystemExit as e:
                assert e.code == (0 if '--help' in argv else 2), (argv, e.code)
            assert 'torch' not in sys.modules, argv
        print('ok')
    """)
    p = run_py(code)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]


def test_warm_listing_does_not_import_torch_and_equals_the_cold_one(tmp_path):
    env = {"HARNESS_CATALOGUE_DIR": str(tmp_path)}
    cold = subprocess.run(
        [sys.executable, "-m", "harness", "list", "objectives", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert cold.returncode == 0, cold.stderr[-3000:]
    assert list(tmp_path.glob("catalogue-objectives-*.json"))
    warm = run_py(
        "import sys\nfrom harness.cli.main import main\n"
        "rc = main(['list', 'objectives', '--json'])\n"
        "assert rc == 0 and 'torch' not in sys.modules, (rc, 'torch' in sys.modules)",
        env,
    )
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert warm.stdout == cold.stdout
    assert {"clip", "siglip"} <= {r["name"] for r in json.loads(warm.stdout)["entries"]}


@pytest.mark.parametrize("kind", ["objectives", "tasks"])
def test_cached_catalogue_equals_the_fresh_one(kind, cache_dir):
    built = catalogue.load(kind, use_cache=True)
    assert built.origin == "built" and not built.failed
    assert len(list(cache_dir.glob(f"catalogue-{kind}-*.json"))) == 1
    cached = catalogue.load(kind, use_cache=True)
    assert cached.origin == "cache"
    fresh = catalogue.build(kind, fresh_registry(kind))
    assert cached.rows == built.rows == fresh.rows
    assert catalogue.markdown(kind, cached.rows) == catalogue.markdown(kind, fresh.rows)
    assert catalogue.load(kind, refresh=True, use_cache=True).origin == "built"


def test_cli_output_from_the_cache_equals_the_built_one(cache_dir, monkeypatch, capsys):
    load = catalogue.load
    origins = []

    def cached_load(kind, refresh=False):
        cat = load(kind, refresh, use_cache=True)
        origins.append(cat.origin)
        return cat

    monkeypatch.setattr(catalogue, "load", cached_load)
    for fmt in (["--json"], ["--format", "md"], []):
        outs = []
        for _ in range(2):
            assert main(["list", "tasks", *fmt]) == 0
            outs.append(capsys.readouterr().out)
        assert outs[0] == outs[1] and outs[0]
    assert origins == ["built", "cache", "cache", "cache", "cache", "cache"]


PLUGIN = '''
from objectives import Objective


class Fake(Objective):
    """A plugin-like objective for the catalogue tests."""

    family = "fake"
    citation = {citation!r}

    def loss(self, batch):
        raise NotImplementedError
'''


def make_plugin(site: Path, module: str, body: str, version: str = "0.1") -> Path:
    """A distribution in ``site`` declaring ``fake-loss = MODULE:Fake`` in harness.objectives."""
    dist = site / f"fake_plugin-{version}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-plugin\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[harness.objectives]\nfake-loss = {module}:Fake\n")
    path = site / f"{module}.py"
    path.write_text(body)
    return path


def test_a_changed_plugin_module_invalidates_the_cache(cache_dir, tmp_path, monkeypatch):
    site, module = tmp_path / "site", "harness_catalogue_fake_plugin"
    path = make_plugin(site, module, PLUGIN.format(citation="Someone 2024, first version"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(catalogue, "registry", fresh_registry)  # not the session's (already discovered)
    first = catalogue.load("objectives", use_cache=True)
    fake = next(r for r in first.rows if r["name"] == "fake-loss")
    assert fake["citation"] == "Someone 2024, first version" and fake["family"] == "fake"
    assert catalogue.load("objectives", use_cache=True).origin == "cache"
    old_key = catalogue.key("objectives")
    path.write_text(PLUGIN.format(citation="Someone 2024, second version, longer"))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    monkeypatch.delitem(sys.modules, module)
    assert catalogue.key("objectives") != old_key
    second = catalogue.load("objectives", use_cache=True)
    assert second.origin == "built"
    assert next(r for r in second.rows if r["name"] == "fake-loss")["citation"].endswith("longer")
    # the same file with only its mtime changed, and a new version of the distribution: new keys
    k = catalogue.key("objectives")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert catalogue.key("objectives") != k
    k = catalogue.key("objectives")
    (site / "fake_plugin-0.1.dist-info").rename(site / "fake_plugin-0.2.dist-info")
    (site / "fake_plugin-0.2.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.2\n"
    )
    assert catalogue.key("objectives") != k


def test_a_failing_plugin_is_reported_every_time_and_never_cached(cache_dir, tmp_path, monkeypatch, capsys):
    site, module = tmp_path / "site", "harness_catalogue_broken_plugin"
    make_plugin(site, module, "raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(catalogue, "registry", fresh_registry)
    load = catalogue.load
    monkeypatch.setattr(catalogue, "load", lambda kind, refresh=False: load(kind, refresh, use_cache=True))
    for _ in range(2):
        assert main(["list", "objectives", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["failed"] == [
            {
                "name": "fake-loss",
                "source": f"{module}:Fake (fake-plugin 0.1)",
                "error": "ImportError: broken on purpose",
                "traceback": None,
            }
        ]
        assert "clip" in {r["name"] for r in data["entries"]}
        assert not list(cache_dir.glob("catalogue-objectives-*.json"))
    assert main(["list", "objectives"]) == 0
    assert "plugin 'fake-loss'" in capsys.readouterr().err


def test_source_stamps_find_files_without_importing(tmp_path, monkeypatch):
    pkg = tmp_path / "harness_stamp_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "b.py").write_text("y = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    stamps = source_stamps(["harness_stamp_pkg.a", "no_such_module_xyz"])
    assert set(stamps) == {str(pkg / n) for n in ("__init__.py", "a.py", "b.py")} | {"no_such_module_xyz"}
    assert stamps["no_such_module_xyz"] is None and "harness_stamp_pkg" not in sys.modules


def test_list_formats(capsys):
    assert main(["list", "objectives", "--json"]) == 0
    as_json = capsys.readouterr().out
    assert main(["list", "objectives", "--format", "json"]) == 0
    assert capsys.readouterr().out == as_json
    assert set(json.loads(as_json)) == {"entries", "failed"}
    assert main(["list", "objectives", "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| name | family | trains | needs |") and "\n| `clip` | softmax | image-text |" in md
    assert main(["list", "train-data", "--format", "md"]) == 2
    assert "--format md is for" in capsys.readouterr().err


@pytest.mark.parametrize("kind", sorted(catalogue.DOCS))
def test_docs_tables_are_the_generated_ones(kind):
    page = ROOT / catalogue.DOCS[kind]
    block = catalogue.docs_block(page.read_text(), kind)
    assert block is not None, f"{page.name} lost its {catalogue.begin_marker(kind)!r} block"
    cat = catalogue.build(kind, fresh_registry(kind))
    assert not cat.failed, f"{kind} failed to load: {[f['name'] + ': ' + f['error'] for f in cat.failed[:3]]}"
    expected = catalogue.markdown(kind, cat.rows)
    assert block == expected, (
        f"{catalogue.DOCS[kind]}'s table differs from `harness list {kind} --format "
        f"md`; regenerate the docs' tables with `{REGEN}`"
    )


def test_update_docs_rewrites_only_the_block(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / catalogue.DOCS["tasks"]
    page.write_text(f"# T\n\nbefore\n{catalogue.begin_marker('tasks')}\n| old |\n{catalogue.END}\nafter\n")
    assert catalogue.update_docs(tmp_path, "tasks", "| new |\n")
    new = f"# T\n\nbefore\n{catalogue.begin_marker('tasks')}\n| new |\n{catalogue.END}\nafter\n"
    assert page.read_text() == new
    assert not catalogue.update_docs(tmp_path, "tasks", "| new |\n")
