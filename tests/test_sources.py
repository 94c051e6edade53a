"""Every model source: a tiny model of that kind made here, loaded by filterviz, its layers listed, a
layer addressed by name, a short render that raises the target activation, and the activation read
through filterviz checked against the one the source framework computes itself on the same input."""

from __future__ import annotations

import importlib

import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is first imported

import numpy as np
import onnx
import pytest
import torch
import torchvision.models as tv_models
from onnx.reference import ReferenceEvaluator
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import filterviz
from filterviz import InputSpec
from filterviz.cli import main
from filterviz.errors import FilterVizError, MissingExtraError, ModelFileError, WeightsUnavailableError
from filterviz.models.sources import keras_models, onnx_files, require
from filterviz.params import classic_start

from conftest import TinyNet

keras = pytest.importorskip("keras")
timm = pytest.importorskip("timm")


def pixels(size: int, count: int = 2, seed: int = 0) -> torch.Tensor:
    """Random RGB 0..255 images, (count, 3, size, size)."""
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255


def assert_render_raises(model: filterviz.LoadedModel, layer: str, count: int = 2, size: int | None = None):
    """Render the ``count`` filters that respond most to the start image; each must rise."""
    side = size or (model.spec.fixed_size[0] if model.spec.fixed_size else 150)
    start = torch.as_tensor(classic_start(side, [0], seed=0), dtype=torch.float32).permute(0, 3, 1, 2)
    with torch.no_grad():
        response = model.activations(start, layer).flatten(2).mean(2)[0]
    filters = response.argsort(descending=True)[:count].tolist()
    render = filterviz.render_filters(model, layer, filters, size=size, steps=4, seed=0)
    assert (render.activation > render.start_activation).all(), (render.start_activation, render.activation)
    return render


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- torchvision: layers inside non-sequential graphs ----------------------------------------------------------


def test_torchvision_resnet_block_internals_match_fx_feature_extraction():
    model = filterviz.load_model("resnet18", weights="random", device="cpu")
    names = [info.name for info in model.layers(64)]
    # The block's ReLU runs twice: after bn1, and after the residual sum. Both calls are layers.
    assert {"layer2.0.relu", "layer2.0.relu#2", "layer2.0.downsample.0", "layer3.1"} <= set(names)
    x = pixels(64)
    reference = create_feature_extractor(model.module, return_nodes={"layer2.0.relu": "first", "layer2.0.relu_1":
                                                                     "second", "layer3.1": "block"})
    with torch.no_grad():
        expected = reference(model.spec.to_model_input(x))
        for name, key in (("layer2.0.relu", "first"), ("layer2.0.relu#2", "second"), ("layer3.1", "block")):
            torch.testing.assert_close(model.activations(x, name), expected[key], rtol=1e-5, atol=1e-5)
    assert_render_raises(model, "layer2.0.relu#2", size=48)


def test_torchvision_inception_branches_are_layers():
    model = filterviz.load_model("googlenet", weights="random", device="cpu")
    info = model.layer_info("inception3a.branch3.1", 64)  # the 5x5 branch's second conv
    assert (info.kind, info.channels) == ("BasicConv2d", 32)
    reference = create_feature_extractor(model.module, return_nodes=["inception3a.branch3.1"])
    x = pixels(64, count=1)
    with torch.no_grad():
        torch.testing.assert_close(model.activations(x, "inception3a.branch3.1"),
                                   reference(model.spec.to_model_input(x))["inception3a.branch3.1"])


# -- timm --------------------------------------------------------------------------------------------------------


def test_timm_model_matches_its_own_intermediate_features():
    model = filterviz.load_model("timm:test_resnet", weights="random", device="cpu")
    config = timm.data.resolve_data_config({}, model=model.module)
    assert model.spec == InputSpec.from_unit_range(config["mean"], config["std"], default_size=160)
    stage = model.module.feature_info[2]["module"]  # "layer2": timm's own name for its third feature map
    assert stage in [info.name for info in model.layers(64)]
    x = pixels(64)
    with torch.no_grad():
        (expected,) = model.module.forward_intermediates(model.spec.to_model_input(x), indices=[2],
                                                         intermediates_only=True)
        torch.testing.assert_close(model.activations(x, stage), expected)
    assert_render_raises(model, stage, size=48)


