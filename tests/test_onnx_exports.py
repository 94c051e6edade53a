"""ONNX files as today's torch.onnx.export writes them (dynamo=False, its default opset), loaded by filterviz
and checked against the torch model they came from: activations at the same layers, compared numerically.

The models have random weights and small inputs (see SmallVGG for the VGGs). Full-size exports at 224 px
(vgg11, vgg11_bn) were checked the same way by hand; they take about 15 s each to load.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import onnx
import onnx2torch
import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tv_models
from PIL import Image
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

import filterviz
from filterviz.cli import main
from filterviz.errors import ModelFileError
from filterviz.models.aliases import aliases_for, vgg_configs
from filterviz.models.sources import onnx_files


def export(module: nn.Module, path, size: int = 32, **options) -> onnx.ModelProto:
    """``torch.onnx.export`` as a user calls it today (TorchScript exporter, default opset); returns the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(1, 3, size, size),), path, dynamo=False, **options)
    return onnx.load(path)


def pixels(size: int = 32, count: int = 2) -> torch.Tensor:
    """Random RGB 0..255 images, (count, 3, size, size)."""
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255


def load(path, **options) -> filterviz.LoadedModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return filterviz.load_model(path, device="cpu", preprocess="unit", **options)  # input x / 255


def randomize_norms(module: nn.Module) -> nn.Module:
    """Batch norms that change their input (fresh ones are nearly the identity), so that a layer read
    before or after one, or a batch norm folded into a conv, shows in the activations."""
    generator = torch.Generator().manual_seed(1)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.copy_(torch.rand(layer.num_features, generator=generator) * 2 - 1)
            layer.running_var.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
            layer.weight.data.copy_(torch.rand(layer.num_features, generator=generator) * 2 - 1)
            layer.bias.data.copy_(torch.rand(layer.num_features, generator=generator) * 2 - 1)
    return module


class SmallVGG(nn.Module):
    """A torchvision VGG whose ``features`` are torchvision's own (``make_layers`` of its config,
    initialized as ``VGG`` does: every conv bias zero), with ``avgpool = AvgPool2d(1)`` and a small
    classifier: at 32 px torch cannot export the 7x7 adaptive pool, which at 224 px becomes the same
    kind of AveragePool node, and the 4096-wide classifier only costs time."""

    def __init__(self, name: str = "vgg11") -> None:
        super().__init__()
        torch.manual_seed(0)
        cfg, batch_norm = vgg_configs()[name]
        self.features = make_layers(cfg, batch_norm=batch_norm)
        self.avgpool = nn.AvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(512, 10))
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        randomize_norms(self).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # as torchvision's VGG.forward
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def small_vgg(name: str = "vgg11") -> nn.Module:
    return SmallVGG(name)


def read(model: filterviz.LoadedModel, layers: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Several layers' activations from one forward pass."""
    with torch.no_grad(), model.capture(layers) as run:
        return run(x)


def features_outputs(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every module of ``net.features``, in one pass."""
    outputs = []
    with torch.no_grad():
        for layer in net.features:
            x = layer(x)
            outputs.append(x.clone())  # VGG's ReLUs work in place
    return outputs


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to float32 rounding, relative to the tensor's scale."""
    assert got.shape == want.shape
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


# -- 1. opsets newer than onnx2torch converts ----------------------------------------------------------------------


def test_vgg_export_at_the_default_opset_loads_and_matches_torch(tmp_path):
    path = tmp_path / "vgg11.onnx"
    net = small_vgg()
    proto = export(net, path)
    opset = proto.opset_import[0].version
    ops = {(node.op_type, opset) for node in proto.graph.node}
    if opset >= 19:  # torch's default when this was written: 20, where AveragePool and Identity are version 19
        assert ("AveragePool", opset) in ops
        onnx_files.share_initializers(proto.graph)  # else onnx2torch fails on the shared biases first
        with pytest.raises(NotImplementedError, match="AveragePool"):
            onnx2torch.convert(proto)
    model = load(path)
    if opset >= 19:
        assert model.source.endswith(f"(opset {opset}, converted to 18)")
    x = pixels()
    want = features_outputs(net, x / 255)
    got = read(model, [f"features.{index}" for index in range(len(want))], x)
    for index, expected in enumerate(want):
        assert_close(got[f"features.{index}"], expected)
    with torch.no_grad():
        assert_close(model.logits(x), net(x / 255))


def test_down_converted_operators_keep_their_meaning(tmp_path):
    """Operators whose ONNX version changed after 17 (AveragePool with its new dilations, Resize,
    Reshape, Cast, ReduceMean with axes as an input): the file, down-converted to 17, computes what the
    torch model does."""

    class Changed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3)
            self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.conv(x))
            x = F.interpolate(self.pool(x), scale_factor=2, mode="bilinear", align_corners=False)
            x = x - x.mean((2, 3), keepdim=True)
            return x.reshape(x.shape[0], 4, -1).to(torch.float64).to(torch.float32)

    path = tmp_path / "changed.onnx"
    net = Changed().eval()
    proto = export(net, path, size=17)
    model = load(path)
    if proto.opset_import[0].version > 17:
        assert model.source.endswith(f"(opset {proto.opset_import[0].version}, converted to 17)")
    x = pixels(17, count=1)  # the exporter fixes the batch size in the Reshape
    with torch.no_grad():
        assert_close(model.logits(x), net(x / 255))


