"""Objectives: what the ascent maximizes, one objective per image of a batch.

An ``Objective`` is a weighted sum of terms, kept flat, so ``a + b``, ``a - b``, ``0.5 * a`` and
``sum(hundreds of terms)`` never nest or recurse. Terms read a layer's activations (channel, neuron,
layer, direction, diversity), the model's output (class logit or log-probability), or the image itself
(regularizers: total variation, L1, L2, blur). Each image's score depends on that image alone, except
for diversity, which compares it with the other images of the batch that share its objective, and
the terms that compare it with the photo it started from (``StartTerm``: caricature, close), which
the render gives that photo's data at the same views.

Term kinds are registered parts: each declares its text syntax (``channel:LAYER:K``) and reads it in
``parse``; ``parse_objective``, its error messages and the command line's help are made from the
registry, and ``register_term`` adds a kind.

>>> objective = channel("block4_conv1", 17) - 0.3 * channel("block4_conv1", 5)
>>> objective.name
'channel(block4_conv1,17) - 0.3*channel(block4_conv1,5)'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import FilterVizError, InputFileError, first_line
from .layouts import OUTPUT, part_name, part_names, split_part
from .plugins import Registry

# Objective text is read, and refused, without torch, before a command loads a model: torch and numpy
# are imported where a term scores, or where a direction file is read.
if TYPE_CHECKING:
    import numpy as np
    import torch

IMAGE = "<image>"  # the image being optimized (RGB 0..255), as a layer name for regularizers
START = "<start>"  # prefix of the names under which a render gives terms its start image's (the photo's) data


def start_layer(layer: str) -> str:
    """The name under which ``layer``'s data of the render's start image (the photo) reach the terms that
    compare with it: its activations at the same views as the image's (or, for ``IMAGE``, its pixels)."""
    return START + layer


@dataclass(frozen=True)
class Rows:
    """Where one image's data sit in a batch: its rows in layer activations (one per view of it), its
    row in the image batch, and the activation rows of the images that share its objective."""

    views: slice
    image: int
    peers: tuple[slice, ...] = ()


class Term:
    """One scored quantity: a frozen dataclass. ``layer`` is what it reads (a layer name, ``OUTPUT`` or
    ``IMAGE``); ``score`` returns a scalar for one image from that layer's batch; ``label`` names it.
    ``syntax`` lists its text forms (``"channel:LAYER:K"``; the word before the first colon is the
    kind's name) and ``parse`` reads one of them."""

    layer: str
    syntax: ClassVar[tuple[str, ...]] = ()
    # Whether an image's score reads the other images of its batch (diversity): such images must be
    # optimized in one batch, whatever the batch size.
    batchwise: ClassVar[bool] = False
    # Whether it compares the image with the render's start image (a ``StartTerm``): such a term needs a
    # start, and is scored by ``compare``.
    compares_start: ClassVar[bool] = False

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        raise NotImplementedError

    def label(self) -> str:
        raise NotImplementedError

    @classmethod
    def parse(cls, kind: str, args: str) -> "Term":
        """The term that ``KIND:ARGS`` names (``args``: the text after the first colon, "" if none);
        a one-line FilterVizError for anything else."""
        raise NotImplementedError

    def bind(self, model: Any) -> "Term":
        """This term made ready for ``model`` (a term that needs something of the model, such as a
        text's embedding, gets it here, before any check or step); most terms need nothing."""
        return self


def _kinds(term: type[Term]) -> tuple[str, ...]:
    return tuple(form.split(":")[0] for form in term.syntax)


TERMS: Registry[type[Term]] = Registry("objective term", "filterviz.terms",
                                       lambda part: isinstance(part, type) and issubclass(part, Term)
                                       and bool(part.syntax), "a Term subclass with a syntax", _kinds)


def register_term(kind: type[Term]) -> type[Term]:
    """Add a kind of objective term (a ``Term`` subclass with ``syntax`` and ``parse``); usable as a decorator."""
    return TERMS.register(kind)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FilterVizError(f"{what} must be an integer, not {text!r}") from None


