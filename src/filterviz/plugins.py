"""Registries of named parts, open to other packages.

Each kind of part (parameterization, optimizer, transform, objective term, deprocess mode) has one
``Registry``, owned by the module that implements the kind. A part is added with one call
(``filterviz.register_parameterization(MyImage)``) or, from an installed package, through a Python
entry point in the kind's group (``[project.entry-points."filterviz.parameterizations"]``), read the
first time a name is looked up, so a pip-installed plugin shows up in the command line too.

A registry may also hold built-in parts *declared* rather than registered (``declare``): the module
that registers the part, and the facts about it that the command line reads (a transform's ``syntax``,
a parameterization's ``recipe_fields``). Their names, and those facts (``entries``), are known without
importing the module, which imports torch; ``get`` and ``parts`` import it, and its registration of
the part replaces the declaration. A part is still one class plus one registration; the declaration
only lets ``filterviz --help`` list it without loading it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import FilterVizError

Part = TypeVar("Part")

NAME = re.compile(r"[a-z][a-z0-9_]*\Z")  # what a command line can spell after --recipe-field or in KIND:ARGS


class Declared:
    """A built-in part that ``module`` registers when it is imported, known before that by the facts
    declared of it, which it answers as the part's own attributes (``declared.syntax``). ``part`` is the
    part itself once its module has registered it."""

    __slots__ = ("module", "facts", "part")

    def __init__(self, module: str, facts: dict[str, Any]) -> None:
        self.module = module
        self.facts = facts
        self.part: Any = None

    def __getattr__(self, name: str) -> Any:
        try:
            return self.facts[name]
        except KeyError:
            raise AttributeError(f"{name!r} is not declared of the built-in part {self.facts.get('name', '?')!r} "
                                 f"({self.module}); declare it, or get the part itself") from None

    def __repr__(self) -> str:
        return f"Declared({self.module!r}, {self.facts!r})"


class Registry(Generic[Part]):
    """Named parts of one kind. ``check`` refuses what is not such a part; ``names_of`` gives the names a
    part is registered under (most parts have one, its ``name``)."""

    def __init__(self, kind: str, group: str, check: Callable[[object], bool], expected: str,
                 names_of: Callable[[Part], tuple[str, ...]] = lambda part: (part.name,)) -> None:  # type: ignore[attr-defined]
        self.kind = kind
        self.group = group
        self._check = check
        self._expected = expected
        self._names_of = names_of
        self._parts: dict[str, Part | Declared] = {}
        self._declared: dict[str, Declared] = {}
        self._plugins_read = False

    def declare(self, names: str | tuple[str, ...], module: str, **facts: Any) -> None:
        """Declare a built-in part: ``module`` registers it under ``names`` when imported; ``facts`` are
        what is read of it before that (``name``, ``syntax``...), and must be what the part says."""
        entry = Declared(module, facts)
        for name in (names,) if isinstance(names, str) else names:
            self._parts.setdefault(name, entry)
            self._declared[name] = entry

    def declarations(self) -> dict[str, Declared]:
        """The built-in parts declared, by name (each with its part, once its module registered it)."""
        return dict(self._declared)

    def register(self, part: Part) -> Part:
        """Add ``part`` under its name(s). A name taken by another part is an error: replacing a part
        quietly would change what an existing recipe or objective means."""
        if not self._check(part):
            raise FilterVizError(f"a {self.kind} must be {self._expected}, not {_what(part)}")
        names = self._names_of(part)
        for name in names:
            if not isinstance(name, str) or not NAME.match(name):
                raise FilterVizError(f"{self.kind} name {name!r} must be lowercase letters, digits and _ "
                                     "(starting with a letter)")
            existing = self._parts.get(name)
            if isinstance(existing, Declared):
                if existing.part is None and _module(part) == existing.module:
                    continue  # the declared part itself, registered by its module
                existing = self._resolve(existing)
            if existing is not None and not _same(existing, part):
                raise FilterVizError(f"{self.kind} {name!r} is already registered ({_origin(existing)}); "
                                     "give yours another name")
        for name in names:
            existing = self._parts.get(name)
            if isinstance(existing, Declared) and existing.part is None:
                existing.part = part
            self._parts[name] = part
        return part

    def get(self, name: str) -> Part:
        """The part named ``name``; an unknown name is a one-line error listing the known ones."""
        entries = self.entries()
        if name not in entries:
            raise FilterVizError(f"unknown {self.kind} {name!r}; use one of {', '.join(entries)}")
        return self._resolve(entries[name])

    def parts(self) -> dict[str, Part]:
        """Every part by name, installed plugins' included (read once); built-in parts declared and not
        yet imported are imported."""
        return {name: self._resolve(entry) for name, entry in self.entries().items()}

    def entries(self) -> dict[str, Part | Declared]:
        """Every part by name, as ``parts``, but a built-in part whose module is not imported yet is its
        declaration (which answers the facts declared of it): nothing is imported but plugins."""
        if not self._plugins_read:
            self._plugins_read = True
            self._read_plugins()
        return {name: entry.part if isinstance(entry, Declared) and entry.part is not None else entry
                for name, entry in self._parts.items()}

    def names(self) -> list[str]:
        return list(self.entries())

    def __contains__(self, name: object) -> bool:
        # Built-in names are answered without reading plugins: filterviz's own presets are checked at
        # import, when a plugin importing filterviz would find it half-imported.
        return name in self._parts or name in self.entries()

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries())

    def _resolve(self, entry: Part | Declared) -> Part:
        """The part itself: a declared one's module imported (which registers it)."""
        if not isinstance(entry, Declared):
            return entry
        if entry.part is None:
            importlib.import_module(entry.module)
        if entry.part is None:
            raise RuntimeError(f"{entry.module} did not register the {self.kind} declared as {entry.facts}")
        return entry.part

    def _read_plugins(self) -> None:
        from importlib.metadata import entry_points

        for point in entry_points(group=self.group):
            try:
                self.register(point.load())
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break filterviz
                raise FilterVizError(f"the {self.kind} plugin {point.name!r} ({point.value}) cannot be loaded: "
                                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; reinstall "
                                     "or uninstall the package that provides it") from None


def _module(part: object) -> str:
    """The module that defines a part (a class's own, an instance's class's)."""
    return (part if isinstance(part, type) else type(part)).__module__


def _origin(part: object) -> str:
    """Where a part was defined, for messages."""
    kind = part if isinstance(part, type) else type(part)
    return f"{kind.__module__}.{kind.__qualname__}"


def _same(existing: object, part: object) -> bool:
    """Whether registering ``part`` again is harmless: the same object, or the same class (a module
    imported twice)."""
    return existing is part or (isinstance(existing, type) and isinstance(part, type)
                                and _origin(existing) == _origin(part))


def _what(part: object) -> str:
    return f"the class {part.__name__}" if isinstance(part, type) else f"a {type(part).__name__}"
