"""The one run skeleton (ltr_core.study.run_family): a new family is a plan, everything else is shared."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import REPO, tiny_params
from ltr_core import engine, study
from ltr_core.config import from_params
from ltr_core.models import Classifier
from ltr_core.results import RunDir

# ---------------------------------------------------------------------------------------------- a toy family
# (what a new method family needs: a loss, a plan, a run function; the skeleton does the rest)


class FeatureNormCE(nn.Module):
    """L = CE(z, y) + λ · mean ‖f‖²: a loss that needs the features the head sees, not only the logits."""

    wants_features = True

    def __init__(self, lam: float = 0.1) -> None:
        super().__init__()
        self.lam, self.seen = lam, []

    def forward(self, logits, target, features=None):
        self.seen.append(tuple(features.shape))
        return nn.functional.cross_entropy(logits, target) + self.lam * features.pow(2).sum(1).mean()


def toy_plan(ctx: study.RunContext, temperature: float = 2.0, criterion: nn.Module | None = None) -> study.Plan:
    """A two-layer network on raw pixels; its own prediction: logits / T minus the log prior."""
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    chans, size = study.in_channels(data), data.image_size
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(chans * size * size, 16), nn.ReLU())
    model = Classifier(backbone, nn.Linear(16, data.num_classes))
    prior = torch.as_tensor(data.class_counts, dtype=torch.float32)
    log_prior = (prior / prior.sum()).log()

    def predict(split: str):
        logits, labels = engine.predict(model, study.eval_loader(cfg, data, split, device), device)
        return logits / temperature - log_prior, labels

    criterion = criterion if criterion is not None else FeatureNormCE()
    return study.Plan(model, predict, criterion=criterion, train_loader=study.train_loader(cfg, data, device),
                      optimizer=engine.build_optimizer(study.decay_groups(model.named_parameters(), 5e-4), cfg.optim),
                      extra={"toy": {"temperature": temperature, "feature_shapes": getattr(criterion, "seen", [])}})


def run_toy(cfg, **kw) -> dict:
    return study.run_family(cfg, lambda ctx: toy_plan(ctx, **kw), extra_inputs={"toy_version": 1})

# ---------------------------------------------------------------------------------------------- the tests


def test_a_toy_family_goes_through_the_skeleton(tmp_path):
    cfg = from_params(tiny_params(tmp_path, name="toy", epochs=2))
    res = run_toy(cfg)
    rd = cfg.run_path()
    assert res["status"] == "complete" and res["epochs"] == 2 and res["toy"]["temperature"] == 2.0
    for f in ("config.yaml", "inputs.json", "split_indices.json", "metrics.jsonl", "per_class.csv", "logits.npz",
              "model.safetensors", "results.json"):
        assert (rd / f).is_file(), f
    assert res["inputs"]["extra"] == {"toy_version": 1} == json.loads((rd / "inputs.json").read_text())["extra"]
    assert {"numerics", "resumed_from_run", "processes", "device", "versions"} <= set(res)
    assert len(RunDir(rd).read_metrics()) == 2 and {"top1", "many", "few"} <= set(res["metrics"])
    # the custom prediction is what was evaluated
    z = torch.as_tensor(RunDir(rd).load_logits()["logits"])
    assert z.shape == (500, 10)
    # the loss saw the head's input (batch x 16) in every step
    assert res["toy"]["feature_shapes"] and all(s[1] == 16 for s in res["toy"]["feature_shapes"])
    # complete for the same config and inputs: skipped; other inputs: stale, archived, run again
    assert run_toy(cfg)["finished_at"] == res["finished_at"]
    again = study.run_family(cfg, toy_plan, extra_inputs={"toy_version": 2})
    assert again["inputs"]["extra"] == {"toy_version": 2}
    assert len(list((tmp_path / "results" / ".archive").rglob("results.json"))) == 1  # the stale run, kept


def test_the_feature_term_changes_training(tmp_path):
    a = from_params(tiny_params(tmp_path, name="a", epochs=1))
    b = from_params(tiny_params(tmp_path, name="b", epochs=1))
    ra = run_toy(a)
    rb = run_toy(b, criterion=nn.CrossEntropyLoss())  # plain CE: no features asked for
    assert ra["toy"]["feature_shapes"] and not rb["toy"]["feature_shapes"]
    wa, wb = (load_file(str(c.run_path() / "model.safetensors")) for c in (a, b))
    assert wa.keys() == wb.keys() and not torch.equal(wa["head.weight"], wb["head.weight"])


class FailsAtEpoch1(FeatureNormCE):
    def set_epoch(self, epoch: int) -> None:
        if epoch == 1:
            raise RuntimeError("boom")


def test_the_lock_and_threads_are_released_when_a_run_raises(tmp_path):
    cfg = from_params(tiny_params(tmp_path, name="fails", epochs=2))
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        run_toy(cfg, criterion=FailsAtEpoch1())
    assert torch.get_num_threads() == threads
    probe = subprocess.run([sys.executable, "-c", "import sys; from ltr_core.results import acquire_run_lock; "
                            f"acquire_run_lock({str(cfg.run_path())!r}); print('got it')"],
                           cwd=REPO, capture_output=True, text=True)
    assert probe.stdout.strip() == "got it", probe.stderr[-2000:]
    res = run_toy(cfg)  # resumes from the checkpoint of epoch 0
    assert res["status"] == "complete" and res["resumed_from_epoch"] == 0
