"""Forward strategies: how a render runs the model at each step and scores its images.

Chosen once per render (``choose_forward``): ``FullCapture`` runs the model up to the last layer an
objective reads and scores the objectives on the captured activations; ``SelectedChannels`` (the
one-channel fast path, see ``fastpath``) computes, when every image is scored on one channel of a
convolution layer, only those channels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .fastpath import ConvTail, conv_input, find_conv_tail, selected_channels, single_channels
from .device import channels_last
from .models.loaded import LoadedModel
from .objectives import IMAGE, Objective, batch_scores
from .redirect import Redirection, redirected

Scorer = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (images, views, views per image) -> (N,)


@dataclass
class ForwardPass:
    """A model made ready for ascent steps: ``run`` (a capture, or the selected convolution's input),
    whether its weights are channels-last, and the redirection of its ReLUs (None: none)."""

    run: Callable[[torch.Tensor], Any]
    nhwc: bool
    redirection: Redirection | None


class ForwardStrategy(Protocol):
    """How the model runs for a render's objectives: ``open`` makes it ready (undone on exit), ``scorer``
    scores the images ``chunk`` (indices into the render's objectives) on it."""

    layers: list[str]

    def open(self, model: LoadedModel, nhwc: bool, escape: bool) -> contextlib.AbstractContextManager[ForwardPass]:
        ...

    def scorer(self, step: ForwardPass, chunk: Sequence[int]) -> Scorer:
        ...


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """Scores leave an autocast region in fp32 (and a float64 model's stay float64)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _layout(views: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return views.contiguous(memory_format=torch.channels_last) if nhwc and views.ndim == 4 else views


@contextlib.contextmanager
def _prepared(model: LoadedModel, nhwc: bool, escape: bool,
              run: Callable[[], contextlib.AbstractContextManager[Callable[[torch.Tensor], Any]]]) -> Iterator[ForwardPass]:
    with contextlib.ExitStack() as stack:
        on = stack.enter_context(channels_last(model.module, nhwc))
        redirection = stack.enter_context(redirected(model.module)) if escape else None
        yield ForwardPass(stack.enter_context(run()), on, redirection)


@dataclass
class FullCapture:
    """Capture every layer the objectives read; score each image on its own objective."""

    objectives: list[Objective]
    layers: list[str]

    def open(self, model: LoadedModel, nhwc: bool, escape: bool) -> contextlib.AbstractContextManager[ForwardPass]:
        return _prepared(model, nhwc, escape, lambda: model.capture(self.layers))

    def scorer(self, step: ForwardPass, chunk: Sequence[int]) -> Scorer:
        objectives = [self.objectives[i] for i in chunk]

        def score(pixels: torch.Tensor, views: torch.Tensor, count: int) -> torch.Tensor:
            data = step.run(_layout(views, step.nhwc))
            data[IMAGE] = pixels
            return full_precision(batch_scores(objectives, data, count))
        return score


@dataclass
class SelectedChannels:
    """The one-channel fast path: run up to the convolution behind the layer, then compute only each
    image's own channel."""

    conv_tail: ConvTail
    channels: list[int]
    layers: list[str]

    def open(self, model: LoadedModel, nhwc: bool, escape: bool) -> contextlib.AbstractContextManager[ForwardPass]:
        return _prepared(model, nhwc, escape, lambda: conv_input(model, self.conv_tail.conv))

    def scorer(self, step: ForwardPass, chunk: Sequence[int]) -> Scorer:
        device = next(iter(self.conv_tail.conv.parameters())).device
        picked = torch.tensor([self.channels[i] for i in chunk], device=device)

        def score(pixels: torch.Tensor, views: torch.Tensor, count: int) -> torch.Tensor:
            outputs = selected_channels(self.conv_tail, step.run(_layout(views, step.nhwc)),
                                        picked.repeat_interleave(count))
            return full_precision(outputs.flatten(1)).mean(dim=1).view(-1, count).mean(dim=1)
        return score


def choose_forward(model: LoadedModel, objectives: list[Objective], layers: list[str],
                   select_channels: bool) -> FullCapture | SelectedChannels:
    """The fast path when every objective is one channel of one plain convolution layer (and
    ``select_channels``), else the full capture."""
    selection = single_channels(objectives) if select_channels else None
    conv_tail = find_conv_tail(model, selection[0]) if selection else None
    if selection is not None and conv_tail is not None:
        return SelectedChannels(conv_tail, selection[1], layers)
    return FullCapture(objectives, layers)