def test_timm_checkpoint_file_and_offline_pretrained(tmp_path, monkeypatch):
    source = timm.create_model("test_resnet", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "test_resnet.pth")
    model = filterviz.load_model("timm:test_resnet", weights=tmp_path / "test_resnet.pth", device="cpu")
    x = pixels(48, count=1)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(x), source.eval()(model.spec.to_model_input(x)))
    # Offline and not cached: a one-line answer at once, not the hub's retries.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr("filterviz.models.sources.timm_zoo.unreachable_reason", lambda url, timeout: "offline")
    with pytest.raises(WeightsUnavailableError, match=r"timm:test_resnet .*\(offline\).*--weights PATH"):
        filterviz.load_model("timm:test_resnet", device="cpu")


# -- Keras 3 -----------------------------------------------------------------------------------------------------


def tiny_keras_model():
    """A small functional Keras model with a residual branch, named as Keras's VGG16 names layers."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="block1_conv1")(x)
    branch = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="block1_conv2")(x)
    x = keras.layers.Add(name="block1_add")([x, branch])
    x = keras.layers.MaxPooling2D(name="block1_pool")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block2_conv1")(x)
    return keras.Model(inputs, x, name="tiny")


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras")
    model = tiny_keras_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(folder / "tiny.keras")
        model.save(folder / "tiny.h5")  # the legacy HDF5 format, still common
    return model, folder


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_file_layers_by_keras_name_match_keras(keras_files, suffix, capsys):
    original, folder = keras_files
    path = folder / f"tiny{suffix}"
    model = filterviz.load_model(path, device="cpu")
    assert model.spec.layout == "NHWC" and model.spec.fixed_size is None
    infos = {info.name: info for info in model.layers(32)}
    assert list(infos) == ["rescale", "block1_conv1", "block1_conv2", "block1_add", "block1_pool", "block2_conv1"]
    assert (infos["block2_conv1"].kind, infos["block2_conv1"].channels, infos["block2_conv1"].spatial) == (
        "Conv2D", 8, "16x16")
    x = pixels(32)
    nhwc = x.permute(0, 2, 3, 1).numpy()  # raw 0..255 pixels: the model rescales them itself
    for layer in ("block1_conv1", "block1_add", "block2_conv1"):
        upto = keras.Model(original.inputs, original.get_layer(layer).output)
        expected = torch.as_tensor(np.asarray(upto.predict(nhwc, verbose=0))).permute(0, 3, 1, 2)
        with torch.no_grad():
            torch.testing.assert_close(model.activations(x, layer), expected, rtol=1e-4, atol=1e-4)
    assert_render_raises(model, "block2_conv1", 3, size=32)
    code, out, _ = cli(capsys, "layers", str(path), "--size", "32")
    assert code == 0 and out.splitlines()[0] == "input: RGB, pixels 0..255 as they are, NHWC, any size (default 224)"
    assert ["block1_add", "Add", "nhwc", "32x32,", "6"] in [line.split() for line in out.splitlines()]


def test_keras_forward_pass_stops_at_the_layer(keras_files):
    model = filterviz.load_model(keras_files[1] / "tiny.keras", device="cpu")
    later = []
    handle = model.graph.module("block2_conv1").register_forward_hook(lambda *args: later.append(1))
    try:
        model.activations(pixels(16), "block1_pool")
        assert later == []
        model.logits(pixels(16))
        assert later == [1]  # the counter works: a full pass reaches the layer
    finally:
        handle.remove()


def test_keras_application_as_in_the_book():
    model = filterviz.load_model("keras:VGG16", weights="random", device="cpu")
    # Keras's VGG16 expects BGR with the ImageNet mean pixel subtracted ("caffe" preprocessing).
    caffe = InputSpec.preset("caffe")
    assert (model.spec.layout, model.spec.channel_order, model.spec.std) == ("NHWC", "BGR", caffe.std)
    np.testing.assert_allclose(model.spec.mean, caffe.mean, rtol=1e-6)
    infos = {info.name: info for info in model.layers(150)}
    assert (infos["block3_conv1"].channels, infos["block3_conv1"].spatial) == (256, "37x37")
    assert filterviz.book_layers(model) == ["block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1"]


@pytest.mark.parametrize(("module", "expected"), [
    ("vgg16", InputSpec.preset("caffe")),
    ("resnet_v2", InputSpec.preset("tf")),
    ("densenet", InputSpec.preset("imagenet")),
])
def test_keras_preprocess_input_read_as_a_spec(module, expected):
    preprocess = getattr(keras.applications, module).preprocess_input
    spec = keras_models.spec_from_preprocess(preprocess, layout="NHWC")
    x = pixels(8)
    ours = spec.to_model_input(x)
    theirs = torch.as_tensor(np.array(preprocess(x.permute(0, 2, 3, 1).numpy().copy())))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    assert spec.channel_order == expected.channel_order
    np.testing.assert_allclose(spec.mean, expected.mean, rtol=1e-4)
    np.testing.assert_allclose(spec.std, expected.std, rtol=1e-4)


# -- ONNX --------------------------------------------------------------------------------------------------------


class NHWCNet(nn.Module):
    """Takes (N, H, W, 3) like a Keras model, and returns (N, H, W, C)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block1_conv1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.block1_pool = nn.MaxPool2d(2)
        self.block2_conv1 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        return self.block2_conv1(self.block1_pool(self.block1_conv1(x))).permute(0, 2, 3, 1)


