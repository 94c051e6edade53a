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
from .objectives import IMAGE, Objective, Rows, batch_scores
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
        own_rows = all(_reads_own_rows(objective) for objective in objectives)

        def score(pixels: torch.Tensor, views: torch.Tensor, count: int) -> torch.Tensor:
            data = step.run(_layout(views, step.nhwc))
            data[IMAGE] = pixels
            if own_rows:
                scores = per_image_scores(objectives, data, count)
                if scores is not None:
                    return full_precision(scores)
            return full_precision(batch_scores(objectives, data, count))
        return score


def _reads_own_rows(objective: Objective) -> bool:
    """Whether each term of ``objective`` reads only its own image's rows: filterviz's own terms that do
    not compare an image with its peers (a term of a plugin may read the whole batch)."""
    return not objective.batchwise and all(type(term).score.__module__ == Objective.__module__
                                           for _, term in objective.terms)


def per_image_scores(objectives: Sequence[Objective], data: dict[str, torch.Tensor],
                     count: int) -> torch.Tensor | None:
    """``batch_scores(objectives, data, count)`` with each image scored on its own piece of each layer
    (``split``: views of the same memory, so every term computes on the same numbers in the same order,
    and gives the same bytes). The gradient differs only in cost: a term's slice of the whole batch
    sends back a gradient of the whole batch's size, for each image (work and memory that grow with
    the square of the batch), where a piece sends back a gradient of its own size, joined once. None
    when a layer's first axis is not the batch's rows (then ``batch_scores`` is used)."""
    images = len(objectives)
    pieces: dict[str, tuple[torch.Tensor, ...]] = {}
    for name, value in data.items():
        per = 1 if name == IMAGE else count
        if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != images * per:
            return None
        pieces[name] = value.split(per)
    rows = Rows(slice(0, count), 0, (slice(0, count),))
    return torch.stack([objective.score({name: piece[index] for name, piece in pieces.items()}, rows)
                        for index, objective in enumerate(objectives)])


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
