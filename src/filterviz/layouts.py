"""Layouts: how a layer's output is laid out, and the channels-first form every other part reads.

A layer's output is one of a few layouts, each a registered part (``LAYOUTS``: one class plus one
registration; entry point group ``filterviz.layouts``):

- ``nchw``: a channel map (N, C, H, W), as torch convolutions make;
- ``nhwc``: a channels-last map (N, H, W, C): Swin, the MLP inside a ConvNeXt block, Keras;
- ``tokens``: a token sequence (N, L, C): prefix tokens (class, distillation, register tokens), then
  the patches, row by row on their grid;
- ``vector``: (N, C).

Each has a canonical, channels-first form, made with a differentiable permute and reshape: (N, C, H, W)
for maps and for patch tokens (prefix tokens left out, patches on their grid), (N, C) for vectors. A
capture gives every layer in that form, so objectives, the liveness probe and the atlas read channel
``k`` on axis 1 whatever the layout. Prefix tokens stay reachable as *parts* of a tokens layer:
``LAYER<cls>`` (the class token, (N, C)) and ``LAYER<all>`` (every token, prefix tokens first, (N, C, L)).

Which layout an output has is found from the graph, never guessed from its sizes: ``AxisTrace`` (in
``axes``: it needs torch, which this module does not import) runs the model once and follows what each
axis of each tensor means, from the input (whose axes the input spec declares) through every operation. A convolution makes (N, C, H, W); a linear layer (or a matmul
with a weight) makes the last axis channels, and a layer norm acts on it; permute, transpose, reshape
and flatten move, split and merge axes (flattening H and W gives patch tokens on that grid; splitting
them back gives H and W); tokens concatenated before the patches are prefix tokens, and slicing them off
drops them; reductions remove axes; elementwise operations keep them. What frameworks declare is used
too (``declared_tokens``): timm's ``num_prefix_tokens``, ``cls_token`` and ``patch_embed.grid_size``,
torchvision's VisionTransformer ``class_token``, ``image_size`` and ``patch_size``; a Keras layer's data
format and the channel axes of an ONNX file's graph are declared by their sources. An output whose
axes cannot be told apart is ``Ambiguous``: a render of it stops with one line that says so and how to
say it, ``--layout LAYER=KIND`` (``layouts={LAYER: KIND}`` in Python).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Union

from .errors import FilterVizError, LayoutError
from .plugins import Registry

if TYPE_CHECKING:  # this module imports no torch: the command line parses --layout with it
    import torch

# -- what an axis means ----------------------------------------------------------------------------
BATCH, CHANNELS, HEIGHT, WIDTH = "N", "C", "H", "W"


@dataclass(frozen=True)
class TokenAxis:
    """A token axis: ``prefix`` tokens, then the patches of a ``grid`` (rows, columns), row by row."""

    prefix: int
    grid: tuple[int, int]


Role = Union[str, TokenAxis, None]  # None: not known
Roles = tuple[Role, ...]


@dataclass(frozen=True)
class TokenDeclaration:
    """What a model declares of its token sequence: how many prefix tokens, whether the first is a class
    token, and the patch grid at its own input size (None where it does not say)."""

    prefix: int
    class_token: bool
    grid: tuple[int, int] | None


# -- layouts ---------------------------------------------------------------------------------------
class Layout:
    """How a layer's output is laid out. A subclass has a ``name`` (what ``--layout LAYER=NAME`` says),
    a ``syntax``, the number of axes it reads (``ndim``), the parts it offers beside its canonical form,
    and: ``from_roles`` (the layout that an output whose axes mean ``roles`` has, or None),
    ``from_text``, ``shape`` and ``canonical`` (the channels-first form), ``describe``."""

    name: ClassVar[str] = ""
    syntax: ClassVar[str] = ""
    ndim: ClassVar[int] = 0
    parts: ClassVar[tuple[str, ...]] = ()
    known: ClassVar[bool] = True

    @classmethod
    def from_roles(cls, roles: Roles, shape: Sequence[int], declared: TokenDeclaration | None) -> "Layout | None":
        return None

    @classmethod
    def from_text(cls, args: str) -> "Layout":
        if args:
            raise FilterVizError(f"layout {cls.name} takes no arguments: write {cls.syntax or cls.name}")
        return cls()

    def text(self) -> str:
        """What ``--layout LAYER=...`` would say for this layout."""
        return self.name

    def fits(self, shape: Sequence[int]) -> str:
        """Why an output of ``shape`` cannot be read this way ("" when it can)."""
        if len(shape) != self.ndim:
            return f"{self.name} reads {self.ndim}-D outputs, and this one is {len(shape)}-D ({_dims(shape)})"
        return ""

    def shape(self, shape: Sequence[int], hw: tuple[int, int]) -> tuple[int, ...]:
        """The canonical shape of an output of ``shape`` for a model input of ``hw`` (height, width)."""
        return tuple(shape)

    def canonical(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The output in channels-first form: (N, C, H, W) or (N, C)."""
        return x

    def part(self, x: torch.Tensor, part: str, hw: tuple[int, int]) -> torch.Tensor:
        raise FilterVizError(f"a layer laid out as {self.name} has no part {part!r}")

    def part_error(self, part: str) -> str:
        """Why this layout has no ``part`` ("" when it has)."""
        return "" if part in self.parts else f"it is laid out as {self.name}, which has no {part} part"

    def describe(self, shape: Sequence[int], canonical: Sequence[int]) -> str:
        """For people: the layout, its positions and its channels (``nchw 56x56, 96``)."""
        if len(canonical) == 4:
            return f"{self.name} {canonical[2]}x{canonical[3]}, {canonical[1]}"
        return f"{self.name} {canonical[1]}"


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(size) for size in shape)


