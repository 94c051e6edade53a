"""PyTorch model files: TorchScript archives, pickled whole models, and state dicts.

- A TorchScript file (``torch.jit.save``) loads without running Python code from it. TorchScript
  modules take no forward hooks, so ``ScriptGraph`` reaches a layer by stepping through the compiled
  graphs of the modules that lead to it, node by node, and runs every other module compiled.
- A pickled whole model (``torch.save(model)``) loads only with ``trust_pickle=True``, because
  unpickling runs code from the file.
- A state dict needs the architecture it belongs to (``arch``).
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from ...catalog import TORCH_SUFFIXES
from ...errors import FilterVizError, ModelFileError, first_line
from ...layers import Seen, WatchedGraph
from ...axes import AxisTrace
from ..loaded import LoadedModel
from ..spec import InputSpec, file_spec
from ..weights import PickledObjectsError, read_state_dict
from . import FileSource, LoadRequest, register_source

SUFFIXES = TORCH_SUFFIXES  # declared without torch, for the command line's checks


class _CannotStep(FilterVizError):
    """A module whose compiled graph cannot be run node by node (it sets attributes, say)."""


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip file with a ``code/`` folder; a torch.save file has none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


class ScriptGraph(WatchedGraph):
    """A LayerGraph over a TorchScript module: layers are its sub-modules, by path."""

    def __init__(self, root: torch.jit.ScriptModule) -> None:
        self.root = root
        self._layers = {name: module for name, module in root.named_modules() if name}
        # One compiled function per node that is run alone, by (module type, method, node numbers).
        self._functions: dict[tuple[object, ...], tuple[torch.jit.ScriptFunction, list[int]]] = {}
        self._observe: Callable[[str, list[object], dict[str, object], object], None] | None = None

    def names(self) -> list[str]:
        return list(self._layers)

    def kind(self, name: str) -> str:
        return self._layers[name].original_name

    def module(self, name: str) -> nn.Module | None:
        return self._layers.get(name)

    def modules(self) -> Mapping[str, nn.Module]:
        return MappingProxyType(self._layers)

    def _call(self, module: torch.jit.ScriptModule, path: str, method: str, args: list[object],
              enter: Callable[[str], bool], seen: Callable[[str, object], None]) -> object:
        """Run ``module.method(*args)``, stepping through its graph when ``enter(path)``, else compiled."""
        if not enter(path):
            out = getattr(module, method)(*args)
        else:
            graph = getattr(module, method).graph
            values: dict[int, object] = {}
            paths: dict[int, str] = {}
            graph_inputs = list(graph.inputs())
            values[graph_inputs[0].unique()] = module
            paths[graph_inputs[0].unique()] = path
            for value, arg in zip(graph_inputs[1:], args):
                values[value.unique()] = arg
            key = (module._c._type().qualified_name(), method)
            try:
                results = self._run_block(graph, key, values, paths, path, enter, seen)
                out = results[0] if len(results) == 1 else tuple(results)
            except _CannotStep:
                if self._observe is None:
                    raise
                # A trace runs on to find the layouts of the layers after it: the module runs compiled,
                # its own layers unseen, and its output keeps the axes of a same-shaped input.
                out = getattr(module, method)(*args)
                self._observe("", list(args), {}, out)
        if path and method == "forward":
            seen(path, out)
        return out

    def _run_block(self, block: torch.Graph | torch.Block, key: tuple[object, ...], values: dict[int, object],
                   paths: dict[int, str], path: str, enter: Callable[[str], bool],
                   seen: Callable[[str, object], None]) -> list[object]:
        """Run a graph's (or a branch's, or a loop body's) nodes one by one; returns its outputs.

        Module calls are stepped into (to see their layers); branches and loops are run here, so that
        the modules they call are seen too; every other node (an ATen operator, a call of a scripted
        function such as ``F.relu`` or a helper, a device or type query...) is run as TorchScript
        compiled from that node alone, since no layer can hide inside it.
        """
        for number, node in enumerate(block.nodes()):
            kind = node.kind()
            inputs = [values[v.unique()] for v in node.inputs()]
            if kind == "prim::Constant":
                outputs = [None if node.output().type().kind() == "FunctionType" else node.output().toIValue()]
            elif kind == "prim::GetAttr":
                owner = node.input().unique()
                attribute = node.s("name")
                outputs = [getattr(inputs[0], attribute)]
                if owner in paths:
                    paths[node.output().unique()] = f"{paths[owner]}.{attribute}" if paths[owner] else attribute
            elif kind == "prim::CallMethod":
                sub_path = paths.get(node.inputsAt(0).unique(), "")
                outputs = [self._call(inputs[0], sub_path, node.s("name"), inputs[1:], enter, seen)]
            elif kind == "prim::If":
                branches = list(node.blocks())
                outputs = self._run_block(branches[0 if inputs[0] else 1], (*key, number, bool(inputs[0])),
                                          values, paths, path, enter, seen)
            elif kind == "prim::Loop":
                outputs = self._loop(node, inputs, (*key, number), values, paths, path, enter, seen)
            elif kind == "prim::ListConstruct":
                outputs = [list(inputs)]
            elif kind == "prim::TupleConstruct":
                outputs = [tuple(inputs)]
            elif kind in ("prim::TupleUnpack", "prim::ListUnpack"):
                outputs = list(inputs[0])
            elif kind == "prim::TupleIndex":
                outputs = [inputs[0][inputs[1]]]
            elif kind == "prim::NumToTensor":
                outputs = [torch.tensor(inputs[0])]
            elif any(isinstance(value, torch.jit.ScriptModule) for value in inputs) or list(node.blocks()):
                raise _CannotStep(
                    f"cannot step into {path or 'the model'} of this TorchScript file: it uses {kind}; layers "
                    f"inside {path or 'it'} are not reachable, choose a layer outside it (`filterviz layers` lists "
                    "the ones that are)")
            else:
                outputs = self._compiled(node, (*key, number), inputs)
                if self._observe is not None:  # a trace follows the axes through each operation
                    self._observe(*_operation(node, inputs), {}, outputs[0] if len(outputs) == 1 else tuple(outputs))
            for value, output in zip(node.outputs(), outputs):
                values[value.unique()] = output
        return [values[v.unique()] for v in block.outputs()]

    def _loop(self, node: torch.Node, inputs: list[object], key: tuple[object, ...], values: dict[int, object],
              paths: dict[int, str], path: str, enter: Callable[[str], bool],
              seen: Callable[[str, object], None]) -> list[object]:
        """A ``prim::Loop``: (trip count, condition, carried values...) in, the carried values out; the
        body takes (iteration, carried...) and gives (condition, carried...)."""
        (body,) = list(node.blocks())
        trips, going, carried = inputs[0], bool(inputs[1]), list(inputs[2:])
        body_inputs = list(body.inputs())
        iteration = 0
        while going and iteration < trips:
            values[body_inputs[0].unique()] = iteration
            for value, item in zip(body_inputs[1:], carried):
                values[value.unique()] = item
            results = self._run_block(body, key, values, paths, path, enter, seen)
            going, carried = bool(results[0]), results[1:]
            iteration += 1
        return carried

    def _compiled(self, node: torch.Node, key: tuple[object, ...], inputs: list[object]) -> list[object]:
        """Run one node as a TorchScript function made of it alone (made once per node of a type's code)."""
        if key not in self._functions:
            self._functions[key] = _node_function(node)
        function, used = self._functions[key]
        result = function(*[inputs[index] for index in used])
        return list(result) if node.outputsSize() > 1 else [result]

    @contextmanager
    def followed(self, trace: AxisTrace) -> Iterator[AxisTrace]:
        """Compiled code is not seen by a torch function mode: each operation this graph runs is told to
        ``trace`` as it runs."""
        self._observe = trace.observe
        try:
            yield trace
        finally:
            self._observe = None

    @contextmanager
    def watch(self, layers: Collection[str] | None, seen: Seen) -> Iterator[Callable[[torch.Tensor], object]]:
        if layers is None:
            enter, told = (lambda _path: True), seen
        else:
            targets = set(layers)

            def enter(path: str) -> bool:  # step only into the modules that contain a target
                return path == "" or any(target.startswith(path + ".") for target in targets)

            def told(path: str, out: object) -> None:
                if path in targets:
                    seen(path, out)

        yield lambda inputs: self._call(self.root, "", "forward", [inputs], enter, told)


def _operation(node: torch.Node, inputs: list[object]) -> tuple[str, list[object]]:
    """A node's operation and arguments as a trace reads them: an ATen operator by its name; a call of a
    scripted function (``F.max_pool2d`` is ``_max_pool2d``) by the function's name, without the function."""
    if node.kind() == "prim::CallFunction":
        try:
            return node.inputsAt(0).node().s("name").lstrip("_"), inputs[1:]
        except RuntimeError:  # a function value without a name
            return node.kind(), inputs[1:]
    return node.kind(), inputs


def _node_function(node: torch.Node) -> tuple[torch.jit.ScriptFunction, list[int]]:
    """A TorchScript function that runs ``node`` alone, and which of its inputs it takes (in order):
    constants (functions among them, which Python cannot hold) are copied into it instead."""
    graph = torch._C.Graph()
    mapped: dict[int, torch.Value] = {}
    used: list[int] = []
    for index, value in enumerate(node.inputs()):
        if value.unique() in mapped:
            continue
        if value.node().kind() == "prim::Constant":
            constant = graph.createClone(value.node(), lambda other: other)
            graph.insertNode(constant)
            mapped[value.unique()] = constant.output()
        else:
            mapped[value.unique()] = graph.addInput().setType(value.type())
            used.append(index)
    clone = graph.createClone(node, lambda value: mapped[value.unique()])
    graph.insertNode(clone)
    for output in clone.outputs():
        graph.registerOutput(output)
    return torch._C._create_function_from_graph(f"filterviz_node_{node.kind().replace(':', '_')}", graph), used


def load_torchscript(path: Path, spec: InputSpec | None) -> LoadedModel:
    """A TorchScript file; ``spec`` gives its preprocessing (default: raw RGB 0..255, NCHW)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the format users have
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # RuntimeError and zip errors for damaged archives
        raise ModelFileError(f"cannot load {str(path)!r} as TorchScript ({first_line(exc, 120)})") from None
    return LoadedModel(path.name, module, file_spec(spec), source=f"TorchScript file {path}",
                       graph=ScriptGraph(module))


def load_pickled(path: Path, spec: InputSpec | None) -> LoadedModel:
    """A whole model saved with ``torch.save(model)``: unpickling runs code from the file."""
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # the classes it needs may be missing, among others
        raise ModelFileError(f"cannot unpickle {str(path)!r}: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"{str(path)!r} holds a {type(model).__name__}, not a model (torch.nn.Module); "
                             f"for a state dict, say its architecture with --arch NAME")
    return LoadedModel(path.name, model, file_spec(spec), source=f"pickled model {path}")


class TorchFileSource(FileSource):
    """PyTorch files: TorchScript; a state dict with ``arch``; a pickled whole model with ``trust_pickle``."""

    suffixes = SUFFIXES
    usage = "PATH.pt, .pth"
    description = "TorchScript; a state dict with --arch NAME; a pickled model with --trust-pickle"

    def load(self, model: str, request: LoadRequest) -> LoadedModel:
        path = Path(model)
        if request.weights is not None and request.arch is None:
            raise FilterVizError(f"--weights goes with a model name or --arch; {path.name} is a model file")
        if is_torchscript(path):
            return load_torchscript(path, request.spec)
        if request.arch is not None:
            from ..registry import load_model

            loaded = load_model(request.arch, weights=path, spec=request.spec, device="cpu",
                                progress=request.progress, download_timeout=request.download_timeout)
            loaded.name = f"{request.arch} ({path.name})"
            return loaded
        try:
            read_state_dict(path)
        except PickledObjectsError:
            if request.trust_pickle:
                return load_pickled(path, request.spec)
            raise ModelFileError(
                f"{str(path)!r} holds a pickled model, and unpickling runs code from the file: pass --trust-pickle "
                "(trust_pickle=True) only if you trust its source, or save it as TorchScript or a state dict"
            ) from None
        raise ModelFileError(f"{str(path)!r} holds weights only (a state dict); say which architecture they "
                             "belong to with --arch NAME (a torchvision name, or timm:NAME)")


register_source(TorchFileSource(), builtin=True)
