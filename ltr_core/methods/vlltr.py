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
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import engine, metrics, stages
from ..config import RunConfig, config_hash
from ..data import LTData, build_data, make_loader
from ..data.base import Split
from ..data.image_list import ImageFileDataset
from ..data.loaders import FileLoader
from ..data.transforms import eval_transform, train_transform
from ..data.class_text import ClassText, build_class_text
from ..data.samplers import build_sampler
from ..features import cached_features
from ..models import clip as clip_core
from ..models.vlltr import (CVLP, ImageEncoder, LGRHead, LGRLoss, LGRModel, anss_losses, clamped_scale,
                            gather_anchors, mix_batch, mix_probabilities, select_anchors)
from ..results import RunDir, to_jsonable
from ..study import Evaluation, add_open_set_metrics, completed_results, evaluate_logits, prepare_run_dir, write_run_results

NOTEBOOK = "vlltr.ipynb"
ALPHA_GRID = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 21))
TEXT_SET_NOTE = ("Wikipedia-free class text (deviation): the paper uses the 80 CLIP templates + each class's "
                 "Wikipedia article; its text files are not available, so our sentences come from the sources listed")


class VLLTRError(ValueError):
    """An inconsistent VL-LTR configuration (the message says which keys and how to fix them)."""


# ----------------------------------------------------------------------------------------------
# data and text


def clip_data(lt: LTData, clip: clip_core.Clip) -> LTData:
    """``lt`` with CLIP's normalisation and input size (the loaders resize to it)."""
    return dataclasses.replace(lt, mean=tuple(clip.mean), std=tuple(clip.std), image_size=int(clip.image_size))


def class_text(cfg: RunConfig, lt: LTData, *, verbose: bool = True) -> ClassText:
    """The run's class text: ``vlltr_text_sources`` for ``lt``'s classes (ids used by tsv sources)."""
    v = cfg.vlltr
    return build_class_text(lt.class_names, v.vlltr_text_sources, class_ids=lt.provenance.get("class_ids"),
                            text_root=v.vlltr_text_root, max_tokens=v.vlltr_max_tokens,
                            count_tokens=None, verbose=verbose)


def clip_loader(cfg: RunConfig, data: LTData, split: str, *, train: bool, device, batch_size: int, epochs: int = 1):
    """Loader at CLIP's input size and normalisation (``data`` from :func:`clip_data`).

    Small images (CIFAR, digits): the device path (``augment_mode``; bilinear resize). Image files:
    ``make_loader`` when ``clip_interpolation`` is bilinear, else PIL workers with bicubic
    RandomResizedCrop + flip (train) / Resize(S/0.875) + CenterCrop(S) (eval; 256 -> 224, VL-LTR's test view).
    """
    part = data.split(split)
    if part.images is not None or cfg.clip.clip_interpolation == "bilinear":
        return make_loader(data, split, train=train, batch_size=batch_size, device=device, sampler=cfg.data.sampler,
                           seed=cfg.run.seed, num_workers=cfg.data.num_workers, augment=cfg.data.augment,
                           crop_padding=cfg.data.crop_padding, epochs=epochs, augment_mode=cfg.data.augment_mode,
                           rrc_scale_min=cfg.data.rrc_scale_min)
    interp = cfg.clip.clip_interpolation
    if train and cfg.data.augment:
        transform = train_transform(data.image_size, data.mean, data.std, scale=(cfg.data.rrc_scale_min, 1.0),
                                    interpolation=interp)
    else:
        transform = eval_transform(data.image_size, data.mean, data.std, interpolation=interp)
    sampler = build_sampler(cfg.data.sampler, part.labels, seed=cfg.run.seed, epochs=epochs) if train else None
    return FileLoader(ImageFileDataset(part.paths, part.labels, transform), batch_size=batch_size, device=device,
                      sampler=sampler, seed=cfg.run.seed, num_workers=cfg.data.num_workers)


def interpolation_used(cfg: RunConfig, lt: LTData) -> str:
    """What the loaders resize with (recorded in results)."""
    if lt.train.images is not None:
        return "bilinear (small images resized on the device)"
    return f"{cfg.clip.clip_interpolation} (PIL transforms)"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(obj), sort_keys=True).encode()).hexdigest()[:16]


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


