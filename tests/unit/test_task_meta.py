"""Declared task metadata (:class:`TaskMeta`): checked when a task class is defined or registered,
valid for every registered task, ``describe()`` unchanged for the built-ins, results checked against
the declared metrics, and the family bases' evaluation flow (timing, split redirection, cache,
provenance)."""

import json
import re
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import harness.core.registry as registry_module
from harness.core.data import HubSource
from harness.core.task import FAMILIES, TaskRegistry, declares, metric_pattern
from tasks import TASKS, EmbeddingCache, EvalContext, Suite, Task, TaskDeclarationError, TaskMeta
from tasks.base import DatasetTask, ShapesTask

#: ``{name: cls.describe()}`` of every built-in, captured before the metadata were declared
FIXTURE = Path(__file__).parent / "fixtures" / "task_describe.json"


# ------------------------------------------------------------------------- checked at definition


def test_a_main_score_not_among_the_metrics_fails_at_definition():
    with pytest.raises(TaskDeclarationError) as e:

        class Typo(Task):
            name, family, main_score = "typo-task", "retrieval", "mean_recall@l"
            metrics = ("mean_recall@{k:1|5|10}", "rsum")

    msg = str(e.value)
    assert msg.startswith("task 'typo-task' (test_task_meta:")
    assert (
        "main_score 'mean_recall@l' is not among the metrics it declares (mean_recall@{k:1|5|10}, rsum)"
        in msg
    )


def test_an_unnamed_class_is_checked_when_registered():
    class Late(Task):  # a family base, until the registry names it
        family, main_score, metrics = "zeroshot", "acc", ("acc1",)

    with pytest.raises(TaskDeclarationError, match=r"'late-typo' .*main_score 'acc' is not among .*\(acc1\)"):
        TASKS.register("late-typo")(Late)
    assert "late-typo" not in TASKS


class BadPlugin(Task):
    """Loaded through an entry point below: it fails its check there, not at import."""

    family, main_score, metrics = "sts", "spearman", ("pearson",)


def test_a_plugin_with_a_bad_declaration_is_reported_and_skipped(monkeypatch):
    ep = EntryPoint("bad-plugin", "test_task_meta:BadPlugin", "harness.tasks")
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [ep])
    reg = TaskRegistry("task", "harness.tasks", base=Task)
    assert list(reg.items()) == []
    failure = reg.failures["bad-plugin"]
    assert "TaskDeclarationError" in failure.error and "main_score 'spearman'" in failure.error
    with pytest.raises(ImportError, match="bad-plugin"):
        reg.get("bad-plugin")


GOOD = {"name": "some-task", "family": "retrieval", "main_score": "acc", "metrics": ("acc",)}
BAD = [
    ({"family": ""}, "family must be a non-empty string, got ''"),
    ({"version": 2}, "version must be a non-empty string, got 2"),
    ({"higher_is_better": "yes"}, "higher_is_better must be True or False, got 'yes'"),
    ({"aggregate": None}, "aggregate must be True or False"),
    ({"modality": "audio"}, "modality must be one of image-text, text, image, got 'audio'"),
    ({"splits": "test"}, "splits must be a non-empty tuple of split names, got 'test'"),
    ({"splits": ("",)}, "splits must be a non-empty tuple of split names, got ('',)"),
    ({"splits": []}, "splits must be a non-empty tuple of split names, got ()"),
    ({"license": None}, "license must be a string, got None"),
    ({"citation": 3}, "citation must be a string, got 3"),
    ({"dataset": ["a"]}, "dataset must be a string"),
    ({"revision": ""}, "revision must be a non-empty string or None"),
    ({"default_train_data": ""}, "default_train_data must be a non-empty string"),
    ({"requires": "image"}, "requires must be a set of batch field names, got 'image'"),
    ({"metrics": ("acc", "{target/acc1")}, "metric key '{target/acc1' must be a non-empty string"),
    ({"metrics": "acc"}, "metrics must be a tuple of metric keys, got 'acc'"),
    ({"main_score": ""}, "declares no main_score"),
]


@pytest.mark.parametrize("attrs, message", BAD, ids=[f"{next(iter(a))}-{i}" for i, (a, _) in enumerate(BAD)])
def test_invalid_declarations_fail_at_definition(attrs, message):
    with pytest.raises(TaskDeclarationError, match=re.escape(message)):
        type("Bad", (Task,), {**GOOD, **attrs})


def test_a_plugin_family_and_an_undeclared_metrics_list_are_accepted():
    """A task written against the API before ``metrics`` existed keeps working: only its main score is
    checked, when it reports."""

    class Legacy(Task):
        name, family, main_score = "legacy-task", "my-family", "gap"

    assert Legacy.meta.metrics == () and Legacy.describe()["metrics"] == []
    r = Legacy().result({"gap": 0.5, "anything/else": 1})
    assert r.main_score == 0.5 and r.metrics == {"gap": 0.5, "anything/else": 1.0}
    with pytest.raises(ValueError, match=r"'legacy-task' reported no 'gap' \(its main score\); it reported"):
        Legacy().result({"other": 1.0})


