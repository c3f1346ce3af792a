"""A tiny name → class registry for the parts a sweep YAML can name.

Each registered class carries a frozen ``Config`` dataclass; the sweep parser builds it from the
YAML mapping, so unknown keys and wrong types fail with the list of what is allowed. Besides the
registered names, a class can be named by its import path, ``module:QualName`` (a user's own
ranker, ``mypkg.rankers:MyRanker``): it is imported in whichever process asks for it, so the
module must be importable there (installed, or under the directory the sweep runs from).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to a class; ``kind`` says what is registered ("attack", "model", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name  # type: ignore[attr-defined]
            self._items[name] = cls
            return cls

        return decorate

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``, or the class at the import path ``name``
        (``module:QualName``; imported, not registered)."""
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return self._import(name)
        raise KeyError(
            f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())} or the import "
            "path module:Class of an importable class"
        )

    def _import(self, path: str) -> type[T]:
        module, _, qualname = path.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError, ValueError) as err:
            raise KeyError(
                f"{self.kind} {path!r} cannot be imported ({type(err).__name__}: {err}); allowed: "
                f"{', '.join(self.names())} or the import path module:Class of an importable class"
            ) from None
        if not isinstance(obj, type):
            raise KeyError(f"{self.kind} {path!r} is a {type(obj).__name__}, not a class")
        return obj

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