def test_an_old_opset_is_converted_up(tmp_path):
    """onnx2torch converts BatchNormalization from version 9 on; a file at opset 8 goes up to 9."""
    torch.manual_seed(0)
    net = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())).eval()
    path = tmp_path / "old.onnx"
    proto = export(net, path, size=16, opset_version=8, do_constant_folding=False)
    assert "BatchNormalization" in {node.op_type for node in proto.graph.node}
    with pytest.raises(NotImplementedError, match="BatchNormalization"):
        onnx2torch.convert(proto)
    model = load(path)
    assert model.source.endswith("(opset 8, converted to 9)")
    x = pixels(16)
    with torch.no_grad():
        assert_close(model.logits(x), net(x / 255))


def test_a_file_the_converter_cannot_bring_down_names_the_opset_to_export_at(tmp_path):
    """F.pad exports a ConstantOfShape, which ONNX's version converter cannot take from 20 to 19; the
    opset that the refusal names works."""

    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(F.pad(x, (1, 2, 0, 1), mode="reflect"))

    path = tmp_path / "padded.onnx"
    net = Padded().eval()
    opset = export(net, path, size=16).opset_import[0].version
    if opset < 20:
        pytest.skip(f"torch exports opset {opset}, where ConstantOfShape converts")
    with pytest.raises(ModelFileError) as error:
        load(path)
    message = str(error.value)
    assert "\n" not in message
    match = re.fullmatch(rf"padded\.onnx uses ONNX opset {opset}, at which onnx2torch cannot convert its (\w+, )*Pad"
                         r"(, \w+)* nodes, and ONNX's version converter could not bring it to opset (\d+) \(No Adapter "
                         r"To Version \$19 for ConstantOfShape\); export it again at opset \3 "
                         r"\(torch.onnx.export\(\.\.\., opset_version=\3\)\)", message)
    assert match, message
    export(net, path, size=16, opset_version=int(match[3]))
    x = pixels(16)
    with torch.no_grad():
        assert_close(load(path).logits(x), net(x / 255))


def test_an_opset_the_converter_cannot_bring_down_is_refused_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "vgg11.onnx"
    opset = export(small_vgg(), path).opset_import[0].version
    if opset < 19:
        pytest.skip(f"torch exports opset {opset}, which onnx2torch converts as it is")

    def no_adapter(model, target):
        raise RuntimeError("No Previous Version of AveragePool exists")

    monkeypatch.setattr("onnx.version_converter.convert_version", no_adapter)
    with pytest.raises(ModelFileError) as error:
        load(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"vgg11.onnx uses ONNX opset {opset}, at which onnx2torch cannot convert its ")
    assert message.endswith("export it again at opset 18 (torch.onnx.export(..., opset_version=18))")


# -- 2. onnx2torch failures: shared zero biases fixed, the rest named by node -------------------------------------


