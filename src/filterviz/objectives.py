"""Objectives: what the ascent maximizes, one objective per image of a batch.

An ``Objective`` is a weighted sum of terms, kept flat, so ``a + b``, ``a - b``, ``0.5 * a`` and
``sum(hundreds of terms)`` never nest or recurse. Terms read a layer's activations (channel, neuron,
layer, direction, diversity), the model's output (class logit or log-probability), or the image itself
(regularizers: total variation, L1, L2, blur). Each image's score depends on that image alone, except
for diversity, which compares it with the other images of the batch that share its objective.

>>> objective = channel("block4_conv1", 17) - 0.3 * channel("block4_conv1", 5)
>>> objective.name
'channel(block4_conv1,17) - 0.3*channel(block4_conv1,5)'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FilterVizError, InputFileError, first_line
from .layers import OUTPUT

IMAGE = "<image>"  # the image being optimized (RGB 0..255), as a layer name for regularizers


@dataclass(frozen=True)
class Rows:
    """Where one image's data sit in a batch: its rows in layer activations (one per view of it), its
    row in the image batch, and the activation rows of the images that share its objective."""

    views: slice
    image: int
    peers: tuple[slice, ...] = ()


class Term:
    """One scored quantity. ``layer`` is what it reads; ``score`` returns a scalar for one image."""

    layer: str
    kind: ClassVar[str]
    # Whether an image's score reads the other images of its batch (diversity): such images must be
    # optimized in one batch, whatever the batch size.
    batchwise: ClassVar[bool] = False

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        raise NotImplementedError

    def label(self) -> str:
        raise NotImplementedError


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1) if x.ndim > 1 else x


@dataclass(frozen=True)
class Channel(Term):
    """Mean activation of one channel over all positions: the book's loss."""

    layer: str
    channel: int
    kind: ClassVar[str] = "channel"

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        return _spatial_mean(data[rows.views, self.channel]).mean()

    def label(self) -> str:
        return f"channel({self.layer},{self.channel})"


@dataclass(frozen=True)
class Neuron(Term):
    """One channel's activation at one position (default: the center of the layer's map)."""

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None
    kind: ClassVar[str] = "neuron"

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


@dataclass(frozen=True)
class LayerPower(Term):
    """Mean squared activation of a whole layer: DeepDream's objective."""

    layer: str
    kind: ClassVar[str] = "layer"

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        return data[rows.views].square().mean()

    def label(self) -> str:
        return f"layer({self.layer})"


@dataclass(frozen=True)
class ClassScore(Term):
    """A class's logit, or its log-probability (which also pushes the other classes down)."""

    index: int
    log_probability: bool = False
    layer: str = OUTPUT
    kind: ClassVar[str] = "class"

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        logits = data[rows.views].reshape(data[rows.views].shape[0], -1)
        if not 0 <= self.index < logits.shape[1]:
            raise FilterVizError(f"class {self.index} is out of range: the model has {logits.shape[1]} "
                                 f"classes, 0-{logits.shape[1] - 1}")
        values = F.log_softmax(logits, dim=1) if self.log_probability else logits
        return values[:, self.index].mean()

    def label(self) -> str:
        return f"{'logprob' if self.log_probability else 'class'}({self.index})"


@dataclass(frozen=True)
class Direction(Term):
    """The activation vector's dot product with a unit direction in channel space, mean over positions.
    ``source`` names the file it was read from, for messages (it changes nothing else)."""

    layer: str
    vector: tuple[float, ...]
    source: str = field(default="", compare=False)
    kind: ClassVar[str] = "direction"

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
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


