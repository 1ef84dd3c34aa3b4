"""The shared CLIP core on tiny random open_clip models (no weights are downloaded)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltr_core.models import clip as C


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return C.load_clip("ltr-tiny-vit")


def test_tiny_vit_loads_with_its_preprocessing(tiny):
    assert tiny.is_vit and tiny.image_size == 32 and tiny.interpolation == "bicubic"
    assert tiny.activation == "QuickGELU"
    assert tiny.embed_dim == 32 and tiny.feature_dim == 64
    assert tiny.record()["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_unprojected_feature_times_projection_is_the_embedding(tiny):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        f = C.image_features(tiny, x, project=False)
        e = C.image_features(tiny, x, project=True)
    assert f.shape == (3, 64) and e.shape == (3, 32)
    assert torch.allclose(f @ C.visual_projection(tiny), e, atol=1e-5)


def test_text_classifier_is_the_normalised_template_mean(tiny):
    names = ["golden_retriever", "cat"]
    assert C.class_prompts(names) == ["a photo of a golden retriever.", "a photo of a cat."]
    templates = ("a photo of a {}.", "a sketch of a {}.")
    w = C.text_classifier(tiny, names, templates)
    a = C.encode_text(tiny, C.class_prompts(names, templates[0]))
    b = C.encode_text(tiny, C.class_prompts(names, templates[1]))
    assert torch.allclose(w, F.normalize(a + b, dim=-1), atol=1e-6)
    assert torch.allclose(w.norm(dim=-1), torch.ones(2), atol=1e-6)


def test_tiny_resnet_tower():
    clip = C.load_clip("ltr-tiny-rn")
    assert not clip.is_vit and C.visual_projection(clip) is None
    with torch.no_grad():
        assert C.image_features(clip, torch.randn(2, 3, 32, 32), project=False).shape == (2, 32)


def test_local_checkpoint_round_trip(tmp_path, tiny):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    again = C.load_clip("ltr-tiny-vit", str(path))
    for (k, a), (_, b) in zip(tiny.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_bad_names_and_tags_are_explained(tmp_path):
    with pytest.raises(C.ClipError, match="unknown CLIP model 'ViT-Q-99'"):
        C.load_clip("ViT-Q-99")
    with pytest.raises(C.ClipError, match="no pretrained tag 'nope'.*openai"):
        C.load_clip("ViT-B-16", "nope")
    with pytest.raises(C.ClipError, match="does not exist"):
        C.load_clip("ltr-tiny-vit", str(tmp_path / "missing.pt"))
    with pytest.raises(C.ClipError, match="needs a"):
        C.class_prompts(["a"], "no placeholder")


def test_openai_tag_forces_quickgelu_on_a_gelu_config(monkeypatch):
    """The plain ViT-B-16 config is GELU; OpenAI weights need QuickGELU (checked without downloading)."""
    import open_clip

    seen = {}

    def fake_create(name, pretrained=None, **kw):
        seen.update(kw, name=name, pretrained=pretrained)
        raise RuntimeError("no network")

    monkeypatch.setattr(open_clip, "create_model", fake_create)
    with pytest.raises(C.ClipError, match="without a network"):
        C.load_clip("ViT-B-16", "openai")
    assert seen["force_quick_gelu"] is True and seen["pretrained"] == "openai"