def test_a_dataset_task_declares_a_hub_source():
    base = {"family": "sts", "main_score": "spearman", "metrics": ("spearman",)}
    with pytest.raises(TaskDeclarationError, match="source must be a HubSource"):
        type("NoSource", (DatasetTask,), {**base, "name": "no-source"})
    with pytest.raises(TaskDeclarationError, match="source needs a dataset id and a split"):
        type("NoRepo", (DatasetTask,), {**base, "name": "no-repo", "source": HubSource("")})
    with pytest.raises(TaskDeclarationError, match="revision must be a non-empty string or None"):
        type("NoRev", (DatasetTask,), {**base, "name": "no-rev", "source": HubSource("org/set", revision="")})
    with pytest.raises(TaskDeclarationError, match="validation_split must be a split name or None"):
        type(
            "BadVal",
            (DatasetTask,),
            {**base, "name": "bad-val", "source": HubSource("org/set"), "validation_split": ""},
        )
    good = type(
        "Good",
        (DatasetTask,),
        {**base, "name": "good-set", "source": HubSource("org/set", split="dev", revision="abc")},
    )
    assert (good.meta.dataset, good.meta.revision, good.meta.splits) == ("org/set", "abc", ("dev",))
    assert good.describe()["split"] == "dev" and good.describe()["dataset"] == "org/set"


def test_a_suite_declares_its_members():
    with pytest.raises(TaskDeclarationError, match="members must be a non-empty tuple of task names"):
        type("Empty", (Suite,), {"name": "empty-suite"})
    assert type("Pair", (Suite,), {"name": "pair-suite", "members": ("a", "b")}).meta.family == "suite"


def test_metric_patterns():
    assert declares(("{target}/acc1",), "shape/acc1") and not declares(("{target}/acc1",), "a/b/acc1")
    assert declares(("recall@{k:1|5|10}",), "recall@10") and not declares(("recall@{k:1|5|10}",), "recall@50")
    assert declares(("{kind:text|image}_score/{tag:.+}",), "text_score/a/b")
    assert not declares(("acc",), "acc1") and not declares(("n.x",), "nax")  # whole keys, literal dots
    with pytest.raises(ValueError, match="unbalanced"):
        metric_pattern("{target/acc1")


# -------------------------------------------------------------------------- the registered tasks


def test_every_registered_task_declares_valid_metadata():
    items = dict(TASKS.items())
    assert not TASKS.failures and items
    for name, cls in items.items():
        meta = cls.meta
        assert isinstance(meta, TaskMeta) and meta.name == name and TASKS.name_of(cls) == name
        if issubclass(cls, Suite):
            assert all(m in TASKS for m in cls.members), name
            continue
        assert meta.metrics and declares(meta.metrics, meta.main_score), name  # every built-in declares them
        assert meta.family in FAMILIES and meta.splits, name


def test_describe_is_unchanged_for_every_built_in():
    """``harness list tasks`` reads ``describe()``: every key and value it had is kept; only
    ``metrics`` (the declared keys) is new."""
    old = json.loads(FIXTURE.read_text())
    new = {n: json.loads(json.dumps(c.describe())) for n, c in TASKS.items()}
    assert set(new) == set(old)
    for name in old:
        assert {k: new[name].get(k) for k in old[name]} == old[name], name
        assert set(new[name]) - set(old[name]) == {"metrics"}, name


# ----------------------------------------------------------------------------- result and flow


def test_result_refuses_undeclared_keys_and_a_missing_main_score():
    class Declared(Task):
        name, family, main_score = "declared-task", "zeroshot", "acc1"
        metrics = ("acc1", "{target:shape|colour}/acc1")

    assert Declared().result({"acc1": 1.0, "shape/acc1": 1.0}).main_score == 1.0
    message = (
        "'declared-task' reported metrics it does not declare: layout/acc1, acc5; it declares: acc1, "
        "{target:shape|colour}/acc1"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        Declared().result({"acc1": 1.0, "layout/acc1": 0.0, "acc5": 1.0})
    with pytest.raises(ValueError, match="reported no 'acc1'"):
        Declared().result({"shape/acc1": 1.0})


class PairCosine(ShapesTask):
    """docs/extending.md's plugin sketch: the mean cosine of each image and its caption."""

    family = "geometry"
    main_score = "mean_cosine_positive"
    metrics = ("mean_cosine_positive",)

    def score(self, ctx, split):
        sp = ctx.world.split(split)
        img = F.normalize(self.image_embeddings(ctx, split, sp.images).double(), dim=-1)
        txt = F.normalize(self.text_embeddings(ctx, split, "captions", sp.full_captions).double(), dim=-1)
        cos = (img * txt).sum(-1)
        return {"mean_cosine_positive": float(cos.mean())}, dict(
            item_scores=cos.tolist(), n_items=len(cos), **self.provenance(ctx, split)
        )


class Identity:
    def encode_image(self, images):
        return images

    def encode_text(self, texts):
        return torch.tensor([[1.0, 0.0] if t == "right" else [0.0, 1.0] for t in texts])


def test_a_family_base_times_redirects_caches_and_records_provenance():
    images = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    scenes = {s: SimpleNamespace(images=images, full_captions=["right", "up"]) for s in ("test", "val")}
    world = SimpleNamespace(split=scenes.__getitem__, fingerprint="fp")
    TASKS.register("pair-cosine")(PairCosine)
    try:
        for validation, split in ((False, "test"), (True, "val")):
            ctx = EvalContext(encoder=Identity(), world=world, cache=EmbeddingCache(), validation=validation)
            r = TASKS.get("pair-cosine")().evaluate(ctx)
            assert (r.task, r.family, r.diagnostic, r.dataset, r.dataset_fingerprint) == (
                "pair-cosine",
                "geometry",
                True,
                f"shapes-world/{split}",
                "fp",
            )
            assert r.main_score == pytest.approx((1 + 2**-0.5) / 2) and r.n_items == 2 and r.seconds > 0
            assert (id(ctx.encoder), "shapes", split, "image") in ctx.cache._store
    finally:
        TASKS.unregister("pair-cosine")


def test_a_task_without_score_or_evaluate_says_so():
    class Empty(Task):
        name, family, main_score = "empty-task", "geometry", "x"

    with pytest.raises(NotImplementedError, match="'empty-task' implements neither score"):
        Empty().evaluate(EvalContext(encoder=None))
