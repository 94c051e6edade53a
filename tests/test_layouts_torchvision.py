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


def test_a_vision_transformer_gets_its_one_size_and_a_size_check_is_one_line(tmp_path, capsys):
    """torchvision's ViT checks that images are exactly its image_size: the named model's spec says so
    (other sizes are resized on the way in), and a module that asserts its size, given as it is, gets
    one line at another size, not a traceback."""
    from torchvision.models import VisionTransformer

    from filterviz.cli import main

    named = filterviz.load_model("vit_b_16", weights="random", device="cpu", load_weights=False)
    assert named.spec.fixed_size == (224, 224)
    torch.manual_seed(0)
    module = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    path = tmp_path / "vit.pth"
    torch.save(module.eval(), str(path))  # a whole module: its forward keeps the size check
    code = main(["render", str(path), "encoder.layers.encoder_layer_0.mlp.0", "3", "--trust-pickle", "--size", "48",
                 "--steps", "1", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x.png").exists()
