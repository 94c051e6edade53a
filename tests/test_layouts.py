"""Layer layouts: channel maps, channels-last maps, token sequences and vectors, each read on its true
channel axis.

Every layout is compared with the framework itself: timm's ``forward_intermediates`` (its own
channels-first maps of each block), or the module's own output taken with a hook and permuted by hand
here. "A render must drive the unit asked for" is measured outside filterviz too: the model's own
forward pass, a hook, and the mean of each unit over the patch tokens (or positions), computed here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import filterviz
from filterviz.atlas.selection import default_layers
from filterviz.cli import main
from filterviz.errors import FilterVizError, LayoutError, UnknownLayerError
from filterviz.fastpath import find_conv_tail
from filterviz.layouts import NCHW, NHWC, LAYOUTS, Ambiguous, Tokens, Vector, parse_layout
from filterviz.objectives import Channel, parse_objective
from filterviz.params import classic_start

timm_models = pytest.importorskip("timm.models")
from timm.models.convnext import ConvNeXt  # noqa: E402
from timm.models.swin_transformer import SwinTransformer  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

SIZE = 32
SPEC = filterviz.InputSpec.preset("imagenet", default_size=SIZE, fixed_size=(SIZE, SIZE))


def wrap(module: nn.Module, name: str, spec: filterviz.InputSpec = SPEC, **options) -> filterviz.LoadedModel:
    return filterviz.load_model(module.eval(), spec=spec, name=name, device="cpu", **options)


ANY_SIZE = filterviz.InputSpec(default_size=16)


def tiny_vit(**options) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=SIZE, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=10, **options)


def tiny_swin() -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(img_size=SIZE, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                           num_classes=10)


def tiny_convnext() -> ConvNeXt:
    torch.manual_seed(0)
    return ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=10)


def tiny_torchvision_vit() -> torchvision.models.VisionTransformer:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=24, mlp_dim=48, num_classes=10)


def photos(count: int = 2) -> torch.Tensor:
    """RGB 0..255 images, (N, 3, SIZE, SIZE), with some structure."""
    generator = torch.Generator().manual_seed(1)
    return torch.rand((count, 3, SIZE, SIZE), generator=generator, dtype=torch.float32) * 255


def own_output(model: filterviz.LoadedModel, layer: str, pixels: torch.Tensor) -> torch.Tensor:
    """The module's own output, as the framework gives it (a hook on the module, the model's own forward)."""
    module = dict(model.module.named_modules())[layer]
    got: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, output: got.append(output))
    try:
        with torch.no_grad():
            model.module(model.spec.to_model_input(pixels))
    finally:
        handle.remove()
    return got[0]


def captured(model: filterviz.LoadedModel, layers: list[str], pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad(), model.capture(layers) as run:
        return run(pixels)


# -- layouts and channel counts, against the framework ------------------------------------------------------


@pytest.mark.parametrize("options, prefix, class_token", [
    ({}, 1, True),
    ({"reg_tokens": 2}, 3, True),
    ({"class_token": False, "reg_tokens": 2, "global_pool": "avg"}, 2, False),
])
def test_timm_vit_tokens_read_as_timm_reads_them(options, prefix, class_token):
    module = tiny_vit(**options)
    model = wrap(module, "vit")
    grid = (4, 4)
    assert module.num_prefix_tokens == prefix  # what timm declares
    tokens = Tokens(prefix, class_token, grid)
    expected = {
        "patch_embed.proj": (NCHW(), 24, 4, 4),
        "patch_embed": (Tokens(0, False, grid), 24, 4, 4),
        "blocks.0.norm1": (tokens, 24, 4, 4),
        "blocks.1.mlp.fc1": (tokens, 96, 4, 4),  # its 96 hidden units, not its 1 + 16 tokens
        "blocks.1.mlp.act": (tokens, 96, 4, 4),
        "blocks.1": (tokens, 24, 4, 4),
        "head": (Vector(), 10, None, None),
    }
    for layer, (layout, channels, height, width) in expected.items():
        info = model.layer_info(layer, SIZE)
        assert (info.layout, info.channels, info.height, info.width) == (layout, channels, height, width), layer
    assert isinstance(model.layout("blocks.0.attn.q_norm"), Ambiguous)  # (N, heads, tokens, head dim)
    x = photos()
    ours = captured(model, ["blocks.0", "blocks.1", "blocks.1.mlp.fc1", "blocks.1<all>"], x)
    with torch.no_grad():
        theirs = module.forward_intermediates(model.spec.to_model_input(x), indices=[0, 1], output_fmt="NCHW",
                                              intermediates_only=True)
    torch.testing.assert_close(ours["blocks.0"], theirs[0])
    torch.testing.assert_close(ours["blocks.1"], theirs[1])
    raw = own_output(model, "blocks.1.mlp.fc1", x)  # (N, prefix + 16, 96)
    assert raw.shape == (2, prefix + 16, 96)
    torch.testing.assert_close(ours["blocks.1.mlp.fc1"], raw[:, prefix:].permute(0, 2, 1).reshape(2, 96, 4, 4))
    torch.testing.assert_close(ours["blocks.1<all>"], own_output(model, "blocks.1", x).permute(0, 2, 1))
    if class_token:
        cls = captured(model, ["blocks.1<cls>"], x)["blocks.1<cls>"]
        torch.testing.assert_close(cls, own_output(model, "blocks.1", x)[:, 0])
        assert model.layer_info("blocks.1<cls>", SIZE).channels == 24
    else:
        with pytest.raises(LayoutError, match="has no cls part to read: its 2 prefix tokens are not declared to start"):
            model.layer_info("blocks.1<cls>", SIZE)


def test_swin_maps_are_channels_last_and_its_mlp_tokens():
    module = tiny_swin()
    model = wrap(module, "swin")
    expected = {
        "patch_embed": (NHWC(), 16, 8, 8),
        "layers.0": (NHWC(), 16, 8, 8),
        "layers.1.downsample": (NHWC(), 32, 4, 4),
        "layers.1": (NHWC(), 32, 4, 4),  # not 4 channels (its height)
        "layers.0.blocks.0.mlp.fc1": (Tokens(0, False, (8, 8)), 64, 8, 8),
        "layers.1.blocks.0.mlp.act": (Tokens(0, False, (4, 4)), 128, 4, 4),
    }
    for layer, (layout, channels, height, width) in expected.items():
        info = model.layer_info(layer, SIZE)
        assert (info.layout, info.channels, info.height, info.width) == (layout, channels, height, width), layer
    # Window attention mixes the images with their windows: no axis of it is the batch.
    assert "batch" in model.layout("layers.0.blocks.0.attn.qkv").reason
    x = photos()
    ours = captured(model, ["layers.0", "layers.1", "layers.0.blocks.0.mlp.fc1"], x)
    with torch.no_grad():
        theirs = module.forward_intermediates(model.spec.to_model_input(x), indices=[0, 1], output_fmt="NCHW",
                                              intermediates_only=True)
    torch.testing.assert_close(ours["layers.0"], theirs[0])
    torch.testing.assert_close(ours["layers.1"], theirs[1])
    raw = own_output(model, "layers.0.blocks.0.mlp.fc1", x)  # (N, 64 tokens, 64 channels)
    torch.testing.assert_close(ours["layers.0.blocks.0.mlp.fc1"], raw.permute(0, 2, 1).reshape(2, 64, 8, 8))


def test_convnext_block_mlp_is_channels_last_and_its_blocks_channel_maps():
    module = tiny_convnext()
    model = wrap(module, "convnext")
    expected = {
        "stem": (NCHW(), 8, 8, 8),
        "stages.1.blocks.0.norm": (NHWC(), 16, 4, 4),
        "stages.1.blocks.0.mlp.fc1": (NHWC(), 64, 4, 4),  # not 4 channels (its height)
        "stages.1.blocks.0": (NCHW(), 16, 4, 4),
        "head.fc": (Vector(), 10, None, None),
    }
    for layer, (layout, channels, height, width) in expected.items():
        info = model.layer_info(layer, SIZE)
        assert (info.layout, info.channels, info.height, info.width) == (layout, channels, height, width), layer
    x = photos()
    ours = captured(model, ["stages.0", "stages.1", "stages.1.blocks.0.mlp.fc1"], x)
    with torch.no_grad():
        theirs = module.forward_intermediates(model.spec.to_model_input(x), indices=[0, 1], output_fmt="NCHW",
                                              intermediates_only=True)
    torch.testing.assert_close(ours["stages.0"], theirs[0])
    torch.testing.assert_close(ours["stages.1"], theirs[1])
    raw = own_output(model, "stages.1.blocks.0.mlp.fc1", x)  # (N, 4, 4, 64)
    torch.testing.assert_close(ours["stages.1.blocks.0.mlp.fc1"], raw.permute(0, 3, 1, 2))


def test_torchvision_vit_declares_its_class_token():
    module = tiny_torchvision_vit()
    model = wrap(module, "tv-vit")
    tokens = Tokens(1, True, (4, 4))
    block = "encoder.layers.encoder_layer_1"
    for layer, channels in (("encoder.dropout", 24), (f"{block}.mlp.1", 48), (block, 24), ("encoder.ln", 24)):
        info = model.layer_info(layer, SIZE)
        assert (info.layout, info.channels, info.height, info.width) == (tokens, channels, 4, 4), layer
    assert model.layer_info("conv_proj", SIZE).layout == NCHW()
    x = photos()
    raw = own_output(model, f"{block}.mlp.1", x)  # (N, 1 + 16, 48)
    ours = captured(model, [f"{block}.mlp.1", f"{block}.mlp.1<cls>"], x)
    torch.testing.assert_close(ours[f"{block}.mlp.1"], raw[:, 1:].permute(0, 2, 1).reshape(2, 48, 4, 4))
    torch.testing.assert_close(ours[f"{block}.mlp.1<cls>"], raw[:, 0])


# -- a render drives the unit asked for ----------------------------------------------------------------------


def unit_means(model, layer, pixels, prefix: int = 0) -> np.ndarray:
    """Each unit's mean over positions (patch tokens, prefix left out), from the model's own output
    permuted by hand: (N, L, C) tokens or (N, H, W, C) channels-last."""
    raw = own_output(model, layer, torch.as_tensor(pixels, dtype=torch.float32).permute(0, 3, 1, 2))
    per_position = raw[:, prefix:] if raw.ndim == 3 else raw.flatten(1, 2)
    return per_position.mean(dim=1)[0].numpy()


@pytest.mark.parametrize("make, layer, prefix, unit", [
    (lambda: tiny_vit(reg_tokens=2), "blocks.1.mlp.fc1", 3, 5),
    (tiny_torchvision_vit, "encoder.layers.encoder_layer_1.mlp.0", 1, 7),
    (tiny_swin, "layers.1", 0, 5),
    (tiny_convnext, "stages.1.blocks.0.mlp.fc1", 0, 5),
], ids=["timm-vit", "torchvision-vit", "swin", "convnext"])
def test_a_render_drives_the_unit_asked_for(make, layer, prefix, unit):
    model = wrap(make(), "model")
    start = classic_start(SIZE, [unit], seed=0)
    render = filterviz.render_filters(model, layer, [unit], size=SIZE, steps=6, seed=0, start=start)
    before, after = unit_means(model, layer, start, prefix), unit_means(model, layer, render.pixels, prefix)
    gains = after - before
    assert gains[unit] > 0
    assert (gains > gains[unit]).sum() <= len(gains) // 20, (gains[unit], np.sort(gains)[-5:])  # at the top
    # filterviz's own scores are those numbers too
    np.testing.assert_allclose([render.start_activation[0], render.activation[0]], [before[unit], after[unit]],
                               rtol=1e-4, atol=1e-5)


# -- parts, objectives, the fast path, several calls -----------------------------------------------------------


def test_objective_text_reads_the_class_token_or_every_token():
    assert parse_objective("channel:blocks.1:5:cls").terms[0][1] == Channel("blocks.1<cls>", 5)
    assert parse_objective("channel:a:b:5:all").terms[0][1] == Channel("a:b<all>", 5)
    assert parse_objective("channel:blocks.1:5").name == "channel(blocks.1,5)"
    assert parse_objective("channel:blocks.1:5:cls").name == "channel(blocks.1,5,cls)"
    assert filterviz.objectives.channel("blocks.1", 5, part="cls") == parse_objective("channel:blocks.1:5:cls")
    assert "channel:LAYER:K:cls" in filterviz.objectives.objective_help()
    model = wrap(tiny_vit(), "vit")
    x = photos()
    raw = own_output(model, "blocks.1.mlp.act", x)
    for text, expected in (("channel:blocks.1.mlp.act:5", raw[:, 1:, 5].mean(1)),
                           ("channel:blocks.1.mlp.act:5:cls", raw[:, 0, 5]),
                           ("channel:blocks.1.mlp.act:5:all", raw[:, :, 5].mean(1)),
                           ("neuron:blocks.1.mlp.act:5:1:2", raw[:, 1 + 1 * 4 + 2, 5])):
        objective = parse_objective(text)
        data = captured(model, sorted(objective.layers), x)
        scores = [float(objective.score(data, filterviz.objectives.Rows(slice(i, i + 1), i))) for i in range(2)]
        np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5, err_msg=text)
    with pytest.raises(LayoutError, match="has no cls part to read: it is laid out as nchw"):
        model.layer_info("patch_embed.proj<cls>", SIZE)


def test_fast_path_only_for_channel_maps():
    convnext = wrap(tiny_convnext(), "convnext")
    vit = wrap(tiny_vit(), "vit")
    assert find_conv_tail(convnext, "stages.1.blocks.0.conv_dw") is not None  # a plain NCHW convolution
    for model, layer in ((convnext, "stages.1.blocks.0.mlp.fc1"), (convnext, "stages.1.blocks.0.norm"),
                         (vit, "blocks.1.mlp.act"), (vit, "blocks.1.mlp.act<cls>")):
        assert find_conv_tail(model, layer) is None, layer
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert find_conv_tail(wrap(plain, "plain", ANY_SIZE), "1") is not None
    assert find_conv_tail(wrap(plain, "plain", ANY_SIZE, layouts={"1": "nhwc"}), "1") is None  # as the user says


class Twice(nn.Module):
    """One GELU called on a channel map and then on a channels-last map of other channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.GELU()
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        return self.act(self.fc(x.permute(0, 2, 3, 1))).mean(dim=(1, 2))