def _map_roles(roles: Roles, shape: Sequence[int], pattern: tuple[str, ...]) -> bool:
    """Whether axes ``roles`` read as ``pattern``: each axis has the pattern's role, or is unknown and is
    the channel axis (every other axis being known, it can be nothing else) or a spatial axis of size 1."""
    if len(roles) != len(pattern):
        return False
    for role, wanted, size in zip(roles, pattern, shape):
        if role == wanted:
            continue
        if role is None and (wanted == CHANNELS or (wanted in (HEIGHT, WIDTH) and size == 1)):
            continue
        return False
    return True


LAYOUTS: Registry[type[Layout]] = Registry(
    "layout", "filterviz.layouts",
    lambda part: isinstance(part, type) and issubclass(part, Layout) and bool(part.name) and part.known,
    "a Layout subclass with a name")


def register_layout(kind: type[Layout]) -> type[Layout]:
    """Add a layout (a ``Layout`` subclass with a ``name``); usable as a decorator."""
    return LAYOUTS.register(kind)


@register_layout
@dataclass(frozen=True)
class NCHW(Layout):
    """A channel map (N, C, H, W): already channels-first."""

    name: ClassVar[str] = "nchw"
    syntax: ClassVar[str] = "nchw"
    ndim: ClassVar[int] = 4

    @classmethod
    def from_roles(cls, roles: Roles, shape: Sequence[int], declared: TokenDeclaration | None) -> "Layout | None":
        return cls() if _map_roles(roles, shape, (BATCH, CHANNELS, HEIGHT, WIDTH)) else None