def _layer_and_index(kind: str, args: str, syntax: str, needs: str = "an index") -> tuple[str, str]:
    """``LAYER:LAST`` split at its last colon (layer names may hold colons themselves)."""
    head, _, tail = args.rpartition(":")
    if not head:
        raise FilterVizError(f"{kind} needs a layer and {needs}: {syntax}, not {f'{kind}:{args}' if args else kind!r}")
    return head, tail


def _layer(kind: str, args: str) -> str:
    if not args:
        raise FilterVizError(f"{kind} needs a layer: {kind}:LAYER")
    return args


def _only_term(objective: "Objective") -> Term:
    return objective.terms[0][1]


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1) if x.ndim > 1 else x


@register_term
@dataclass(frozen=True)
class Channel(Term):
    """Mean activation of one channel over all positions: the book's loss. On a token layer the
    positions are its patches; ``:cls`` reads the class token alone, ``:all`` every token, prefix tokens
    (class, register tokens) included (the term then reads the layer's part ``LAYER<cls>``, ``LAYER<all>``)."""

    layer: str
    channel: int
    syntax: ClassVar[tuple[str, ...]] = ("channel:LAYER:K", "channel:LAYER:K:cls", "channel:LAYER:K:all")

    @classmethod
    def parse(cls, kind: str, args: str) -> "Channel":
        head, tail = _layer_and_index(kind, args, cls.syntax[0])
        layer, _, index = head.rpartition(":")
        if tail in part_names() and layer and index.lstrip("-").isdigit():
            return cls(part_name(layer, tail), _int(index, "a channel index"))
        return cls(head, _int(tail, "a channel index"))

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        return _spatial_mean(data[rows.views, self.channel]).mean()

    def label(self) -> str:
        layer, part = split_part(self.layer)
        return f"channel({layer},{self.channel}{',' + part if part else ''})"


@register_term
@dataclass(frozen=True)
class Neuron(Term):
    """One channel's activation at one position (default: the center of the layer's map)."""

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None
    syntax: ClassVar[tuple[str, ...]] = ("neuron:LAYER:K[:Y:X]",)

    @classmethod
    def parse(cls, kind: str, args: str) -> "Neuron":
        parts = args.split(":")
        if len(parts) >= 4 and parts[-1].lstrip("-").isdigit() and parts[-2].lstrip("-").isdigit():
            return cls(":".join(parts[:-3]), _int(parts[-3], "a channel index"), _int(parts[-2], "y"),
                       _int(parts[-1], "x"))
        head, tail = _layer_and_index(kind, args, cls.syntax[0])
        return cls(head, _int(tail, "a channel index"))

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        picked = data[rows.views, self.channel]
        if picked.ndim == 1:  # a layer without spatial positions
            return picked.mean()
        height, width = picked.shape[-2:]
        y = height // 2 if self.y is None else self.y
        x = width // 2 if self.x is None else self.x
        if not (0 <= y < height and 0 <= x < width):
            raise FilterVizError(f"neuron position ({y}, {x}) is outside {self.layer}'s {height}x{width} map; "
                                 f"use 0-{height - 1}, 0-{width - 1}")
        return picked[:, y, x].mean()

    def label(self) -> str:
        where = "" if self.y is None and self.x is None else f",{self.y},{self.x}"
        return f"neuron({self.layer},{self.channel}{where})"


@register_term
@dataclass(frozen=True)
class LayerPower(Term):
    """Mean squared activation of a whole layer: DeepDream's objective."""

    layer: str
    syntax: ClassVar[tuple[str, ...]] = ("layer:LAYER",)

    @classmethod
    def parse(cls, kind: str, args: str) -> "LayerPower":
        return cls(_layer(kind, args))

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        return data[rows.views].square().mean()

    def label(self) -> str:
        return f"layer({self.layer})"


