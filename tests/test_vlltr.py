"""VL-LTR: CVLP losses against their formulas, AnSS, the LGR head, and the notebook on a tiny random CLIP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import tiny_params
from ltr_core import config, runner
from ltr_core.data import DataError
from ltr_core.methods import vlltr as method
from ltr_core.models import clip as clip_core
from ltr_core.models import vlltr as V


def _direct_soft_ce(z, p):
    """-(1/B) sum_i sum_j p_ij log softmax(z_i)_j with explicit loops."""
    total = 0.0
    for i in range(z.shape[0]):
        lse = math.log(sum(math.exp(float(v)) for v in z[i]))
        total -= sum(float(p[i, j]) * (float(z[i, j]) - lse) for j in range(z.shape[1]))
    return total / z.shape[0]


def _features(b=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(b, d, generator=g), dim=-1), F.normalize(torch.randn(b, d, generator=g), dim=-1))


def test_classwise_contrastive_loss_matches_its_formula():
    img, txt = _features()
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    s, eps, b = 12.0, 0.1, 6
    sim = s * img @ txt.t()
    m = torch.tensor([[(1.0 if y[i] == y[j] else 0.0) / int((y == y[i]).sum()) for j in range(b)] for i in range(b)])
    target = (1 - eps) * m + eps / b
    expected = 0.5 * (_direct_soft_ce(sim, target) + _direct_soft_ce(sim.t(), target))
    got = V.classwise_contrastive_loss(img, txt, y, s, smoothing=eps)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(V.classwise_targets(y, eps).sum(1), torch.ones(b))
    # with all labels distinct and no smoothing it is CLIP's symmetric InfoNCE
    y2 = torch.arange(b)
    clip_loss = 0.5 * (F.cross_entropy(sim, y2) + F.cross_entropy(sim.t(), y2))
    assert V.classwise_contrastive_loss(img, txt, y2, s, smoothing=0.0).item() == pytest.approx(clip_loss.item(), rel=1e-5)


def test_distillation_term_and_the_beta_mixture():
    img, txt = _features(seed=1)
    t_img, t_txt = _features(seed=2)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    s, s0 = 10.0, 100.0
    sim, sim0 = s * img @ txt.t(), s0 * t_img @ t_txt.t()
    kd = 0.5 * (_direct_soft_ce(sim, sim0.softmax(-1)) + _direct_soft_ce(sim.t(), sim0.t().softmax(-1)))
    assert V.distillation_loss(sim, sim0).item() == pytest.approx(kd, rel=1e-5)
    terms = V.cvlp_loss(img, txt, y, s, t_img, t_txt, s0, beta=0.3, smoothing=0.1)
    cls = V.classwise_contrastive_loss(img, txt, y, s, 0.1)
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(0.7 * cls.item() + 0.3 * kd, rel=1e-5)
    # a student equal to its teacher has L_kd = entropy of the teacher's rows (its minimum)
    ent = -(sim0.softmax(-1) * sim0.log_softmax(-1)).sum(-1).mean() / 2 - \
        (sim0.t().softmax(-1) * sim0.t().log_softmax(-1)).sum(-1).mean() / 2
    assert V.distillation_loss(sim0, sim0).item() == pytest.approx(ent.item(), rel=1e-5)
    assert V.gather_with_grad(img) is img  # single process: the batch is already global


@pytest.fixture(scope="module")
def tiny_cvlp():
    torch.manual_seed(0)
    clip = clip_core.load_clip("ltr-tiny-vit")
    teacher = clip_core.load_clip("ltr-tiny-vit").model
    sentences = [f"a photo of a {c} number {k}." for c in ("zero", "one", "two") for k in range(4)]
    labels = torch.arange(3).repeat_interleave(4)
    tokens = clip.tokenizer(sentences)
    teacher_text = F.normalize(teacher.encode_text(tokens).detach(), dim=-1)
    model = V.CVLP(clip.model, tokens, labels, 3, teacher=teacher, teacher_text=teacher_text, beta=0.5, smoothing=0.1)
    return model, labels


def test_cvlp_pairs_each_image_with_a_sentence_of_its_class_and_trains_both_towers(tiny_cvlp):
    model, sentence_labels = tiny_cvlp
    y = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2])
    torch.manual_seed(3)
    idx = torch.cat([model.pair_sentences(y) for _ in range(20)])
    assert torch.equal(sentence_labels[idx], y.repeat(20))
    assert len(set(idx.tolist())) == 12  # every sentence gets drawn
    x = torch.randn(8, 3, 32, 32)
    model.train()
    assert not model.clip.training  # towers stay in eval mode (VL-LTR's train_mode=False)
    x2, target = model.batch_transform(x, y)
    out = model(x2)
    loss = model.loss(out, target)
    # the same number from the formula on the model's own features
    txt = F.normalize(model.clip.encode_text(model.tokens[target[:, 1]]), dim=-1)
    t_img = F.normalize(model.teacher.encode_image(x), dim=-1)
    expected = V.cvlp_loss(out["image"], txt, y, model.clip.logit_scale.exp(), t_img, model.teacher_text[target[:, 1]],
                           model.teacher.logit_scale.exp(), beta=0.5, smoothing=0.1)["loss"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    model.zero_grad()
    loss.backward()
    assert model.clip.visual.conv1.weight.grad.abs().sum() > 0
    assert model.clip.token_embedding.weight.grad.abs().sum() > 0 and model.clip.logit_scale.grad is not None
    assert all(p.grad is None for p in model.teacher.parameters())
    assert not any(k.startswith(("tokens", "teacher")) for k in model.state_dict())  # only the CLIP is saved


def test_anss_losses_match_the_formula_and_keep_the_lowest():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(9, 5, generator=g), dim=-1)
    text_labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    image = F.normalize(torch.randn(7, 5, generator=g), dim=-1)
    image_labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    s = 20.0
    direct = []
    for t, c in zip(text, text_labels):
        own = [j for j in range(7) if image_labels[j] == c]
        denom = sum(math.exp(s * float(t @ image[k])) for k in range(7))
        direct.append(-sum(math.log(math.exp(s * float(t @ image[j])) / denom) for j in own) / len(own))
    losses = V.anss_losses(text, text_labels, image, image_labels, s, num_classes=3, chunk=4)
    assert losses.tolist() == pytest.approx(direct, rel=1e-5)
    index, mask = V.select_anchors(losses, text_labels, 3, k=3)
    d = torch.tensor(direct)
    for c in range(3):
        mine = torch.nonzero(text_labels == c).flatten()
        best = mine[torch.argsort(d[mine])][:3]
        assert index[c, :len(best)].tolist() == best.tolist()  # the lowest L_lin, ascending
    assert mask.tolist() == [[True] * 3, [True, True, False], [True] * 3]  # class 1 has 2 sentences: padded
    anchors = V.gather_anchors(text, index)
    assert torch.equal(anchors[1, 2], torch.zeros(5)) and torch.equal(anchors[0, 0], text[index[0, 0]])
    with pytest.raises(ValueError, match="no image"):
        V.anss_losses(text, text_labels, image[:2], image_labels[:2], s, num_classes=3)


def _head(c=4, m=3, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(c, m, d, generator=g) * torch.rand(c, m, 1, generator=g).mul(4).add(0.5)  # raw norms
    mask = torch.ones(c, m, dtype=torch.bool)
    mask[1, 2] = False
    return V.LGRHead(anchors * mask[..., None], mask, scale=100.0)


def test_lgr_head_identity_init_and_linguistic_logits_against_a_direct_computation():
    head = _head()
    assert torch.equal(head.w_q.weight, torch.eye(6)) and torch.equal(head.w_k.weight, torch.eye(6))
    assert head.w_q.bias is None and head.w_k.bias is None  # VL-LTR Attention(qkv_bias=False)
    with torch.no_grad():
        head.w_q.weight.add_(0.1 * torch.randn(6, 6))  # any W_q, W_k: the fast path must match
        head.w_k.weight.add_(0.1 * torch.randn(6, 6))
    f = torch.randn(5, 6)
    a = head.attention(f)
    assert torch.allclose(a.sum(-1), torch.ones(5, 4)) and torch.all(a[:, 1, 2] == 0)  # the padded anchor
    q = head.w_q(head.ln_q(f))
    expected = torch.zeros(5, 4)
    for b in range(5):
        for c in range(4):
            m = head.anchor_mask[c]
            k = head.w_k(head.ln_k(head.anchors[c, m]))
            w = (k @ q[b] / math.sqrt(6)).softmax(0)
            v = (w[:, None] * head.anchors[c, m]).sum(0)
            expected[b, c] = 100 * F.cosine_similarity(f[b], v, dim=0)
    z = head(f)
    assert z.shape == (5, 2, 4)
    assert torch.allclose(z[:, 1], expected, atol=1e-4)
    assert torch.allclose(z[:, 0], head.visual(f))
    assert [type(m).__name__ for m in head.visual] == ["Linear", "ReLU", "Linear"] and head.visual[0].out_features == 24


def test_lgr_values_are_the_raw_anchor_embeddings_by_hand():
    """One class, anchors t1 = (2, 0), t2 = (0, 1) (raw, not normalised), f = (1, 1): LN(f) = 0, so the
    attention is uniform, v = (1, 0.5) and z^l = s (1·1 + 1·0.5) / (√2 · √1.25) = s · 0.948683...
    (with normalised anchors v would be (0.5, 0.5) and z^l = s)."""
    anchors = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    head = V.LGRHead(anchors, torch.ones(1, 2, dtype=torch.bool), scale=14.3)
    z = head.linguistic_logits(torch.tensor([[1.0, 1.0]]))
    assert torch.allclose(head.attention(torch.tensor([[1.0, 1.0]])), torch.tensor([[[0.5, 0.5]]]))
    assert z.item() == pytest.approx(14.3 * 1.5 / (math.sqrt(2) * math.sqrt(1.25)), rel=1e-5)
    assert set(n for n, _ in head.named_parameters()) >= {"w_q.weight", "w_k.weight"}
    assert not any(n.endswith(("w_q.bias", "w_k.bias")) for n, _ in head.named_parameters())


def test_lgr_scale_is_the_cvlp_logit_scale_unless_fixed(tmp_path):
    base = dict(tiny_params(tmp_path), method="vlltr", clip_model="ltr-tiny-vit")
    anchors = method.Anchors(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool),
                             torch.ones(1, 1, 2), torch.zeros(1), {}, scale=42.5)
    assert config.from_params(base).vlltr.vlltr_lgr_scale == 0.0
    assert method.lgr_scale(config.from_params(base), anchors) == 42.5
    assert method.lgr_scale(config.from_params({**base, "vlltr_lgr_scale": 100.0}), anchors) == 100.0
    with pytest.raises((method.VLLTRError, config.ConfigError), match="vlltr_lgr_scale"):  # range: config or check
        method.check_config(config.from_params({**base, "vlltr_lgr_scale": -1.0}))


def test_prediction_is_the_alpha_mixture_and_training_sees_both_branches():
    model = V.LGRModel(_head(), alpha=0.2)
    f = torch.randn(5, 6)
    model.train()
    z = model(f)
    assert z.shape == (5, 2, 4)
    loss = V.LGRLoss()(z, torch.tensor([0, 1, 2, 3, 0]))
    assert loss.item() == pytest.approx((F.cross_entropy(z[:, 0], torch.tensor([0, 1, 2, 3, 0]))
                                         + F.cross_entropy(z[:, 1], torch.tensor([0, 1, 2, 3, 0]))).item(), rel=1e-6)
    model.eval()
    p = 0.2 * z[:, 0].softmax(-1) + 0.8 * z[:, 1].softmax(-1)
    assert torch.allclose(model(f).exp(), p, atol=1e-6)
    assert torch.allclose(model(f).softmax(-1), p, atol=1e-6)  # what the metrics (argmax, ECE) see
    sweep = method.alpha_sweep(z.detach()[None].expand(10, -1, -1, -1).reshape(50, 2, 4),
                               torch.tensor([0, 1, 2, 3, 0] * 10), np.array([200, 50, 10, 5]), many=100, few=20,
                               alphas=(0.0, 1.0))
    top1 = lambda zz: 100.0 * float((zz.argmax(1) == torch.tensor([0, 1, 2, 3, 0])).float().mean())  # noqa: E731
    assert sweep[0]["top1"] == pytest.approx(top1(z[:, 1])) and sweep[1]["top1"] == pytest.approx(top1(z[:, 0]))


def test_mix_batch_targets():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    xm, t = V.mix_batch(x, y, 3, mixup=0.8, smoothing=0.1)
    assert torch.allclose(t.sum(1), torch.ones(4))
    off = 0.1 / 3
    lam = (float(t[0, 0]) - off) / 0.9  # sample 0 (class 0) is mixed with sample 3 (class 1)
    assert torch.allclose(xm[0], lam * x[0] + (1 - lam) * x[3], atol=1e-5)
    assert float(t[0, 1]) == pytest.approx((1 - lam) * 0.9 + off, abs=1e-6)
    xs, ts = V.mix_batch(x, y, 3)
    assert xs is x and torch.allclose(ts, F.one_hot(y, 3).float())


def test_config_checks_and_missing_text(tmp_path):
    base = dict(tiny_params(tmp_path), method="vlltr", clip_model="ltr-tiny-vit")
    with pytest.raises(method.VLLTRError, match="vlltr_stage2_input: online"):
        method.check_config(config.from_params({**base, "vlltr_train_visual": True}))
    with pytest.raises(config.ConfigError, match="vlltr_anss_split"):
        config.from_params({**base, "vlltr_anss_split": "test"})
    cfg = config.from_params(base)
    with pytest.raises(DataError, match="no class text sources"):
        method.run(cfg)


SMOKE = "params/smoke/vlltr_tiny.yaml"


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vlltr")
    runner.ensure_kernel()
    ov = {"results_root": str(tmp / "results"), "figures_dir": str(tmp / "figures"), "cache_dir": str(tmp / "cache"),
          "suite": "smoke"}
    return tmp, ov, runner.run_params(SMOKE, ov)


def test_notebook_runs_stage1_anss_stage2_under_papermill(notebook_run):
    tmp, ov, outcome = notebook_run
    assert outcome.status == "complete", outcome.error
    run_dir = outcome.run_dir
    res = json.loads((run_dir / "results.json").read_text())
    _, cfg = runner.resolve_params(SMOKE, ov)
    assert res["config_hash"] == config.config_hash(cfg) and res["method"] == "vlltr" and res["epochs"] == 2
    s1 = json.loads((run_dir / "stage1" / "results.json").read_text())
    assert s1["stage"] == "stage1" and s1["epochs"] == 1 and s1["evaluation"].startswith("zero-shot")
    v = res["vlltr"]
    assert v["stage1"]["source"] == "cvlp" and v["anss"]["split"] == "train" and v["anss"]["k"] == 16
    assert v["anss"]["min_anchors"] == 16 and v["class_text"]["min_per_class"] == 80
    assert "Wikipedia-free" in v["text_set"] and any("Wikipedia" in d for d in v["deviations"])
    assert [r["alpha"] for r in v["alpha_sweep"]] == list(method.ALPHA_GRID)
    alpha = next(r for r in v["alpha_sweep"] if r["alpha"] == 0.2)
    assert alpha["top1"] == pytest.approx(res["metrics"]["top1"])
    for f in ("alpha_sweep.png", "alpha_sweep.pdf", "branch_logits.npz", "notebook.ipynb", "model.safetensors"):
        assert (run_dir / f).is_file(), f
    assert (tmp / "figures" / f"alpha_sweep_{cfg.run_id}.png").is_file()
    assert list((run_dir / "stage1" / "features").glob("text-*.safetensors"))
    assert v["lgr_scale"] == pytest.approx(v["anss"]["scale"])  # exp(logit_scale) of the CVLP model
    saved = load_file(str(run_dir / "model.safetensors"))
    assert "head.w_q.weight" in saved and "head.w_q.bias" not in saved
    norms = saved["head.anchors"].norm(dim=-1)[saved["head.anchor_mask"]]
    assert not torch.allclose(norms, torch.ones_like(norms))  # raw text embeddings, not normalised


def test_second_stage_from_an_existing_stage1_run(notebook_run):
    tmp, ov, outcome = notebook_run
    from ltr_core.config import load_params

    params = {**load_params(SMOKE), **ov, "name": "from_stage1", "init_run": str(outcome.run_dir),
              "vlltr_alpha": 0.7, "tensorboard": False}
    cfg = config.from_params(params)
    res = method.run(cfg)
    first = json.loads((outcome.run_dir / "results.json").read_text())
    assert res["vlltr"]["stage1"]["source"] == "init_run"
    assert res["vlltr"]["stage1"]["run"] == str(outcome.run_dir / "stage1")
    assert not (cfg.run_path() / "stage1").exists()  # no CVLP trained again
    assert res["vlltr"]["anss"] == first["vlltr"]["anss"]  # same towers, same anchors (cached features)


def test_dataset_notebook_shows_class_sentences_when_text_is_configured(tmp_path):
    import nbformat

    ov = {"results_root": str(tmp_path / "results"), "figures_dir": str(tmp_path / "figures"),
          "cache_dir": str(tmp_path / "cache"), "suite": "smoke"}
    outcome = runner.run_profile(SMOKE, ov)
    assert outcome.status == "complete", outcome.error
    nb = nbformat.read(outcome.run_dir / "notebook.ipynb", as_version=4)
    shown = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "a bad photo of a 0." in shown and "'min_per_class': 80" in shown


def test_vlltr_params_and_suite_validate():
    for p in ("params/imagenet_lt/vlltr.yaml", "params/places_lt/vlltr.yaml", "params/inat18/vlltr.yaml",
              "params/cifar10_lt/vlltr_ir100.yaml", "params/cifar100_lt/vlltr_ir100.yaml"):
        _, cfg = runner.resolve_params(p, {})
        method.check_config(cfg)
        assert cfg.clip.clip_model == "ViT-B-16" and cfg.clip.clip_pretrained == "openai" and cfg.data.sampler == "sqrt"
    _, inat = runner.resolve_params("params/inat18/vlltr.yaml", {})
    assert inat.vlltr.vlltr_alpha == 0.7 and inat.vlltr.vlltr_train_visual and inat.train.epochs == 360
    suite = runner.load_suite("params/suites/vlltr.yaml")
    methods = {runner.resolve_params(p, o)[1].run.method for p, o in runner.expand_runs(suite)}
    assert methods == {"zeroshot", "pel", "vlltr"}


def test_online_stage2_fine_tunes_the_encoder_with_mixup(notebook_run):
    from ltr_core.config import load_params

    tmp, ov, outcome = notebook_run
    params = {**load_params(SMOKE), **ov, "name": "online", "init_run": str(outcome.run_dir), "tensorboard": False,
              "vlltr_stage2_input": "online", "vlltr_train_visual": True, "vlltr_detach_text_norm": True,
              "vlltr_mixup": 0.8, "vlltr_cutmix": 1.0, "label_smoothing": 0.1, "epochs": 1}
    cfg = config.from_params(params)
    res = method.run(cfg)
    assert res["status"] == "complete" and res["vlltr"]["stage2_input"] == "online"
    assert any("mixup/cutmix but without RandAugment" in d for d in res["vlltr"]["deviations"])
    before = load_file(str(outcome.run_dir / "stage1" / "model.safetensors"))["clip.visual.conv1.weight"]
    after = load_file(str(cfg.run_path() / "model.safetensors"))["encoder.visual.conv1.weight"]
    assert not torch.equal(before, after)  # the image encoder was trained
