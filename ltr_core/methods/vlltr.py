"""VL-LTR: class-wise visual-linguistic pre-training + language-guided recognition (Tian et al., ECCV 2022).

One run = stage 1 → AnSS → stage 2 (methods.md §6; formulas in :mod:`ltr_core.models.vlltr`):

1. **CVLP** (sub-run ``<run_dir>/stage1/``, results marked ``stage: stage1``): both CLIP towers
   trained with the class-wise contrastive loss (each image paired with a random sentence of its
   class) mixed with distillation from the frozen initial CLIP; square-root sampler (``sampler``),
   AdamW (``vlltr_stage1_*``), linear warm-up then cosine. Skipped with ``vlltr_stage1_epochs: 0``
   (plain CLIP), or taken from an earlier run with ``init_run`` (a VL-LTR run, or its ``stage1`` dir).
2. **AnSS**: the CVLP towers score every sentence by L_lin over the images of the AnSS split
   (``vlltr_anss_split``: val for ImageNet-LT / Places-LT, train capped at ``vlltr_anss_per_class``
   images per class elsewhere) and keep the ``vlltr_anchors`` best per class.
3. **LGR head**: attention over the anchors + visual MLP, CE on both branches, AdamW (``lr`` for the
   visual branch and a trainable encoder, ``vlltr_text_lr`` for the attention), prediction
   α·softmax(z^v) + (1 − α)·softmax(z^l). Input: ``cached`` features of the frozen CVLP image
   encoder (un-augmented train images, computed once) or ``online`` (encoder in the loop with the
   loader's augmentation, optional mixup/cutmix; ``vlltr_train_visual`` fine-tunes it, iNat).

Frozen quantities (CVLP image/text features of a split) are cached under ``features/`` of the
directory that holds the CVLP weights, keyed by the weights file's sha256, so re-running stage 2
or another α takes seconds. Results record the text sources, the AnSS split, the α sweep and the
deviations from the paper (notably: our class text has no Wikipedia articles).
"""

from __future__ import annotations

import copy
import hashlib
import io
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import engine, metrics, stages
from ..config import RunConfig
from ..data import LTData, build_data
from ..data.class_text import ClassText, build_class_text
from ..features import eval_feature_loader, train_feature_loader
from ..models import clip as clip_core
from ..models.vlltr import CVLP, ImageEncoder, LGRHead, LGRLoss, LGRModel, clamped_scale, mix_batch, mix_probabilities
from ..results import RunDir, atomic_write_bytes
from ..evaluation import scalars
from ..study import Evaluation, Plan, RunContext, SplitLoaders, completed_results, decay_groups, run_family
from .vlltr_frozen import (Anchors, Stage1, anss_split, capped_indices, clip_data, clip_loader,  # noqa: F401
                           encode_tokens, image_features, select_anchor_sentences, text_features)

NOTEBOOK = "vlltr.ipynb"
ALPHA_GRID = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 21))
TEXT_SET_NOTE = ("Wikipedia-free class text (deviation): the paper uses the 80 CLIP templates + each class's "
                 "Wikipedia article; its text files are not available, so our sentences come from the sources listed")


class VLLTRError(ValueError):
    """An inconsistent VL-LTR configuration (the message says which keys and how to fix them)."""


# ----------------------------------------------------------------------------------------------
# data and text


# ----------------------------------------------------------------------------------------------
# data and text


def class_text(cfg: RunConfig, lt: LTData, *, verbose: bool = True) -> ClassText:
    """The run's class text: ``vlltr_text_sources`` for ``lt``'s classes (ids used by tsv sources)."""
    v = cfg.vlltr
    return build_class_text(lt.class_names, v.vlltr_text_sources, class_ids=lt.provenance.get("class_ids"),
                            text_root=v.vlltr_text_root, max_tokens=v.vlltr_max_tokens,
                            count_tokens=None, verbose=verbose)