@register_term
@dataclass(frozen=True)
class ClassScore(Term):
    """A class's logit, or its log-probability (which also pushes the other classes down)."""

    index: int
    log_probability: bool = False
    layer: str = OUTPUT
    syntax: ClassVar[tuple[str, ...]] = ("class:K", "logprob:K")

    @classmethod
    def parse(cls, kind: str, args: str) -> "ClassScore":
        return cls(_int(args, "a class index"), log_probability=kind == "logprob")

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        import torch.nn.functional as F

        logits = data[rows.views].reshape(data[rows.views].shape[0], -1)
        if not 0 <= self.index < logits.shape[1]:
            raise FilterVizError(f"class {self.index} is out of range: the model has {logits.shape[1]} "
                                 f"classes, 0-{logits.shape[1] - 1}")
        values = F.log_softmax(logits, dim=1) if self.log_probability else logits
        return values[:, self.index].mean()

    def label(self) -> str:
        return f"{'logprob' if self.log_probability else 'class'}({self.index})"


@register_term
@dataclass(frozen=True)
class Direction(Term):
    """The activation vector's dot product with a unit direction in channel space, mean over positions.
    ``source`` names the file it was read from, for messages (it changes nothing else)."""

    layer: str
    vector: tuple[float, ...]
    source: str = field(default="", compare=False)
    syntax: ClassVar[tuple[str, ...]] = ("direction:LAYER:FILE.npy",)

    @classmethod
    def parse(cls, kind: str, args: str) -> "Direction":
        head, tail = _layer_and_index(kind, args, cls.syntax[0], needs="a file")
        return _only_term(direction(head, load_direction(tail).tolist(), tail))

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        import torch

        picked = data[rows.views]
        if picked.shape[1] != len(self.vector):
            raise FilterVizError(f"direction has {len(self.vector)} components but {self.layer} has "
                                 f"{picked.shape[1]} channels")
        unit = torch.tensor(self.vector, dtype=picked.dtype, device=picked.device)
        unit = unit / unit.norm()
        shape = (1, -1) + (1,) * (picked.ndim - 2)
        return (picked * unit.view(shape)).sum(dim=1).mean()

    def label(self) -> str:
        return f"direction({self.layer},{len(self.vector)}d)"


@register_term
@dataclass(frozen=True)
class TextSimilarity(Term):
    """The cosine similarity of the image's embedding (the model's output) with a text's, embedded by
    the model's own text tower (a CLIP model: ``open_clip:ViT-B-32/openai``)."""

    text: str
    vector: tuple[float, ...] = field(default=(), compare=False)
    layer: str = OUTPUT
    syntax: ClassVar[tuple[str, ...]] = ("text:TEXT",)

    @classmethod
    def parse(cls, kind: str, args: str) -> "TextSimilarity":
        text = args.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1].strip()
        if not text:
            raise FilterVizError('text needs a text: text:"a photo of a dog"')
        return cls(text)

    def bind(self, model: Any) -> "TextSimilarity":
        embed = getattr(model, "embed_text", None)
        if embed is None:
            raise FilterVizError(f"text:{self.text!r} needs a CLIP model, whose text tower embeds the text (e.g. "
                                 f"open_clip:ViT-B-32/openai); {getattr(model, 'name', 'this model')} has none")
        return TextSimilarity(self.text, tuple(float(v) for v in embed(self.text)))

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        if not self.vector:
            raise FilterVizError(f"text:{self.text!r} was not bound to a model; render it with a CLIP model")
        images = data[rows.views].reshape(data[rows.views].shape[0], -1)
        text = torch.tensor(self.vector, dtype=images.dtype, device=images.device)
        return F.cosine_similarity(images, text[None], dim=1).mean()

    def label(self) -> str:
        return f"text({self.text!r})"