@dataclass
class Stage1:
    """Where the CVLP weights come from: ``cvlp`` (trained in this run), ``init_run`` or ``none`` (initial CLIP)."""

    source: str
    weights: Path | None
    directory: Path
    record: dict = field(default_factory=dict)
    _clip: clip_core.Clip | None = None

    def key(self, cfg: RunConfig) -> dict:
        """Identity of the towers (for feature caches): weights file sha256, or the initial CLIP."""
        base = {"clip_model": cfg.clip.clip_model, "clip_pretrained": cfg.clip.clip_pretrained}
        if self.weights is None:
            if not cfg.clip.clip_pretrained:
                base["random_init_seed"] = cfg.run.seed  # a random CLIP differs per seed
            return base
        if "weights_sha256" not in self.record:
            self.record["weights_sha256"] = _sha256_file(self.weights)
        return {**base, "weights_sha256": self.record["weights_sha256"]}

    def load(self, cfg: RunConfig, device) -> clip_core.Clip:
        """The CLIP with the CVLP weights (loaded once)."""
        if self._clip is None:
            torch.manual_seed(cfg.run.seed)
            clip = clip_core.load_clip(cfg.clip.clip_model, cfg.clip.clip_pretrained, device="cpu",
                                       interpolation=cfg.clip.clip_interpolation)
            if self.weights is not None:
                stages.load_weights(clip.model, self.weights, prefix="clip.")
            clip.model.to(device).eval()
            self._clip = clip
        return self._clip


def _decay_groups(named, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases, norms and scalars (timm's factory rule)."""
    decay, no_decay = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0}]


@torch.no_grad()
def encode_tokens(model: nn.Module, tokens: torch.Tensor, device, precision: str = "auto", batch: int = 1024,
                  normalize: bool = True) -> torch.Tensor:
    """Text embeddings [S, d] (float32, on ``device``) of token rows through ``model.encode_text``,
    L2-normalised unless ``normalize=False``."""
    dtype = engine.autocast_dtype(precision, torch.device(device))
    out = []
    was = model.training
    model.eval()
    for i in range(0, tokens.shape[0], batch):
        with engine.autocast(torch.device(device), dtype):
            emb = model.encode_text(tokens[i:i + batch].to(device)).float()
        out.append(F.normalize(emb, dim=-1) if normalize else emb)
    model.train(was)
    return torch.cat(out)


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


def run_stage1(cfg: RunConfig, lt: LTData, text: ClassText, *, device=None) -> Stage1:
    """CVLP in ``<run_dir>/stage1`` (skipped when complete; resumed when interrupted), or the init_run / none."""
    check_config(cfg)
    if cfg.run.init_run:
        return _stage1_from_run(cfg)
    if cfg.vlltr.vlltr_stage1_epochs == 0:
        return Stage1("none", None, cfg.run_path(), {"source": "none (initial CLIP, no CVLP)"})
    scfg = stage1_config(cfg)
    rd = RunDir(scfg.run_path())
    if not rd.is_complete(config_hash(scfg)):
        train_cvlp(scfg, lt, text, device=device)
    res = rd.read_results()
    return Stage1("cvlp", Path(rd.path) / "model.safetensors", Path(rd.path),
                  {"source": "cvlp", "run": str(rd.path), "config_hash": res["config_hash"], "epochs": res["epochs"],
                   "metrics": {k: res["metrics"].get(k) for k in ("top1", "many", "medium", "few")},
                   "train_seconds": res.get("train_seconds")})


