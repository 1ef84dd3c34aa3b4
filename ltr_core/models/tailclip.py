"""TailCLIP's network: CLIP scoring every class prompt, text recomputed through the text tower each step.

z_ic = exp(t) · cos(E_img(x_i), E_txt("a photo of a <class c>")), t the learnt logit scale; the class
prompts go through the text tower on every forward pass, so fine-tuning moves the class embeddings
too (Timmermann et al., TailCLIP / LM-CLIP; methods.md §7.1). Synthetic captions for the contrastive
term join an image's label names: "a photo of a dog, person" (labels in class-index order).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .clip import Clip, class_prompts


class TailCLIPOutput(NamedTuple):
    """What the training forward returns: class scores, the image embeddings and exp(t)."""

    logits: torch.Tensor  # [B, C] = scale · cos(image, class prompt)
    image_emb: torch.Tensor  # [B, D], L2-normalised
    scale: torch.Tensor  # exp(logit_scale), a scalar


def caption(label_names: Sequence[str], template: str = "a photo of a {}") -> str:
    """The synthetic caption of an image: ``template`` filled with its label names joined by ", "."""
    return template.format(", ".join(str(n).replace("_", " ").strip() for n in label_names))


class TailCLIPNet(nn.Module):
    """An open_clip model as a multi-label scorer; ``forward`` gives :class:`TailCLIPOutput`,
    :meth:`logits` only the scores (what evaluation uses)."""

    def __init__(self, clip: Clip, class_names: Sequence[str], template: str = "a photo of a {}") -> None:
        super().__init__()
        self.clip = clip.model
        self.tokenizer = clip.tokenizer
        self.class_names = [str(c) for c in class_names]
        self.template = template
        self.register_buffer("class_tokens", clip.tokenizer(class_prompts(self.class_names, template)),
                             persistent=False)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(x), dim=-1)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def class_embeddings(self) -> torch.Tensor:
        """t_c = normalize(E_txt(prompt_c)) [C, D], through the text tower (with gradient when training)."""
        return self.encode_tokens(self.class_tokens)

    def scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def forward(self, x: torch.Tensor) -> TailCLIPOutput:
        img = self.encode_image(x)
        scale = self.scale()
        return TailCLIPOutput(scale * img @ self.class_embeddings().t(), img, scale)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """z [B, C] = exp(t) · cos(image, class prompt)."""
        return self.forward(x).logits

    def captions(self, targets: torch.Tensor) -> list[str]:
        """One synthetic caption per row of multi-hot targets [B, C]."""
        rows = (targets > 0).cpu()
        return [caption([self.class_names[c] for c in torch.nonzero(r).flatten().tolist()], self.template)
                for r in rows]

    def encode_captions(self, targets: torch.Tensor) -> torch.Tensor:
        """Normalised text embeddings [B, D] of the synthetic captions of a batch."""
        tokens = self.tokenizer(self.captions(targets)).to(self.class_tokens.device)
        return self.encode_tokens(tokens)
