"""The core sections of the run configuration (:mod:`ltr_core.config`): run, data, model, loss, optim and train.

Every key is a typed field with its default and a help comment (``name: type = default  # help``); the
comment is the help text of the generated parameters cells and ``papermill --help-notebook``. The core keys
enter every method's config hash. Method-family sections: ``ltr_core/methods/<family>_config.py``, gathered in
:mod:`ltr_core.config_families`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunSection:
    method: str = "erm"  # method family: see ltr_core.methods.METHODS
    seed: int = 0  # seeds model init, data order and augmentation (not the LT subset: lt_seed)
    name: str = ""  # run name; the run id is "<dataset>-<method>-<name>-s<seed>"; empty: "default"
    suite: str = "interactive"  # results/<suite>/<run_id>/ groups runs of one table
    results_root: str = "results"  # where run directories live (relative to the repo root)
    run_dir: str = ""  # explicit run directory (the runner sets it); empty: derived
    figures_dir: str = ""  # where notebooks save figures; empty: figures/<suite>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    interactive: bool = False  # tqdm bars (True in JupyterLab); papermill runs log one line per epoch
    tensorboard: bool = True  # TensorBoard scalars under <run_dir>/tb
    save_logits: bool = True  # logits.npz of the evaluation split in the run directory
    init_run: str = ""  # a finished run (directory, or run id in this suite) whose weights start this one; "{seed}" -> seed
    resume_from: str = ""  # a run directory whose last good checkpoint starts this (new) run, e.g. after a NaN stop with a lower lr


@dataclass(frozen=True)
class DataSection:
    dataset: str = "digits_lt"  # digits_lt | cifar10_lt | cifar100_lt | imagenet_lt | places_lt | inat18 | image_list
    data_root: str = ""  # images; empty: $LTR_DATA_ROOT, then data/<dataset>
    split_dir: str = ""  # split lists (ImageNet-LT/Places-LT/iNat); empty: <data_root>
    imbalance_ratio: float = 100.0  # IR = n_max / n_min of the long-tailed train split
    lt_profile: str = "exp"  # exp: n_c = floor(n_max * IR^(-c/(C-1))); step: half n_max, half n_max/IR
    lt_seed: int = 0  # seed of the LT subset selection (LDAM-DRW protocol: 0)
    n_max: int = 0  # images of the head class; 0: dataset default (CIFAR-10 5000, CIFAR-100 500)
    image_size: int = 0  # network input size; 0: dataset default
    augment: bool = True  # train-time augmentation (crop with padding + flip on small images)
    crop_padding: int = 4  # zero padding before the random crop on the small-image path
    augment_mode: str = "crop_pad"  # small-image path: crop_pad (pad + crop + flip) | rrc (RandomResizedCrop + flip)
    rrc_scale_min: float = 0.08  # rrc: smallest crop area fraction (torchvision's scale=(0.08, 1))
    sampler: str = "instance"  # instance | class_balanced | sqrt | class_aware (4 per class visit) | progressive
    num_workers: int = 2  # DataLoader workers on the file path (the small-image path needs none)
    download: bool = False  # let torchvision download CIFAR where a network exists
    cache_dir: str = "data/cache"  # decoded uint8 caches of small-image datasets
    digits_test_per_class: int = 50  # digits-LT: balanced held-out test images per class
    shot_many: int = 100  # many-shot: n_c > shot_many training images
    shot_few: int = 20  # few-shot: n_c < shot_few; medium in between (inclusive)
    eval_split: str = "test"  # split reported in results.json: test | val
    split_from_ir: float = 0.0  # shot groups from the counts of the same profile at this IR (PEL CIFAR-100-LT: 100 for every IR); 0: the run's own counts
    open_classes: tuple[int, ...] = ()  # *_open datasets: held-out classes (their test images = open set, label -1); empty: dataset default (8, 9)
    open_theta: float = 0.1  # open set: reject (predict -1) when max softmax < open_theta (OLTR 0.1; never rejects when C <= 10)
    file_backend: str = "pil"  # file splits (ImageNet-LT, Places-LT, iNat): pil (PIL workers, faithful) | uint8_cache (decode once at Resize(S), aspect kept; eval pixels identical, RandomResizedCrop/flip on the device from the S-px image) | auto (uint8_cache where it fits on disk, else pil; the large-image recipes' value) | torchcodec (batched JPEG decode on the GPU; falls back to pil)
    cache_size: int = 0  # uint8_cache: shorter side S of the cached images (aspect kept, longer side <= 2S); 0: int(image_size / 0.875) = 256 at 224


@dataclass(frozen=True)
class ModelSection:
    model: str = "resnet32"  # resnet32 (CIFAR) or any timm model name
    pretrained: str = ""  # timm pretrained tag or a local weights file; empty: random init
    head: str = "linear"  # linear | cosine
    cosine_scale: float = 16.0  # logit scale s of the cosine head: z = s * cos(f, w)
    head_init: str = "default"  # head weight init: default (linear: nn.Linear's U(±1/√d); cosine: U(-1, 1)) | kaiming_normal (linear; LDAM-DRW's CIFAR ResNet code, std √(2/d)) | unit_norm (cosine; LDAM-DRW's NormedLinear, ‖w_c‖ = 1) | sigmoid_prior (linear; the CB repository's sigmoid/focal head: Glorot-uniform weight, bias -log(C-1))
    drop_rate: float = 0.0  # dropout before the head
    channels_last: str = "auto"  # auto (CNNs on CUDA) | on | off


@dataclass(frozen=True)
class LossSection:
    loss: str = "ce"  # see ltr_core.losses.LOSSES
    label_smoothing: float = 0.0  # epsilon of label smoothing (ce, bal_bce; other losses reject it)
    focal_gamma: float = 1.0  # focal (and cb with cb_loss=focal): gamma of -(1-p_y)^gamma log p_y
    cb_beta: float = 0.9999  # cb: beta of the effective number, w_c = (1-beta)/(1-beta^n_c), sum w = C
    cb_loss: str = "ce"  # cb: loss the class-balanced weights multiply: ce | focal (softmax, LDAM-DRW's code) | sigmoid | sigmoid_focal (one-vs-all, the CB repository's code)
    ldam_max_margin: float = 0.5  # ldam, ldam_drw: margin of the rarest class (m_c ~ n_c^-1/4)
    ldam_scale: float = 30.0  # ldam, ldam_drw: logit scale s on cosine logits (use head=cosine, cosine_scale=1)
    drw_epoch: int = 160  # ldam_drw: first (0-based) epoch with class-balanced weights (80% of the schedule)
    drw_beta: float = 0.9999  # ldam_drw: beta of the deferred class-balanced weights
    la_tau: float = 1.0  # logit_adjusted: tau of CE(z + tau log prior)
    bal_bce_tau: float = 1.0  # bal_bce: tau of the prior log-odds added to the logits
    mislas_eps_head: float = 0.3  # mislas: smoothing of the most frequent class
    mislas_eps_tail: float = 0.0  # mislas: smoothing of the rarest class
    mislas_shape: str = "concave"  # mislas: concave | linear | convex interpolation in n_c
    lade_alpha: float = 0.1  # lade: weight alpha of the LADE regulariser on the PC-softmax CE
    ib_alpha: float = 1000.0  # ib: alpha of the influence-balanced weight alpha / (|p - y|_1 |h|_1 + 1e-3) (paper 1000)
    ib_start_epoch: int = 100  # ib: first (0-based) epoch of the IB loss; plain CE before (paper: 100 of 200)


@dataclass(frozen=True)
class OptimSection:
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD Nesterov momentum
    weight_decay: float = 2e-4  # decoupled for AdamW, L2 for SGD
    head_bias_decay: bool = True  # weight decay on the classifier's bias too (false: the CB repository's sigmoid/focal runs)
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2
    schedule: str = "step"  # step | cosine | constant
    warmup_epochs: float = 0.0  # linear warm-up length in epochs (per step)
    lr_milestones: tuple[int, ...] = ()  # step schedule: epochs where lr is multiplied by lr_gamma
    lr_gamma: float = 0.1  # step schedule factor
    min_lr: float = 0.0  # cosine floor


@dataclass(frozen=True)
class TrainSection:
    epochs: int = 200  # training epochs
    batch_size: int = 128  # images per optimiser step (split over accum_steps micro-batches)
    accum_steps: int = 1  # gradient accumulation micro-batches per step
    eval_batch_size: int = 512  # evaluation batch
    precision: str = "auto"  # auto (bf16 autocast on CUDA; on a CPU bf16 only with native bf16 and LTR_NATIVE_ISA=1, else fp32) | bf16 | fp32
    grad_clip: float = 0.0  # max gradient norm; 0: off
    eval_every: int = 1  # evaluate every N epochs (the last epoch always); 0: last only
    max_steps_per_epoch: int = 0  # cap steps per epoch (smoke tests); 0: full epoch
    compile: bool = False  # torch.compile the model
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs) | max-autotune
    drop_last: bool = False  # drop the last partial training batch: static shapes for graphs/compile (stated in results)
    cudnn_benchmark: str = "auto"  # auto (on for CUDA with drop_last) | on | off
    checkpoint_every: int = 1  # save the resume checkpoint every N epochs (and at the last); resume is exact either way
    checkpoint_async: bool = False  # write checkpoints from a background thread after one flat device->host copy


CORE_SECTIONS: dict[str, type] = {
    "run": RunSection,
    "data": DataSection,
    "model": ModelSection,
    "loss": LossSection,
    "optim": OptimSection,
    "train": TrainSection,
}
