"""Following what each axis of each tensor means through a forward pass: ``AxisTrace``, a torch function
mode that sees every operation, and gives each layer call's output the roles of its axes, from which
``layouts.classify`` tells its layout (see the ``layouts`` module's docstring). Kept apart from
``layouts`` because it needs torch, which the command line's parser does not import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from .layouts import BATCH, CHANNELS, HEIGHT, WIDTH, Role, Roles, TokenAxis


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
