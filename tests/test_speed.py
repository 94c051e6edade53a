"""The speed paths compute the same thing: selected channels, reduced precision, memory-capped batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import filterviz
from filterviz import InputSpec
from filterviz.fastpath import find_conv_tail, selected_channels, single_channels
from filterviz.errors import FilterVizError
from filterviz.device import auto_batch_size, autocast_dtype
from filterviz.objectives import channel, class_logit


class ConvNet(nn.Module):
    """Plain, grouped and depthwise convolutions, each followed by per-channel modules."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),            # 0 1 2
            nn.Conv2d(8, 12, 3, padding=2, dilation=2, groups=4), nn.ReLU6(),      # 3 4
            nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12), nn.SiLU(),       # 5 6
            nn.MaxPool2d(2),                                                        # 7
        )
        bn = self.features[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


@pytest.fixture
def convnet():
    return filterviz.load_model(ConvNet().double(), spec=InputSpec(std=(255.0,) * 3), name="convnet", device="cpu")


@pytest.mark.parametrize(("layer", "conv"), [("features.2", "features.0"), ("features.4", "features.3"),
                                             ("features.6", "features.5"), ("features.3", "features.3")])
def test_selected_channels_equal_the_full_layer(convnet, layer, conv):
    conv_tail = find_conv_tail(convnet, layer)
    assert conv_tail is not None and conv_tail.conv is convnet.module.get_submodule(conv)
    pixels = torch.rand(5, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 255
    channels = torch.tensor([0, 7, 3, 3, 5])
    with torch.no_grad():
        full = convnet.activations(pixels, layer)
        captured = {}
        handle = conv_tail.conv.register_forward_pre_hook(lambda m, inputs: captured.setdefault("x", inputs[0]))
        convnet.logits(pixels)
        handle.remove()
        picked = selected_channels(conv_tail, captured["x"], channels)
    expected = full[torch.arange(5), channels][:, None]
    torch.testing.assert_close(picked, expected, rtol=1e-6, atol=1e-6)


def test_only_per_channel_tails_qualify(convnet):
    assert find_conv_tail(convnet, "features.7") is None  # a pool mixes positions: not per channel
    assert single_channels([channel("a", 1), channel("a", 2)]) == ("a", [1, 2])
    assert single_channels([channel("a", 1), channel("b", 2)]) is None
    assert single_channels([channel("a", 1) + channel("a", 2)]) is None
    assert single_channels([class_logit(3)]) is None


def test_render_with_and_without_selected_channels_agree(convnet):
    kwargs = dict(steps=5, size=12, seed=0)
    fast = filterviz.render_filters(convnet, "features.4", [0, 5, 11], **kwargs)
    full = filterviz.render_filters(convnet, "features.4", [0, 5, 11], select_channels=False, **kwargs)
    np.testing.assert_allclose(fast.pixels, full.pixels, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.activation, full.activation, rtol=1e-9)


def test_selection_does_not_run_the_layer():
    model = filterviz.load_model("vgg16", weights="random", device="cpu")
    calls = []
    handle = model.module.features[10].register_forward_hook(lambda *args: calls.append(1))  # block3_conv1's conv
    try:
        filterviz.render_filters(model, "block3_conv1", [0], steps=1, size=32, seed=0)
    finally:
        handle.remove()
    # Only the layout trace's pass and the shape check's single-image pass; no ascent step runs the full layer.
    assert calls == [1, 1]
    assert find_conv_tail(model, "block3_conv1").conv is model.module.features[10]


def test_precision_choices():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    with pytest.raises(FilterVizError, match="fp16 is for GPUs"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(FilterVizError, match="unknown precision 'int8'"):
        autocast_dtype("int8", cpu)


def test_automatic_batch_size_keeps_within_its_budget(embedded):
    layer, size = "blocks.3.depthwise.act", 48
    objectives = [f"channel:blocks.3.depthwise.act:{i}" for i in range(6)]
    peak = [0]

    def measure(budget: int) -> int:
        batch = auto_batch_size(embedded, forward, size, 1, budget, None)
        saved = [0]

        def pack(tensor):
            saved[0] += tensor.numel() * tensor.element_size()
            peak[0] = max(peak[0], saved[0])
            return tensor

        def unpack(tensor):
            return tensor

        peak[0] = 0
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            # Each step's saved tensors are released before the next; count per step.
            original = torch.autograd.grad

            def grad(*args, **kwargs):
                result = original(*args, **kwargs)
                saved[0] = 0
                return result

            torch.autograd.grad = grad
            try:
                filterviz.render(embedded, objectives, steps=2, size=size, seed=0, max_memory=budget,
                                 select_channels=False)
            finally:
                torch.autograd.grad = original
        return batch

    def forward(pixels):
        return embedded.activations(pixels, layer)

    unlimited = auto_batch_size(embedded, forward, size, 1, 10 ** 12, None)
    per_image = filterviz.device.saved_bytes_per_image(embedded, forward, size, None)
    assert unlimited == min(64, filterviz.device.CPU_WORKING_SET // per_image)  # the CPU's own cap
    small = 2 * 1.5 * filterviz.device.saved_bytes_per_image(embedded, forward, size, None)
    assert measure(int(small)) == 2 and peak[0] <= small
    with pytest.raises(FilterVizError, match="more than the memory budget"):
        auto_batch_size(embedded, forward, size, 1, 1000, None)
