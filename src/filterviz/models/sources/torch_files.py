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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ...errors import FilterVizError, ModelFileError, UnknownLayerError, first_line
from ...layers import OUTPUT, LayerOutput, StopForward, call_name, outputs_by_call, split_call
from ..loaded import LoadedModel
from ..spec import InputSpec, file_spec
from ..weights import PickledObjectsError, read_state_dict
from . import FileSource, LoadRequest, register_source

SUFFIXES = (".pt", ".pth", ".pts", ".ts", ".torchscript", ".ckpt", ".bin", ".tar", ".safetensors")


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip file with a ``code/`` folder; a torch.save file has none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


class ScriptGraph:
    """A LayerGraph over a TorchScript module: layers are its sub-modules, by path."""

    def __init__(self, root: torch.jit.ScriptModule) -> None:
        self.root = root
        self.modules = {name: module for name, module in root.named_modules() if name}

    def names(self) -> list[str]:
        return list(self.modules)

    def kind(self, name: str) -> str:
        return self.modules[name].original_name

    def _call(self, module: torch.jit.ScriptModule, path: str, method: str, args: list[object],
              enter: Callable[[str], bool], seen: Callable[[str, object], None]) -> object:
        """Run ``module.method(*args)``, stepping through its graph when ``enter(path)``, else compiled."""
        if not enter(path):
            out = getattr(module, method)(*args)
        else:
            out = self._interpret(module, path, getattr(module, method).graph, args, enter, seen)
        if path and method == "forward":
            seen(path, out)
        return out

    def _interpret(self, module: torch.jit.ScriptModule, path: str, graph: torch.Graph, args: list[object],
                   enter: Callable[[str], bool], seen: Callable[[str, object], None]) -> object:
        values: dict[int, object] = {}
        paths: dict[int, str] = {}
        graph_inputs = list(graph.inputs())
        values[graph_inputs[0].unique()] = module
        paths[graph_inputs[0].unique()] = path
        for value, arg in zip(graph_inputs[1:], args):
            values[value.unique()] = arg
        for node in graph.nodes():
            kind = node.kind()
            inputs = [values[v.unique()] for v in node.inputs()]
            if kind == "prim::Constant":
                outputs = [node.output().toIValue()]
            elif kind == "prim::GetAttr":
                owner = node.input().unique()
                attribute = node.s("name")
                outputs = [getattr(inputs[0], attribute)]
                if owner in paths:
                    paths[node.output().unique()] = f"{paths[owner]}.{attribute}" if paths[owner] else attribute
            elif kind == "prim::CallMethod":
                sub_path = paths.get(node.inputsAt(0).unique(), "")
                outputs = [self._call(inputs[0], sub_path, node.s("name"), inputs[1:], enter, seen)]
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
            elif kind.startswith("aten::"):
                result = _call_aten(node, inputs)
                outputs = list(result) if node.outputsSize() > 1 else [result]
            else:
                raise FilterVizError(
                    f"cannot step into {path or 'the model'} of this TorchScript file: it uses {kind}; "
                    "layers inside modules with control flow are not reachable, choose a layer outside them"
                )
            for value, output in zip(node.outputs(), outputs):
                values[value.unique()] = output
        results = [values[v.unique()] for v in graph.outputs()]
        return results[0] if len(results) == 1 else tuple(results)

    def probe(self, inputs: torch.Tensor) -> dict[str, LayerOutput]:
        events: list[tuple[str, str, tuple[int, ...]]] = []

        def seen(path: str, out: object) -> None:
            kind = self.kind(path) if path in self.modules else "?"
            events.append((path, kind, tuple(out.shape) if isinstance(out, torch.Tensor) else ()))

        with torch.no_grad():
            self._call(self.root, "", "forward", [inputs], lambda _path: True, seen)
        return outputs_by_call(events)

    @contextmanager
    def capture(self, layers: Sequence[str]) -> Iterator[Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
        wanted = {split_call(layer) for layer in layers if layer != OUTPUT}
        whole = OUTPUT in layers
        targets = {name for name, _ in wanted}

        def enter(path: str) -> bool:  # step only into the modules that contain a target
            return path == "" or any(target.startswith(path + ".") for target in targets)

        def run(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
            calls: dict[str, int] = {}
            captured: dict[str, torch.Tensor] = {}

            def seen(path: str, out: object) -> None:
                if path in targets:
                    calls[path] = calls.get(path, 0) + 1
                    if (path, calls[path]) in wanted:
                        captured[call_name(path, calls[path])] = out  # type: ignore[assignment]
                        if not whole and len(captured) == len(wanted):
                            raise StopForward

            try:
                output = self._call(self.root, "", "forward", [inputs], enter, seen)
            except StopForward:
                return captured
            if len(captured) < len(wanted):
                raise UnknownLayerError("a layer asked for is not called by the model's forward pass; "
                                        "choose a layer that the forward pass uses")
            return {**captured, OUTPUT: output} if whole else captured  # type: ignore[dict-item]

        yield run


def _call_aten(node: torch.Node, inputs: list[object]) -> object:
    """Call the exact overload a TorchScript node names, passing keyword-only arguments by keyword."""
    schema = torch._C.parse_schema(node.schema())
    packet = getattr(torch.ops.aten, schema.name.split("::", 1)[1])
    operator = getattr(packet, schema.overload_name or "default")
    args, kwargs = [], {}
    for argument, value in zip(schema.arguments, inputs):
        if argument.kwarg_only:
            kwargs[argument.name] = value
        else:
            args.append(value)
    return operator(*args, **kwargs)


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