def test_each_call_of_a_module_has_its_own_layout():
    torch.manual_seed(0)
    model = wrap(Twice(), "twice", ANY_SIZE)
    first, second = model.layer_info("act", 16), model.layer_info("act#2", 16)
    assert (first.layout, first.channels, second.layout, second.channels) == (NCHW(), 4, NHWC(), 6)
    infos = {info.name: info.output for info in model.layers(16)}
    assert (infos["act"], infos["act#2"]) == ("nchw 16x16, 4", "nhwc 16x16, 6")
    x = photos(1)[:, :, :16, :16]
    torch.testing.assert_close(captured(model, ["act#2"], x)["act#2"],
                               torch.nn.functional.gelu(model.module.fc(captured(model, ["act"], x)["act"].permute(
                                   0, 2, 3, 1))).permute(0, 3, 1, 2))


# -- ambiguous outputs, and saying how to read them ----------------------------------------------------------


class Mixed(nn.Module):
    """A conv, then an einsum that filterviz cannot follow, then a linear layer on the last axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))
        x = torch.einsum("nchw->nhwc", x)
        return self.fc(x).mean(dim=(1, 2))


def test_an_ambiguous_layer_is_refused_until_its_layout_is_given():
    torch.manual_seed(0)
    model = wrap(Mixed(), "mixed", ANY_SIZE)
    assert isinstance(model.layout("fc"), Ambiguous) and model.layout("relu") == NCHW()
    assert model.layers(16)[-1].output == "? 1x16x16x5" and model.layers(16)[-1].channels is None
    with pytest.raises(LayoutError, match=r"layer fc of mixed gives an output of shape 1x16x16x5 that filterviz "
                                          r"cannot read \(no axis of it is known to be the batch.*--layout fc=KIND"):
        filterviz.render_filters(model, "fc", [0], size=16, steps=1)
    given = wrap(Mixed(), "mixed", ANY_SIZE, layouts={"fc": "nhwc"})
    assert given.layer_info("fc", 16).channels == 5
    x = photos(1)[:, :, :16, :16]
    torch.testing.assert_close(captured(given, ["fc"], x)["fc"], own_output(given, "fc", x).permute(0, 3, 1, 2))
    with pytest.raises(LayoutError, match=r"--layout fc=tokens does not fit layer fc of mixed, whose output has shape "
                                          r"1x16x16x5: tokens reads 3-D outputs"):
        wrap(Mixed(), "mixed", ANY_SIZE, layouts={"fc": "tokens"}).layer_info("fc", 16)
    with pytest.raises(UnknownLayerError, match="unknown layer 'fcc' of mixed"):
        wrap(Mixed(), "mixed", layouts={"fcc": "nhwc"})
    with pytest.raises(FilterVizError, match=r"unknown layout 'nwhc'; use one of nchw, nhwc, tokens\[:PREFIX\], vector"):
        wrap(Mixed(), "mixed", layouts={"fc": "nwhc"})
    assert parse_layout("tokens:2") == Tokens(2, True) and parse_layout("vector") == Vector()
    assert list(LAYOUTS.parts()) == ["nchw", "nhwc", "tokens", "vector"]


def test_command_line_shows_layouts_and_takes_layout(capsys, tmp_path):
    torch.manual_seed(0)
    scripted = tmp_path / "mixed.pt"
    torch.jit.script(Mixed()).save(str(scripted))  # TorchScript: each operation is followed as it runs
    code = main(["layers", str(scripted), "--size", "16"])
    out, err = capsys.readouterr()
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert rows["relu"] == ["ReLU", "nchw", "16x16,", "4"] and rows["fc"] == ["Linear", "?", "1x16x16x5"]
    assert "1 layer marked ? give outputs" in err and "--layout fc=KIND" in err
    target = tmp_path / "f.png"
    code = main(["render", str(scripted), "fc", "0", "--size", "16", "--steps", "2", "-o", str(target)])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1 and "--layout fc=KIND" in err and not target.exists()
    code = main(["render", str(scripted), "fc", "0", "--size", "16", "--steps", "2", "-o", str(target),
                 "--layout", "fc=nhwc"])
    _, err = capsys.readouterr()
    assert code == 0 and target.exists(), err
    code = main(["layers", str(scripted), "--size", "16", "--layout", "fc=nhwc"])
    out, err = capsys.readouterr()
    assert code == 0 and not err and ["fc", "Linear", "nhwc", "16x16,", "5"] in [line.split() for line in out.splitlines()]
    code = main(["layers", str(scripted), "--layout", "fc=nwhc"])
    _, err = capsys.readouterr()
    assert code == 2 and "argument --layout: unknown layout 'nwhc'" in err


def test_command_line_lists_a_vits_tokens(capsys, tmp_path):
    pickled = tmp_path / "vit.pth"
    torch.save(tiny_vit(), pickled)
    code = main(["layers", str(pickled), "--trust-pickle", "--size", "32"])
    out, _ = capsys.readouterr()
    assert code == 0
    rows = {line.split()[0]: line.split(None, 2)[2] for line in out.splitlines()[2:]}
    assert rows["patch_embed.proj"] == "nchw 4x4, 24"
    assert rows["blocks.1.mlp.fc1"] == "tokens 1+4x4, 96"
    assert rows["head"] == "vector 10"
    assert rows["blocks.0.attn.q_norm"] == "? 1x2x17x12"


# -- the atlas and dataset examples --------------------------------------------------------------------------


def test_atlas_default_layers_of_transformers_are_mlp_activations():
    vit = wrap(tiny_vit(), "vit")
    assert default_layers(vit, SIZE) == ["patch_embed.proj", "blocks.0.mlp.act", "blocks.1.mlp.act"]
    tv = wrap(tiny_torchvision_vit(), "tv-vit")
    assert default_layers(tv, SIZE) == ["conv_proj", "encoder.layers.encoder_layer_0.mlp.1",
                                        "encoder.layers.encoder_layer_1.mlp.1"]
    swin = wrap(tiny_swin(), "swin")
    assert default_layers(swin, SIZE) == ["patch_embed.proj", "layers.0.blocks.0.mlp.act", "layers.1.blocks.0.mlp.act"]


def test_dataset_examples_and_liveness_read_hidden_units(tmp_path):
    from PIL import Image

    from filterviz.atlas.examples import list_images, scan_images

    for index in range(3):
        Image.fromarray(np.asarray(photos(3)[index].permute(1, 2, 0), dtype=np.uint8)).save(tmp_path / f"{index}.png")
    model = wrap(tiny_vit(), "vit")
    tops = scan_images(model, ["blocks.1.mlp.act"], list_images(tmp_path), SIZE, 2)
    top = tops["blocks.1.mlp.act"]
    assert top.values.shape == (96, 2)  # one row per hidden unit
    assert int(top.ys.max()) < 4 and int(top.xs.max()) < 4  # positions on the 4x4 patch grid
    from filterviz.liveness import flat_on_probe

    flat = flat_on_probe(model, [filterviz.objectives.channel("blocks.1.mlp.act", k)
                                                    for k in (0, 95)], SIZE)
    assert not flat.any()


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_convnet_layers_are_channel_maps(tmp_path, how):
    """Compiled code is followed node by node, calls of scripted functions (F.max_pool2d) included."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)).eval()
    compiled = torch.jit.script(module) if how == "script" else torch.jit.trace(module, torch.zeros(1, 3, 16, 16))
    compiled.save(str(tmp_path / "net.pt"))
    model = filterviz.load_model(tmp_path / "net.pt", device="cpu")
    outputs = {info.name: info.output for info in model.layers(16)}
    assert (outputs["2"], outputs["4"], outputs["5"], outputs["7"]) == ("nchw 8x8, 4", "nchw 6x6, 6", "nchw 1x1, 6",
                                                                      "vector 5")
    assert all(text.startswith(("nchw", "vector")) for text in outputs.values()), outputs