def keras_style_onnx(path, size: int = 16) -> onnx.ModelProto:
    """Export NHWCNet and rename its nodes as a Keras export names them: functional_1/<layer>_1/<Op>."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(NHWCNet(), (torch.rand(1, size, size, 3),), path, dynamo=False, input_names=["input"])
    proto = onnx.load(path)
    for node in proto.graph.node:  # e.g. "/block1_conv1/block1_conv1.1/Relu"
        scope = node.name.strip("/").split("/")[0]
        layer = f"{scope}_1/" if scope.startswith("block") else ""
        node.name = f"functional_1/{layer}{node.op_type}"
    onnx.save(proto, path)
    return proto


def test_onnx_keras_export_by_keras_names_nhwc_and_fixed_size(tmp_path, capsys):
    path = tmp_path / "keras_like.onnx"
    proto = keras_style_onnx(path)
    model = filterviz.load_model(path, device="cpu")
    assert (model.spec.layout, model.spec.fixed_size) == ("NHWC", (16, 16))
    assert model.resolve("block1_conv1") == "functional_1/block1_conv1_1/Relu"  # after the activation
    # The source framework itself: ONNX's reference runtime, with the Relu's tensor made an output.
    relu = next(node for node in proto.graph.node if node.name == "functional_1/block1_conv1_1/Relu")
    proto.graph.output.append(onnx.helper.make_tensor_value_info(relu.output[0], onnx.TensorProto.FLOAT, None))
    x = pixels(16, count=1)
    (expected,) = ReferenceEvaluator(proto).run([relu.output[0]], {"input": x.permute(0, 2, 3, 1).numpy()})
    with torch.no_grad():
        torch.testing.assert_close(model.activations(x, "block1_conv1"), torch.as_tensor(expected))
        # block2_conv1's last node transposes back to NHWC; filterviz still reads channels on axis 1.
        assert model.activations(x, "block2_conv1").shape == (1, 6, 8, 8)
    render = assert_render_raises(model, "block1_conv1", 3)
    assert render.images.shape == (3, 16, 16, 3)  # the file's fixed size, by default
    # ... as if that size were given: the same bytes as size=16.
    explicit = filterviz.render_filters(model, "block1_conv1", render.filters, size=16, steps=4, seed=0)
    assert np.array_equal(render.images, explicit.images)
    code, out, _ = cli(capsys, "layers", str(path))
    assert code == 0 and "NHWC, fixed 16x16" in out.splitlines()[0]
    row = next(line for line in out.splitlines() if line.startswith("functional_1/block1_conv1_1/Relu"))
    assert row.split()[1:] == ["ReLU", "nchw", "16x16,", "4", "block1_conv1_1,", "block1_conv1"]
    row = next(line for line in out.splitlines() if line.startswith("functional_1/Transpose_6"))
    assert row.split()[1:] == ["OnnxTranspose", "nhwc", "8x8,", "6"]  # the output, transposed back to NHWC


def test_onnx_from_pytorch_keeps_module_names_as_aliases(tmp_path):
    path = tmp_path / "tiny.onnx"
    torch.manual_seed(0)
    net = TinyNet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 3, 16, 16),), path, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    model = filterviz.load_model(path, preprocess="unit", device="cpu")
    assert model.spec.fixed_size is None and model.spec.std == (255.0,) * 3
    x = pixels(16)
    with torch.no_grad():
        expected = nn.Sequential(*net.features[:4])(x / 255)
        torch.testing.assert_close(model.activations(x, "features.3"), expected, rtol=1e-5, atol=1e-5)


def test_scope_aliases_skip_ambiguous_and_model_scopes():
    names = ["m/a_1/Conv", "m/a_1/Relu", "m/b/0/Conv", "m/c/0/Conv", "m/c/1/Relu"]
    assert onnx_files.scope_aliases(names) == {"a_1": "m/a_1/Relu", "a": "m/a_1/Relu", "b": "m/b/0/Conv",
                                               "c": "m/c/1/Relu", "1": "m/c/1/Relu"}


# -- PyTorch files: TorchScript, pickled models, state dicts ----------------------------------------------------


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x)) + x


class ScriptNet(nn.Module):
    """stem, two residual blocks, then a 7x7 conv that cannot run below 7 px."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(Residual(), Residual())
        self.head = nn.Conv2d(4, 5, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def test_torchscript_layers_by_path_stop_early_and_match_eager(tmp_path):
    net = ScriptNet().eval()
    path = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, torch.rand(1, 3, 16, 16)).save(path)
    model = filterviz.load_model(path, preprocess="unit", device="cpu")
    infos = {info.name: info for info in model.layers(16)}
    assert list(infos) == ["stem.0", "stem.1", "stem", "blocks.0.conv", "blocks.0.act", "blocks.0",
                           "blocks.1.conv", "blocks.1.act", "blocks.1", "blocks", "head"]
    assert (infos["blocks.1.act"].kind, infos["head"].channels) == ("ReLU", 5)
    x = pixels(16)
    captured = {}
    handle = net.blocks[1].act.register_forward_hook(lambda m, i, out: captured.setdefault("act", out))
    with torch.no_grad():
        net(x / 255)
        handle.remove()
        torch.testing.assert_close(model.activations(x, "blocks.1.act"), captured["act"])
        # At 5 px the 7x7 head cannot run, but a layer before it can: nothing after the layer ran.
        assert model.activations(pixels(5), "blocks.1").shape == (2, 4, 5, 5)
    assert_render_raises(model, "blocks.1.act", size=16)