def text_inputs(text: ClassText) -> dict:
    """What the run reads besides the data (its inputs record): each class-text source's sha256 and a digest
    of the sentences actually used (covers template and wiki sources too)."""
    sentences, labels = text.flat()
    h = hashlib.sha256("\n".join(f"{y}\t{s}" for s, y in zip(sentences, labels)).encode())
    return {"class_text": {rec["source"]: rec.get("sha256") for rec in text.sources}, "sentences_sha256": h.hexdigest()}


def interpolation_used(cfg: RunConfig, lt: LTData) -> str:
    """What the loaders resize with (recorded in results)."""
    if lt.train.images is not None:
        return "bilinear (small images resized on the device)"
    return f"{cfg.clip.clip_interpolation} (PIL transforms)"


def check_config(cfg: RunConfig) -> None:
    """Reject combinations that cannot work, naming the keys."""
    v = cfg.vlltr
    if v.vlltr_train_visual and v.vlltr_stage2_input != "online":
        raise VLLTRError("vlltr_train_visual: true needs vlltr_stage2_input: online (cached features are frozen)")
    if (v.vlltr_mixup > 0 or v.vlltr_cutmix > 0) and v.vlltr_stage2_input != "online":
        raise VLLTRError("vlltr_mixup / vlltr_cutmix mix images: they need vlltr_stage2_input: online")
    if not 0.0 <= v.vlltr_alpha <= 1.0:
        raise VLLTRError(f"vlltr_alpha must be in [0, 1], got {v.vlltr_alpha}")
    if not 0.0 <= v.vlltr_distill_weight <= 1.0:
        raise VLLTRError(f"vlltr_distill_weight (beta) must be in [0, 1], got {v.vlltr_distill_weight}")
    if v.vlltr_anchors < 1 or v.vlltr_max_tokens < 1 or v.vlltr_anss_per_class < 0:
        raise VLLTRError("vlltr_anchors and vlltr_max_tokens must be >= 1, vlltr_anss_per_class >= 0")
    if v.vlltr_lgr_scale < 0:
        raise VLLTRError(f"vlltr_lgr_scale must be >= 0 (0: exp(logit_scale) of the CVLP model), got {v.vlltr_lgr_scale}")


# ----------------------------------------------------------------------------------------------
# stage 1