def gram(x: torch.Tensor) -> torch.Tensor:
    """Channel Gram matrices of activations (N, C, H, W) -> (N, C*C), normalized by positions."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return (flat @ flat.transpose(1, 2) / flat.shape[2]).reshape(x.shape[0], -1)


@register_term
@dataclass(frozen=True)
class Diversity(Term):
    """Minus the mean cosine similarity of this image's Gram matrix to those of the other images with
    the same objective: rewards a batch of copies for differing in style."""

    layer: str
    syntax: ClassVar[tuple[str, ...]] = ("diversity:LAYER",)
    batchwise: ClassVar[bool] = True

    @classmethod
    def parse(cls, kind: str, args: str) -> "Diversity":
        return cls(_layer(kind, args))

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        others = [peer for peer in rows.peers if peer != rows.views]
        if not others:
            return data.new_zeros(())
        mine = gram(data[rows.views]).mean(dim=0)
        theirs = torch.stack([gram(data[peer]).mean(dim=0) for peer in others])
        return -F.cosine_similarity(mine[None], theirs, dim=1).mean()

    def label(self) -> str:
        return f"diversity({self.layer})"


class StartTerm(Term):
    """A term that compares the image with the render's start image (the photo it began from) at its
    ``layer``. ``compare(data, start, rows)`` gets that layer's data of the batch and of the start images,
    row for row: the start seen through the same random transforms as the image at each step, so that
    positions match. A render refuses such a term without a start image, before any work."""

    compares_start: ClassVar[bool] = True

    def compare(self, data: torch.Tensor, start: torch.Tensor, rows: Rows) -> torch.Tensor:
        raise NotImplementedError

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        raise FilterVizError(f"{self.label()} compares the image with the photo it starts from; give a start "
                             "image: --start PHOTO (start= in Python)")


PIXELS = "pixels"  # close:pixels: the image itself, not a layer


def _flat_views(data: torch.Tensor, rows: Rows) -> torch.Tensor:
    """One image's views at a layer, one row each: (views, everything else)."""
    import torch

    picked = data[rows.views]
    picked = picked.reshape(picked.shape[0], -1)
    # sums over a whole layer: in bf16 or fp16 they would keep two or three digits
    return picked.float() if picked.dtype in (torch.bfloat16, torch.float16) else picked


@register_term
@dataclass(frozen=True)
class Caricature(StartTerm):
    """Lucid's caricature: the image's activations at ``layer`` projected on the start photo's, in units of
    the photo's own (1 at the photo), times their cosine similarity to the power ``power`` (floored at
    0.1, as Lucid's): ``(a.p / p.p) * max(cos(a, p), 0.1) ** power`` over the whole layer (every channel
    and position), the mean over views. The projection grows as the image shows more of what the layer
    sees in the photo; the cosine keeps it to the photo's pattern. Lucid's ``dot_compare`` is
    ``(a.p) * (a.p / |p|) ** power``; this is its form with a true cosine (the PyTorch ports' fix) and
    in the photo's units, so that its weight means the same at any layer."""

    layer: str
    power: float = 2.0
    syntax: ClassVar[tuple[str, ...]] = ("caricature:LAYER[:POWER]",)

    @classmethod
    def parse(cls, kind: str, args: str) -> "Caricature":
        head, _, tail = args.rpartition(":")
        if head and re.fullmatch(_WEIGHT, tail):
            power = float(tail)
            if not math.isfinite(power):
                raise FilterVizError(f"caricature power {tail} is too large; use a number such as 2")
            return cls(head, power)
        return cls(_layer(kind, args))

    def compare(self, data: torch.Tensor, start: torch.Tensor, rows: Rows) -> torch.Tensor:
        image, photo = _flat_views(data, rows), _flat_views(start, rows)
        dot = (image * photo).sum(dim=1)
        own = photo.square().sum(dim=1)
        tiny = _tiny(own)
        cosine = dot / (image.norm(dim=1) * own.sqrt()).clamp_min(tiny)
        return (dot / own.clamp_min(tiny) * cosine.clamp_min(0.1) ** self.power).mean()

    def label(self) -> str:
        return f"caricature({self.layer}{'' if self.power == 2.0 else f',{self.power:g}'})"


