"""ONNX model files, converted to PyTorch with onnx2torch.

Every ONNX node becomes a layer named after the node. The input layout (NCHW or NHWC) and any fixed
input size are read from the file. Node names of exported Keras models, such as
``functional_1/block3_conv1_1/Relu``, also give their Keras layer name (``block3_conv1``) as an alias
for the last node of that layer, which is its output after the activation, as in Keras.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import ModelFileError, first_line
from ..loaded import LoadedModel
from ..spec import InputSpec, file_spec, input_geometry
from . import require

# ONNX operators whose outputs are (N, C, H, W) whatever their input layout.
_CHANNELS_FIRST_OPS = {
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "BatchNormalization", "InstanceNormalization", "LRN",
}
# Operators that keep the layout of their first input.
_LAYOUT_KEEPING_OPS = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Clip", "Gelu", "Mish", "Add", "Sub", "Mul", "Div", "Identity", "Dropout", "Pad", "Resize", "Max", "Min",
    "Neg", "Abs", "Exp", "Sqrt", "Pow", "Cast",
}


def _name_nodes(graph: object) -> dict[str, str]:
    """Give every node a unique name that onnx2torch keeps as its module name; returns the names
    the file gave (or the new name, for nodes it left unnamed) by new name.

    onnx2torch turns dots into slashes and drops a leading slash, so that is done here first.
    """
    original: dict[str, str] = {}
    for index, node in enumerate(graph.node):  # type: ignore[attr-defined]
        given = node.name or f"{node.op_type}_{index}"
        name = (f"{node.domain}/" if node.domain else "") + given.replace(".", "/").lstrip("/")
        name = name or f"{node.op_type}_{index}"
        while name in original:
            name = f"{name}_{index}"
        node.name = name
        original[name] = given
    return original


def _input_geometry(graph: object) -> dict[str, object]:
    initializers = {init.name for init in graph.initializer}  # type: ignore[attr-defined]
    inputs = [i for i in graph.input if i.name not in initializers]  # type: ignore[attr-defined]
    if len(inputs) != 1:
        raise ModelFileError(f"filterviz needs a model with one image input; this one has {len(inputs)} inputs")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or 3 not in (dims[1], dims[3]):
        raise ModelFileError(f"filterviz needs a model whose input is an image batch (N, 3, H, W) or (N, H, W, 3); "
                             f"this one takes {dims}")
    return input_geometry(dims, ambiguous_layout="NCHW")  # ONNX's own convolution layout


def channel_axes(graph: object, input_layout: str) -> dict[str, int | None]:
    """The channel axis of each node's first output, followed through the graph from the input's layout."""
    initializers = {init.name for init in graph.initializer}  # type: ignore[attr-defined]
    axis_of: dict[str, int | None] = {i.name: (3 if input_layout == "NHWC" else 1)
                                      for i in graph.input if i.name not in initializers}  # type: ignore[attr-defined]
    by_node: dict[str, int | None] = {}
    for node in graph.node:  # type: ignore[attr-defined]
        incoming = next((axis_of.get(name) for name in node.input if name in axis_of), None)
        if node.op_type in _CHANNELS_FIRST_OPS:
            axis = 1
        elif node.op_type in _LAYOUT_KEEPING_OPS:
            axis = incoming
        elif node.op_type == "Transpose" and incoming is not None:
            perm = [a.ints for a in node.attribute if a.name == "perm"]
            axis = list(perm[0]).index(incoming) if perm else None
        else:
            axis = None
        for output in node.output:
            axis_of[output] = axis
        by_node[node.name] = axis
    return by_node


def scope_aliases(node_names: list[str]) -> dict[str, str]:
    """Scope names -> the last node inside that scope, from node names such as
    ``functional_1/block3_conv1_1/Relu`` (Keras) or ``/features/features.0/Conv`` (PyTorch).

    Exporters name nodes by the layer (scope) they belong to; a layer's last node is its output, after
    the activation. Keras appends ``_1`` (and so on) to layer scopes when it exports; the name without
    it is an alias too. A scope name found under two different parents is ambiguous and left out.
    """
    last_in_scope: dict[str, str] = {}
    parents: dict[str, set[str]] = {}
    members: dict[str, int] = {}
    for name in node_names:
        parts = name.split("/")
        for depth in range(len(parts) - 1):
            if parts[depth]:
                last_in_scope[parts[depth]] = name
                parents.setdefault(parts[depth], set()).add("/".join(parts[:depth]))
                members[parts[depth]] = members.get(parts[depth], 0) + 1
    # A scope around every node is the model itself, not a layer.
    scopes = {scope: node for scope, node in last_in_scope.items()
              if len(parents[scope]) == 1 and members[scope] < len(node_names)}
    aliases = dict(scopes)
    for scope, node in scopes.items():
        plain = re.sub(r"_\d+$", "", scope)
        if plain != scope and plain not in last_in_scope:
            aliases.setdefault(plain, node)
    native = set(node_names)
    return {alias: node for alias, node in aliases.items() if alias not in native}


def load_onnx(path: Path, spec: InputSpec | None) -> LoadedModel:
    """An ONNX file as a LoadedModel; ``spec`` gives its preprocessing (default: raw pixels)."""
    onnx = require("onnx", "onnx", "ONNX models")
    onnx2torch = require("onnx2torch", "onnx", "ONNX models")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf decode errors and checker errors
        raise ModelFileError(f"{str(path)!r} is not a valid ONNX model ({first_line(exc, 120)})") from None
    original = _name_nodes(proto.graph)
    geometry = _input_geometry(proto.graph)
    try:
        module = onnx2torch.convert(proto)
    except Exception as exc:  # an operator onnx2torch cannot convert
        raise ModelFileError(f"cannot convert {path.name} to PyTorch with onnx2torch: {first_line(exc)}") from None
    axes = channel_axes(proto.graph, str(geometry["layout"]))
    by_original = {given: name for name, given in original.items()}
    aliases = {alias: by_original[node] for alias, node in scope_aliases(list(by_original)).items()
               if alias not in original}
    spec = file_spec(spec, **geometry)
    return LoadedModel(path.name, module, spec, aliases, source=f"ONNX file {path}",
                       channels_last=frozenset(n for n, axis in axes.items() if axis == 3))