def train_cvlp(scfg: RunConfig, lt: LTData, text: ClassText, *, device=None) -> dict:
    """Train CVLP with the shared engine (checkpoint/resume) and write the stage-1 results.

    Evaluated once at the end: zero-shot with the class-wise text classifier (mean of each class's
    sentence embeddings), which shows what CVLP did to the image-text alignment.
    """
    v = scfg.vlltr
    run_dir, chash = prepare_run_dir(scfg)
    device = device or engine.resolve_device(scfg.run.device)
    engine.seed_everything(scfg.run.seed)
    clip = clip_core.load_clip(scfg.clip.clip_model, scfg.clip.clip_pretrained, device="cpu",
                               interpolation=scfg.clip.clip_interpolation)
    data = clip_data(lt, clip)
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
    optimizer = engine.build_optimizer(_decay_groups(model.clip.named_parameters(), scfg.optim.lr,
                                                     scfg.optim.weight_decay), scfg.optim)
    train_loader = clip_loader(scfg, data, "train", train=True, device=device, batch_size=scfg.train.batch_size,
                               epochs=scfg.train.epochs)
    eval_loader = clip_loader(scfg, data, scfg.data.eval_split, train=False, device=device,
                              batch_size=scfg.train.eval_batch_size)
    last: list[Evaluation] = []

    def evaluate(epoch: int) -> dict:
        protos = class_prototypes(encode_tokens(model.clip, tokens, device, scfg.train.precision),
                                  labels_t.to(device), data.num_classes)
        scale = clamped_scale(model.clip.logit_scale).detach().float()
        logits, labels = engine.predict(model, eval_loader, device, scfg.train.precision, fn=lambda x: (
            scale * F.normalize(model.clip.encode_image(x).float(), dim=-1) @ protos.t()))
        last[:] = [Evaluation(epoch, logits, labels, evaluate_logits(logits, labels, data, scfg))]
        m = last[0].metrics
        return {k: float(m[k]) if m.get(k) is not None else float("nan") for k in ("top1", "many", "medium", "few")}

    fit = engine.fit(model, model.loss, train_loader, cfg=scfg, run_dir=run_dir, device=device, evaluate=evaluate,
                     optimizer=optimizer, batch_transform=model.batch_transform)
    if not last or last[0].epoch != scfg.train.epochs - 1:
        evaluate(scfg.train.epochs - 1)
    extra = {"model": scfg.clip.clip_model, "clip": clip.record(), "evaluation": "zero-shot, class-wise text classifier",
             "class_text": text.record()}
    return write_run_results(scfg, run_dir, chash, data, model, last[0], fit, device, stage="stage1", extra=extra)


# ----------------------------------------------------------------------------------------------
# frozen features (cached beside the CVLP weights)


def capped_indices(labels: torch.Tensor, cap: int) -> torch.Tensor:
    """Indices of the first ``cap`` samples of every class, in split order (all when cap is 0)."""
    if cap <= 0:
        return torch.arange(labels.numel())
    keep, seen = [], {}
    for i, y in enumerate(labels.tolist()):
        if seen.get(y, 0) < cap:
            keep.append(i)
            seen[y] = seen.get(y, 0) + 1
    return torch.as_tensor(keep, dtype=torch.long)


def _subset(split: Split, idx: torch.Tensor) -> Split:
    return Split(labels=split.labels[idx], images=split.images[idx] if split.images is not None else None,
                 paths=[split.paths[i] for i in idx.tolist()] if split.paths is not None else None)


def image_features(cfg: RunConfig, lt: LTData, stage1: Stage1, split: str, *, cap: int = 0, normalize: bool = False,
                   device=None) -> dict[str, torch.Tensor]:
    """{"features": [N, d], "labels": [N]} of the CVLP image encoder on ``split`` (eval transform, no
    augmentation; the first ``cap`` images per class when cap > 0), cached beside the CVLP weights."""
    device = device or engine.resolve_device(cfg.run.device)
    part = lt.split(split)
    idx = capped_indices(part.labels, cap)
    if cap and split == "train" and cfg.vlltr.vlltr_stage2_input == "cached":  # stage 2 needs the whole split anyway
        full = image_features(cfg, lt, stage1, split, device=device)
        feats = full["features"][idx]
        return {"features": F.normalize(feats.float(), dim=-1) if normalize else feats, "labels": full["labels"][idx]}
    desc = {"what": "clip image embedding", "towers": stage1.key(cfg), "dataset": lt.name, "split": split,
            "cap": cap, "data": _digest(lt.provenance), "n": int(idx.numel()),
            "interpolation": cfg.clip.clip_interpolation}

    def compute():
        clip = stage1.load(cfg, device)
        data = clip_data(dataclasses.replace(lt, test=_subset(part, idx)), clip)
        loader = clip_loader(cfg, data, "test", train=False, device=device, batch_size=cfg.train.eval_batch_size)
        feats, labels = engine.predict(clip.model, loader, device, cfg.train.precision,
                                       fn=lambda x: clip.model.encode_image(x).float())
        return {"features": feats, "labels": labels}

    out = cached_features(stage1.directory, f"img-{split}{f'-cap{cap}' if cap else ''}", desc, compute)
    if normalize:
        out = {**out, "features": F.normalize(out["features"].float(), dim=-1)}
    return out


