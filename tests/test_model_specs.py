"""The spec shown is the spec used: what `filterviz layers` prints about a model is what a render of
that model with the same options uses; and the three download sources (torchvision, timm, Keras
applications) say the same thing, in one line, when weights are neither cached nor downloadable."""

from __future__ import annotations

import importlib
import os
import re
import socket

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is first imported

import pytest
import torch
import torchvision.models as tv_models

import filterviz
from filterviz import InputSpec
from filterviz.cli import main
from filterviz.models.sources import embedded, timm_zoo, torchvision_zoo
from filterviz.models.sources.torchvision_zoo import cached_file

VGG16 = tv_models.VGG16_Weights


def layers_input_line(capsys, *argv: str) -> str:
    """The first line of `filterviz layers ...`: the input spec it shows."""
    code = main(["layers", *argv, "--size", "32"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out.splitlines()[0]


def assert_shown_is_used(capsys, model: str, weights: str | None, loaded: filterviz.LoadedModel
                         ) -> tuple[str, filterviz.LoadedModel]:
    """`layers` prints the spec of ``loaded`` (the model a render loads), and the architecture-only
    model it lists has the same spec, categories and aliases; returns the line printed and that model."""
    argv = [model] + (["--weights", weights] if weights else [])
    line = layers_input_line(capsys, *argv)
    assert line == f"input: {loaded.spec.describe()}"
    architecture = filterviz.load_model(model, weights, device="cpu", load_weights=False)
    assert architecture.spec == loaded.spec
    assert architecture.categories == loaded.categories
    assert architecture.aliases == loaded.aliases
    assert architecture.source.startswith("architecture only, spec of ")
    return line, architecture


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: what `layers` shows must need no network."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network must not be used")

    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Every weights cache points to an empty folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


# -- the spec shown is the spec used ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16_state():
    torch.manual_seed(0)
    return tv_models.vgg16().state_dict()


@pytest.mark.parametrize("weights", [None, "IMAGENET1K_V1"])
def test_vgg16_pretrained_spec_shown_is_used(weights, vgg16_state, empty_caches, monkeypatch, capsys, no_network):
    enum = VGG16[weights or torchvision_zoo.PREFERRED_WEIGHTS["vgg16"]]
    # A checkpoint "in the torch cache": a placeholder file that marks it cached, and torchvision's
    # reader handing out random weights for its URL (the real file would be 528 MB).
    file = cached_file(enum)
    file.parent.mkdir(parents=True)
    file.touch()
    read = []

    def from_cache(url, *args, **kwargs):
        read.append(url)
        return vgg16_state

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", from_cache)
    loaded = filterviz.load_model("vgg16", weights, device="cpu")
    assert read == [enum.url] and loaded.source == f"torchvision {enum}"
    assert loaded.spec == torchvision_zoo.spec_for("vgg16", weights)
    transforms = enum.transforms()
    assert loaded.spec == InputSpec.from_unit_range(tuple(transforms.mean), tuple(transforms.std))
    line, architecture = assert_shown_is_used(capsys, "vgg16", weights, loaded)
    assert architecture.source == f"architecture only, spec of {enum}"
    if weights is None:  # the original VGG standardization, as a render with no --weights uses
        found = re.fullmatch(r"input: RGB, \(pixels - \[([\d., ]+)\]\) / \[([\d., ]+)\], NCHW, any size "
                             r"\(default 224\)", line)
        assert found, line
        mean, std = ([float(v) for v in group.split(",")] for group in found.groups())
        assert mean == pytest.approx([123.0, 117.0, 104.0], abs=0.01) and std == pytest.approx([1.0] * 3)


def test_random_weights_take_the_spec_of_the_preferred_weights(capsys, no_network):
    loaded = filterviz.load_model("vgg16", "random", device="cpu")
    assert loaded.spec == torchvision_zoo.spec_for("vgg16") == torchvision_zoo.spec_for("vgg16", "random")
    assert loaded.source == "random weights" and loaded.categories is None
    assert_shown_is_used(capsys, "vgg16", "random", loaded)


def test_resnet18_from_the_torch_cache(empty_caches, capsys, no_network):
    enum = tv_models.ResNet18_Weights.DEFAULT
    file = cached_file(enum)
    file.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(tv_models.resnet18().state_dict(), file)
    loaded = filterviz.load_model("resnet18", device="cpu")
    assert loaded.source == f"torchvision {enum}" and loaded.categories[0] == "tench"
    assert loaded.spec == InputSpec.preset("imagenet")
    assert_shown_is_used(capsys, "resnet18", None, loaded)


def test_a_local_copy_keeps_the_spec_of_its_file_name(tmp_path, monkeypatch, capsys, no_network):
    copy = tmp_path / cached_file(VGG16.IMAGENET1K_FEATURES).name
    copy.touch()
    read = []  # the real file would be 528 MB; test_models loads such a copy for real
    monkeypatch.setattr(torchvision_zoo, "load_weights_file", lambda module, path, name: read.append(path))
    loaded = filterviz.load_model("vgg16", str(copy), device="cpu")
    assert read == [copy] and loaded.spec == torchvision_zoo.spec_for("vgg16", "IMAGENET1K_FEATURES")
    assert_shown_is_used(capsys, "vgg16", str(copy), loaded)
    assert read == [copy]  # `layers` read no weights
    code = main(["layers", "vgg16", "--weights", str(tmp_path / "absent.pth")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def hub_cache_with(folder, repo: str, state: dict[str, torch.Tensor]) -> None:
    """A Hugging Face hub cache holding ``state`` as ``repo``'s model.safetensors, laid out as the hub lays it."""
    from safetensors.torch import save_file

    commit = "0" * 40
    repository = folder / f"models--{repo.replace('/', '--')}"
    (repository / "snapshots" / commit).mkdir(parents=True)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(commit)
    save_file({k: v.contiguous() for k, v in state.items()}, repository / "snapshots" / commit / "model.safetensors")


def test_timm_pretrained_from_the_hub_cache(empty_caches, monkeypatch, capsys, no_network):
    timm = pytest.importorskip("timm")
    monkeypatch.setattr(timm_zoo, "unreachable_reason", lambda url, timeout: "offline")
    cfg = timm.models.get_pretrained_cfg("resnet18")
    torch.manual_seed(2)
    source = timm.create_model("resnet18", pretrained=False)
    hub_cache_with(empty_caches / "hf" / "hub", cfg.hf_hub_id, source.state_dict())
    loaded = filterviz.load_model("timm:resnet18", device="cpu")
    assert torch.equal(loaded.module.conv1.weight, source.conv1.weight)
    assert loaded.source == f"timm {cfg.hf_hub_id} (pretrained)"
    config = timm.data.resolve_data_config({}, model=loaded.module)  # timm's own reading of the model
    assert loaded.spec == InputSpec.from_unit_range(config["mean"], config["std"], default_size=224)
    assert loaded.spec == timm_zoo.spec_for("resnet18")
    assert_shown_is_used(capsys, "timm:resnet18", None, loaded)
    assert_shown_is_used(capsys, "timm:resnet18", "random", filterviz.load_model("timm:resnet18", "random"))


def test_keras_vgg16_from_the_keras_cache(empty_caches, monkeypatch, capsys, no_network):
    keras = pytest.importorskip("keras")
    import h5py
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.utils import file_utils

    from filterviz.models.sources import keras_models

    keras.utils.set_random_seed(3)
    source = keras.applications.VGG16(weights=None, include_top=False)
    cached = empty_caches / "keras" / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    cached.parent.mkdir(parents=True)
    with h5py.File(cached, "w") as file:  # the format of Keras's own file
        legacy_h5_format.save_weights_to_hdf5_group(file, source)
    monkeypatch.setattr(file_utils, "validate_file", lambda *args, **kwargs: True)  # a home-made file's hash
    loaded = filterviz.load_model("keras:VGG16", device="cpu")
    assert loaded.source == "Keras ImageNet weights"
    torch.testing.assert_close(torch.as_tensor(loaded.module.get_layer("block1_conv1").get_weights()[0]),
                               torch.as_tensor(source.get_layer("block1_conv1").get_weights()[0]))
    caffe = InputSpec.preset("caffe")
    assert (loaded.spec.channel_order, loaded.spec.layout, loaded.spec.std) == ("BGR", "NHWC", caffe.std)
    assert loaded.spec.mean == pytest.approx(caffe.mean, rel=1e-5)
    assert loaded.spec == keras_models.spec_for("VGG16")
    assert_shown_is_used(capsys, "keras:VGG16", None, loaded)


@pytest.mark.parametrize("weights", [None, "random"])
def test_embedded_spec_shown_is_used(weights, capsys, no_network):
    loaded = filterviz.load_model(embedded.NAME, weights, device="cpu")
    assert loaded.spec == embedded.SPEC == embedded.spec_for(weights)
    assert_shown_is_used(capsys, embedded.NAME, weights, loaded)


# -- one offline message for every source -------------------------------------------------------------------------

OFFLINE = "offline for this test"
# The shared shape: which weights, the cache and the full path looked up, the full URL, why, what to do.
SHAPE = re.compile(
    r"filterviz: error: (?P<weights>.+) weights are not in the (?P<cache>.+) cache \((?P<where>.+)\) and cannot be "
    r"downloaded from (?P<url>\S+) \((?P<reason>.+)\); fetch that file where it can be reached and give it with "
    r"--weights PATH or (?P<put>.+), or use --weights random for untrained weights"
)


def offline_render_error(capsys, monkeypatch, tmp_path, module, model: str, layer: str) -> re.Match:
    """Render ``model`` with its pretrained weights while their host cannot be reached: exit status 2
    and one line on stderr, of the shared shape."""
    monkeypatch.setattr(module, "unreachable_reason", lambda url, timeout: OFFLINE)
    out = tmp_path / "out.png"
    code = main(["render", model, layer, "0", "-o", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2 and len(lines) == 1 and captured.out == "" and not out.exists(), captured.err
    found = SHAPE.fullmatch(lines[0])
    assert found, lines[0]
    assert found["reason"] == OFFLINE
    return found


def test_torchvision_offline_message(empty_caches, monkeypatch, capsys, no_network):
    found = offline_render_error(capsys, monkeypatch, empty_caches, torchvision_zoo, "vgg16", "block1_conv1")
    enum = VGG16.IMAGENET1K_FEATURES
    where = str(empty_caches / "torch" / "hub" / "checkpoints" / "vgg16_features-amdegroot-88682ab5.pth")
    assert (found["weights"], found["cache"], found["where"]) == (str(enum), "torch", where)
    assert found["url"] == enum.url == "https://download.pytorch.org/models/vgg16_features-amdegroot-88682ab5.pth"
    assert found["put"] == f"put it at {where}"


def test_timm_offline_message(empty_caches, monkeypatch, capsys, no_network):
    pytest.importorskip("timm")
    found = offline_render_error(capsys, monkeypatch, empty_caches, timm_zoo, "timm:resnet18", "layer1")
    hub = empty_caches / "hf" / "hub"
    assert (found["weights"], found["cache"]) == ("timm:resnet18 (timm/resnet18.a1_in1k)", "Hugging Face hub")
    assert found["where"] == str(hub / "models--timm--resnet18.a1_in1k")
    assert found["url"] == "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors"
    assert found["put"] == f"copy the folder models--timm--resnet18.a1_in1k of a hub cache that has it into {hub}"


def test_keras_offline_message(empty_caches, monkeypatch, capsys, no_network):
    pytest.importorskip("keras")
    from filterviz.models.sources import keras_models

    found = offline_render_error(capsys, monkeypatch, empty_caches, keras_models, "keras:VGG16", "block1_conv1")
    name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    where = str(empty_caches / "keras" / "models" / name)
    assert (found["weights"], found["cache"], found["where"]) == ("keras:VGG16 ImageNet", "Keras", where)
    assert found["url"] == f"https://storage.googleapis.com/tensorflow/keras-applications/vgg16/{name}"
    assert found["put"] == f"put it at {where}"


@pytest.mark.parametrize(("source", "model", "layer"), [("torchvision_zoo", "resnet18", "layer1"),
                                                        ("keras_models", "keras:VGG16", "block1_conv1")])
def test_a_download_that_fails_after_the_check_gives_the_same_message(source, model, layer, empty_caches,
                                                                       monkeypatch, capsys):
    if source == "keras_models":
        pytest.importorskip("keras")
    module = importlib.import_module(f"filterviz.models.sources.{source}")
    monkeypatch.setattr(module, "unreachable_reason", lambda url, timeout: None)  # the check passes, then...

    def unreachable(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)  # ...the transfer fails
    out = empty_caches / "out.png"
    code = main(["render", model, layer, "0", "-o", str(out), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and not out.exists(), err
    found = SHAPE.fullmatch(err[-1])
    assert found and "Network is unreachable" in found["reason"], err
    assert found["where"].startswith(str(empty_caches)) and found["url"].startswith("https://")