@register_term
@dataclass(frozen=True)
class Close(StartTerm):
    """Closeness to the start photo, 0 at the photo and less elsewhere: minus the squared distance of
    the image's activations at ``layer`` from the photo's, in units of the photo's own squared norm
    (-|a - p|^2 / |p|^2, the mean over views: -1 where the activations are all zero); or, for
    ``close:pixels``, minus the mean squared pixel difference in 0..1 units, as ``l2`` measures. Add it to
    an objective to accentuate a unit while the image stays near the photo (feature accentuation)."""

    layer: str
    syntax: ClassVar[tuple[str, ...]] = ("close:LAYER", "close:pixels")

    @classmethod
    def parse(cls, kind: str, args: str) -> "Close":
        name = _layer(kind, args)
        return cls(IMAGE if name == PIXELS else name)

    def compare(self, data: torch.Tensor, start: torch.Tensor, rows: Rows) -> torch.Tensor:
        if self.layer == IMAGE:
            return -((data[rows.image] - start[rows.image].to(data.dtype)) / 255.0).square().mean()
        image, photo = _flat_views(data, rows), _flat_views(start, rows)
        own = photo.square().sum(dim=1)
        return -((image - photo).square().sum(dim=1) / own.clamp_min(_tiny(own))).mean()

    def label(self) -> str:
        return f"close({PIXELS if self.layer == IMAGE else self.layer})"


def _tiny(x: torch.Tensor) -> float:
    """The smallest positive normal number of ``x``'s dtype: a floor that keeps a ratio finite."""
    import torch

    return float(torch.finfo(x.dtype).tiny)


def _blur(x: torch.Tensor) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    kernel = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])


@register_term
@dataclass(frozen=True)
class Regularizer(Term):
    """A property of the image itself, in 0..1 units; subtract it to penalize: ``obj - 0.1 * tv()``.

    ``tv``: mean absolute difference of neighbouring pixels; ``l1``/``l2``: mean absolute/squared
    distance from mid-gray; ``blur``: mean squared difference from a 3x3 binomial blur of itself.
    """

    name: str
    layer: str = IMAGE
    syntax: ClassVar[tuple[str, ...]] = ("tv", "l1", "l2", "blur")
    NAMES: ClassVar[tuple[str, ...]] = syntax

    @classmethod
    def parse(cls, kind: str, args: str) -> "Regularizer":
        if args:
            raise FilterVizError(f"{kind} takes no layer or index: write {kind}, not {kind}:{args}")
        return cls(kind)

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        x = data[rows.image: rows.image + 1] / 255.0
        if self.name == "tv":
            return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
        if self.name == "l1":
            return (x - 0.5).abs().mean()
        if self.name == "l2":
            return (x - 0.5).square().mean()
        return (x - _blur(x)).square().mean()

    def label(self) -> str:
        return self.name


