"""Registries of named parts, open to other packages.

Each kind of part (parameterization, optimizer, transform, objective term, deprocess mode) has one
``Registry``, owned by the module that implements the kind. A part is added with one call
(``filterviz.register_parameterization(MyImage)``) or, from an installed package, through a Python
entry point in the kind's group (``[project.entry-points."filterviz.parameterizations"]``), read the
first time a name is looked up, so a pip-installed plugin shows up in the command line too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import FilterVizError

Part = TypeVar("Part")

NAME = re.compile(r"[a-z][a-z0-9_]*\Z")  # what a command line can spell after --recipe-field or in KIND:ARGS


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
        self._parts: dict[str, Part] = {}
        self._plugins_read = False

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
            if existing is not None and not _same(existing, part):
                raise FilterVizError(f"{self.kind} {name!r} is already registered ({_origin(existing)}); "
                                     "give yours another name")
        for name in names:
            self._parts[name] = part
        return part

    def get(self, name: str) -> Part:
        """The part named ``name``; an unknown name is a one-line error listing the known ones."""
        parts = self.parts()
        if name not in parts:
            raise FilterVizError(f"unknown {self.kind} {name!r}; use one of {', '.join(parts)}")
        return parts[name]

    def parts(self) -> dict[str, Part]:
        """Every part by name, installed plugins' included (read once)."""
        if not self._plugins_read:
            self._plugins_read = True
            self._read_plugins()
        return dict(self._parts)

    def names(self) -> list[str]:
        return list(self.parts())

    def __contains__(self, name: object) -> bool:
        # Built-in names are answered without reading plugins: filterviz's own presets are checked at
        # import, when a plugin importing filterviz would find it half-imported.
        return name in self._parts or name in self.parts()

    def __iter__(self) -> Iterator[str]:
        return iter(self.parts())

    def _read_plugins(self) -> None:
        from importlib.metadata import entry_points

        for point in entry_points(group=self.group):
            try:
                self.register(point.load())
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break filterviz
                raise FilterVizError(f"the {self.kind} plugin {point.name!r} ({point.value}) cannot be loaded: "
                                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; reinstall "
                                     "or uninstall the package that provides it") from None


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
