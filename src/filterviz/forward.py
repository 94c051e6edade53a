"""Forward strategies: how a render runs the model at each step and scores its images.

Chosen once per render (``choose_forward``): ``FullCapture`` runs the model up to the last layer an
objective reads and scores the objectives on the captured activations; ``SelectedChannels`` (the
one-channel fast path, see ``fastpath``) computes, when every image is scored on one channel of a
convolution layer, only those channels.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from .fastpath import ConvTail, conv_input, find_conv_tail, selected_channels, single_channels
from .device import channels_last
from .layers import OUTPUT, split_call
from .layouts import split_part
from .models.loaded import LoadedModel
from .objectives import IMAGE, Objective, Rows, Term, batch_scores, start_layer
from .redirect import Redirection, redirected

# (images, views, views per image[, start]) -> (N,); start: (start images, their views), given to the
# objectives that compare with the start photo (each view of it transformed as the image's same view).
Scorer = Callable[..., torch.Tensor]
StartViews = tuple[torch.Tensor, torch.Tensor]


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

    def open(self, model: LoadedModel, nhwc: bool, escape: bool,
             fold_batchnorm: bool = False) -> contextlib.AbstractContextManager[ForwardPass]:
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
              run: Callable[[], contextlib.AbstractContextManager[Callable[[torch.Tensor], Any]]],
              fold: Collection[nn.Module] | None = None) -> Iterator[ForwardPass]:
    """The model ready for steps: channels-last, its ReLUs redirected (``escape``), its batch norms folded
    into their convolutions but for those of the modules ``fold`` names to keep (None: none folded)."""
    with contextlib.ExitStack() as stack:
        on = stack.enter_context(channels_last(model.module, nhwc))
        if fold is not None:
            stack.enter_context(folded_batchnorm(model.module, fold))
        redirection = stack.enter_context(redirected(model.module)) if escape else None
        yield ForwardPass(stack.enter_context(run()), on, redirection)


def _read_modules(model: LoadedModel, layers: Sequence[str]) -> set[nn.Module]:
    """The modules whose outputs ``layers`` read (what folding must leave as they are)."""
    modules = set()
    for layer in layers:
        if layer in (OUTPUT, IMAGE):
            continue
        module = model.graph.module(split_call(split_part(model.resolve(layer))[0])[0])
        if module is not None:
            modules.add(module)
    return modules


@contextlib.contextmanager
def folded_batchnorm(root: nn.Module, keep: Collection[nn.Module] = ()) -> Iterator[int]:
    """Inside, every convolution followed directly by a batch norm (in eval mode, next to it in a plain
    ``nn.Sequential``) computes the batch norm too, in its weights and bias, and the batch norm passes
    its input on: one pass over the activations, forward and backward, instead of two. The batch norm's
    output (and what comes after) is the same up to float rounding, not byte for byte; a convolution's
    own output becomes the batch norm's, so a pair is left as it is when ``keep`` holds either module
    (a layer an objective reads). Each pair is checked on a small random input first (a convolution
    that transforms its weights in ``forward``, such as a weight-standardized one, is left as it is).
    Weights, biases and forwards come back on exit. Yields how many pairs were folded."""
    undo: list[Callable[[], None]] = []
    kept = {id(module) for module in keep}
    # a module that appears in more than one place may run without its neighbour: left as it is
    seen = Counter(id(module) for _, module in root.named_modules(remove_duplicate=False))
    kept |= {key for key, count in seen.items() if count > 1}
    try:
        for sequence in root.modules():
            if type(sequence) is not nn.Sequential:
                continue
            children = list(sequence)
            for conv, norm in zip(children, children[1:]):
                if id(conv) in kept or id(norm) in kept or not _foldable(conv, norm):
                    continue
                restore = _fold(conv, norm)
                if restore is not None:
                    undo.append(restore)
        yield len(undo)
    finally:
        for restore in reversed(undo):
            restore()


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and type(norm) is nn.BatchNorm2d and not norm.training
            and norm.running_mean is not None and norm.running_var is not None
            and norm.num_features == conv.out_channels and "forward" not in vars(norm)
            and conv.weight.dtype.is_floating_point)


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> Callable[[], None] | None:
    """Fold ``norm`` into ``conv`` and return what undoes it; checked on a small input first: if the folded
    convolution does not give the batch norm's output, nothing changes (None)."""
    weight, bias = conv.weight, conv.bias
    with torch.no_grad():
        scale = norm.running_var.double().add(norm.eps).rsqrt()
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = -norm.running_mean.double() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.double()
        if bias is not None:
            shift = shift + bias.double() * scale
        folded_weight = (weight.double() * scale.view(-1, *[1] * (weight.ndim - 1))).to(weight.dtype)
        folded_weight = folded_weight.contiguous(memory_format=_format_of(weight))
        folded_bias = shift.to(weight.dtype)
        side = 2 * max(k * d for k, d in zip(conv.kernel_size, conv.dilation)) + 4
        probe = torch.randn(2, conv.in_channels, side, side, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64).to(weight.device, weight.dtype)
        expected = norm.forward(conv.forward(probe))  # not through the modules: no hooks run
    saved_weight, saved_bias = weight.data, None if bias is None else bias.data

    def restore() -> None:
        weight.data = saved_weight
        if bias is None:
            conv.bias = None
        else:
            bias.data = saved_bias
        vars(norm).pop("forward", None)

    weight.data = folded_weight
    if bias is None:
        conv.bias = nn.Parameter(folded_bias, requires_grad=False)
    else:
        bias.data = folded_bias
    with torch.no_grad():
        got = conv.forward(probe)
    tolerance = 1e-3 * float(expected.abs().max()) + 1e-6
    if got.shape != expected.shape or not bool(((got - expected).abs() <= tolerance).all()):
        restore()
        return None
    norm.forward = _identity  # type: ignore[method-assign]
    return restore


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if x.ndim == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)


