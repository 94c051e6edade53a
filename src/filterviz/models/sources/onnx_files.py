"""ONNX model files, converted to PyTorch with onnx2torch.

Every ONNX node becomes a layer named after the node. The input layout (NCHW or NHWC) and any fixed
input size are read from the file. Node names of exported Keras models, such as
``functional_1/block3_conv1_1/Relu``, also give their Keras layer name (``block3_conv1``) as an alias
for the last node of that layer, which is its output after the activation, as in Keras. A PyTorch export
of a torchvision VGG answers to the same Keras names as the torchvision model itself.

Before converting, parameters that the exporter shared through Identity nodes are read from their
initializer again, and a file whose opset is newer (or older) than onnx2torch converts is brought to an
opset it does convert with ONNX's version converter.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from ...errors import FilterVizError, ModelFileError, first_line
from ..aliases import keras_vgg_aliases, vgg_configs
from ..loaded import LoadedModel
from ..spec import InputSpec, file_spec, input_geometry
from . import FileSource, LoadRequest, register_source, require

# ONNX operators whose outputs are (N, C, H, W) whatever their input layout.
_CHANNELS_FIRST_OPS = {
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "BatchNormalization", "InstanceNormalization", "LRN",
}
# Operators that keep the layout of their first input.
_LAYOUT_KEEPING_OPS = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Clip", "Gelu", "Mish", "Add", "Sub", "Mul", "Div", "Identity", "Dropout", "Pad", "Resize", "Max", "Min",
    "Neg", "Abs", "Exp", "Sqrt", "Pow", "Cast", "Erf", "Softmax", "Reciprocal",
    # Normalizes the trailing axes, in place of a channels-last batch norm (ConvNeXt's LayerNorm2d, blocks).
    "LayerNormalization",
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
    geometry = input_geometry(dims, ambiguous_layout="NCHW") if len(dims) == 4 else {}  # ONNX's own layout
    if "channels" not in geometry:
        raise ModelFileError(f"filterviz needs a model whose input is an image batch (N, C, H, W) or (N, H, W, C) "
                             f"with a known channel count C (3 for RGB); this one takes {dims}")
    return geometry


def channel_axes(graph: object, input_layout: str) -> dict[str, int | None]:
    """The channel axis of each node's first output, followed through the graph from the input's layout."""
    initializers = {init.name for init in graph.initializer}  # type: ignore[attr-defined]
    axis_of: dict[str, int | None] = {i.name: (3 if input_layout == "NHWC" else 1)
                                      for i in graph.input if i.name not in initializers}  # type: ignore[attr-defined]
    by_node: dict[str, int | None] = {}
    weights = {init.name: len(init.dims) for init in graph.initializer}  # type: ignore[attr-defined]
    for node in graph.node:  # type: ignore[attr-defined]
        # The first input with a known layout: a bias or scale (an initializer) comes first in some Adds.
        incoming = next((axis_of[name] for name in node.input if axis_of.get(name) is not None), None)
        if node.op_type in _CHANNELS_FIRST_OPS:
            axis = 1
        elif node.op_type in _LAYOUT_KEEPING_OPS:
            axis = incoming
        elif node.op_type == "MatMul" and len(node.input) == 2 and weights.get(node.input[1]) == 2:
            axis = incoming  # a Linear layer on the last axis: channels-last in, channels-last out (ConvNeXt)
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


def share_initializers(graph: object) -> int:
    """Let nodes read a parameter from its initializer rather than from an Identity node that repeats it;
    returns how many Identity nodes went.

    torch.onnx.export stores equal parameters once (such as the all-zero biases of freshly initialized
    convolutions, or batch-norm weights of ones) and gives the other names by Identity nodes. onnx2torch
    reads a Conv's weight and bias only from initializers, so such a file failed with a bare KeyError
    naming the bias (``'features.8.bias'``).
    """
    initializers = {init.name for init in graph.initializer}  # type: ignore[attr-defined]
    outputs = {value.name for value in graph.output}  # type: ignore[attr-defined]
    source: dict[str, str] = {}
    dropped = []
    for node in graph.node:  # type: ignore[attr-defined]
        _rename_inputs(node, source)  # nodes are in topological order, so chains of Identity fold too
        if (node.op_type == "Identity" and not node.domain and len(node.input) == 1
                and node.input[0] in initializers and node.output[0] not in outputs):
            source[node.output[0]] = node.input[0]
            dropped.append(node)
    for node in dropped:
        graph.node.remove(node)  # type: ignore[attr-defined]
    return len(dropped)


def _rename_inputs(node: object, names: dict[str, str]) -> None:
    """Rename ``node``'s inputs, and those of the subgraphs in its attributes (which see the outer names)."""
    for position, name in enumerate(node.input):  # type: ignore[attr-defined]
        if name in names:
            node.input[position] = names[name]  # type: ignore[attr-defined]
    for attribute in node.attribute:  # type: ignore[attr-defined]
        for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in graph.node:
                _rename_inputs(inner, names)


