"""Post-hoc max-norm (CONTRIBUTING.md example b) and the decoupling mode registry it is one entry of."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import tiny_params
from ltr_core import config, results
from ltr_core.config import ConfigError, from_params
from ltr_core.methods import decouple, get_method
from ltr_core.methods.decouple_maxnorm import MaxNorm, maxnorm_weights
from ltr_core.methods.decouple_modes import MODES
from ltr_core.models import Classifier


def test_the_registry_is_the_config_choice_and_each_entry_matches_its_class():
    assert config.CHOICES["decouple_mode"] == tuple(MODES)
    assert {"crt", "lws", "tau_norm", "posthoc_la", "ncm", "maxnorm"} <= set(MODES)
    for name, spec in MODES.items():
        cls = decouple.mode_class(name)
        assert issubclass(cls, decouple.Retrain) == spec.trains, name
    assert decouple.TRAINED_MODES == ("crt", "lws")
    with pytest.raises(ConfigError, match="maxnorm"):
        from_params({"method": "decouple", "decouple_mode": "max_norm"})


def test_maxnorm_caps_the_class_weight_norms_by_hand():
    """Rows (3, 4), (1, 0), (0, 2): norms 5, 1, 2. q = 0.5: cap 2 (the median), only row 0 shrinks to
    (1.2, 1.6). q = 0.25: cap 1 + 0.5 (2 - 1) = 1.5 (linear interpolation), rows 0 and 2 shrink.
    q = 1: unchanged; q = 0: every norm 1."""
    w = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(maxnorm_weights(w, 0.5), torch.tensor([[1.2, 1.6], [1.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(maxnorm_weights(w, 0.25), torch.tensor([[0.9, 1.2], [1.0, 0.0], [0.0, 1.5]]))
    assert torch.equal(maxnorm_weights(w, 1.0), w)
    assert torch.allclose(maxnorm_weights(w, 0.0), torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]]))
    # z = W' f + b with the bias kept: f = (1, 1), b = (0.1, 0.2, 0.3), q = 0.5 -> (2.9, 1.2, 2.3)
    head = nn.Linear(2, 3)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    model = Classifier(nn.Identity(), head)
    f = torch.tensor([[1.0, 1.0]])
    logits_at = MaxNorm().logits_at(model, {"test": {"features": f}}, None, ["test"])
    assert torch.allclose(logits_at(0.5, "test"), torch.tensor([[2.9, 1.2, 2.3]]))
    assert torch.allclose(MaxNorm().adjusted_head(model, 0.5, None)(f), torch.tensor([[2.9, 1.2, 2.3]]))
    assert torch.equal(head.weight, w)  # the stage-1 head is not modified


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("maxnorm")
    cfg = from_params(tiny_params(tmp, suite="m", name="ce", epochs=2))
    get_method("erm").run(cfg)
    return cfg


def stage2(stage1, name, **overrides):
    tmp = Path(stage1.run.results_root).parent
    cfg = from_params({**tiny_params(tmp), "suite": "m", "method": "decouple", "name": name, "decouple_mode": "maxnorm",
                       "init_run": "digits_lt-erm-ce-s{seed}", "warmup_epochs": 0.0, **overrides})
    return cfg, get_method("decouple").run(cfg)


def test_maxnorm_at_q_1_is_stage1_and_the_sweep_is_recorded(stage1):
    res1 = results.RunDir(stage1.run_path()).read_results()
    cfg, res = stage2(stage1, "mn1", decouple_tau=1.0)
    assert res["metrics"]["top1"] == pytest.approx(res1["metrics"]["top1"]) and res["selection"] == "q = 1 (fixed)"
    cfg, res = stage2(stage1, "mn")
    sweep = res["tau_sweep"]
    assert sweep["tau"] == [round(0.1 * i, 1) for i in range(11)] and res["tau_selection"].startswith("oracle")
    assert sweep["test"]["mean_per_class"][sweep["tau"].index(res["tau"])] == max(sweep["test"]["mean_per_class"])
    w1 = load_file(str(stage1.run_path() / "model.safetensors"))
    w2 = load_file(str(cfg.run_path() / "model.safetensors"))  # the saved head is the capped classifier
    assert torch.allclose(w2["head.weight"], maxnorm_weights(w1["head.weight"], res["tau"]))
    assert torch.equal(w2["head.bias"], w1["head.bias"])
    with pytest.raises(ConfigError, match="quantiles"):
        stage2(stage1, "bad", decouple_tau_grid=[0.0, 2.0])