class ZeroBiases(nn.Module):
    """Two convs whose biases are all zeros, like every conv of a freshly initialized torchvision VGG."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        for layer in (self.features[0], self.features[2]):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@pytest.mark.parametrize("opset", [18, None])
@pytest.mark.parametrize("folding", [True, False])
def test_zero_biases_shared_by_the_exporter_load(tmp_path, opset, folding):
    """torch.onnx.export stores equal biases once and names the other by an Identity node; onnx2torch
    then failed with a bare KeyError naming the bias."""
    path = tmp_path / "zero_biases.onnx"
    net = ZeroBiases().eval()
    proto = export(net, path, size=16, do_constant_folding=folding, **({"opset_version": opset} if opset else {}))
    shared = [node for node in proto.graph.node if node.op_type == "Identity"]
    assert [list(node.input) for node in shared] == [["features.0.bias"]]
    if opset == 18:
        with pytest.raises(KeyError, match="features.2.bias"):
            onnx2torch.convert(proto)
    model = load(path)
    x = pixels(16)
    with torch.no_grad():
        assert_close(model.activations(x, "features.2"), net.features[:3](x / 255))
        assert_close(model.logits(x), net(x / 255))


def test_a_node_onnx2torch_fails_on_is_named_in_one_line(tmp_path):
    """A conv whose weight the graph computes (weight standardization): onnx2torch wants it stored."""

    class Standardized(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            weight = self.conv.weight
            return F.conv2d(x, (weight - weight.mean()) / weight.std(), self.conv.bias)

    path = tmp_path / "standardized.onnx"
    export(Standardized(), path, size=16)
    with pytest.raises(ModelFileError) as error:
        load(path)
    message = str(error.value)
    assert "\n" not in message
    assert re.fullmatch(r"cannot convert standardized\.onnx to PyTorch: onnx2torch fails on node '/Conv' "
                        r"\(Conv, opset \d+(, converted from \d+)?\): its input '/Div_1_output_0' is computed in "
                        r"the graph, and onnx2torch needs it stored in the file as a constant \(an initializer\)",
                        message), message


def test_an_operator_onnx2torch_never_converts_is_named_in_one_line(tmp_path):
    class Sample(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.grid_sample(x, torch.zeros(1, 4, 4, 2), align_corners=False)

    path = tmp_path / "sample.onnx"
    export(nn.Sequential(nn.Conv2d(3, 4, 3), Sample()), path, size=16)
    with pytest.raises(ModelFileError) as error:
        load(path)
    message = str(error.value)
    assert "\n" not in message
    assert re.match(r"cannot convert sample\.onnx to PyTorch: onnx2torch has no converter for node '/1/GridSample' "
                    r"\(GridSample, opset \d+\) at any opset; export the model without that operator, or at an "
                    r"opset below 16 ", message), message
    export(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2)), path, size=16, opset_version=9)
    with pytest.raises(ModelFileError, match=r"no converter for node '/1/Upsample' \(Upsample, opset 9\) at any "
                                             r"opset; export the model again at opset 10 or newer, where ONNX "
                                             r"replaced it$"):
        load(path)


# -- 3. torchvision VGG exports answer to Keras names, as the torchvision model does -------------------------------


@pytest.mark.parametrize(("name", "folding"), [("vgg11", True), ("vgg11_bn", True), ("vgg11_bn", False)])
def test_vgg_export_keras_names_give_the_torchvision_layers(tmp_path, name, folding):
    """Each Keras name reads, from the ONNX file, the activations that the same name reads from the
    torchvision model (a conv's name: the ReLU after it); batch norms folded into the convs or not."""
    path = tmp_path / f"{name}.onnx"
    net = small_vgg(name)
    proto = export(net, path, do_constant_folding=folding)
    norms = sum(node.op_type == "BatchNormalization" for node in proto.graph.node)
    assert norms == (8 if name.endswith("_bn") and not folding else 0)
    model = load(path)
    expected = aliases_for(name)
    assert {alias for alias in model.aliases if alias.startswith("block")} == set(expected)
    x = pixels()
    want = features_outputs(net, x / 255)
    got = read(model, list(expected), x)
    for alias, module_path in expected.items():
        assert model.layer_kind(alias) == ("MaxPool2d" if alias.endswith("pool") else "ReLU")
        assert_close(got[alias], want[int(module_path.split(".")[1])])


@pytest.mark.parametrize("name", ["vgg13", "vgg16", "vgg19", "vgg13_bn", "vgg16_bn", "vgg19_bn"])
def test_every_torchvision_vgg_config_is_recognized(tmp_path, name):
    proto = export(small_vgg(name), tmp_path / f"{name}.onnx")
    onnx_files.share_initializers(proto.graph)
    nodes = {int(m[1]): node.name for node in proto.graph.node if (m := re.match(r"/features/features\.(\d+)/", node.name))}
    expected = {alias: nodes[int(path.split(".")[1])] for alias, path in aliases_for(name).items()}
    assert onnx_files.torchvision_vgg_aliases(proto.graph) == expected


def test_models_that_only_look_like_vgg_get_no_keras_names(tmp_path):
    """A VGG with other channel counts, one with a layer more, and any other ``features`` stack: unsure, so none."""
    narrow = small_vgg()
    narrow.features = make_layers([32 if c == 64 else c for c in cfgs["A"]])
    longer = small_vgg()
    longer.features.append(nn.ReLU())
    plain = ZeroBiases()
    for index, net in enumerate((narrow, longer, plain)):
        proto = export(net, tmp_path / f"net{index}.onnx")
        onnx_files.share_initializers(proto.graph)
        assert onnx_files.torchvision_vgg_aliases(proto.graph) == {}
    model = load(tmp_path / "net0.onnx")
    assert not [alias for alias in model.aliases if alias.startswith("block")]


def test_cli_lists_and_renders_keras_names_of_a_vgg_export(tmp_path, capsys):
    """README's example, ``filterviz render exported.onnx block3_conv1 0``, on a torchvision VGG export."""
    path = tmp_path / "vgg11.onnx"
    export(small_vgg(), path)
    assert main(["layers", str(path)]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["features/features/7/Relu"] == ["ReLU", "nchw", "8x8,", "256", "features.7,", "block3_conv1"]
    image = tmp_path / "f.png"
    assert main(["render", str(path), "block3_conv1", "0", "-o", str(image), "--steps", "2", "--seed", "0",
                 "--quiet"]) == 0
    # The picture is that of the torch model the file came from, at the same layer (features.7, the ReLU
    # after block3_conv1), raw 0..255 input and the file's 32 px: up to float rounding.
    torch_model = filterviz.load_model(small_vgg(), spec=filterviz.InputSpec(default_size=32), device="cpu")
    expected = filterviz.render_filters(torch_model, "features.7", [0], size=32, steps=2, seed=0).images[0]
    got = np.array(Image.open(image))
    assert got.shape == (32, 32, 3) and np.abs(got.astype(int) - expected.astype(int)).max() <= 1


# -- 4. exports of other torchvision models --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"])
def test_torchvision_exports_match_their_modules_at_every_alias(tmp_path, name):
    """Every scope alias that names a module of the torchvision model reads that module's output, in
    (N, C, H, W) even where the module works channels-last (ConvNeXt); the logits match too."""
    torch.manual_seed(0)
    net = randomize_norms(getattr(tv_models, name)(weights=None)).eval()
    path = tmp_path / f"{name}.onnx"
    export(net, path)
    model = load(path)
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(net.named_modules())

    def keep(key: str):
        def hook(_module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
            outputs.setdefault(key, out.clone())  # the first call; cloned, as an in-place ReLU would change it
        return hook

    for module_name, module in modules.items():
        module.register_forward_hook(keep(module_name))
    x = pixels()
    with torch.no_grad():
        assert_close(model.logits(x), net(x / 255))
    checked = [alias for alias in model.aliases if alias in modules]
    assert len(checked) >= 10
    got = read(model, checked, x)
    for alias in checked:
        want = outputs[alias]
        if want.shape != got[alias].shape and want.ndim == 4 and want.shape[1:3] == got[alias].shape[2:]:
            want = want.permute(0, 3, 1, 2)  # a module that works channels-last
        assert_close(got[alias], want)
    if name in ("mobilenet_v3_small", "efficientnet_b0"):
        # Its batch norm is folded into the conv: the conv's own name would give other activations.
        assert "features.0.0" not in model.aliases and "features.0" in model.aliases
    if name == "convnext_tiny":
        linear = "features/features/1/features/1/0/block/block/3/Add"  # Linear(96, 384) on (N, H, W, C)
        expected = outputs["features.1.0.block.3"].permute(0, 3, 1, 2)
        assert_close(model.activations(x, linear), expected)
        assert model.layer_info(linear, 32).channels == 384


def test_conv_alias_kept_when_its_batch_norm_is_not_folded(tmp_path):
    torch.manual_seed(0)
    net = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())).eval()
    x = pixels(16)
    for folding in (True, False):
        path = tmp_path / f"folding_{folding}.onnx"
        export(net, path, size=16, do_constant_folding=folding)
        model = load(path)
        assert ("0" in model.aliases) is not folding
        with torch.no_grad():
            if not folding:
                assert_close(model.activations(x, "0"), net[0](x / 255))
            assert_close(model.activations(x, "2"), net(x / 255))


def test_gelu_of_opset_20_converts(tmp_path):
    """ONNX's Gelu (opset 20) has no older version to convert to, and onnx2torch no converter of its own."""
    path = tmp_path / "gelu.onnx"
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 1), nn.GELU(approximate="tanh"))
    proto = export(net, path, size=16)
    model = load(path)
    x = pixels(16)
    with torch.no_grad():
        assert_close(model.logits(x), net(x / 255))
    if proto.opset_import[0].version >= 20:
        assert [model.layer_kind(name) for name in ("1", "3")] == ["GELU", "GELU"]