@register_layout
@dataclass(frozen=True)
class NHWC(Layout):
    """A channels-last map (N, H, W, C)."""

    name: ClassVar[str] = "nhwc"
    syntax: ClassVar[str] = "nhwc"
    ndim: ClassVar[int] = 4

    @classmethod
    def from_roles(cls, roles: Roles, shape: Sequence[int], declared: TokenDeclaration | None) -> "Layout | None":
        return cls() if _map_roles(roles, shape, (BATCH, HEIGHT, WIDTH, CHANNELS)) else None

    def shape(self, shape: Sequence[int], hw: tuple[int, int]) -> tuple[int, ...]:
        return (shape[0], shape[3], shape[1], shape[2])

    def canonical(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


@register_layout
@dataclass(frozen=True)
class Tokens(Layout):
    """A token sequence (N, L, C): ``prefix`` tokens (the first a class token when ``class_token``), then
    the patches row by row on their grid (``grid`` at the size the layout was found at; at another size
    the grid is the one whose shape is closest to the input's)."""

    prefix: int = 0
    class_token: bool = False
    grid: tuple[int, int] | None = None
    name: ClassVar[str] = "tokens"
    syntax: ClassVar[str] = "tokens[:PREFIX]"
    ndim: ClassVar[int] = 3
    parts: ClassVar[tuple[str, ...]] = ("cls", "all")

    @classmethod
    def from_roles(cls, roles: Roles, shape: Sequence[int], declared: TokenDeclaration | None) -> "Layout | None":
        if len(roles) != 3 or roles[0] != BATCH or roles[2] not in (CHANNELS, None):
            return None
        axis = roles[1]
        if isinstance(axis, TokenAxis):
            class_token = bool(declared and declared.class_token and declared.prefix == axis.prefix > 0)
            return cls(axis.prefix, class_token, axis.grid)
        if axis is None and declared is not None and declared.grid is not None and roles[2] == CHANNELS:
            # An axis lost on the way, of exactly the length of the sequence the model declares.
            cells = declared.grid[0] * declared.grid[1]
            if shape[1] == declared.prefix + cells:
                return cls(declared.prefix, declared.class_token, declared.grid)
        return None

    @classmethod
    def from_text(cls, args: str) -> "Layout":
        if not args:
            return cls()
        if not args.isdigit():
            raise FilterVizError(f"tokens takes the number of prefix tokens (class, register tokens) before the "
                                 f"patches: tokens:1, not tokens:{args}")
        prefix = int(args)
        return cls(prefix, class_token=prefix > 0)  # as in ViT and DeiT: the class token comes first

    def text(self) -> str:
        return f"tokens:{self.prefix}" if self.prefix else "tokens"

    def fits(self, shape: Sequence[int]) -> str:
        wrong = super().fits(shape)
        if wrong:
            return wrong
        if shape[1] <= self.prefix:
            return f"it has {shape[1]} tokens, not more than its {self.prefix} prefix tokens"
        return ""

    def grid_for(self, patches: int, hw: tuple[int, int]) -> tuple[int, int]:
        """The grid of ``patches`` patch tokens for a model input of ``hw``: the one found, when it has that
        many cells, else the one whose shape is closest to the input's (scaled by the patches' own shape)."""
        if self.grid is not None and self.grid[0] * self.grid[1] == patches:
            return self.grid
        ratio = hw[0] / hw[1]
        pairs = [(rows, patches // rows) for rows in range(1, patches + 1) if patches % rows == 0]
        distance = [abs(math.log(rows / columns / ratio)) for rows, columns in pairs]
        best = min(distance, default=None)
        if best is None or distance.count(best) > 1:
            raise FilterVizError(f"cannot tell the grid of {patches} patch tokens for a {hw[0]}x{hw[1]} input; "
                                 "use a square input size, or a model input that the patches tile evenly")
        return pairs[distance.index(best)]

    def shape(self, shape: Sequence[int], hw: tuple[int, int]) -> tuple[int, ...]:
        rows, columns = self.grid_for(shape[1] - self.prefix, hw)
        return (shape[0], shape[2], rows, columns)

    def canonical(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        patches = x[:, self.prefix:]
        rows, columns = self.grid_for(patches.shape[1], hw)
        return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], rows, columns)

    def part_error(self, part: str) -> str:
        if part == "cls" and not self.class_token:
            return ("it has no class token" if not self.prefix else
                    f"its {self.prefix} prefix tokens are not declared to start with a class token")
        return super().part_error(part)

    def part(self, x: torch.Tensor, part: str, hw: tuple[int, int]) -> torch.Tensor:
        if part == "cls":
            return x[:, 0]
        if part == "all":
            return x.transpose(1, 2)
        return super().part(x, part, hw)

    def describe(self, shape: Sequence[int], canonical: Sequence[int]) -> str:
        before = f"{self.prefix}+" if self.prefix else ""
        return f"tokens {before}{canonical[2]}x{canonical[3]}, {canonical[1]}"


@register_layout
@dataclass(frozen=True)
class Vector(Layout):
    """A vector per image (N, C)."""

    name: ClassVar[str] = "vector"
    syntax: ClassVar[str] = "vector"
    ndim: ClassVar[int] = 2

    @classmethod
    def from_roles(cls, roles: Roles, shape: Sequence[int], declared: TokenDeclaration | None) -> "Layout | None":
        return cls() if len(roles) == 2 and roles[0] == BATCH else None


@dataclass(frozen=True)
class Ambiguous(Layout):
    """An output whose axes could not be told apart, and why; never a layout to read it by."""

    reason: str = ""
    known: ClassVar[bool] = False

    def fits(self, shape: Sequence[int]) -> str:
        return self.reason

    def describe(self, shape: Sequence[int], canonical: Sequence[int]) -> str:
        return f"? {_dims(shape)}"


def layout_syntax() -> list[str]:
    """Every registered layout's syntax, in registration order."""
    return [kind.syntax or kind.name for kind in LAYOUTS.parts().values()]


def parse_layout(text: str) -> Layout:
    """A layout from its text: ``nchw``, ``nhwc``, ``tokens``, ``tokens:1``, ``vector``."""
    name, _, args = text.strip().partition(":")
    kinds = LAYOUTS.parts()
    if name not in kinds:
        raise FilterVizError(f"unknown layout {text.strip()!r}; use one of {', '.join(layout_syntax())}")
    return kinds[name].from_text(args.strip())


def as_layout(value: Layout | str) -> Layout:
    """A layout given as a Layout or as text."""
    if isinstance(value, Layout) and value.known:
        return value
    if isinstance(value, str):
        return parse_layout(value)
    raise FilterVizError(f"a layout must be a name such as nhwc or tokens:1, or a filterviz Layout, not "
                         f"{type(value).__name__}")


def classify(roles: Roles | None, shape: Sequence[int], declared: TokenDeclaration | None) -> Layout:
    """The registered layout that an output whose axes mean ``roles`` has, or ``Ambiguous`` with why."""
    if roles is None:
        return Ambiguous("filterviz could not follow its axes through the operations that made it")
    for kind in LAYOUTS.parts().values():
        found = kind.from_roles(roles, shape, declared)
        if found is not None:
            return found
    if BATCH not in roles:
        return Ambiguous("no axis of it is known to be the batch (its images may be mixed with windows or heads)")
    known = ", ".join(f"axis {axis} is {_role_text(role)}" for axis, role in enumerate(roles) if role is not None)
    return Ambiguous(f"only this is known: {known}")


def _role_text(role: Role) -> str:
    if isinstance(role, TokenAxis):
        return f"tokens ({role.prefix}+{role.grid[0]}x{role.grid[1]})"
    return {BATCH: "the batch", CHANNELS: "channels", HEIGHT: "rows", WIDTH: "columns"}[role]  # type: ignore[index]


# -- parts: prefix tokens as layers of their own ---------------------------------------------------
OUTPUT = "<output>"  # the model's own output (logits), as a layer name for objectives
_PART = re.compile(r"\A(.+)<([a-z][a-z0-9_]*)>\Z", re.S)


def part_names() -> tuple[str, ...]:
    """The parts registered layouts offer (``cls``, ``all``)."""
    return tuple(dict.fromkeys(part for kind in LAYOUTS.parts().values() for part in kind.parts))


def part_name(layer: str, part: str) -> str:
    """The name under which a capture gives ``part`` of ``layer``: ``blocks.6<cls>``."""
    return f"{layer}<{part}>"


def split_part(name: str) -> tuple[str, str]:
    """``"blocks.6<cls>"`` -> ``("blocks.6", "cls")``; a name without a part -> ``(name, "")``."""
    match = _PART.match(name)
    if match and match.group(2) in part_names():
        return match.group(1), match.group(2)
    return name, ""


# -- declarations ----------------------------------------------------------------------------------
def declared_tokens(root: object) -> TokenDeclaration | None:
    """The token sequence a model declares: timm's vision transformers (``num_prefix_tokens``,
    ``cls_token``, ``patch_embed.grid_size``) and torchvision's VisionTransformer (a class token, and a
    grid of ``image_size // patch_size``); None for any other model."""
    from torch import nn

    if not isinstance(root, nn.Module):
        return None
    try:
        from torchvision.models import VisionTransformer
    except ImportError:  # pragma: no cover - torchvision comes with filterviz
        VisionTransformer = None  # type: ignore[assignment,misc]
    for module in root.modules():
        prefix = getattr(module, "num_prefix_tokens", None)
        patch_embed = getattr(module, "patch_embed", None)
        if isinstance(prefix, int) and not isinstance(prefix, bool) and isinstance(patch_embed, nn.Module):
            grid = getattr(patch_embed, "grid_size", None)
            return TokenDeclaration(prefix, getattr(module, "cls_token", None) is not None,
                                    tuple(int(g) for g in grid) if grid is not None else None)  # type: ignore[arg-type]
        if VisionTransformer is not None and isinstance(module, VisionTransformer):
            side = module.image_size // module.patch_size
            return TokenDeclaration(1, True, (side, side))
    return None


def trace_input_roles(layout: str) -> Roles:
    """The meanings of the axes of a model's input, as its input spec declares them."""
    return (BATCH, HEIGHT, WIDTH, CHANNELS) if layout == "NHWC" else (BATCH, CHANNELS, HEIGHT, WIDTH)


def layout_error(layer: str, model: str, shape: Sequence[int], why: str) -> LayoutError:
    """The one line that says a layer's output cannot be read as it is, and how to say how to read it."""
    example = "nchw" if len(shape) == 4 else "tokens:1" if len(shape) == 3 else "vector"
    return LayoutError(f"layer {layer} of {model} gives an output of shape {_dims(shape)} that filterviz cannot "
                       f"read ({why}); say how to read it with --layout {layer}=KIND, KIND one of "
                       f"{', '.join(layout_syntax())} (in Python: layouts={{{layer!r}: {example!r}}})")


