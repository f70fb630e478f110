"""Typed values that cross a process border as JSON: task options and task results.

A `Wire` is a frozen dataclass. `to_json()` gives the plain dict a Celery result backend, a job
record and `--json` carry; `from_json()` rebuilds the typed value on the other side, nested `Wire`
fields and tuples of them included. Tasks may return a `Wire`: the worker stores its JSON
(`engine.worker`), and the caller decodes it with the same class (`Classification.from_json(...)`),
so both sides of a task share one written-down shape instead of a dict read by key.
Light: no torch, importable by handlers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, Mapping, TypeVar, Union

JSON = Union[None, bool, int, float, str, list["JSON"], dict[str, "JSON"]]
W = TypeVar("W", bound="Wire")


class WireError(ValueError):
    """A JSON value that does not have the shape its Wire class declares."""


class Wire:
    """Mixin for frozen dataclasses that travel as JSON. Fields named in `OMIT_NONE` are left
    out of the JSON while they are None (shapes that never carried them stay the same)."""

    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self.OMIT_NONE:
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_json(cls: type[W], data: Mapping[str, Any]) -> W:
        if not isinstance(data, Mapping):
            raise WireError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise WireError(f"{cls.__name__}: unknown fields {', '.join(sorted(unknown))}")
        try:
            return cls(**{k: _typed(hints[k], v, f"{cls.__name__}.{k}") for k, v in data.items()})
        except TypeError as exc:  # a required field is missing
            raise WireError(f"{cls.__name__}: {exc}") from None


def to_wire(value: Any) -> Any:
    """What a task returned, as JSON: a Wire's dict, anything else unchanged."""
    return value.to_json() if isinstance(value, Wire) else value


def _plain(value: Any) -> JSON:
    if isinstance(value, Wire):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _typed(hint: Any, value: Any, where: str) -> Any:
    """`value` (plain JSON) as the type `hint` says: Wire classes rebuilt, lists to tuples where
    the field is a tuple; scalars checked loosely (an int is a fine float)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _typed(options[0], value, where) if len(options) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Wire):
        return hint.from_json(value)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise WireError(f"{where}: expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        return tuple(_typed(item, v, where) for v in value)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            raise WireError(f"{where}: expected a list, got {type(value).__name__}")
        return [_typed(item, v, where) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool, float) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise WireError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    return value
