"""Typed errors of the standard API: each names what went wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CapaError(Exception):
    """Base class of every error raised by capa_core."""


class ComponentNotFound(CapaError, LookupError):
    """A building block was asked for a component name that is not configured."""

    def __init__(self, block: str, name: str, known: Iterable[str]) -> None:
        self.block, self.name, self.known = block, name, sorted(known)
        hint = _did_you_mean(name, self.known)
        listed = ", ".join(repr(k) for k in self.known) or "none"
        super().__init__(
            f"no {block} component named {name!r}{hint}; configured: {listed}. "
            f"Add a [{block}.{name}] table to capa.toml (or a Dapr component file) to define it."
        )


class UnknownComponentType(CapaError, LookupError):
    """A component type (or URL scheme) that no alias or entry point provides."""

    def __init__(self, type_name: str, known: Iterable[str]) -> None:
        self.type_name, self.known = type_name, sorted(known)
        super().__init__(
            f"unknown component type {type_name!r}{_did_you_mean(type_name, self.known)}; "
            f"known types: {', '.join(self.known)}. Third-party components register under the "
            f"'capa.components' entry-point group."
        )


class UnsupportedFeature(CapaError, NotImplementedError):
    """The caller asked a component for a capability it does not declare."""

    def __init__(self, component: str, feature: str, hint: str = "") -> None:
        self.component, self.feature = component, feature
        super().__init__(
            f"component {component!r} does not support {feature}"
            + (f": {hint}" if hint else "; pick a component type that declares it")
        )


class SettingsError(CapaError, ValueError):
    """Settings that cannot work, reported at start-up with where they came from."""

    def __init__(self, source: str, key: str, problem: str, fix: str) -> None:
        self.source, self.key = source, key
        super().__init__(f"{source}: {key}: {problem.rstrip('.')}. Fix: {fix}")


class ComponentUnavailable(CapaError, ConnectionError):
    """The middleware behind a component could not be reached; the call may be retried."""


class StateError(CapaError):
    """Base of state-store errors."""


class ETagMismatch(StateError):
    """A conditional write or delete was made with an ETag that is no longer current."""

    def __init__(self, key: str, detail: str = "") -> None:
        self.key, self.detail = key, detail
        super().__init__(key, detail)

    def __str__(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return (
            f"etag mismatch for key {self.key!r}{detail}; "
            "read the item again and retry with its current etag"
        )


class BulkStateError(StateError):
    """Some entries of a bulk operation failed; ``failures`` maps each key to its error."""

    def __init__(self, failures: dict[str, Exception]) -> None:
        self.failures = failures
        keys = ", ".join(repr(k) for k in list(failures)[:5])
        more = "" if len(failures) <= 5 else f" and {len(failures) - 5} more"
        super().__init__(f"{len(failures)} bulk entries failed: {keys}{more}")


class LockError(CapaError):
    """Base of lock errors."""


class LockNotAcquired(LockError, TimeoutError):
    """A lock could not be taken within the time the caller allowed."""


class LockNotOwned(LockError):
    """The caller tried to extend or release a lock it does not hold."""


class PublishError(CapaError):
    """Some entries of a bulk publish failed; ``failed`` maps entry ids to their errors."""

    def __init__(self, failed: dict[str, Exception]) -> None:
        self.failed = failed
        super().__init__(f"{len(failed)} entries were not published: {', '.join(failed)}")


class SecretNotFound(CapaError, KeyError):
    """A secret store has no secret under the asked name."""

    def __init__(self, store: str, name: str) -> None:
        self.store, self.name = store, name
        super().__init__(f"secret store {store!r} has no secret named {name!r}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class SerializationError(CapaError, TypeError):
    """A value the codec cannot encode or bytes it cannot decode."""


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
