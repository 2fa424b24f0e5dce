"""Collects the orchestrators, activities and entities the test modules define.

Test modules decorate their functions with @orchestrator / @activity at import
time; pytest imports every test module during collection, before the first
test asks for the session worker, so the worker can register everything and
only then be started (the SDK refuses registrations on a running worker).
"""

from __future__ import annotations

from typing import Any, Callable

_orchestrators: dict[str, Callable[..., Any]] = {}
_activities: dict[str, Callable[..., Any]] = {}
_entities: dict[str, Any] = {}


def _add(table: dict[str, Callable[..., Any]], kind: str, fn: Callable[..., Any]):
    name = fn.__name__
    existing = table.get(name)
    if existing is not None and existing is not fn:
        raise ValueError(
            f"two {kind}s are named {name!r} ({existing.__module__} and {fn.__module__}); "
            "the SDK registers by function name, so names must be unique")
    table[name] = fn
    return fn


def orchestrator(fn: Callable[..., Any]) -> Callable[..., Any]:
    return _add(_orchestrators, "orchestrator", fn)


def activity(fn: Callable[..., Any]) -> Callable[..., Any]:
    return _add(_activities, "activity", fn)


def entity(fn: Any) -> Any:
    """A function or DurableEntity class, registered under its own name (lower-cased by the SDK)."""
    return _add(_entities, "entity", fn)


def register_all(worker: Any) -> None:
    for fn in _orchestrators.values():
        worker.add_orchestrator(fn)
    for fn in _activities.values():
        worker.add_activity(fn)
    for fn in _entities.values():
        worker.add_entity(fn)