def class_prototypes(text_emb: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class-wise text classifier: normalize(mean of the class's normalised sentence embeddings) [C, d]."""
    sums = torch.zeros(num_classes, text_emb.shape[1], device=text_emb.device).index_add_(0, labels, text_emb)
    return F.normalize(sums, dim=-1)


def stage1_config(cfg: RunConfig) -> RunConfig:
    """The CVLP sub-run's config (``<run_dir>/stage1``): its schedule keys, AdamW, cosine, evaluated once."""
    v = cfg.vlltr
    return stages.stage_config(cfg, "stage1", epochs=v.vlltr_stage1_epochs, lr=v.vlltr_stage1_lr,
                               batch_size=v.vlltr_stage1_batch_size, warmup_epochs=v.vlltr_stage1_warmup_epochs,
                               weight_decay=v.vlltr_stage1_weight_decay, optimizer="adamw", schedule="cosine",
                               min_lr=0.0, eval_every=0, accum_steps=1, init_run="")


def _stage1_from_run(cfg: RunConfig) -> Stage1:
    ref = stages.resolve_run(cfg.run.init_run, cfg)
    for rd in (RunDir(Path(ref.path) / "stage1"), ref):
        weights = Path(rd.path) / "model.safetensors"
        res = rd.read_results()
        if res and res.get("stage") == "stage1" and weights.is_file():
            stages.require_complete(rd, "stage-1 results.json")
            other = stages.load_run_config(rd)
            if other.clip.clip_model != cfg.clip.clip_model:
                raise stages.StageError(f"init_run {rd.path} trained CVLP on {other.clip.clip_model!r}, this run "
                                        f"uses clip_model {cfg.clip.clip_model!r}; they must match")
            return Stage1("init_run", weights, Path(rd.path),
                          {"source": "init_run", "run": str(rd.path), "config_hash": res.get("config_hash"),
                           "metrics": {k: res["metrics"].get(k) for k in ("top1", "many", "medium", "few")},
                           "epochs": res.get("epochs")})
    raise stages.StageError(f"init_run {ref.path} holds no complete VL-LTR stage 1 (looked for stage1/results.json "
                            f"and results.json marked stage: stage1 beside model.safetensors)")


def run_stage1(cfg: RunConfig, lt: LTData, text: ClassText) -> Stage1:
    """CVLP in ``<run_dir>/stage1`` (skipped when complete; resumed when interrupted), or the init_run / none."""
    check_config(cfg)
    if cfg.run.init_run:
        return _stage1_from_run(cfg)
    if cfg.vlltr.vlltr_stage1_epochs == 0:
        return Stage1("none", None, cfg.run_path(), {"source": "none (initial CLIP, no CVLP)"})
    scfg = stage1_config(cfg)
    res = train_cvlp(scfg, lt, text)
    rd = RunDir(scfg.run_path())
    return Stage1("cvlp", Path(rd.path) / "model.safetensors", Path(rd.path),
                  {"source": "cvlp", "run": str(rd.path), "config_hash": res["config_hash"], "epochs": res["epochs"],
                   "metrics": {k: res["metrics"].get(k) for k in ("top1", "many", "medium", "few")},
                   "train_seconds": res.get("train_seconds")})


def train_cvlp(scfg: RunConfig, lt: LTData, text: ClassText) -> dict:
    """Train CVLP with the shared engine (checkpoint/resume) and write the stage-1 results (skipped when complete)."""
    return run_family(scfg, partial(cvlp_plan, text=text), data=lt, extra_inputs=text_inputs(text), stage="stage1")


def cvlp_plan(ctx: RunContext, text: ClassText) -> Plan:
    """Both towers with the class-wise contrastive (+ distillation) loss; evaluated zero-shot with the
    class-wise text classifier (mean of each class's sentence embeddings), which shows what CVLP did to
    the image-text alignment."""
    scfg, device = ctx.cfg, ctx.device
    v = scfg.vlltr
    clip = clip_core.load_clip(scfg.clip.clip_model, scfg.clip.clip_pretrained, device="cpu",
                               interpolation=scfg.clip.clip_interpolation)
    data = ctx.data = clip_data(ctx.data, clip)
    sentences, sentence_labels = text.flat()
    tokens = clip.tokenizer(sentences)
    labels_t = torch.as_tensor(sentence_labels, dtype=torch.long)
    teacher, teacher_text = None, None
    if v.vlltr_distill_weight > 0:
        teacher = copy.deepcopy(clip.model).to(device).eval()
        teacher_text = encode_tokens(teacher, tokens, device, scfg.train.precision)
    model = CVLP(clip.model, tokens, labels_t, data.num_classes, teacher=teacher, teacher_text=teacher_text,
                 beta=v.vlltr_distill_weight, smoothing=v.vlltr_contrast_smoothing, eval_mode=v.vlltr_clip_eval_mode)
    model.to(device)
    optimizer = engine.build_optimizer(decay_groups(model.clip.named_parameters(), scfg.optim.weight_decay,
                                                    lr=scfg.optim.lr), scfg.optim)
    train_loader = clip_loader(scfg, data, "train", train=True, device=device)
    loaders = SplitLoaders(lambda s: clip_loader(scfg, data, s, train=False, device=device),
                           eager=(scfg.data.eval_split,))

    def predict(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        protos = class_prototypes(encode_tokens(model.clip, tokens, device, scfg.train.precision),
                                  labels_t.to(device), data.num_classes)
        scale = clamped_scale(model.clip.logit_scale).detach().float()
        return engine.predict(model, loaders[split], device, scfg.train.precision, fn=lambda x: (
            scale * F.normalize(model.clip.encode_image(x).float(), dim=-1) @ protos.t()))

    extra = {"model": scfg.clip.clip_model, "clip": clip.record(), "evaluation": "zero-shot, class-wise text classifier",
             "class_text": text.record()}
    return Plan(model, predict, criterion=model.loss, train_loader=train_loader, optimizer=optimizer,
                batch_transform=model.batch_transform, extra=extra)


# ----------------------------------------------------------------------------------------------
# stage 2


def stage2_groups(model: LGRModel, lr: float, text_lr: float, weight_decay: float) -> list[dict]:
    """Paper: parameters of the visual branch (and a trainable encoder) get ``lr``, the rest ``text_lr``."""
    visual = [(n, p) for n, p in model.named_parameters() if n.startswith(("head.visual.", "encoder."))]
    other = [(n, p) for n, p in model.named_parameters() if not n.startswith(("head.visual.", "encoder."))]
    return decay_groups(visual, weight_decay, lr=lr) + decay_groups(other, weight_decay, lr=text_lr)


def alpha_sweep(branch_logits: torch.Tensor, labels: torch.Tensor, class_counts, *, many: int, few: int,
                alphas=ALPHA_GRID) -> list[dict]:
    """Accuracy (top1, many, medium, few) of p = α softmax(z^v) + (1 − α) softmax(z^l) for every α."""
    out = []
    for a in alphas:
        m = metrics.evaluate(mix_probabilities(branch_logits.float(), a).clamp(min=1e-12).log().numpy(),
                             labels.numpy(), class_counts, many=many, few=few)
        out.append({"alpha": float(a), **{k: m[k] for k in ("top1", "many", "medium", "few")}})
    return out


def _deviations(cfg: RunConfig) -> list[str]:
    v = cfg.vlltr
    out = [TEXT_SET_NOTE,
           "stage-1 augmentation: RandomResizedCrop + flip only; the paper adds RandAugment rand-m9-mstd0.5-inc1, "
           "colour jitter 0.4 and random erasing 0.25"]
    if v.vlltr_stage2_input == "cached":
        out.append("stage 2 on cached features of un-augmented train images (frozen encoder): no RandAugment, "
                   "mixup 0.8, cutmix 1.0 or random erasing, which the original fine-tune inherits from timm")
    elif v.vlltr_mixup == 0 and v.vlltr_cutmix == 0:
        out.append("stage 2 online without mixup/cutmix (the original inherits mixup 0.8, cutmix 1.0)")
    else:
        out.append("stage 2 online with mixup/cutmix but without RandAugment and random erasing")
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        out.append("single process: the contrastive batch is vlltr_stage1_batch_size (paper: 8 GPUs, 1024 gathered)")
    return out


def lgr_scale(cfg: RunConfig, anchors: Anchors) -> float:
    """s_l of z^l = s_l cos(f, v_c): ``vlltr_lgr_scale`` if > 0, else exp(logit_scale) of the CVLP model (original)."""
    return cfg.vlltr.vlltr_lgr_scale if cfg.vlltr.vlltr_lgr_scale > 0 else float(anchors.scale)


def run_stage2(cfg: RunConfig, lt: LTData, text: ClassText, stage1: Stage1, anchors: Anchors) -> dict:
    """Train and evaluate the LGR head; writes the run's results.json (skipped when complete)."""
    check_config(cfg)
    return run_family(cfg, partial(lgr_plan, text=text, stage1=stage1, anchors=anchors), data=lt,
                      extra_inputs=text_inputs(text))


def lgr_plan(ctx: RunContext, text: ClassText, stage1: Stage1, anchors: Anchors) -> Plan:
    """The LGR head (on cached CVLP image features, or online with the encoder in the loop); prediction
    log(α softmax(z^v) + (1 − α) softmax(z^l)); the α sweep and both branches' logits are recorded."""
    cfg, lt, device = ctx.cfg, ctx.data, ctx.device
    v = cfg.vlltr
    online = v.vlltr_stage2_input == "online"
    if online:
        clip = stage1.load(cfg, device)
        encoder, data = ImageEncoder(copy.deepcopy(clip.model.visual)), clip_data(lt, clip)
        train_loader = clip_loader(cfg, data, "train", train=True, device=device)
        make = lambda s: clip_loader(cfg, data, s, train=False, device=device)  # noqa: E731
    else:
        encoder, data = None, lt
        train_loader = train_feature_loader(cfg, image_features(cfg, lt, stage1, "train", device=device), device)
        make = lambda s: eval_feature_loader(cfg, image_features(cfg, lt, stage1, s, device=device), device)  # noqa: E731
    ctx.data = data
    loaders = SplitLoaders(make, eager=(cfg.data.eval_split,))
    head = LGRHead(anchors.embeddings, anchors.mask, scale=lgr_scale(cfg, anchors),
                   detach_text_norm=v.vlltr_detach_text_norm)
    model = LGRModel(head, v.vlltr_alpha, encoder, train_encoder=v.vlltr_train_visual)
    mixing = online and (v.vlltr_mixup > 0 or v.vlltr_cutmix > 0)
    batch_transform = (lambda x, y: mix_batch(x, y, data.num_classes, mixup=v.vlltr_mixup, cutmix=v.vlltr_cutmix,
                                              smoothing=cfg.loss.label_smoothing)) if mixing else None
    optimizer = engine.build_optimizer(stage2_groups(model, cfg.optim.lr, v.vlltr_text_lr, cfg.optim.weight_decay),
                                       cfg.optim)
    branches: dict[str, torch.Tensor] = {}

    def predict(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        z, labels = engine.predict(model, loaders[split], device, cfg.train.precision, fn=model.branch_logits)
        branches[split] = z
        return mix_probabilities(z, v.vlltr_alpha).clamp(min=1e-12).log(), labels

    def logged(ev: Evaluation) -> dict:
        z, y = branches[cfg.data.eval_split], ev.labels.numpy()
        return {**scalars(ev.metrics), "top1_visual": metrics.top1(z[:, 0].argmax(1).numpy(), y),
                "top1_linguistic": metrics.top1(z[:, 1].argmax(1).numpy(), y)}

    def finish(ev: Evaluation) -> dict:
        z, labels = branches[cfg.data.eval_split], ev.labels
        sweep = alpha_sweep(z, labels, data.class_counts, many=cfg.data.shot_many, few=cfg.data.shot_few)
        buf = io.BytesIO()
        np.savez_compressed(buf, visual=z[:, 0].numpy(), linguistic=z[:, 1].numpy(), labels=labels.numpy())
        atomic_write_bytes(Path(ctx.run_dir.path) / "branch_logits.npz", buf.getvalue())
        return {"model": cfg.clip.clip_model, "vlltr": {
            "text_set": TEXT_SET_NOTE, "class_text": text.record(), "stage1": stage1.record, "anss": anchors.record,
            "alpha": v.vlltr_alpha, "stage2_input": v.vlltr_stage2_input, "train_visual": v.vlltr_train_visual,
            "lgr_scale": lgr_scale(cfg, anchors),
            "branch_top1": {"visual": sweep[-1]["top1"], "linguistic": sweep[0]["top1"]},
            "alpha_sweep": sweep, "alpha_sweep_note": f"on the {cfg.data.eval_split} split (diagnostic; α is fixed)",
            "deviations": _deviations(cfg),
            "clip": {"clip_model": cfg.clip.clip_model, "clip_pretrained": cfg.clip.clip_pretrained,
                     "interpolation_used": interpolation_used(cfg, lt)}}}

    model.to(device)
    return Plan(model, predict, criterion=LGRLoss(cfg.loss.label_smoothing), train_loader=train_loader,
                optimizer=optimizer, batch_transform=batch_transform, scalars=logged, finish=finish)


def run(cfg: RunConfig, data: LTData | None = None) -> dict:
    """Stage 1 (CVLP) → AnSS → stage 2 (LGR head); returns the results.json dict (skips a complete run)."""
    check_config(cfg)
    lt = data if data is not None else build_data(cfg.data)
    text = class_text(cfg, lt)
    done = completed_results(cfg, lt, extra_inputs=text_inputs(text))
    if done is not None:
        return done
    stage1 = run_stage1(cfg, lt, text)
    anchors = select_anchor_sentences(cfg, lt, text, stage1)
    return run_stage2(cfg, lt, text, stage1, anchors)
