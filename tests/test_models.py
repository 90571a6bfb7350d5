import pytest
import torch
from torch import nn

from edgepool.models import build_model, bundle_from_module, model_names
from edgepool.errors import SpecError

PUBLISHED = ["mobilenet_v2", "resnet18", "resnet50", "vgg16", "vit_b_16", "bert-base", "gpt2", "tinyllama-1.1b",
             "llama-2-7b"]


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_counts_match_published(name):
    bundle = build_model(name, meta=True)
    assert bundle.num_parameters() == bundle.published_params
    assert len(bundle.blocks) >= 10


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "bert-tiny"])
def test_blocks_equal_the_hugging_face_model(name):
    bundle = build_model(name)
    x = bundle.example_input(2, 16)
    with torch.no_grad():
        assert torch.allclose(bundle.blocks(x), bundle.hf_model(x).logits, atol=1e-5)


def test_large_models_default_to_meta_and_vision_runs():
    assert build_model("llama-2-7b").is_meta
    bundle = build_model("mobilenet_v2", width=0.25, num_classes=10)
    out = bundle.blocks(bundle.example_input(2))
    assert out.shape == (2, 10)
    assert bundle.loss(out, bundle.example_target(2)).item() > 0


def test_user_module():
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    bundle = bundle_from_module(net, torch.randn(1, 8))
    assert len(bundle.blocks) == 3 and bundle.example_input(5).shape == (5, 8)


def test_unknown_model_lists_the_zoo():
    with pytest.raises(SpecError, match="resnet50"):
        build_model("resnet51")
    assert "gpt2" in model_names()