def _default_opset(proto: object) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)  # type: ignore[attr-defined]


def _lacks_converter(node: object, versions: dict[str, int], get_converter: object, opset: int) -> bool:
    """Whether onnx2torch has no converter for ``node`` were the file's ONNX opset ``opset``.

    onnx2torch registers converters by operator and the opset at which the operator last changed; its
    ``get_converter`` says whether it has one for an operator at a given opset.
    """
    domain = node.domain  # type: ignore[attr-defined]
    version = opset if domain in ("", "ai.onnx") else versions.get(domain)
    try:
        get_converter(operation_type=node.op_type, version=version, domain=domain)  # type: ignore[attr-defined, operator]
    except Exception:  # NotImplementedError: none registered; anything else: no usable one either
        return True
    return False


def _unconvertible(proto: object, get_converter: object, opset: int) -> object | None:
    """The first node that onnx2torch has no converter for, were the file's ONNX opset ``opset``; None if none."""
    versions = {o.domain: o.version for o in proto.opset_import}  # type: ignore[attr-defined]
    return next((node for node in proto.graph.node  # type: ignore[attr-defined]
                 if _lacks_converter(node, versions, get_converter, opset)), None)


def _never_convertible(proto: object, get_converter: object) -> object | None:
    """The first node whose operator onnx2torch converts at no opset at all; None if there is none."""
    import onnx

    versions = {o.domain: o.version for o in proto.opset_import}  # type: ignore[attr-defined]
    newest = onnx.defs.onnx_opset_version()
    never: dict[tuple[str, str], bool] = {}
    for node in proto.graph.node:  # type: ignore[attr-defined]
        key = (node.domain, node.op_type)
        if key not in never:
            never[key] = all(_lacks_converter(node, versions, get_converter, v) for v in range(1, newest + 1))
        if never[key]:
            return node
    return None


def convertible_opset(proto: object, get_converter: object) -> int | None:
    """The opset at which onnx2torch converts every node of ``proto``: the file's own if it does, else
    the newest one below it, else the oldest one above it (for old files); None if there is none.

    onnx2torch exposes no newest supported opset, and it depends on the operators: a VGG at opset 20 needs
    18 (no converter for Identity 19 or AveragePool 19), while a file without those converts as it is.
    """
    import onnx

    opset = _default_opset(proto)
    if opset is None:
        return None
    candidates = [opset, *range(opset - 1, 0, -1), *range(opset + 1, onnx.defs.onnx_opset_version() + 1)]
    return next((v for v in candidates if _unconvertible(proto, get_converter, v) is None), None)


def _to_convertible_opset(proto: object, get_converter: object, name: str) -> object:
    """``proto`` at an opset onnx2torch converts, by ONNX's version converter where needed.

    A file onnx2torch cannot convert at any opset is returned as it is: converting it names the node.
    The version converter rewrites the operators whose meaning changed between the two opsets (checked
    on exports against the torch models' own activations in tests/test_onnx_exports.py).
    """
    opset, target = _default_opset(proto), convertible_opset(proto, get_converter)
    if target is None or target == opset:
        return proto
    versions = {o.domain: o.version for o in proto.opset_import}  # type: ignore[attr-defined]
    blocked = sorted({node.op_type for node in proto.graph.node  # type: ignore[attr-defined]
                      if _lacks_converter(node, versions, get_converter, opset)})  # type: ignore[arg-type]
    try:
        converted = _convert_version(proto, target)
    except Exception as exc:  # the converter has no adapter for some operator between the two opsets
        # Its errors read "<file>:<line>: adapter_lookup: Assertion `false` failed: No Adapter To ...".
        reason = first_line(exc, 400).rsplit("failed: ", 1)[-1][:120]
        raise ModelFileError(
            f"{name} uses ONNX opset {opset}, at which onnx2torch cannot convert its {', '.join(blocked[:4])} "
            f"nodes, and ONNX's version converter could not bring it to opset {target} ({reason}); "
            f"export it again at opset {target} (torch.onnx.export(..., opset_version={target}))"
        ) from None
    return converted


