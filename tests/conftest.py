"""Tiny models for fast tests, and shared fixtures."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import filterviz
import filterviz.ascent  # noqa: F401 - the whole API imported up front, as `import filterviz` once did
import filterviz.models.registry  # noqa: F401 - (so no test that stubs importlib.metadata imports torchvision)
from filterviz import InputSpec
from PIL import Image

# A spec that exercises every conversion step: channel flip, mean and std per channel.
TINY_SPEC = InputSpec(mean=(120.0, 115.0, 100.0), std=(60.0, 55.0, 50.0), channel_order="BGR", default_size=16)


class CallCounter(nn.Module):
    """Counts its calls, to prove that a forward pass stopped before it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


class TinyNet(nn.Module):
    """conv(3->4) act conv(4->6) act pool conv(6->8, no padding) act | counter, pool, linear(8->5)."""

    def __init__(self, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), activation(),
            nn.Conv2d(4, 6, 3, padding=1), activation(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3), activation(),
        )
        self.counter = CallCounter()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):  # positive biases: few units start dead
                nn.init.uniform_(layer.bias, 0.05, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.counter(self.features(x))
        return self.fc(self.pool(x).flatten(1))


class Bands(nn.Module):
    """conv(C->4) relu conv(4->6) relu pool conv(6->8) relu | pool linear(8->5), for C input channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):  # positive biases: few units start dead
                nn.init.uniform_(layer.bias, 0.05, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def save_bands(path: Path, channels: int) -> Path:
    """A ``Bands`` model of ``channels`` channels (float32, seed 0) as a TorchScript (``.pt``) or ONNX
    (``.onnx``) file, as a user would give it on the command line."""
    torch.manual_seed(0)
    module = Bands(channels).eval()
    example = torch.zeros(1, channels, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix == ".onnx":
            torch.onnx.export(module, example, str(path), dynamo=False)
        else:
            torch.jit.trace(module, example).save(str(path))
    return path


def tiny_model(activation: type[nn.Module] = nn.ReLU, dtype: torch.dtype = torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    module = TinyNet(activation).to(dtype)
    return filterviz.load_model(module, spec=TINY_SPEC, name="tiny", device="cpu")


@pytest.fixture
def tiny():
    return tiny_model()


@pytest.fixture(scope="session")
def embedded():
    return filterviz.load_model("efficientnet-lite0", device="cpu")


@pytest.fixture(autouse=True)
def seeded_torch():
    """Every test starts from the same torch random state, so models with random weights are the same
    in every run."""
    torch.manual_seed(0)


PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "immunohistochemistry")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six real photos, made small (and of different shapes, one grayscale), in nested folders."""
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    for number, name in enumerate(PHOTOS):
        image = Image.fromarray(getattr(skimage_data, name)())
        image.thumbnail((48, 40))
        target = folder / ("sub" if number % 2 else "") / f"{name}.png"
        target.parent.mkdir(exist_ok=True)
        image.save(target)
    return folder
