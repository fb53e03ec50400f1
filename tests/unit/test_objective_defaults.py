"""The defaults table: every objective declares where each default comes from, the committed
docs/objective-defaults.md is the generated one, and iSogCLR's defaults are the official code's."""

import pytest

from harness.core.objective import OBJECTIVES, VERIFIED, DefaultSource
from objectives.defaults import DOC, render

NAMES = sorted(OBJECTIVES.names())


def test_committed_doc_equals_the_generated_one():
    assert DOC.read_text() == render(), "run: python -m objectives.defaults"


@pytest.mark.parametrize("name", NAMES)
def test_every_hyperparameter_has_a_source(name):
    cls = OBJECTIVES.get(name)
    assert set(cls.defaults_source) == set(cls.hparams), name
    for key, src in cls.defaults_source.items():
        assert isinstance(src, DefaultSource)
        assert src.source and src.regime, (name, key)
        assert src.verified in VERIFIED, (name, key)
    d = cls.describe()
    assert d["version"] == cls.version
    assert set(d["defaults_source"]) == set(cls.hparams)


def test_every_registered_objective_is_in_the_doc():
    text = DOC.read_text()
    for name in NAMES:
        assert f"## `{name}` (version " in text


def test_isogclr_defaults_are_the_official_ones():
    cls = OBJECTIVES.get("isogclr")
    defaults = {k: hp.default for k, hp in cls.hparams.items()}
    # bimodal_exps/models/losses.py, iSogCLR_New_Loss with per-sample temperatures
    assert defaults == {
        "tau_init": 0.01,
        "gamma": 0.8,
        "rho": 8.0,
        "eta": 1e-5,
        "beta": 0.5,
        "tau_min": 0.005,
        "tau_max": 0.05,
    }
    assert cls.version == "2"  # the defaults changed what a run produces: a new run identity


def test_only_objectives_whose_results_changed_are_past_version_one():
    """isogclr: official defaults; macl: log-ratio form; dispersive: exact self-distances."""
    bumped = {n: OBJECTIVES.get(n).version for n in NAMES if OBJECTIVES.get(n).version != "1"}
    assert bumped == {"isogclr": "2", "macl": "2", "dispersive": "2"}


def test_default_source_rejects_an_unknown_verification():
    with pytest.raises(ValueError, match="verified"):
        DefaultSource("paper", "CIFAR-10", "maybe")
