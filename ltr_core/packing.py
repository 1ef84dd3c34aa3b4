"""Seed packing: M runs of one architecture, split and schedule trained as ONE grouped network.

* Conv2d(Cin, Cout, groups=g) -> Conv2d(M·Cin, M·Cout, groups=M·g) (member weights concatenated on dim 0);
  BatchNorm2d(C) -> BatchNorm2d(M·C) (per-channel statistics: per member); the option-A shortcut pads each
  member's channels; heads stay per member. x [B, M·3, H, W] (member batches stacked) -> logits [B, M, K].
* L = Σ_m L_m(out[:, m], y_m): no parameter is shared, so ∂L/∂θ_m = ∂L_m/∂θ_m (the lone gradient); SGD
  (momentum, Nesterov, L2 decay) and AdamW are elementwise with one step count, so one optimizer over the
  packed net is M optimizers. Refused: grad_clip > 0 (a global norm couples members), dropout (one RNG).
* oneDNN runs a grouped conv per group with the lone kernel when a group is whole channel blocks; the RGB stem
  is not and runs member-wise (:class:`MemberwiseConv2d`): a packed CPU run is bit for bit the lone runs
  (tests/test_packing.py; on CUDA expect float rounding). Not packed: checkpoints (a killed packed run re-runs
  from the start), open-set splits; compile is ignored (eager). ``train_seconds`` is the packed run's.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import dist, engine, numerics, study
from .config import LossSection, RunConfig, to_flat
from .epochlog import EpochLogger
from .evaluation import Evaluation, SingleLabel
from .lifecycle import begin_run, completed_results, end_run, write_run_results
from .models import Classifier
from .models.resnet_cifar import BasicBlock, CifarResNet, PadShortcut

MAY_DIFFER = frozenset({"seed", "name", "run_dir", "head", "cosine_scale", "sampler"})  # + every loss key
CHANNEL_BLOCK = 16  # oneDNN's channel block (8 on AVX2, 16 on AVX-512): narrower groups run member-wise
CONTAINERS = (CifarResNet, BasicBlock, nn.Sequential, nn.Identity)


class PackingError(ValueError):
    """These runs (or models) cannot be packed; run them one by one instead."""


class PackedPadShortcut(nn.Module):
    """Option-A shortcut of M members: x[:, :, ::2, ::2], each member's C channels zero-padded to C + extra."""

    def __init__(self, extra: int, members: int) -> None:
        super().__init__()
        self.extra, self.members = extra, members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2)  # W, H, then each member's channels
        return F.pad(x[:, :, ::2, ::2].unflatten(1, (self.members, -1)), pad).flatten(1, 2)