class Objective:
    """A weighted sum of terms, with Lucid's algebra: ``a + b``, ``a - b``, ``0.5 * a``, ``-a``, ``sum()``."""

    __slots__ = ("terms",)

    def __init__(self, terms: Iterable[tuple[float, Term]]) -> None:
        merged: dict[Term, float] = {}
        for weight, term in terms:
            merged[term] = merged.get(term, 0.0) + float(weight)
        self.terms: tuple[tuple[float, Term], ...] = tuple((w, t) for t, w in merged.items() if w != 0.0)

    @classmethod
    def of(cls, term: Term) -> "Objective":
        return cls([(1.0, term)])

    @classmethod
    def sum(cls, objectives: Iterable["Objective"]) -> "Objective":
        """The sum of many objectives in one pass (``sum()`` works too, but merges term by term)."""
        return cls(pair for objective in objectives for pair in objective.terms)

    def __add__(self, other: "Objective | int | float") -> "Objective":
        if isinstance(other, (int, float)) and other == 0:  # sum() starts from 0
            return self
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(self.terms + other.terms)

    __radd__ = __add__

    def __sub__(self, other: "Objective") -> "Objective":
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-1.0) * other

    def __mul__(self, factor: float) -> "Objective":
        if not isinstance(factor, (int, float)) or not math.isfinite(factor):
            return NotImplemented
        return Objective((weight * factor, term) for weight, term in self.terms)

    __rmul__ = __mul__

    def __neg__(self) -> "Objective":
        return -1.0 * self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Objective) and dict((t, w) for w, t in self.terms) == dict(
            (t, w) for w, t in other.terms)

    def __hash__(self) -> int:
        return hash(frozenset((t, w) for w, t in self.terms))

    def __repr__(self) -> str:
        return f"Objective({self.name!r})"

    def bind(self, model: Any) -> "Objective":
        """The objective with each term made ready for ``model`` (see ``Term.bind``)."""
        bound = [(weight, term.bind(model)) for weight, term in self.terms]
        return self if all(new is old for (_, new), (_, old) in zip(bound, self.terms)) else Objective(bound)

    @property
    def layers(self) -> set[str]:
        """The layers (and ``OUTPUT``/``IMAGE``) that its terms read."""
        return {term.layer for _, term in self.terms}

    @property
    def start_layers(self) -> set[str]:
        """The layers (or ``IMAGE``) at which its terms compare the image with the start photo."""
        return {term.layer for _, term in self.terms if term.compares_start}

    @property
    def batchwise(self) -> bool:
        """Whether its images read each other (a diversity term): they must share one batch."""
        return any(term.batchwise for _, term in self.terms)

    @property
    def name(self) -> str:
        """A readable name, for titles: ``channel(block4_conv1,17) - 0.3*channel(block4_conv1,5)``."""
        parts = []
        for weight, term in self.terms:
            sign = "-" if weight < 0 else "+"
            size = abs(weight)
            text = term.label() if size == 1 else f"{size:g}*{term.label()}"
            parts.append((sign, text))
        if not parts:
            return "0"
        first_sign, first = parts[0]
        return ("-" if first_sign == "-" else "") + first + "".join(f" {s} {t}" for s, t in parts[1:])

    @property
    def slug(self) -> str:
        """The name as a file-name-safe word: ``channel_block4_conv1_17-0.3x_channel_block4_conv1_5``."""
        text = self.name.replace(" - ", "-").replace(" + ", "+").replace("*", "x_")
        return re.sub(r"[^A-Za-z0-9.+\-]+", "_", text).strip("_")

    def score(self, data: Mapping[str, torch.Tensor], rows: Rows) -> torch.Tensor:
        """This objective for one image (``rows`` says where it is in the batch)."""
        total = None
        for weight, term in self.terms:
            if term.compares_start:
                start = data.get(start_layer(term.layer))
                if start is None:  # scored without the start's data: a caller's mistake, said in its words
                    raise FilterVizError(f"{term.label()} compares the image with the photo it starts from; give a "
                                         "start image: --start PHOTO (start= in Python)")
                value = weight * term.compare(data[term.layer], start, rows)
            else:
                value = weight * term.score(data[term.layer], rows)
            total = value if total is None else total + value
        return total if total is not None else next(iter(data.values())).new_zeros(())


def channel(layer: str, index: int, part: str = "") -> Objective:
    """Channel ``index`` of ``layer``, mean over its positions (a token layer's patches); ``part="cls"``
    reads a token layer's class token alone, ``part="all"`` every token, prefix tokens included."""
    if part and part not in part_names():
        raise FilterVizError(f"unknown part {part!r} of a layer; use one of {', '.join(part_names())}")
    return Objective.of(Channel(part_name(layer, part) if part else layer, int(index)))


def neuron(layer: str, index: int, y: int | None = None, x: int | None = None) -> Objective:
    return Objective.of(Neuron(layer, int(index), y, x))


def layer(name: str) -> Objective:
    return Objective.of(LayerPower(name))


def class_logit(index: int) -> Objective:
    return Objective.of(ClassScore(int(index)))


def class_logprob(index: int) -> Objective:
    return Objective.of(ClassScore(int(index), log_probability=True))


def direction(layer: str, vector: Sequence[float], source: str = "") -> Objective:
    """A direction in ``layer``'s channel space: a vector of finite numbers, not all zero (its length is
    checked against the layer's channels before a render)."""
    values = tuple(float(v) for v in vector)
    where = f"direction {source!r}" if source else "a direction"
    if not values:
        raise FilterVizError(f"{where} is empty; give a vector with one number per channel of {layer}")
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise FilterVizError(f"{where} holds {values[bad]} at index {bad}; give finite numbers")
    if not any(values):
        raise FilterVizError(f"{where} is all zeros, which points nowhere; give a vector with a nonzero number")
    return Objective.of(Direction(layer, values, source))