def test_pickled_model_needs_trust_pickle(tmp_path, capsys):
    torch.manual_seed(0)
    net = TinyNet().eval()
    path = tmp_path / "whole.pth"
    torch.save(net, path)
    code, _, err = cli(capsys, "layers", str(path))
    assert code == 2 and len(err.splitlines()) == 1
    assert "holds a pickled model, and unpickling runs code from the file: pass --trust-pickle" in err
    model = filterviz.load_model(path, trust_pickle=True, spec=InputSpec.preset("unit"), device="cpu")
    x = pixels(16)
    with torch.no_grad():
        torch.testing.assert_close(model.activations(x, "features.3"), net.features[:4](x / 255))
    code, out, _ = cli(capsys, "layers", str(path), "--trust-pickle", "--size", "16")
    assert code == 0 and "features.3" in out


def test_state_dict_file_needs_arch(tmp_path, capsys):
    path = tmp_path / "resnet18-weights.pth"
    torch.manual_seed(0)
    source = tv_models.resnet18()
    torch.save(source.state_dict(), path)
    code, _, err = cli(capsys, "layers", str(path))
    assert code == 2 and "holds weights only (a state dict); say which architecture" in err and "--arch" in err
    model = filterviz.load_model(path, arch="resnet18", device="cpu")
    x = pixels(32, count=1)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(x), source.eval()(model.spec.to_model_input(x)))
    code, out, _ = cli(capsys, "layers", str(path), "--arch", "resnet18", "--size", "64")
    assert code == 0 and "layer1.0.relu#2" in out