class MemberwiseConv2d(nn.Conv2d):
    """A packed convolution's parameters computed member by member, y_m = conv(x_m, W_m) (see module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members
        bias = self.bias.chunk(m) if self.bias is not None else [None] * m
        return torch.cat([F.conv2d(xm, wm, bm, self.stride, self.padding, self.dilation, self.groups // m)
                          for xm, wm, bm in zip(x.chunk(m, dim=1), self.weight.chunk(m), bias)], dim=1)


class PackedNet(nn.Module):
    """M classifiers as one: x [B, M·C, H, W] -> logits [B, M, K]; ``backbone`` keeps the lone module names."""

    def __init__(self, backbone: nn.Module, heads: list[nn.Module]) -> None:
        super().__init__()
        self.backbone, self.heads, self.members = backbone, nn.ModuleList(heads), len(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x).unflatten(1, (self.members, -1))  # [B, M, D]
        return torch.stack([head(f[:, m]) for m, head in enumerate(self.heads)], dim=1)


def stack_inputs(xs: list[torch.Tensor]) -> torch.Tensor:
    """Member batches [B, C, H, W] each -> the packed input [B, M·C, H, W]."""
    return torch.cat(xs, dim=1)


def _pack_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    c, m = convs[0], len(convs)
    narrow = (c.in_channels // c.groups) % CHANNEL_BLOCK or (c.out_channels // c.groups) % CHANNEL_BLOCK
    new = (MemberwiseConv2d if narrow and c.padding_mode == "zeros" else nn.Conv2d)(
        m * c.in_channels, m * c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, groups=m * c.groups,
        bias=c.bias is not None, padding_mode=c.padding_mode, device=c.weight.device, dtype=c.weight.dtype)
    new.members = m
    with torch.no_grad():
        for name, t in new.named_parameters():
            t.copy_(torch.cat([getattr(k, name) for k in convs]))
    return new


def _pack_bn(bns: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b = bns[0]
    new = nn.BatchNorm2d(len(bns) * b.num_features, b.eps, b.momentum, b.affine, b.track_running_stats)
    new.to(next(b.buffers(), torch.zeros(())))  # the members' device and dtype
    with torch.no_grad():
        for name, t in [*new.named_parameters(), *new.named_buffers()]:  # num_batches_tracked: member 0's
            t.copy_(getattr(b, name) if t.ndim == 0 else torch.cat([getattr(n, name) for n in bns]))
    return new


def pack_models(models: list[nn.Module]) -> PackedNet:
    """The grouped network of ``models`` (CIFAR ResNet ``Classifier`` s of one architecture, see the module
    doc); raises :class:`PackingError` naming what cannot be packed (a timm model, dropout, another layer)."""
    for mod in models:
        if not isinstance(mod, Classifier) or not isinstance(mod.backbone, CifarResNet):
            what = type(mod.backbone if isinstance(mod, Classifier) else mod).__name__
            raise PackingError(f"{what} cannot be packed (only a Classifier over the CIFAR ResNet); run it alone")
        if not isinstance(mod.dropout, nn.Identity):
            raise PackingError("dropout (drop_rate > 0) cannot be packed: one RNG stream draws the members' masks")
    layout = [[(k, v.shape) for k, v in m.backbone.state_dict().items()] for m in models]
    if any(lay != layout[0] for lay in layout):
        raise PackingError("the members' backbones differ (layers or shapes); only one architecture packs")
    packed = copy.deepcopy(models[0].backbone)
    by_name = [dict(m.backbone.named_modules()) for m in models]
    for name, module in list(packed.named_modules()):
        parts = [d[name] for d in by_name]
        if isinstance(module, nn.Conv2d):
            new = _pack_conv(parts)
        elif isinstance(module, nn.BatchNorm2d):
            new = _pack_bn(parts)
        elif isinstance(module, PadShortcut):
            new = PackedPadShortcut(module.extra, len(models))
        elif type(module) in CONTAINERS and not list(module.parameters(recurse=False)):
            continue
        else:
            raise PackingError(f"layer {name or '<root>'} ({type(module).__name__}) cannot be packed")
        parent, _, child = name.rpartition(".")
        packed.get_submodule(parent).add_module(child, new)
    return PackedNet(packed, [copy.deepcopy(m.head) for m in models])


def unpack_state(packed: PackedNet, members: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Each member's state dict under the lone ``Classifier`` key names (``backbone.*``: chunk m of dim 0;
    ``head.*``: ``heads[m]``), i.e. what its ``model.safetensors`` holds."""
    n = packed.members
    assert members in (None, n), f"the packed net holds {n} members, not {members}"
    states: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for key, value in packed.backbone.state_dict().items():
        for state, part in zip(states, [value] * n if value.ndim == 0 else value.chunk(n)):
            state[f"backbone.{key}"] = part.detach().clone()
    for state, head in zip(states, packed.heads):
        state.update({f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()})
    return states


def _member_reason(cfg: RunConfig) -> str | None:
    checks = [(cfg.run.method != "erm", f"method {cfg.run.method!r} is not packed (only erm)"),
              (cfg.model.model != "resnet32", f"model {cfg.model.model!r} is not packed (only the CIFAR ResNet-32;"
                                              f" timm models such as ViTs run one by one)"),
              (cfg.train.grad_clip > 0, "grad_clip > 0 clips by the global norm over all members' parameters"),
              (cfg.model.drop_rate > 0, "drop_rate > 0: dropout masks come from one global RNG stream"),
              (cfg.dist.dist_nproc > 1 or dist.is_distributed(), "DDP runs are not packed"),
              (bool(cfg.run.init_run or cfg.run.resume_from), "init_run / resume_from runs are not packed")]
    return next((why for bad, why in checks if bad), None)