def text_features(cfg: RunConfig, text: ClassText, stage1: Stage1, *, device=None) -> dict[str, torch.Tensor]:
    """{"features": [S, d] normalised (AnSS), "raw": [S, d] un-normalised (the LGR anchors), "labels": [S],
    "scale": [exp(logit_scale)]} of every sentence through the CVLP text tower (cached)."""
    device = device or engine.resolve_device(cfg.run.device)
    sentences, labels = text.flat()
    desc = {"what": "clip text embedding (raw and normalised)", "towers": stage1.key(cfg),
            "sentences": _digest(sentences), "labels": _digest(labels)}

    def compute():
        clip = stage1.load(cfg, device)
        raw = encode_tokens(clip.model, clip.tokenizer(sentences), device, cfg.train.precision, normalize=False)
        scale = torch.tensor([float(clamped_scale(clip.model.logit_scale).detach())])
        return {"features": F.normalize(raw, dim=-1).cpu(), "raw": raw.cpu(),
                "labels": torch.as_tensor(labels, dtype=torch.long), "scale": scale}

    return cached_features(stage1.directory, "text", desc, compute)


# ----------------------------------------------------------------------------------------------
# AnSS


@dataclass
class Anchors:
    """Anchor sentences: ``index`` [C, k] into the flat sentence list (-1 = pad), ``mask``, ``embeddings``
    [C, k, d] (raw, un-normalised CVLP text embeddings), every sentence's L_lin (``losses``), what results
    record, and ``scale`` = exp(logit_scale) of the CVLP model (AnSS and the LGR linguistic scale)."""

    index: torch.Tensor
    mask: torch.Tensor
    embeddings: torch.Tensor
    losses: torch.Tensor
    record: dict
    scale: float

    def table(self, text: ClassText, classes=None, per_class: int = 3):
        """DataFrame of the best anchors (class, rank, L_lin, sentence) for display."""
        import pandas as pd

        sentences, _ = text.flat()
        rows = []
        for c in classes if classes is not None else range(self.index.shape[0]):
            for r, i in enumerate(self.index[c, :per_class].tolist()):
                if i >= 0:
                    rows.append({"class": c, "name": text.class_names[c], "rank": r,
                                 "L_lin": round(float(self.losses[i]), 4), "sentence": sentences[i]})
        return pd.DataFrame(rows)


def anss_split(cfg: RunConfig, lt: LTData) -> str:
    """The split that feeds AnSS: ``vlltr_anss_split``, where ``auto`` = val if the dataset has one, else train."""
    choice = cfg.vlltr.vlltr_anss_split
    if choice == "auto":
        return "val" if lt.val is not None else "train"
    lt.split(choice)  # DataError naming the available splits
    return choice


def select_anchor_sentences(cfg: RunConfig, lt: LTData, text: ClassText, stage1: Stage1, *, device=None) -> Anchors:
    """AnSS with the CVLP towers: L_lin of every sentence over the AnSS images, k best per class."""
    v = cfg.vlltr
    split = anss_split(cfg, lt)
    img = image_features(cfg, lt, stage1, split, cap=v.vlltr_anss_per_class, normalize=True, device=device)
    txt = text_features(cfg, text, stage1, device=device)
    scale = float(txt["scale"][0])
    losses = anss_losses(txt["features"], txt["labels"], img["features"], img["labels"], scale, lt.num_classes)
    index, mask = select_anchors(losses, txt["labels"], lt.num_classes, v.vlltr_anchors)
    kept = mask.sum(1)
    record = {"split": split, "rule": v.vlltr_anss_split, "images": int(img["labels"].numel()),
              "per_class_cap": v.vlltr_anss_per_class, "k": v.vlltr_anchors, "scale": scale,
              "min_anchors": int(kept.min()), "classes_padded": int((kept < v.vlltr_anchors).sum()),
              "mean_L_lin_kept": float(losses[index[mask]].mean()), "mean_L_lin_all": float(losses.mean())}
    return Anchors(index, mask, gather_anchors(txt["raw"], index), losses, record, scale)