# -- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("broken.onnx", b"not a model", r"'.*broken.onnx' is not a valid ONNX model"),
    ("broken.keras", b"not a model", r"cannot load '.*broken.keras' as a Keras model"),
    ("broken.h5", b"not a model", r"cannot load '.*broken.h5' as a Keras model"),
    ("broken.pt", b"not a model", r"cannot read weights file '.*broken.pt': it is not a PyTorch checkpoint"),
    ("model.xyz", b"anything", r"unsupported model file type '.xyz' .*; supported: PATH.keras, .h5 .*; PATH.onnx .*; PATH.pt"),
])
def test_a_file_that_is_not_what_its_suffix_says(tmp_path, capsys, name, content, expected):
    import re

    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "out.png"
    code, _, err = cli(capsys, "render", str(path), "layer", "0", "-o", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(expected, err), err
    assert not out.exists()


def test_missing_file_and_missing_extra(tmp_path, monkeypatch):
    with pytest.raises(ModelFileError, match="no such file; give a model name"):
        filterviz.load_model(tmp_path / "absent.onnx")
    with pytest.raises(MissingExtraError, match=r"pip install 'filterviz\[onnx\]'"):
        require("onnx2torch_is_not_installed", "onnx", "ONNX models")

    real_import = importlib.import_module

    def no_onnx2torch(name, *args):
        if name.startswith("filterviz."):  # filterviz's own modules, imported when first needed
            return real_import(name, *args)
        raise ImportError(f"No module named {name!r}")

    path = tmp_path / "m.onnx"
    keras_style_onnx(path)
    monkeypatch.setattr("importlib.import_module", no_onnx2torch)
    with pytest.raises(MissingExtraError, match=r"ONNX models need onnx.*pip install 'filterviz\[onnx\]'"):
        filterviz.load_model(path)


def test_presets_and_bad_preprocess():
    assert InputSpec.preset("tf").to_model_input(torch.full((1, 3, 1, 1), 255.0)).flatten().tolist() == [1.0] * 3
    caffe = InputSpec.preset("caffe").to_model_input(torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1))
    torch.testing.assert_close(caffe.flatten(), torch.tensor([30 - 103.939, 20 - 116.779, 10 - 123.68]))
    with pytest.raises(FilterVizError, match="unknown preprocessing 'bgr'; use one of raw, unit, tf, caffe, imagenet"):
        filterviz.load_model("vgg16", weights="random", preprocess="bgr")


def test_fixed_size_models_resize_on_the_way_in():
    spec = InputSpec(fixed_size=(8, 8))
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    assert spec.to_model_input(x).shape == (1, 3, 8, 8)
    assert spec.to_model_input(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_keras_model_object_by_keras_names():
    original = tiny_keras_model()
    model = filterviz.load_model(original, preprocess="tf", device="cpu")
    assert model.name == "tiny" and model.spec.layout == "NHWC"
    x = pixels(16)
    upto = keras.Model(original.inputs, original.get_layer("block1_conv1").output)
    expected = torch.as_tensor(np.asarray(upto.predict(x.permute(0, 2, 3, 1).numpy() / 127.5 - 1, verbose=0)))
    with torch.no_grad():
        torch.testing.assert_close(model.activations(x, "block1_conv1"), expected.permute(0, 3, 1, 2),
                                   rtol=1e-4, atol=1e-4)


def test_declared_minimum_size_is_checked():
    model = filterviz.load_model(TinyNet(), spec=InputSpec(min_size=12, default_size=16), device="cpu")
    with pytest.raises(FilterVizError, match="takes images of 12 px or more, not 8; use --size 12 or more"):
        filterviz.render_filters(model, "features.1", [0], size=8, steps=1)


def test_an_atlas_of_a_keras_model_shows_its_conv_layers_by_keras_name():
    from filterviz.atlas import default_layers

    model = filterviz.load_model(tiny_keras_model(), preprocess="raw")
    assert default_layers(model, 16) == ["block1_conv1", "block1_conv2", "block2_conv1"]
