import sys
import types
from importlib.metadata import EntryPoint

import pytest

import harness.core.registry as registry_mod
from harness.core.registry import Registry, UnknownNameError
from objectives import OBJECTIVES, Objective
from tasks import TASKS


class Base:
    pass


def fake_module(monkeypatch, name, **attrs):
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def test_decorator_and_lookup():
    reg = Registry("thing", "harness.test-things", base=Base)

    @reg.register("alpha")
    class Alpha(Base):
        pass

    assert reg.get("alpha") is Alpha and Alpha.name == "alpha"
    assert reg.names() == ["alpha"]
    with pytest.raises(UnknownNameError, match="Did you mean 'alpha'"):
        reg.get("alpah")
    with pytest.raises(TypeError, match="subclass of Base"):
        reg.register("bad")(int)


def test_entry_points_are_lazy_and_broken_plugins_are_skipped(monkeypatch):
    class Good(Base):
        pass

    loaded = []

    def good_loader():
        loaded.append("good")
        return Good

    fake_module(monkeypatch, "plug_good", Good=Good)
    eps = [
        EntryPoint("good", "plug_good:Good", "harness.test-things"),
        EntryPoint("broken", "plug_missing_module_xyz:Thing", "harness.test-things"),
    ]
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [e for e in eps if e.group == group])
    reg = Registry("thing", "harness.test-things", base=Base)
    assert reg.names() == ["broken", "good"]  # discovered without importing
    assert reg.get("good") is Good
    with pytest.raises(ImportError, match="broken.*failed to load.*ModuleNotFoundError"):
        reg.get("broken")
    assert "broken" in reg.failures and reg.names() == ["good"]
    assert [n for n, _ in reg.items()] == ["good"]


def test_builtins_are_declared_as_entry_points():
    from importlib.metadata import entry_points

    declared = {e.name for e in entry_points(group="harness.objectives")}
    assert {"clip", "siglip"} <= declared
    assert {"shapes-retrieval", "shapes-zeroshot"} <= {e.name for e in entry_points(group="harness.tasks")}
    assert issubclass(OBJECTIVES.get("clip"), Objective)
    assert TASKS.get("shapes-retrieval").main_score == "mean_recall@1"


def test_plugin_that_is_not_an_objective_is_rejected(monkeypatch):
    fake_module(monkeypatch, "plug_notobj", Thing=int)
    eps = [EntryPoint("notobj", "plug_notobj:Thing", "harness.objectives")]
    monkeypatch.setattr(
        registry_mod, "entry_points", lambda group: eps if group == "harness.objectives" else []
    )
    reg = Registry("objective", "harness.objectives", base=Objective)
    with pytest.raises(ImportError, match="subclass of Objective"):
        reg.get("notobj")


def test_autoload_can_be_disabled(monkeypatch):
    monkeypatch.setenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = Registry("objective", "harness.objectives", base=Objective)
    assert reg.names() == []


def test_every_registered_task_and_objective_is_an_entry_point():
    """pyproject.toml lists every built-in task and objective (a task missing there would only be
    found when some other import happened to load its module), and each entry resolves to it."""
    import importlib
    import pkgutil
    from pathlib import Path

    import tomllib

    import objectives
    import tasks

    root = Path(__file__).resolve().parents[2]
    eps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"]
    for package, group, registry in (
        (tasks, "harness.tasks", tasks.TASKS),
        (objectives, "harness.objectives", objectives.OBJECTIVES),
    ):
        for mod in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{mod.name}")
        declared = eps[group]
        for name, target in declared.items():
            module, attr = target.split(":")
            assert getattr(importlib.import_module(module), attr).name == name
        builtin = {n for n, cls in registry.items() if cls.__module__.split(".")[0] == package.__name__}
        assert builtin <= set(declared), f"missing from pyproject {group}: {sorted(builtin - set(declared))}"