# ----------------------------------------------------------------------------------------------
# stage 2


class FeatureLoader:
    """(features, labels) batches on the device, with an optional epoch sampler (the cached-feature path)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, *, batch_size: int, device, sampler=None):
        self.device = torch.device(device)
        self.features = features.float().to(self.device)
        self.labels = labels.long().to(self.device)
        self.batch_size, self.sampler = int(batch_size), sampler

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else self.labels.numel()
        return math.ceil(n / self.batch_size)

    def __iter__(self):
        order = (self.sampler.indices().to(self.device) if self.sampler is not None
                 else torch.arange(self.labels.numel(), device=self.device))
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield self.features.index_select(0, idx), self.labels.index_select(0, idx)


def _stage2_groups(model: LGRModel, lr: float, text_lr: float, weight_decay: float) -> list[dict]:
    """Paper: parameters of the visual branch (and a trainable encoder) get ``lr``, the rest ``text_lr``."""
    visual = [(n, p) for n, p in model.named_parameters() if n.startswith(("head.visual.", "encoder."))]
    other = [(n, p) for n, p in model.named_parameters() if not n.startswith(("head.visual.", "encoder."))]
    return _decay_groups(visual, lr, weight_decay) + _decay_groups(other, text_lr, weight_decay)


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


def run_stage2(cfg: RunConfig, lt: LTData, text: ClassText, stage1: Stage1, anchors: Anchors, *, device=None) -> dict:
    """Train and evaluate the LGR head; writes the run's results.json (skipped when complete)."""
    check_config(cfg)
    v = cfg.vlltr
    done = completed_results(cfg)
    if done is not None:
        return done
    run_dir, chash = prepare_run_dir(cfg)
    device = device or engine.resolve_device(cfg.run.device)
    engine.seed_everything(cfg.run.seed)
    online = v.vlltr_stage2_input == "online"
    if online:
        clip = stage1.load(cfg, device)
        encoder, data = ImageEncoder(copy.deepcopy(clip.model.visual)), clip_data(lt, clip)
        train_loader = clip_loader(cfg, data, "train", train=True, device=device, batch_size=cfg.train.batch_size,
                                   epochs=cfg.train.epochs)
        eval_loader = clip_loader(cfg, data, cfg.data.eval_split, train=False, device=device,
                                  batch_size=cfg.train.eval_batch_size)
    else:
        encoder, data = None, lt
        tr = image_features(cfg, lt, stage1, "train", device=device)
        ev = image_features(cfg, lt, stage1, cfg.data.eval_split, device=device)
        sampler = build_sampler(cfg.data.sampler, tr["labels"], seed=cfg.run.seed, epochs=cfg.train.epochs)
        train_loader = FeatureLoader(tr["features"], tr["labels"], batch_size=cfg.train.batch_size, device=device,
                                     sampler=sampler)
        eval_loader = FeatureLoader(ev["features"], ev["labels"], batch_size=cfg.train.eval_batch_size, device=device)
    head = LGRHead(anchors.embeddings, anchors.mask, scale=lgr_scale(cfg, anchors),
                   detach_text_norm=v.vlltr_detach_text_norm)
    model = LGRModel(head, v.vlltr_alpha, encoder, train_encoder=v.vlltr_train_visual)
    criterion = LGRLoss(cfg.loss.label_smoothing)
    mixing = online and (v.vlltr_mixup > 0 or v.vlltr_cutmix > 0)
    batch_transform = (lambda x, y: mix_batch(x, y, data.num_classes, mixup=v.vlltr_mixup, cutmix=v.vlltr_cutmix,
                                              smoothing=cfg.loss.label_smoothing)) if mixing else None
    optimizer = engine.build_optimizer(_stage2_groups(model, cfg.optim.lr, v.vlltr_text_lr, cfg.optim.weight_decay),
                                       cfg.optim)
    last: list[Evaluation] = []
    branches: list[torch.Tensor] = []

    def evaluate(epoch: int) -> dict:
        z, labels = engine.predict(model, eval_loader, device, cfg.train.precision, fn=model.branch_logits)
        logits = mix_probabilities(z, v.vlltr_alpha).clamp(min=1e-12).log()
        last[:] = [Evaluation(epoch, logits, labels, evaluate_logits(logits, labels, data, cfg))]
        branches[:] = [z]
        m = last[0].metrics
        out = {k: float(m[k]) if m.get(k) is not None else float("nan") for k in ("top1", "many", "medium", "few")}
        out["top1_visual"] = metrics.top1(z[:, 0].argmax(1).numpy(), labels.numpy())
        out["top1_linguistic"] = metrics.top1(z[:, 1].argmax(1).numpy(), labels.numpy())
        return out

    model.to(device)
    fit = engine.fit(model, criterion, train_loader, cfg=cfg, run_dir=run_dir, device=device, evaluate=evaluate,
                     optimizer=optimizer, batch_transform=batch_transform)
    if not last or last[0].epoch != cfg.train.epochs - 1:
        evaluate(cfg.train.epochs - 1)
    z, labels = branches[0], last[0].labels
    sweep = alpha_sweep(z, labels, data.class_counts, many=cfg.data.shot_many, few=cfg.data.shot_few)
    np.savez_compressed(Path(run_dir.path) / "branch_logits.npz", visual=z[:, 0].numpy(), linguistic=z[:, 1].numpy(),
                        labels=labels.numpy())
    if lt.open is not None:  # OLTR open-set protocol (every method): the alpha-mixed prediction on the open images
        if online:
            open_loader = clip_loader(cfg, data, "open", train=False, device=device, batch_size=cfg.train.eval_batch_size)
        else:
            op = image_features(cfg, lt, stage1, "open", device=device)
            open_loader = FeatureLoader(op["features"], op["labels"], batch_size=cfg.train.eval_batch_size, device=device)
        zo, _ = engine.predict(model, open_loader, device, cfg.train.precision, fn=model.branch_logits)
        add_open_set_metrics(cfg, data, last[0], mix_probabilities(zo, v.vlltr_alpha).clamp(min=1e-12).log(), run_dir)
    extra = {
        "model": cfg.clip.clip_model,
        "vlltr": {
            "text_set": TEXT_SET_NOTE, "class_text": text.record(), "stage1": stage1.record, "anss": anchors.record,
            "alpha": v.vlltr_alpha, "stage2_input": v.vlltr_stage2_input, "train_visual": v.vlltr_train_visual,
            "lgr_scale": lgr_scale(cfg, anchors),
            "branch_top1": {"visual": sweep[-1]["top1"], "linguistic": sweep[0]["top1"]},
            "alpha_sweep": sweep, "alpha_sweep_note": f"on the {cfg.data.eval_split} split (diagnostic; α is fixed)",
            "deviations": _deviations(cfg),
            "clip": {"clip_model": cfg.clip.clip_model, "clip_pretrained": cfg.clip.clip_pretrained,
                     "interpolation_used": interpolation_used(cfg, lt)},
        },
    }
    return write_run_results(cfg, run_dir, chash, data, model, last[0], fit, device, extra=extra)


def run(cfg: RunConfig, data: LTData | None = None) -> dict:
    """Stage 1 (CVLP) → AnSS → stage 2 (LGR head); returns the results.json dict (skips a complete run)."""
    check_config(cfg)
    done = completed_results(cfg)
    if done is not None:
        return done
    lt = data if data is not None else build_data(cfg.data)
    text = class_text(cfg, lt)
    stage1 = run_stage1(cfg, lt, text)
    anchors = select_anchor_sentences(cfg, lt, text, stage1)
    return run_stage2(cfg, lt, text, stage1, anchors)