def test_a_scripted_module_that_cannot_be_stepped_into_keeps_the_layouts_around_it(tmp_path):
    """TinyNet's call counter sets an attribute, which a TorchScript graph cannot be stepped through:
    the trace runs it compiled, and the layers before and after it keep their layouts."""
    from conftest import tiny_model

    torch.jit.script(tiny_model(dtype=torch.float32).module).save(str(tmp_path / "tiny.pt"))
    model = filterviz.load_model(tmp_path / "tiny.pt", device="cpu")
    assert (model.layout("features.6"), model.layout("counter"), model.layout("fc")) == (NCHW(), NCHW(), Vector())
    assert model.layer_info("features.6", 16).channels == 8


@pytest.mark.parametrize(("kind", "prefix"), [("deit", 2), ("eva", 1)])
def test_deit_distillation_and_eva_tokens_are_prefix_tokens(kind, prefix):
    """DeiT's class and distillation tokens, and EVA's class token, come before the patches: the capture
    is the hooked output without them, on the 4x4 grid."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.eva import Eva

    torch.manual_seed(0)
    build = VisionTransformerDistilled if kind == "deit" else Eva
    module = build(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2, num_classes=5).eval().double()
    model = filterviz.load_model(module, preprocess="unit", name=kind, device="cpu")
    assert model.layer_info("blocks.0.mlp.fc1", 32).output == f"tokens {prefix}+4x4, 96"
    pixels = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 255
    seen = {}
    handle = module.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad(), model.capture(["blocks.0.mlp.fc1"]) as run:
        ours = run(pixels)["blocks.0.mlp.fc1"]
    handle.remove()
    expected = seen["out"][:, prefix:].reshape(2, 4, 4, 96).permute(0, 3, 1, 2)
    assert torch.allclose(ours, expected)


def test_an_atlas_fingerprint_changes_with_the_layouts_the_user_said():
    """A layer read another way is other units: an atlas must redo it, not keep the old pictures."""
    from filterviz.atlas import model_fingerprint

    from conftest import TINY_SPEC, TinyNet

    torch.manual_seed(0)
    module = TinyNet(nn.ReLU).double()
    plain = filterviz.load_model(module, spec=TINY_SPEC, name="tiny", device="cpu")
    said = filterviz.load_model(module, spec=TINY_SPEC, name="tiny", device="cpu", layouts={"features.1": "nhwc"})
    assert model_fingerprint(plain) == model_fingerprint(filterviz.load_model(module, spec=TINY_SPEC, device="cpu"))
    assert model_fingerprint(plain) != model_fingerprint(said)