@dataclass
class FullCapture:
    """Capture every layer the objectives read; score each image on its own objective."""

    objectives: list[Objective]
    layers: list[str]

    def open(self, model: LoadedModel, nhwc: bool, escape: bool,
             fold_batchnorm: bool = False) -> contextlib.AbstractContextManager[ForwardPass]:
        keep = _read_modules(model, self.layers) if fold_batchnorm else None
        return _prepared(model, nhwc, escape, lambda: model.capture(self.layers), keep)

    def scorer(self, step: ForwardPass, chunk: Sequence[int]) -> Scorer:
        objectives = [self.objectives[i] for i in chunk]
        own_rows = all(_reads_own_rows(objective) for objective in objectives)
        compared = sorted(set().union(*(objective.start_layers for objective in objectives)))
        last: list[Any] = []  # the start views last seen, the autocast state then, and their data

        def start_data(start: StartViews) -> dict[str, torch.Tensor]:
            """The start's data at the layers compared with it: its activations at the same views (no
            gradient: it is a fixed target). Views that do not change (no transforms) are run once."""
            pixels, views = start
            reduced = torch.is_autocast_enabled(views.device.type)
            if last and last[0] is views and last[1] == reduced:
                return last[2]  # type: ignore[no-any-return]
            found: dict[str, torch.Tensor] = {}
            if any(layer != IMAGE for layer in compared):
                with torch.no_grad():
                    captured = step.run(_layout(views, step.nhwc))
                found.update({start_layer(layer): captured[layer] for layer in compared if layer != IMAGE})
            if IMAGE in compared:
                found[start_layer(IMAGE)] = pixels
            last[:] = [views, reduced, found]
            return found

        def score(pixels: torch.Tensor, views: torch.Tensor, count: int,
                  start: StartViews | None = None) -> torch.Tensor:
            data = step.run(_layout(views, step.nhwc))
            data[IMAGE] = pixels
            if start is not None and compared:
                data.update(start_data(start))
            if own_rows:
                scores = per_image_scores(objectives, data, count)
                if scores is not None:
                    return full_precision(scores)
            return full_precision(batch_scores(objectives, data, count))
        return score


def _reads_own_rows(objective: Objective) -> bool:
    """Whether each term of ``objective`` reads only its own image's rows: filterviz's own terms that do
    not compare an image with its peers (a term of a plugin may read the whole batch)."""
    return not objective.batchwise and all(_scoring(term).__module__ == Objective.__module__
                                           for _, term in objective.terms)


def _scoring(term: Term) -> Callable[..., torch.Tensor]:
    """The method that scores ``term``: ``compare`` for a term that compares with the start, else ``score``."""
    return type(term).compare if term.compares_start else type(term).score  # type: ignore[attr-defined, no-any-return]


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
        per = 1 if name in (IMAGE, start_layer(IMAGE)) else count
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

    def open(self, model: LoadedModel, nhwc: bool, escape: bool,
             fold_batchnorm: bool = False) -> contextlib.AbstractContextManager[ForwardPass]:
        # the selected channels read the convolution's weights and its tail's batch norms themselves
        keep = ({*_read_modules(model, self.layers), self.conv_tail.conv, *self.conv_tail.tail} if fold_batchnorm
                else None)
        return _prepared(model, nhwc, escape, lambda: conv_input(model, self.conv_tail.conv), keep)

    def scorer(self, step: ForwardPass, chunk: Sequence[int]) -> Scorer:
        device = next(iter(self.conv_tail.conv.parameters())).device
        picked = torch.tensor([self.channels[i] for i in chunk], device=device)

        def score(pixels: torch.Tensor, views: torch.Tensor, count: int,
                  start: StartViews | None = None) -> torch.Tensor:  # one channel: nothing compares with a start
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
