"""Strict config: unknown keys, wrong types, YAML floats, layering, hashing."""

from __future__ import annotations

import pytest
import yaml

from ltr_core.config import (ConfigError, config_hash, from_notebook, from_params, load_params, param_names,
                             parse_overrides, to_flat)


def test_defaults_and_sections():
    cfg = from_params({})
    assert cfg.data.dataset == "digits_lt" and cfg.optim.lr == 0.1 and cfg.train.epochs == 200
    assert cfg.run_id == "digits_lt-erm-default-s0"


def test_unknown_key_names_close_match_and_valid_keys():
    with pytest.raises(ConfigError) as err:
        from_params({"lrr": 0.1})
    msg = str(err.value)
    assert "unknown parameter 'lrr'" in msg and "did you mean 'lr'" in msg
    assert "valid parameters:" in msg and "weight_decay" in msg


@pytest.mark.parametrize("key,value,expected", [
    ("epochs", "ten", "parameter 'epochs' must be int"),
    ("epochs", 1.5, "parameter 'epochs' must be int"),
    ("lr", "fast", "parameter 'lr' must be float"),
    ("augment", "maybe", "parameter 'augment' must be bool"),
    ("epochs", True, "parameter 'epochs' must be int"),
    ("sampler", "balanced", "must be one of"),
])
def test_wrong_types_are_errors(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        from_params({key: value})


def test_yaml_exponent_without_dot_becomes_float(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("lr: 1e-3\nweight_decay: 5e-4\nepochs: 2\n")
    raw = yaml.safe_load(p.read_text())
    assert raw["lr"] == "1e-3"  # YAML 1.1: a string
    cfg = from_params(load_params(p))
    assert cfg.optim.lr == pytest.approx(0.001) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == pytest.approx(5e-4)


def test_int_given_for_float_and_list_fields():
    cfg = from_params({"lr": 1, "lr_milestones": [160, 180]})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.lr_milestones == (160, 180)
    with pytest.raises(ConfigError, match="lr_milestones"):
        from_params({"lr_milestones": [180, 160]})


def test_range_checks():
    with pytest.raises(ConfigError, match="divisible"):
        from_params({"batch_size": 10, "accum_steps": 3})
    with pytest.raises(ConfigError, match=r"'epochs' must be in \[1, inf\), got 0"):
        from_params({"epochs": 0})


def test_every_numeric_key_is_range_checked():
    """Each numeric key has an interval (RANGES, else >= 0); a value just outside it is refused by name."""
    import dataclasses

    from ltr_core.config import NONNEGATIVE, RANGES, SECTIONS, in_interval

    numeric = {f.name: f.type for cls in SECTIONS.values() for f in dataclasses.fields(cls) if f.type in ("int", "float")}
    assert set(RANGES) <= set(numeric), set(RANGES) - set(numeric)
    for key, tp in numeric.items():
        interval = RANGES.get(key, NONNEGATIVE)
        lo = float(interval[1:-1].split(",")[0])
        bad = lo - 1 if interval[0] == "[" else lo
        if tp == "float" and interval[0] == "[":
            bad = lo - 0.5
        with pytest.raises(ConfigError, match=rf"parameter '{key}' must be in"):
            from_params({key: bad if tp == "float" else int(bad)})
    assert in_interval(1.0, "(0, 1]") and not in_interval(0.0, "(0, 1]") and not in_interval(1.0, "[0, 1)")
    for key, value in (("max_steps_per_epoch", -1), ("eval_every", -2), ("shot_many", -1), ("lr_gamma", 1.5),
                       ("digits_test_per_class", 0), ("momentum", 1.0)):
        with pytest.raises(ConfigError, match=key):
            from_params({key: value})


def test_run_names_and_suites_stay_under_the_results_root():
    for params in ({"name": "../x"}, {"name": "a/b"}, {"suite": "../../etc"}, {"suite": "/abs"}, {"name": ".hidden"},
                   {"suite": "a/../b"}, {"suite": ""}):
        with pytest.raises(ConfigError, match="name|suite"):
            from_params(params)
    assert from_params({"name": "ce_ir100-b75f48", "suite": "quickstart/sub"}).run_path().parts[-3:] == (
        "quickstart", "sub", "digits_lt-erm-ce_ir100-b75f48-s0")


def test_base_layering_and_nested_rejected(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: 10\nlr: 0.2\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nlr: 0.3\n")
    assert load_params(tmp_path / "b.yaml") == {"epochs": 10, "lr": 0.3}
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="flat"):
        load_params(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_overrides_parse_as_yaml():
    assert parse_overrides(["epochs=2", "lr=1e-3", "name=x", "lr_milestones=[1, 2]"]) == {
        "epochs": 2, "lr": "1e-3", "name": "x", "lr_milestones": [1, 2]}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_roundtrip_and_hash_ignores_placement():
    cfg = from_params({"lr": 0.05, "epochs": 3, "lr_milestones": [1]})
    assert from_params(to_flat(cfg)) == cfg
    moved = from_params({**to_flat(cfg), "results_root": "/elsewhere", "data_root": "/data", "device": "cuda"})
    assert config_hash(moved) == config_hash(cfg)
    assert config_hash(from_params({**to_flat(cfg), "lr": 0.06})) != config_hash(cfg)


def test_from_notebook_skips_modules_and_catches_injected_typos():
    import math

    ns = {"math": math, "In": [], "_": 1, "lr": 0.2, "epochs": 3, "display": print}
    assert from_notebook(ns).optim.lr == 0.2
    with pytest.raises(ConfigError, match="epochz"):
        from_notebook({**ns, "epochz": 3})


def test_param_names_unique_and_complete():
    names = param_names()
    assert len(names) == len(set(names)) and {"lr", "dataset", "seed", "loss", "model"} <= set(names)


def test_defaults_unchanged_or_schema_bumped():
    """A changed default changes what every run leaving that key at its default computes, but not its
    hash (which covers only non-default keys): such a change must bump SCHEMA_VERSION. New keys are fine."""
    import json
    from pathlib import Path

    from ltr_core.config import SCHEMA_VERSION, default_flat

    snapshot = json.loads((Path(__file__).parent / "data" / "config_defaults.json").read_text())
    now = default_flat()
    changed = {k: (v, now[k]) for k, v in snapshot["defaults"].items() if k in now and now[k] != v}
    assert not changed or SCHEMA_VERSION != snapshot["schema"], (
        f"defaults changed {changed}: bump ltr_core.config.SCHEMA_VERSION and rewrite tests/data/config_defaults.json")


def test_adding_a_key_at_its_default_keeps_the_hash():
    from ltr_core.config import semantic_params

    cfg = from_params({"lr": 0.05})
    assert semantic_params(cfg) == {"lr": 0.05, "schema": 2}
    assert config_hash(cfg) == config_hash(from_params({"lr": 0.05, "momentum": 0.9}))  # 0.9 is the default