_STASH = "filterviz-stash:"


def _convert_version(proto: object, target: int) -> object:
    """``onnx.version_converter.convert_version(proto, target)``, without passing the weights through it.
    ``proto`` is left without its large tensors' data, which the result holds (unless the conversion fails).

    The converter copies the whole model in and out (about 10 s for a 500 MB VGG) but only ever reads small
    constants (shapes, axes, pads), so tensors over 4 KiB are marked as external data meanwhile and put
    back by name afterwards; if one could not be put back, the conversion runs again with everything.
    """
    import onnx
    import onnx.version_converter

    stash: dict[str, bytes] = {}
    for init in proto.graph.initializer:  # type: ignore[attr-defined]
        if len(init.raw_data) > 4096 and init.data_location == onnx.TensorProto.DEFAULT and init.name not in stash:
            stash[init.name] = init.raw_data
            init.ClearField("raw_data")
            init.data_location = onnx.TensorProto.EXTERNAL
            init.external_data.add(key="location", value=_STASH + init.name)
    try:
        converted = onnx.version_converter.convert_version(proto, target)
    except Exception:
        _restore(proto, stash)
        raise
    _restore(converted, stash)
    if any(e.value.startswith(_STASH) for init in converted.graph.initializer for e in init.external_data):
        _restore(proto, stash)
        return onnx.version_converter.convert_version(proto, target)
    return converted


def _restore(proto: object, stash: dict[str, bytes]) -> None:
    """Put the stashed tensors' data back into ``proto``'s initializers of the same names."""
    import onnx

    for init in proto.graph.initializer:  # type: ignore[attr-defined]
        locations = [e.value for e in init.external_data if e.key == "location"]
        if locations and locations[0].startswith(_STASH) and init.name in stash:
            init.raw_data = stash[init.name]
            del init.external_data[:]
            init.data_location = onnx.TensorProto.DEFAULT


def _failing_node(proto: object, versions: dict[str, int]) -> tuple[object, BaseException] | None:
    """The node onnx2torch fails on, and its error, found by converting the nodes one by one as
    onnx2torch does; only run after a failure, since ``convert`` does not say which node failed."""
    try:
        from onnx2torch.node_converters import get_converter
        from onnx2torch.onnx_graph import OnnxGraph
        from onnx2torch.utils.safe_shape_inference import safe_shape_inference

        graph = OnnxGraph(safe_shape_inference(proto).graph)  # type: ignore[attr-defined]
    except Exception:  # onnx2torch internals moved, or shape inference failed: no node to name
        return None
    for node in graph.nodes.values():
        try:
            converter = get_converter(operation_type=node.operation_type, version=versions.get(node.domain),
                                      domain=node.domain)
            converter(node, graph)
        except Exception as exc:
            return node.proto, exc
    return None


def folded_conv_scopes(graph: object) -> dict[str, str]:
    """Conv nodes whose weight torch.onnx.export computed (an initializer it named ``onnx::Conv_N``) rather
    than took from the module's own parameter -> the scope (module) that holds them.

    An export in eval mode with constant folding (the default) folds a batch norm into the conv before it,
    so ``/features.0/features.0.0/Conv`` outputs the conv's output after the batch norm: the alias
    ``features.0.0`` would name the conv module but give other activations. A scope around more than
    the conv (``features.0``, a whole block) still ends where the module does, batch norm included.
    """
    return {node.name: node.name.split("/")[-2] for node in graph.node  # type: ignore[attr-defined]
            if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1
            and node.input[1].startswith("onnx::") and node.name.count("/") >= 1}


def _names_folded_conv(alias: str, scope: str | None) -> bool:
    """Whether ``alias`` names the module of a folded conv (``scope``), as it is or without Keras's ``_1``."""
    return scope is not None and re.sub(r"_\d+$", "", alias) == re.sub(r"_\d+$", "", scope)


_VGG_NODE = re.compile(r"^(?P<scope>(?:.*/)?features)/features\.(?P<index>\d+)/(?P<op>\w+)$")


