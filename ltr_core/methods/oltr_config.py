"""The config section of OLTR (ltr_core.methods.oltr): its keys, defaults and help, beside the method.

Imported by :mod:`ltr_core.config` (torch-free, as config validation must be); the keys enter the config
hash of the methods listed in ``METHODS`` only (:mod:`ltr_core.config_families`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class OLTRSection:
    """OLTR: modulated attention + dynamic meta-embedding (Liu et al., CVPR 2019)."""

    METHODS: ClassVar[tuple[str, ...]] = ("oltr",)
    # stage 1: the plain model (backbone [+ fc] + linear classifier, CE, instance-balanced sampling)
    oltr_stage1_epochs: int = 30  # stage-1 epochs inside this run (paper 30); unused when init_run names a finished stage-1/CE run
    oltr_stage1_lr: float = 0.1  # stage-1 classifier lr (paper 0.1)
    oltr_stage1_feature_lr: float = 0.0  # stage-1 backbone (+ fc) lr; 0: oltr_stage1_lr (ImageNet-LT 0.1, Places-LT 0.001)
    oltr_stage1_milestones: tuple[int, ...] = (10, 20)  # stage-1 step-schedule epochs (x lr_gamma); paper StepLR(10, 0.1)
    oltr_stage1_fc: bool = False  # stage 1 has the fc layer too, loaded in stage 2 (Places-LT True, ImageNet-LT False)
    # stage 2: modulated attention + dynamic meta-embedding + cosine-norm classifier (lr = classifier lr)
    oltr_fc_dim: int = 0  # fc after pooling: Linear(num_features -> dim) + ReLU; 0: none (paper 512: ImageNet-LT, Places-LT)
    oltr_feature_lr: float = 0.01  # stage-2 lr of backbone, attention and fc (ImageNet-LT 0.01, Places-LT 1e-4)
    oltr_centroid_lr: float = 0.01  # stage-2 lr of the centroid memory M (own SGD group, same schedule; paper 0.01)
    oltr_centroid_weight: float = 0.01  # weight of the discriminative centroid loss in CE + w * (L_att + 0.01 L_rep) (paper 0.01)
    oltr_centroid_input: str = "direct"  # feature the centroid loss pulls: direct (f, original code) | meta (v_meta, paper Eq. 7)
    oltr_centroid_grad_scaled: bool = False  # scale the centroid update by oltr_centroid_weight (False: original code, unscaled)
    oltr_reach_scale: float = 10.0  # reachability gamma = scale / min_c ||f - M_c|| (paper 10)
    oltr_attention: bool = True  # modulated attention on the last feature map (use_modulatedatt; ablation: False)
    oltr_freeze_backbone: bool = False  # stage 2 trains only attention, fc, classifier, centroids (Places-LT True)
