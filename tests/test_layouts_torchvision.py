"""torchvision's modern architectures (Swin, ConvNeXt, MaxViT), small configurations with random
weights: each layer's layout, and filterviz's channels-first capture against the module's own output
taken by a hook and permuted by hand."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.maxvit import MaxVit
from torchvision.models.swin_transformer import SwinTransformer

import filterviz


def _load(module: torch.nn.Module, name: str) -> filterviz.LoadedModel:
    torch.manual_seed(0)
    return filterviz.load_model(module.eval().double(), preprocess="unit", name=name, device="cpu")


def _hooked(model: filterviz.LoadedModel, layer: str, pixels: torch.Tensor) -> torch.Tensor:
    seen = {}
    handle = model.graph.module(layer).register_forward_hook(lambda m, i, o: seen.update(out=o))
    try:
        with torch.no_grad():
            model.module(model.spec.to_model_input(pixels))
    finally:
        handle.remove()
    return seen["out"]


@pytest.mark.parametrize(("build", "layer", "output", "to_nchw"), [
    (lambda: SwinTransformer([4, 4], 16, [1, 1], [2, 2], [4, 4], stochastic_depth_prob=0.0, num_classes=5),
     "features.1", "nhwc 8x8, 16", lambda x: x.permute(0, 3, 1, 2)),
    (lambda: SwinTransformer([4, 4], 16, [1, 1], [2, 2], [4, 4], stochastic_depth_prob=0.0, num_classes=5),
     "features.3.0.mlp.0", "nhwc 4x4, 128", lambda x: x.permute(0, 3, 1, 2)),
    (lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=5),
     "features.1.0.block.3", "nhwc 8x8, 64", lambda x: x.permute(0, 3, 1, 2)),
    (lambda: ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=5),
     "features.3", "nchw 4x4, 32", lambda x: x),
    (lambda: MaxVit((32, 32), 8, 2, [16, 32], [1, 1], 8, 0.0, num_classes=5),
     "blocks.1", "nchw 4x4, 32", lambda x: x),
])
def test_modern_torchvision_layers_are_read_on_their_channel_axis(build, layer, output, to_nchw):
    model = _load(build(), "tv")
    assert model.layer_info(layer, 32).output == output
    pixels = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 255
    with torch.no_grad(), model.capture([layer]) as run:
        ours = run(pixels)[layer]
    assert torch.allclose(ours, to_nchw(_hooked(model, layer, pixels)))