def torchvision_vgg_aliases(graph: object) -> dict[str, str]:
    """Keras names (``block3_conv1``, ``block3_pool``) -> node names, for a PyTorch export of a torchvision
    VGG (vgg11 ... vgg19_bn); empty for any other model.

    The names point to the same layers as on the torchvision model (``keras_vgg_aliases``): a conv name to
    the ReLU after it, a pool name to the pool. They are given only when the nodes named
    ``features/features.N/<Op>`` are exactly the stack of one torchvision config, one node per module,
    each feeding the next, with its channel counts and 3x3 convs and 2x2 pools; anything else gets none,
    since a wrong alias would be worse than none. An export in eval mode with constant folding (the
    default) folds each batch norm into its conv, which leaves that module's slot empty.
    """
    stack: dict[int, object] = {}
    scopes = set()
    for node in graph.node:  # type: ignore[attr-defined]
        match = _VGG_NODE.match(node.name)
        if match:
            if int(match["index"]) in stack:
                return {}
            stack[int(match["index"])] = node
            scopes.add(match["scope"])
    if len(scopes) != 1:
        return {}
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}  # type: ignore[attr-defined]
    nodes = [stack[index] for index in sorted(stack)]
    if any(after.input[0] != before.output[0] for before, after in zip(nodes, nodes[1:])):  # type: ignore[attr-defined]
        return {}
    for cfg, batch_norm in vgg_configs().values():
        if _is_vgg_stack(stack, shapes, cfg, batch_norm):
            return {alias: stack[int(path.rsplit(".", 1)[1])].name  # type: ignore[attr-defined]
                    for alias, path in keras_vgg_aliases(cfg, batch_norm).items()}
    return {}


def _is_vgg_stack(stack: dict[int, object], shapes: dict[str, tuple[int, ...]], cfg: list[int | str],
                  batch_norm: bool) -> bool:
    """Whether the nodes by module index are torchvision's ``features`` for ``cfg``, batch norms folded or not."""
    expected: dict[int, tuple[str, int | None]] = {}
    index = 0
    for item in cfg:
        if item == "M":
            expected[index] = ("MaxPool", None)
            index += 1
        else:
            expected[index] = ("Conv", int(item))
            if batch_norm:
                expected[index + 1] = ("BatchNormalization", None)
            expected[index + (2 if batch_norm else 1)] = ("Relu", None)
            index += 3 if batch_norm else 2
    norms = {i for i, (op, _) in expected.items() if op == "BatchNormalization"}
    if set(stack) not in (set(expected), set(expected) - norms):  # every batch norm folded, or none
        return False
    for i, node in stack.items():
        op, channels = expected[i]
        if node.op_type != op:  # type: ignore[attr-defined]
            return False
        if op == "Conv":
            weight = shapes.get(node.input[1]) if len(node.input) > 1 else None  # type: ignore[attr-defined]
            if weight is None or weight[0] != channels or weight[2:] != (3, 3):
                return False
        if op == "MaxPool":
            kernel = [list(a.ints) for a in node.attribute if a.name == "kernel_shape"]  # type: ignore[attr-defined]
            if kernel != [[2, 2]]:
                return False
    return True


def _without_operator(node: object) -> str:
    """What to do about an operator onnx2torch does not convert at all."""
    import onnx.defs

    schemas = sorted((schema for schema in onnx.defs.get_all_schemas_with_history()
                      if schema.name == node.op_type and schema.domain == node.domain),  # type: ignore[attr-defined]
                     key=lambda schema: schema.since_version)
    if schemas and schemas[-1].deprecated:  # such as Upsample, which Resize replaced at opset 10
        return f"export the model again at opset {schemas[-1].since_version} or newer, where ONNX replaced it"
    older = (f", or at an opset below {schemas[0].since_version} (where {node.op_type} does not exist yet) "  # type: ignore[attr-defined]
             "if the exporter can write it as other operators there" if schemas and schemas[0].since_version > 1 else "")
    return f"export the model without that operator{older} (onnx2torch's operators.md lists those it converts)"


_CONVERTERS_ADDED = threading.Lock()


def add_missing_converters() -> None:
    """Register the converters this onnx2torch lacks and filterviz supplies, through onnx2torch's own
    extension API (``add_converter``); none that onnx2torch already has is replaced.

    Gelu: an ONNX operator since opset 20, the opset torch.onnx.export writes by default, which it uses for
    ``nn.GELU`` (torchvision's ConvNeXt and ViT). ONNX's version converter cannot take it to an older opset
    ("No Previous Version of Gelu exists"), so without a converter such files do not load at all.
    """
    from torch import nn
    from onnx2torch.node_converters import add_converter, get_converter
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    with _CONVERTERS_ADDED:  # two threads loading at once must not register it twice (a ValueError)
        try:
            get_converter(operation_type="Gelu", version=20)
            return
        except NotImplementedError:
            pass

        @add_converter(operation_type="Gelu", version=20)
        def _gelu(node: object, graph: object) -> object:  # ONNX and torch name the approximations alike
            approximate = node.attributes.get("approximate", "none")  # type: ignore[attr-defined]
            return OperationConverterResult(torch_module=nn.GELU(approximate=approximate),
                                            onnx_mapping=onnx_mapping_from_node(node))