def load_direction(path: str) -> np.ndarray:
    """A direction vector from a ``.npy`` file (``np.save``): one row of real numbers (an array of one
    row or column is taken as that row). Anything else (no file, an ``.npz`` archive, a pickle, text,
    strings, objects, complex numbers, a 2-D array) is a one-line error saying what the file holds."""
    import numpy as np

    where = f"direction file {path!r}"
    advice = "give a .npy file of one vector, e.g. np.save(FILE, np.asarray(vector, dtype=np.float32))"
    if not path:
        raise InputFileError(f"direction needs a file: direction:LAYER:FILE.npy; {advice}")
    try:
        with open(path, "rb") as stream:
            head = stream.read(6)
    except FileNotFoundError:
        raise InputFileError(f"{where} does not exist; {advice}") from None
    except IsADirectoryError:
        raise InputFileError(f"{where} is a folder; {advice}") from None
    except OSError as exc:
        raise InputFileError(f"cannot read {where}: {exc.strerror or exc}") from None
    if head.startswith(b"PK"):
        raise InputFileError(f"{where} is an .npz archive (np.savez), not one array; save one of its arrays "
                             "with np.save(FILE, archive[NAME])")
    if head != b"\x93NUMPY":
        kind = "a Python pickle" if head[:1] == b"\x80" else "not a .npy file"
        raise InputFileError(f"{where} is {kind}; {advice}")
    try:
        array = np.load(path, allow_pickle=False)  # a pickle in it would run code: never loaded
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickled" in str(exc):
            raise InputFileError(f"{where} holds Python objects (dtype object), which filterviz does not load "
                                 f"because loading them runs code; {advice}") from None
        raise InputFileError(f"cannot read {where} ({first_line(exc)}); {advice}") from None
    except (OSError, EOFError) as exc:
        raise InputFileError(f"cannot read {where} ({first_line(exc)}); {advice}") from None
    if array.dtype.kind not in "biuf":
        what = {"U": "text", "S": "bytes", "c": "complex numbers", "O": "Python objects", "V": "records",
                "M": "dates", "m": "time spans"}.get(array.dtype.kind, f"{array.dtype} values")
        raise InputFileError(f"{where} holds {what} (dtype {array.dtype}), not real numbers; {advice}")
    if sum(length > 1 for length in array.shape) > 1:
        raise InputFileError(f"{where} holds a {'x'.join(map(str, array.shape))} array, not one vector; "
                             f"{advice} (one row of it: np.save(FILE, array[0]))")
    if array.ndim == 0:
        raise InputFileError(f"{where} holds a single number, not a vector; {advice}")
    return array.reshape(-1).astype(np.float64)


def diversity(layer: str) -> Objective:
    return Objective.of(Diversity(layer))


def caricature(layer: str, power: float = 2.0) -> Objective:
    """Lucid's caricature of the start photo at ``layer`` (see ``Caricature``); needs a render's start."""
    if not math.isfinite(power):
        raise FilterVizError(f"caricature power must be a finite number, not {power}")
    return Objective.of(Caricature(layer, float(power)))


def close(layer: str) -> Objective:
    """Closeness to the start photo at ``layer``, or in its pixels with ``"pixels"`` (see ``Close``)."""
    return Objective.of(Close(IMAGE if layer == PIXELS else layer))


def tv() -> Objective:
    return Objective.of(Regularizer("tv"))


def l1() -> Objective:
    return Objective.of(Regularizer("l1"))


def l2() -> Objective:
    return Objective.of(Regularizer("l2"))


def blur() -> Objective:
    return Objective.of(Regularizer("blur"))