def can_pack(cfgs: list[RunConfig]) -> str | None:
    """None when ``cfgs`` can train as one packed run, else the reason in words."""
    if len({str(c.run_path()) for c in cfgs}) < max(len(cfgs), 2):
        return "fewer than two runs (or two share a run directory): nothing to pack"
    if any(_member_reason(cfg) for cfg in cfgs):
        return next(f"{cfg.run_id}: {_member_reason(cfg)}" for cfg in cfgs if _member_reason(cfg))
    free, ref = MAY_DIFFER | {f.name for f in dataclasses.fields(LossSection)}, to_flat(cfgs[0])
    for cfg in cfgs[1:]:
        flat = to_flat(cfg)
        if diff := sorted(k for k in ref if k not in free and flat[k] != ref[k]):
            return (f"{cfg.run_id} and {cfgs[0].run_id} differ in {', '.join(diff)}; a packed group may differ "
                    f"only in seed, name, loss settings, head and sampler")
    return None


def packable_groups(cfgs: list[RunConfig]) -> list[list[int]]:
    """Indices of ``cfgs`` that train together: runs equal outside MAY_DIFFER and the loss keys, each group of
    two or more that :func:`can_pack` accepts, in first-appearance order. Every other run trains alone."""
    free = MAY_DIFFER | {f.name for f in dataclasses.fields(LossSection)}
    by_key: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        if _member_reason(cfg) is None:
            key = repr(sorted((k, repr(v)) for k, v in to_flat(cfg).items() if k not in free))
            by_key.setdefault(key, []).append(i)
    return [g for g in by_key.values() if len(g) > 1 and can_pack([cfgs[i] for i in g]) is None]


class PackedLoss(nn.Module):
    """L = Σ_m L_m(out[:, m], y[:, m]), logits [B, M, K], labels [B, M]; ``sums``: Σ L_m·B per member, this epoch."""

    def __init__(self, criteria: list[nn.Module]) -> None:
        super().__init__()
        self.criteria, self.sums = nn.ModuleList(criteria), 0.0

    def set_epoch(self, epoch: int) -> None:
        self.sums = 0.0
        for crit in self.criteria:
            getattr(crit, "set_epoch", lambda e: None)(epoch)

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = torch.stack([crit(out[:, m], y[:, m]) for m, crit in enumerate(self.criteria)])
        self.sums = self.sums + losses.detach().float() * y.shape[0]
        return losses.sum()


@dataclasses.dataclass
class PackedLoader:
    """The members' train loaders in lockstep: batches (x [B, M·C, H, W], y [B, M])."""

    loaders: list

    def set_epoch(self, epoch: int) -> None:
        for ld in self.loaders:
            ld.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self):
        for batches in zip(*self.loaders):
            yield stack_inputs([b[0] for b in batches]), torch.stack([b[1] for b in batches], dim=1)


