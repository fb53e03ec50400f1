import pytest

from harness.config import BUDGET_PRESETS, ConfigError, RunConfig, parse_set, resolve_config


def test_defaults_and_presets():
    cfg = resolve_config()
    assert cfg.objective == "siglip" and cfg.tasks == ["shapes-retrieval"] and cfg.budget_preset == "default"
    smoke = resolve_config("smoke")
    assert smoke.budget.steps < 20 and smoke.model.name == "harness-micro"
    gpu = resolve_config("gpu")
    assert gpu.budget.precision == "bf16" and gpu.budget.device == "cuda"
    assert set(BUDGET_PRESETS) == {"smoke", "default", "gpu", "datacomp-small", "datacomp-medium"}


def test_unknown_key_names_key_and_valid_ones(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("budget:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as e:
        resolve_config(file=f)
    msg = str(e.value)
    assert "budget.stepz" in msg and "steps" in msg and "batch_size" in msg
    with pytest.raises(ConfigError, match="unknown key 'objectiv'"):
        resolve_config(sets=["objectiv=clip"])


@pytest.mark.parametrize(
    "setting, field",
    [
        ("budget.steps=0", "budget.steps"),
        ("budget.batch_size=1", "budget.batch_size"),
        ("budget.lr=-0.1", "budget.lr"),
        ("shapes.image_size=3", "shapes.image_size"),
        ("shapes.mention_order=sideways", "shapes.mention_order"),
        ("tasks=[]", "tasks"),
    ],
)
def test_invalid_values_name_the_field(setting, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        resolve_config(sets=[setting])


def test_precedence_preset_file_flags_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("budget_preset: smoke\nobjective: clip\nbudget:\n  steps: 5\n  lr: 0.01\nseed: 3\n")
    cfg = resolve_config(file=f, flags={"budget": {"steps": 6}}, sets=["budget.lr=0.02"])
    assert cfg.budget_preset == "smoke" and cfg.model.name == "harness-micro"
    assert cfg.objective == "clip" and cfg.seed == 3
    assert cfg.budget.steps == 6 and cfg.budget.lr == 0.02


def test_malformed_files(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_config(file=f)
    f.write_text("budget: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(file=f)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(file=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(["steps"])
    with pytest.raises(ConfigError, match="unknown budget preset"):
        resolve_config("huge")


def test_identity_covers_what_defines_the_run_only():
    a = resolve_config("smoke")
    same = resolve_config(
        "smoke", flags={"tracking": {"experiment": "other", "run_name": "x"}}, sets=["budget.log_every=1"]
    )
    assert a.identity == same.identity
    for s in [
        "seed=1",
        "objective=clip",
        "budget.steps=9",
        "shapes.mention_order=fixed",
        "shapes.attributes=2",
        "shapes.caption_completeness=0.5",
        "shapes.two_object_fraction=0.5",
        "shapes.image_size=48",
        "objective_params.temperature=0.2",
    ]:
        assert resolve_config("smoke", sets=[s]).identity != a.identity, s
    assert resolve_config("smoke", sets=["objective=clip"]).budget_id == a.budget_id
    assert resolve_config("smoke", sets=["budget.steps=9"]).budget_id != a.budget_id


def test_set_parses_term_params_of_weighted_sums():
    d = parse_set(["objective_params.siglip.bias=-5", "budget.grad_clip=null"])
    assert d == {"objective_params": {"siglip.bias": -5}, "budget": {"grad_clip": None}}
    assert RunConfig.model_validate(d).budget.grad_clip is None