def gram(x: torch.Tensor) -> torch.Tensor:
    """Channel Gram matrices of activations (N, C, H, W) -> (N, C*C), normalized by positions."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return (flat @ flat.transpose(1, 2) / flat.shape[2]).reshape(x.shape[0], -1)


@dataclass(frozen=True)
class Diversity(Term):
    """Minus the mean cosine similarity of this image's Gram matrix to those of the other images with
    the same objective: rewards a batch of copies for differing in style."""

    layer: str
    kind: ClassVar[str] = "diversity"
    batchwise: ClassVar[bool] = True

    def score(self, data: torch.Tensor, rows: Rows) -> torch.Tensor:
        others = [peer for peer in rows.peers if peer != rows.views]
        if not others:
            return data.new_zeros(())
        mine = gram(data[rows.views]).mean(dim=0)
        theirs = torch.stack([gram(data[peer]).mean(dim=0) for peer in others])
        return -F.cosine_similarity(mine[None], theirs, dim=1).mean()

    def label(self) -> str:
        return f"diversity({self.layer})"


def _blur(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])


@dataclass(frozen=True)
class Regularizer(Term):
    """A property of the image itself, in 0..1 units; subtract it to penalize: ``obj - 0.1 * tv()``.

    ``tv``: mean absolute difference of neighbouring pixels; ``l1``/``l2``: mean absolute/squared
    distance from mid-gray; ``blur``: mean squared difference from a 3x3 binomial blur of itself.
    """

    name: str
    layer: str = IMAGE
    kind: ClassVar[str] = "regularizer"
    NAMES: ClassVar[tuple[str, ...]] = ("tv", "l1", "l2", "blur")

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

    @property
    def layers(self) -> set[str]:
        """The layers (and ``OUTPUT``/``IMAGE``) that its terms read."""
        return {term.layer for _, term in self.terms}

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
            value = weight * term.score(data[term.layer], rows)
            total = value if total is None else total + value
        return total if total is not None else next(iter(data.values())).new_zeros(())


def channel(layer: str, index: int) -> Objective:
    return Objective.of(Channel(layer, int(index)))


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
    groups: dict[Objective, list[slice]] = {}
    for index, objective in enumerate(objectives):
        groups.setdefault(objective, []).append(slice(index * views, (index + 1) * views))
    scores = []
    for index, objective in enumerate(objectives):
        own = slice(index * views, (index + 1) * views)
        scores.append(objective.score(data, Rows(own, index, tuple(groups[objective]))))
    return torch.stack(scores)


_KINDS = ("channel", "neuron", "layer", "class", "logprob", "direction", "diversity", "tv", "l1", "l2", "blur")
_SPLIT = re.compile(r"\s*([+-])\s*(?=(?:\d+(?:\.\d*)?(?:e-?\d+)?\s*\*\s*)?(?:%s)\b)" % "|".join(_KINDS))
_TERM = re.compile(r"^(?:(\d+(?:\.\d*)?(?:e-?\d+)?|\.\d+)\s*\*\s*)?([a-z0-9]+)(?::(.*))?$")


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FilterVizError(f"{what} must be an integer, not {text!r}") from None


def _parse_term(text: str) -> Objective:
    match = _TERM.match(text.strip())
    if not match or match.group(2) not in _KINDS:
        raise FilterVizError(
            f"cannot read objective term {text.strip()!r}; use channel:LAYER:K, neuron:LAYER:K[:Y:X], "
            "layer:LAYER, class:K, logprob:K, direction:LAYER:FILE.npy, diversity:LAYER, tv, l1, l2 or blur, "
            "joined by + and - with optional weights (0.3*...)"
        )
    weight = float(match.group(1)) if match.group(1) else 1.0
    if not math.isfinite(weight):  # 1e999 reads as infinity, which no score can be multiplied by
        raise FilterVizError(f"weight {match.group(1)} of objective term {text.strip()!r} is too large; use a finite "
                             "number such as 0.3")
    kind, rest = match.group(2), match.group(3) or ""
    head, _, tail = rest.rpartition(":")  # layer names may hold ':' themselves; indices come last
    if kind == "channel":
        if not head:
            raise FilterVizError(f"channel needs a layer and an index: channel:LAYER:K, not {text.strip()!r}")
        return weight * channel(head, _int(tail, "a channel index"))
    if kind == "neuron":
        parts = rest.split(":")
        if len(parts) >= 4 and parts[-1].lstrip("-").isdigit() and parts[-2].lstrip("-").isdigit():
            return weight * neuron(":".join(parts[:-3]), _int(parts[-3], "a channel index"),
                                   _int(parts[-2], "y"), _int(parts[-1], "x"))
        if not head:
            raise FilterVizError(f"neuron needs a layer and an index: neuron:LAYER:K[:Y:X], not {text.strip()!r}")
        return weight * neuron(head, _int(tail, "a channel index"))
    if kind in ("class", "logprob"):
        index = _int(rest, "a class index")
        return weight * (class_logit(index) if kind == "class" else class_logprob(index))
    if kind == "direction":
        if not head:
            raise FilterVizError(f"direction needs a layer and a file: direction:LAYER:FILE.npy, not {text.strip()!r}")
        return weight * direction(head, load_direction(tail).tolist(), tail)
    if kind in ("layer", "diversity"):
        if not rest:
            raise FilterVizError(f"{kind} needs a layer: {kind}:LAYER")
        return weight * (layer(rest) if kind == "layer" else diversity(rest))
    return weight * Objective.of(Regularizer(kind))


def parse_objective(text: str) -> Objective:
    """Read an objective from text: ``"channel:block4_conv1:17 - 0.3*channel:block4_conv1:5"``."""
    body = text.strip()
    pieces = _SPLIT.split(body if body[:1] in "+-" and body else " + " + body)  # ["", sign, term, ...]
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