def batch_scores(objectives: Sequence[Objective], data: Mapping[str, torch.Tensor], views: int) -> torch.Tensor:
    """Each image's objective, (N,): image ``i`` is scored on its own rows ``i*views ... i*views+views-1``."""
    import torch

    groups: dict[Objective, list[slice]] = {}
    for index, objective in enumerate(objectives):
        groups.setdefault(objective, []).append(slice(index * views, (index + 1) * views))
    scores = []
    for index, objective in enumerate(objectives):
        own = slice(index * views, (index + 1) * views)
        scores.append(objective.score(data, Rows(own, index, tuple(groups[objective]))))
    return torch.stack(scores)


_WEIGHT = r"(?:\d+(?:\.\d*)?(?:e-?\d+)?|\.\d+)"
_TERM = re.compile(r"^(?:(%s)\s*\*\s*)?([a-z][a-z0-9_]*)(?::(.*))?$" % _WEIGHT)


def _splitter(kinds: tuple[str, ...]) -> re.Pattern[str]:
    """Splits an objective at the + and - that start a term (a layer name may hold - itself)."""
    return re.compile(r"\s*([+-])\s*(?=(?:\d+(?:\.\d*)?(?:e-?\d+)?\s*\*\s*)?(?:%s)\b)"
                      % "|".join(sorted(kinds, key=len, reverse=True)))


def term_syntax() -> list[str]:
    """Every registered text form of a term, in registration order."""
    return [form for kind in dict.fromkeys(TERMS.parts().values()) for form in kind.syntax]


def objective_help() -> str:
    """The objective syntax, for the command line's help."""
    return (f"objectives: {', '.join(term_syntax())}; combine with + and - and weights, e.g. "
            "\"channel:block4_conv1:17 - 0.3*channel:block4_conv1:5\"")


def _parse_term(text: str) -> Objective:
    match = _TERM.match(text.strip())
    kinds = TERMS.parts()
    if not match or match.group(2) not in kinds:
        forms = term_syntax()
        raise FilterVizError(
            f"cannot read objective term {text.strip()!r}; use {', '.join(forms[:-1])} or {forms[-1]}, "
            "joined by + and - with optional weights (0.3*...)"
        )
    weight = float(match.group(1)) if match.group(1) else 1.0
    if not math.isfinite(weight):  # 1e999 reads as infinity, which no score can be multiplied by
        raise FilterVizError(f"weight {match.group(1)} of objective term {text.strip()!r} is too large; use a finite "
                             "number such as 0.3")
    kind = match.group(2)
    term = kinds[kind].parse(kind, match.group(3) or "")
    if not isinstance(term, Term):
        raise FilterVizError(f"objective term kind {kind!r} ({kinds[kind].__qualname__}.parse) gave "
                             f"{type(term).__name__}, not a Term")
    return weight * Objective.of(term)


def parse_objective(text: str) -> Objective:
    """Read an objective from text: ``"channel:block4_conv1:17 - 0.3*channel:block4_conv1:5"``."""
    body = text.strip()
    split = _splitter(tuple(TERMS.parts()))
    pieces = split.split(body if body[:1] in "+-" and body else " + " + body)  # ["", sign, term, ...]
    if pieces[0].strip() or len(pieces) < 3:
        _parse_term(pieces[0].strip().lstrip("+").strip() or text)  # raises, listing what is accepted
        raise FilterVizError(f"cannot read objective {text!r}; e.g. channel:block4_conv1:17 or class:207")
    total = Objective.sum((-1.0 if sign == "-" else 1.0) * _parse_term(term)
                          for sign, term in zip(pieces[1::2], pieces[2::2]))
    if not total.terms:  # "0*class:1", "class:1 - class:1": every weight is 0, so no image is better than another
        raise FilterVizError(f"objective {text.strip()!r} has nothing to maximize: its weights add up to 0 for every "
                             "term; e.g. channel:block4_conv1:17 or class:207")
    if not all(math.isfinite(weight) for weight, _ in total.terms):  # 1e308*tv + 1e308*tv
        raise FilterVizError(f"objective {text.strip()!r} adds up to an infinite weight; use smaller weights")
    return total