def load_onnx(path: Path, spec: InputSpec | None) -> LoadedModel:
    """An ONNX file as a LoadedModel; ``spec`` gives its preprocessing (default: raw pixels)."""
    onnx = require("onnx", "onnx", "ONNX models")
    onnx2torch = require("onnx2torch", "onnx", "ONNX models")
    from onnx2torch.node_converters import get_converter

    add_missing_converters()
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf decode errors and checker errors
        raise ModelFileError(f"{str(path)!r} is not a valid ONNX model ({first_line(exc, 120)})") from None
    geometry = _input_geometry(proto.graph)
    share_initializers(proto.graph)
    opset = _default_opset(proto)
    proto = _to_convertible_opset(proto, get_converter, path.name)
    converted = f", converted from {opset}" if _default_opset(proto) != opset else ""
    # By the file's node names, before they are renamed.
    vgg, folded = torchvision_vgg_aliases(proto.graph), folded_conv_scopes(proto.graph)
    original = _name_nodes(proto.graph)
    versions = {o.domain: o.version for o in proto.opset_import}

    def node_text(node: object) -> str:  # the node as the file names it, its operator and opset
        name = original.get(node.name, node.name)  # type: ignore[attr-defined]
        return f"node {name!r} ({node.op_type}, opset {versions.get(node.domain, '?')}{converted})"  # type: ignore[attr-defined]

    missing = _unconvertible(proto, get_converter, _default_opset(proto) or 0)
    if missing is not None:  # an operator it never converts is the one to name, not one it converts elsewhere
        never = _never_convertible(proto, get_converter)
        if never is not None:
            raise ModelFileError(f"cannot convert {path.name} to PyTorch: onnx2torch has no converter for "
                                 f"{node_text(never)} at any opset; {_without_operator(never)}")
        raise ModelFileError(f"cannot convert {path.name} to PyTorch: onnx2torch has no converter for "
                             f"{node_text(missing)} at this opset, and no opset suits all its operators; "
                             "export the model again at another opset")
    try:
        module = onnx2torch.convert(proto)
    except Exception as exc:  # a converter that fails on a node's attributes or inputs
        failed = _failing_node(proto, versions)
        if failed is None:
            raise ModelFileError(f"cannot convert {path.name} to PyTorch with onnx2torch: "
                                 f"{type(exc).__name__}: {first_line(exc)}") from None
        node, error = failed
        key = error.args[0] if isinstance(error, KeyError) and error.args else None
        why = (f"its input {key!r} is computed in the graph, and onnx2torch needs it stored in the file as a "
               "constant (an initializer)" if key in node.input else f"{type(error).__name__}: {first_line(error)}")
        raise ModelFileError(f"cannot convert {path.name} to PyTorch: onnx2torch fails on {node_text(node)}: "
                             f"{why}") from None
    axes = channel_axes(proto.graph, str(geometry["layout"]))
    by_original = {given: name for name, given in original.items()}
    aliases = {alias: by_original[node] for alias, node in scope_aliases(list(by_original)).items()
               if alias not in original and not _names_folded_conv(alias, folded.get(node))}
    aliases.update({alias: by_original[node] for alias, node in vgg.items() if alias not in original})
    spec = file_spec(spec, **geometry)
    source = f"ONNX file {path}" + (f" (opset {opset}, converted to {_default_opset(proto)})" if converted else "")
    return LoadedModel(path.name, module, spec, aliases, source=source,
                       channels_last=frozenset(n for n, axis in axes.items() if axis == 3))


class OnnxFileSource(FileSource):
    """ONNX files, converted with onnx2torch."""

    suffixes = (".onnx",)
    usage = "PATH.onnx"
    description = "an ONNX file"
    extra = "onnx"

    def load(self, model: str, request: LoadRequest) -> LoadedModel:
        if request.weights is not None:
            raise FilterVizError("an ONNX file carries its own weights; drop --weights")
        return load_onnx(Path(model), request.spec)


register_source(OnnxFileSource(), builtin=True)
