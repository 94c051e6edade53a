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

Which layout an output has is found from the graph, never guessed from its sizes: ``AxisTrace`` runs
the model once and follows what each axis of each tensor means, from the input (whose axes the input
spec declares) through every operation. A convolution makes (N, C, H, W); a linear layer (or a matmul
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from .errors import FilterVizError, LayoutError
from .plugins import Registry

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


# -- following axes through a forward pass ---------------------------------------------------------
def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [item for item in value if isinstance(item, torch.Tensor)]
    return []


def _arg(args: Sequence[object], kwargs: Mapping[str, object], index: int, name: str, default: object = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _dims_of(value: object, ndim: int) -> list[int] | None:
    if isinstance(value, int):
        return [value % ndim]
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return [v % ndim for v in value]
    return None


def _merge(candidates: Sequence[Roles]) -> Roles | None:
    """Roles that several same-shaped tensors agree on, axis by axis (an axis known in one of them and
    unknown in the others takes the known meaning; axes they disagree on are unknown)."""
    if not candidates:
        return None
    merged = []
    for axis in range(len(candidates[0])):
        known = {roles[axis] for roles in candidates if roles[axis] is not None}
        merged.append(known.pop() if len(known) == 1 else None)
    return tuple(merged)


def _group(roles: list[Role], sizes: list[int], into: list[int]) -> list[Role]:
    """The meanings of the axes ``into`` that a reshape makes of axes ``roles`` (of ``sizes``)."""
    if len(roles) == 1 and len(into) == 1:
        return [roles[0]]
    if roles == [HEIGHT, WIDTH] and len(into) == 1:  # flattened rows and columns: patch tokens
        return [TokenAxis(0, (sizes[0], sizes[1]))]
    if len(roles) == 1 and isinstance(roles[0], TokenAxis) and roles[0].prefix == 0 and tuple(into) == roles[0].grid:
        return [HEIGHT, WIDTH]
    if len(roles) == 1 and roles[0] in (HEIGHT, WIDTH):  # rows split into (coarser rows, offsets)
        return [roles[0]] + [None] * (len(into) - 1)
    if len(into) == 1 and roles[0] in (HEIGHT, WIDTH) and not any(roles[1:]):  # and merged back
        return [roles[0]]
    return [None] * len(into)


def regroup(roles: Roles, before: Sequence[int], after: Sequence[int]) -> Roles | None:
    """The meanings of the axes of a reshape from ``before`` to ``after`` (row-major, as torch reshapes):
    axes are matched in groups of equal products; axes of size 1 keep their meaning where both sides
    have one, and are dropped or added (unknown) where only one side has."""
    out: list[Role] = [None] * len(after)
    i = j = 0
    while i < len(before) or j < len(after):
        if i < len(before) and j < len(after) and before[i] == 1 and after[j] == 1:
            out[j] = roles[i]
            i, j = i + 1, j + 1
            continue
        if i < len(before) and before[i] == 1:
            i += 1
            continue
        if j < len(after) and after[j] == 1:
            j += 1
            continue
        if i >= len(before) or j >= len(after):
            return None
        group_in, group_out = [i], [j]
        product_in, product_out = before[i], after[j]
        i, j = i + 1, j + 1
        while product_in != product_out:
            if product_in < product_out and i < len(before):
                product_in *= before[i]
                group_in.append(i)
                i += 1
            elif product_out < product_in and j < len(after):
                product_out *= after[j]
                group_out.append(j)
                j += 1
            else:
                return None
        sources = [k for k in group_in if before[k] != 1]
        targets = [k for k in group_out if after[k] != 1]
        for k, role in zip(targets, _group([roles[k] for k in sources], [before[k] for k in sources],
                                           [after[k] for k in targets])):
            out[k] = role
    return tuple(out)


def _sliced(role: Role, size: int, start: object, stop: object, step: object) -> Role:
    """The meaning of an axis cut to ``start:stop:step``."""
    start = 0 if start is None else start
    stop = size if stop is None or (isinstance(stop, int) and stop >= size) else stop
    step = 1 if step is None else step
    if not all(isinstance(v, int) for v in (start, stop, step)):
        return None
    start, stop = start % size if start < 0 else start, stop % size if stop < 0 else stop  # type: ignore[operator]
    if (start, stop, step) == (0, size, 1):
        return role
    if isinstance(role, TokenAxis):  # only cutting off exactly the prefix tokens leaves the patches
        return TokenAxis(0, role.grid) if (start, stop, step) == (role.prefix, size, 1) and role.prefix else None
    return role if role in (CHANNELS, HEIGHT, WIDTH, BATCH) else None


_RESHAPES = {"reshape", "view", "flatten", "unflatten", "view_as", "reshape_as", "squeeze", "unsqueeze",
             "_reshape_alias", "_unsafe_view", "contiguous"}
_SAME_AXES = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_pool2d_with_indices",
              "lp_pool2d", "fractional_max_pool2d", "interpolate", "upsample", "upsample_nearest2d",
              "upsample_bilinear2d", "upsample_bicubic2d", "pixel_shuffle", "pixel_unshuffle", "pad",
              "constant_pad_nd", "reflection_pad2d", "replication_pad2d", "expand", "expand_as", "repeat",
              "channel_shuffle"}
_CONVOLUTIONS = {"conv2d", "_convolution", "convolution", "conv_transpose2d", "mkldnn_convolution",
                 "cudnn_convolution", "_conv_depthwise2d", "conv2d_padding"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "prod", "nanmean",
               "nansum", "median", "any", "all", "argmax", "argmin"}
_SPLITS = {"split", "chunk", "tensor_split", "split_with_sizes", "unsafe_split", "unsafe_chunk",
           "unsafe_split_with_sizes"}
_REORDERS = {"t", "rot90", "adjoint", "__get__", "einsum", "unfold", "as_strided", "diagonal", "take_along_dim", "gather",
             "index", "masked_select", "nonzero", "where"}


class AxisTrace(TorchFunctionMode):
    """Follows what each axis of each tensor means through a forward pass: a torch function mode that
    sees every operation (``observe`` is also told them by graphs that run operations themselves, such
    as TorchScript's). A tensor's meanings are held only while the tensor lives."""

    def __init__(self) -> None:
        super().__init__()
        self._roles: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def seed(self, tensor: torch.Tensor, roles: Roles) -> None:
        self._roles[tensor] = tuple(roles)

    def roles(self, tensor: object) -> Roles | None:
        if not isinstance(tensor, torch.Tensor):
            return None
        roles = self._roles.get(tensor)
        return roles if roles is not None and len(roles) == tensor.ndim else None

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Sequence[object] = (),
                           kwargs: Mapping[str, object] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.observe(getattr(func, "__name__", ""), args, kwargs, out)
        return out

    def observe(self, name: str, args: Sequence[object], kwargs: Mapping[str, object], out: object) -> None:
        """Give the outputs of operation ``name`` (an ATen name such as ``aten::permute`` too) their
        meanings. An operation it cannot follow leaves them unknown; it never changes what runs."""
        outputs = _tensors(out)
        if not outputs:
            return
        name = name.rpartition("::")[2]
        if name.endswith("_") and not name.endswith("__"):
            name = name[:-1]  # in place
        try:
            found = self._follow(name, list(args), kwargs, out, outputs)
        except Exception:  # noqa: BLE001 - arguments of an unexpected form: the outputs stay unknown
            found = None
        if isinstance(found, list):
            for tensor, roles in zip(outputs, found):
                if roles is not None and len(roles) == tensor.ndim:
                    self._roles[tensor] = roles
        elif found is not None:
            for tensor in outputs:
                if len(found) == tensor.ndim:
                    self._roles[tensor] = found

    def module_output(self, inputs: Sequence[object], output: object) -> None:
        """A module's outputs that no operation explained (a custom autograd function, say) keep the
        meanings of its same-shaped inputs."""
        for tensor in _tensors(output):
            if self.roles(tensor) is None:
                found = self._same_shape(tensor, list(inputs), {})
                if found is not None:
                    self._roles[tensor] = found

    def _same_shape(self, tensor: torch.Tensor, args: Sequence[object], kwargs: Mapping[str, object]) -> Roles | None:
        candidates = []
        for value in [*args, *kwargs.values()]:
            for item in _tensors(value):
                roles = self.roles(item)
                if roles is not None and item.shape == tensor.shape:
                    candidates.append(roles)
        return _merge(candidates)

    def _follow(self, name: str, args: list[object], kwargs: Mapping[str, object], out: object,
                outputs: list[torch.Tensor]) -> Roles | list[Roles | None] | None:
        x = args[0] if args else next(iter(kwargs.values()), None)
        roles = self.roles(x)
        first = outputs[0]
        if name in ("permute",):
            dims = args[1:] if len(args) > 1 and isinstance(args[1], int) else _arg(args, kwargs, 1, "dims")
            order = _dims_of(list(dims), x.ndim)  # type: ignore[union-attr,arg-type]
            return None if roles is None or order is None else tuple(roles[d] for d in order)
        if name in ("transpose", "swapaxes", "swapdims"):
            if roles is None:
                return None
            a, b = (_arg(args, kwargs, 1, "dim0") % x.ndim, _arg(args, kwargs, 2, "dim1") % x.ndim)  # type: ignore[union-attr]
            swapped = list(roles)
            swapped[a], swapped[b] = swapped[b], swapped[a]
            return tuple(swapped)
        if name in ("movedim", "moveaxis"):
            if roles is None:
                return None
            source = _dims_of(_arg(args, kwargs, 1, "source"), x.ndim)  # type: ignore[union-attr]
            target = _dims_of(_arg(args, kwargs, 2, "destination"), x.ndim)  # type: ignore[union-attr]
            order: list[int | None] = [None] * x.ndim  # type: ignore[union-attr]
            for s, d in zip(source or (), target or ()):
                order[d] = s
            rest = iter(a for a in range(x.ndim) if a not in (source or ()))  # type: ignore[union-attr]
            return tuple(roles[o if o is not None else next(rest)] for o in order)
        if name in _RESHAPES:
            return None if roles is None else regroup(roles, tuple(x.shape), tuple(first.shape))  # type: ignore[union-attr]
        if name in _CONVOLUTIONS:
            if first.ndim != 4:
                return None
            return (roles[0] if roles else None, CHANNELS, HEIGHT, WIDTH)
        if name in _SAME_AXES:
            if roles is None or first.ndim != len(roles):
                return None
            return [roles if tensor.ndim == len(roles) else None for tensor in outputs]
        if name in ("linear", "matmul", "mm", "addmm"):
            if name == "addmm":  # (bias, input, weight): a linear layer on (N, C)
                source, weight = args[1], args[2]
            else:
                source, weight = x, _arg(args, kwargs, 1, "weight" if name == "linear" else "other")
            if name != "linear" and (self.roles(weight) is not None or getattr(weight, "ndim", 0) != 2):
                return self._same_shape(first, args, kwargs)  # two activations: attention, say
            before = self.roles(source) or (None,) * source.ndim  # type: ignore[union-attr]
            return tuple(before[:-1]) + (CHANNELS,)
        if name == "layer_norm":
            if roles is None:
                return None
            shape = _arg(args, kwargs, 1, "normalized_shape")
            if isinstance(shape, (list, tuple, torch.Size)) and len(shape) == 1 and roles[-1] is None:
                return tuple(roles[:-1]) + (CHANNELS,)  # a layer norm acts on the channel axis
            return roles
        if name in ("cat", "concat", "concatenate"):
            return self._cat(list(_arg(args, kwargs, 0, "tensors")), _arg(args, kwargs, 1, "dim", 0), first)
        if name == "stack":
            members = [self.roles(t) for t in _arg(args, kwargs, 0, "tensors")]
            merged = _merge([r for r in members if r is not None])
            if merged is None:
                return None
            dim = _arg(args, kwargs, 1, "dim", 0) % first.ndim
            return tuple(merged[:dim]) + (None,) + tuple(merged[dim:])
        if name in _SPLITS:
            if roles is None:
                return None
            dim = _arg(args, kwargs, 2, "dim", 0) % x.ndim  # type: ignore[union-attr]
            pieces, offset = [], 0
            for tensor in outputs:
                size = tensor.shape[dim]
                role = _sliced(roles[dim], x.shape[dim], offset, offset + size, 1)  # type: ignore[union-attr]
                pieces.append(tuple(roles[:dim]) + (role,) + tuple(roles[dim + 1:]))
                offset += size
            return pieces
        if name == "unbind":
            if roles is None:
                return None
            dim = _arg(args, kwargs, 1, "dim", 0) % x.ndim  # type: ignore[union-attr]
            return tuple(roles[:dim]) + tuple(roles[dim + 1:])
        if name == "__getitem__":
            return None if roles is None else _indexed(roles, tuple(x.shape), args[1])  # type: ignore[union-attr]
        if name == "select":
            if roles is None:
                return None
            dim = _arg(args, kwargs, 1, "dim") % x.ndim  # type: ignore[union-attr]
            return tuple(roles[:dim]) + tuple(roles[dim + 1:])
        if name in ("slice", "narrow"):
            if roles is None:
                return None
            dim = _arg(args, kwargs, 1, "dim", 0) % x.ndim  # type: ignore[union-attr]
            start = _arg(args, kwargs, 2, "start", 0)
            if name == "narrow":
                stop, step = start + _arg(args, kwargs, 3, "length"), 1
            else:
                stop, step = _arg(args, kwargs, 3, "end"), _arg(args, kwargs, 4, "step", 1)
            role = _sliced(roles[dim], x.shape[dim], start, stop, step)  # type: ignore[union-attr]
            return tuple(roles[:dim]) + (role,) + tuple(roles[dim + 1:])
        if name in _REDUCTIONS:
            dims = _dims_of(_arg(args, kwargs, 1, "dim"), x.ndim) if roles is not None else None  # type: ignore[union-attr]
            if dims is None or isinstance(_arg(args, kwargs, 1, "dim"), torch.Tensor):
                return None if name not in ("max", "min") else self._same_shape(first, args, kwargs)
            if _arg(args, kwargs, 2, "keepdim", False):
                kept = tuple(None if a in dims and isinstance(r, TokenAxis) else r for a, r in enumerate(roles))  # type: ignore[arg-type]
                return [kept] * len(outputs)
            return [tuple(r for a, r in enumerate(roles) if a not in dims)] * len(outputs)  # type: ignore[arg-type]
        if name in _REORDERS:
            return None
        return [self._same_shape(tensor, args, kwargs) for tensor in outputs]

    def _cat(self, tensors: list[object], dim: int, first: torch.Tensor) -> Roles | None:
        dim %= first.ndim
        known = [(index, self.roles(t)) for index, t in enumerate(tensors)]
        known = [(index, roles) for index, roles in known if roles is not None]
        if not known:
            return None
        merged = _merge([roles for _, roles in known])
        assert merged is not None
        along = [roles[dim] for _, roles in known]
        tokens = [(index, role) for (index, _), role in zip(known, along) if isinstance(role, TokenAxis)]
        if tokens:
            if len(tokens) != 1 or tokens[0][0] != len(tensors) - 1:  # tokens after the patches: not followed
                role: Role = None
            else:
                before = sum(t.shape[dim] for t in tensors[:-1])  # type: ignore[union-attr]
                role = TokenAxis(tokens[0][1].prefix + before, tokens[0][1].grid)
        else:
            role = along[0] if len(set(along)) == 1 else None
        return tuple(merged[:dim]) + (role,) + tuple(merged[dim + 1:])


def _indexed(roles: Roles, shape: tuple[int, ...], index: object) -> Roles | None:
    """The meanings of ``x[index]`` (basic indexing: integers, slices, None and ``...``)."""
    items = index if isinstance(index, tuple) else (index,)
    real = sum(1 for item in items if item is not None and item is not Ellipsis)
    out: list[Role] = []
    axis = 0
    for item in items:
        if item is Ellipsis:
            count = len(shape) - real
            out += roles[axis:axis + count]
            axis += count
        elif item is None:
            out.append(None)
        elif isinstance(item, bool):
            return None
        elif isinstance(item, int) or (isinstance(item, torch.Tensor) and item.ndim == 0
                                       and not item.is_floating_point() and item.dtype != torch.bool):
            axis += 1  # the axis is gone
        elif isinstance(item, slice):
            out.append(_sliced(roles[axis], shape[axis], item.start, item.stop, item.step))
            axis += 1
        else:  # advanced indexing
            return None
    return tuple(out) + tuple(roles[axis:])


def trace_input_roles(layout: str) -> Roles:
    """The meanings of the axes of a model's input, as its input spec declares them."""
    return (BATCH, HEIGHT, WIDTH, CHANNELS) if layout == "NHWC" else (BATCH, CHANNELS, HEIGHT, WIDTH)


def layout_error(layer: str, model: str, shape: Sequence[int], why: str) -> LayoutError:
    """The one line that says a layer's output cannot be read as it is, and how to say how to read it."""
    example = "nchw" if len(shape) == 4 else "tokens:1" if len(shape) == 3 else "vector"
    return LayoutError(f"layer {layer} of {model} gives an output of shape {_dims(shape)} that filterviz cannot "
                       f"read ({why}); say how to read it with --layout {layer}=KIND, KIND one of "
                       f"{', '.join(layout_syntax())} (in Python: layouts={{{layer!r}: {example!r}}})")


