"""Which adapters exist: the entry-point group `clipbot.adapters`, built-ins included.

The built-ins are declared in pyproject.toml like any third-party adapter, and again in
`BUILTIN_ADAPTERS` (a test keeps the two equal): an editable install made before an entry point
was added does not list it, and a checkout run without installing lists none, yet `clipbot run`
must find its own adapters either way. An installed entry point of the same name wins.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Any

from bot.adapters.base import Adapter, AdapterSettings
from bot.config import env_prefix
from engine.errors import UserError

__all__ = ["BUILTIN_ADAPTERS", "GROUP", "adapter_names", "load_adapter", "load_adapter_settings", "reads_history"]

log = logging.getLogger(__name__)

GROUP = "clipbot.adapters"
# name -> "module:attribute", exactly as in pyproject's [project.entry-points."clipbot.adapters"]
BUILTIN_ADAPTERS = {
    "local": "bot.adapters.local:adapter",
    "discord": "bot.adapters.discord:adapter",
    "slack": "bot.adapters.slack:adapter",
}


def _declared() -> dict[str, str]:
    """name -> "module:attribute": the built-ins, then every installed entry point."""
    found = dict(BUILTIN_ADAPTERS)
    for point in entry_points(group=GROUP):
        found[point.name] = point.value
    return found


def adapter_names() -> list[str]:
    """Every registered adapter's name, the built-ins first (nothing is imported)."""
    return list(_declared())


def load_adapter(name: str) -> Adapter:
    """The registered adapter `name` (its entry-point object, or an instance of its class)."""
    target = _declared().get(name)
    if target is None:
        raise KeyError(name)
    module_name, _, attribute = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else ():
        found = getattr(found, part)
    adapter = found() if isinstance(found, type) else found
    if getattr(adapter, "name", None) != name:
        raise TypeError(f"adapter entry point {name!r} ({target}) names an adapter called "
                        f"{getattr(adapter, 'name', None)!r}")
    return adapter


def load_adapter_settings(adapter: Adapter) -> AdapterSettings:
    """The adapter's settings from the environment; a bad value is a UserError naming its variable."""
    from pydantic import ValidationError

    try:
        return adapter.load_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first.get("loc") else ""
        name = field if field.isupper() else env_prefix(adapter.name) + field.upper() if field else "a setting"
        raise UserError(f"invalid setting {name}: {first['msg']}") from None


def reads_history(name: str) -> bool:
    """True when adapter `name` can read its platform's message history from a shell."""
    try:
        adapter = load_adapter(name)
    except Exception:  # an unknown or broken adapter reads nothing; `clipbot run` reports it
        return False
    return type(adapter).open_history is not Adapter.open_history