def predict_packed(packed: PackedNet, loader, device, precision: str, channels_last: bool):
    """Each member's logits (float32, CPU) and the labels over one shared eval loader (x repeated M times)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    z, labels = engine.predict(packed, loader, device, precision,
                               fn=lambda x: packed(x.repeat(1, packed.members, 1, 1).contiguous(memory_format=fmt)))
    return list(z.unbind(1)), labels


def _fit_group(ctxs, packed: PackedNet, criterion: PackedLoss, train_loader: PackedLoader):
    """Train the packed net (:func:`ltr_core.engine.train_one_epoch` on the stacked batches), log and evaluate
    each member as ``engine.fit`` + ``study.train_and_evaluate`` would; returns the FitResult, last Evaluations."""
    cfg, device = ctxs[0].cfg, ctxs[0].device
    channels_last = engine.use_channels_last(packed, cfg.model.channels_last, device)
    packed.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = engine.build_optimizer(packed.parameters(), cfg.optim)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    engine.set_cudnn_benchmark(cfg, device)
    evaluators = [SingleLabel(c.cfg, c.data) for c in ctxs]
    eval_loader = study.eval_loader(cfg, ctxs[0].data, cfg.data.eval_split, device)
    fit, last = engine.FitResult(), []  # shared: the packed run's seconds, one member's images
    for ctx in ctxs:  # a killed attempt's records go: packed runs always start afresh
        ctx.run_dir.truncate_metrics(-1)
    loggers = [EpochLogger(c.run_dir, c.cfg.run.tensorboard) for c in ctxs]
    try:
        for epoch in range(cfg.train.epochs):
            train_loader.set_epoch(epoch)
            criterion.set_epoch(epoch)
            t0 = time.perf_counter()
            _, images = engine.train_one_epoch(packed, criterion, train_loader, optimizer, cfg=cfg, epoch=epoch,
                                               device=device, channels_last=channels_last)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds, losses = time.perf_counter() - t0, (criterion.sums / max(images, 1)).tolist()
            if epoch == cfg.train.epochs - 1 or (cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0):
                logits, labels = predict_packed(packed, eval_loader, device, cfg.train.precision, channels_last)
                last = [Evaluation(epoch, z, labels, ev.metrics(z, labels)) for z, ev in zip(logits, evaluators)]
            fit.train_seconds, fit.images, fit.epochs_run = fit.train_seconds + seconds, fit.images + images, epoch + 1
            for m, logger in enumerate(loggers):
                scalars = evaluators[m].scalars(last[m].metrics) if last and last[m].epoch == epoch else {}
                logger.log({"epoch": epoch, "train_loss": losses[m], "lr": optimizer.param_groups[0]["lr"],
                            "epoch_seconds": round(seconds, 3), "images_per_second": images / seconds, **scalars})
    finally:
        for logger in loggers:
            logger.close()
    return fit, last, evaluators


def train_packed(cfgs: list[RunConfig], *, data=None) -> list[dict]:
    """Run erm configs that :func:`can_pack` accepts as one packed run -> each member's results.json dict, in order.
    Complete members are skipped; a single member left runs alone (``erm.run``); ``data`` as for ``erm.run``."""
    if (reason := can_pack(cfgs)) is not None:
        raise PackingError(reason)
    from .methods import erm
    done = [completed_results(cfg, data) for cfg in cfgs]
    todo = [cfg for cfg, res in zip(cfgs, done) if res is None]
    if len(todo) == 1:
        return [res if res is not None else erm.run(todo[0], data) for res in done]
    fresh = iter(_train_group(todo, data) if todo else [])
    return [res if res is not None else next(fresh) for res in done]


def _train_group(cfgs: list[RunConfig], data) -> list[dict]:
    """Claim each member as alone (begin_run, erm.build, study.train_loader), train packed, write each run dir."""
    from .methods import erm
    try:
        members = []
        for cfg in cfgs:
            ctx = begin_run(cfg, data)  # ends with seed_everything(seed): the init below is the lone run's
            model, criterion = erm.build(cfg, ctx.data)
            if getattr(criterion, "wants_features", False) or ctx.data.open is not None:
                raise PackingError(f"{cfg.run_id}: a loss that wants features or an open-set split is not packed")
            members.append((ctx, model, criterion, study.train_loader(cfg, ctx.data, ctx.device)))
        ctxs, models, criteria, loaders = map(list, zip(*members))
        if len({c.inputs["data"]["digest"] for c in ctxs}) > 1 or len({len(ld) for ld in loaders}) > 1:
            raise PackingError("the members' data or batch counts differ; run them one by one")
        packed = pack_models(models)
        fit, evs, evaluators = _fit_group(ctxs, packed, PackedLoss(criteria), PackedLoader(loaders))
        out = []
        for ctx, model, state, ev, evaluator in zip(ctxs, models, unpack_state(packed), evs, evaluators):
            model.load_state_dict(state)
            numerics.pin_threads(ctx.data)  # pinned while it writes, as a lone run is (write_run_results unpins)
            out.append(write_run_results(ctx.cfg, ctx.run_dir, ctx.chash, ctx.data, model, ev, fit, ctx.device,
                                         extra={"packed_with": [c.cfg.run_id for c in ctxs if c is not ctx]},
                                         inputs=ctx.inputs, evaluator=evaluator))
        return out
    finally:
        for cfg in cfgs:
            end_run(cfg)
