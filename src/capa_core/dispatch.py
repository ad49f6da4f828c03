"""The one dispatch point every API call passes: interceptors, retries and error translation."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .errors import CapaError, ComponentUnavailable
from .spi import Component

T = TypeVar("T")
log = logging.getLogger("capa_core")


@dataclass(slots=True)
class Call:
    """What is being done, for interceptors: block, component and operation, plus attributes."""

    component: Component
    operation: str
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def block(self) -> str:
        return self.component.block


class Interceptor(Protocol):
    """Wraps every API call (telemetry, metrics, auditing). ``proceed`` runs the call."""

    def intercept(self, call: Call, proceed: Callable[[], Any]) -> Any: ...


class MessageTracing(Protocol):
    """Carries trace context across processes inside messages (CloudEvents attributes)."""

    def inject(self, carrier: dict[str, Any]) -> None:
        """Write the current trace context into an outgoing message's attributes."""

    def process(
        self, component: Component, topic: str, group: str, carrier: Mapping[str, Any]
    ) -> AbstractContextManager[Any]:
        """A span for handling one received message, continuing the publisher's trace."""


# Interceptors installed process-wide (by an instrumentor) reach every Dispatcher, current and
# future, so instrumenting does not depend on when Runtimes are made.
_installed: list[Interceptor] = []
_tracing: list[MessageTracing] = []
_dispatchers: weakref.WeakSet[Dispatcher] = weakref.WeakSet()


def install(interceptor: Interceptor, tracing: MessageTracing | None = None) -> None:
    """Add ``interceptor`` (and message tracing) to every Dispatcher of the process."""
    if interceptor not in _installed:
        _installed.append(interceptor)
    if tracing is not None and tracing not in _tracing:
        _tracing.append(tracing)
    for dispatcher in list(_dispatchers):
        dispatcher.add_interceptor(interceptor)
        if tracing is not None:
            dispatcher.tracing = tracing


def uninstall(interceptor: Interceptor, tracing: MessageTracing | None = None) -> None:
    if interceptor in _installed:
        _installed.remove(interceptor)
    if tracing is not None and tracing in _tracing:
        _tracing.remove(tracing)
    for dispatcher in list(_dispatchers):
        dispatcher.remove_interceptor(interceptor)
        if dispatcher.tracing is tracing:
            dispatcher.tracing = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries for calls that failed because the middleware was unreachable."""

    attempts: int = 3
    backoff: float = 0.1  # seconds before the first retry, doubled each time
    max_backoff: float = 2.0

    def delays(self) -> list[float]:
        return [min(self.backoff * 2**n, self.max_backoff) for n in range(self.attempts - 1)]


class Dispatcher:
    """Runs component calls: through interceptors, with retries, translating driver errors."""

    def __init__(self, retry: RetryPolicy | None = None) -> None:
        self.retry = retry or RetryPolicy()
        self.interceptors: tuple[Interceptor, ...] = tuple(_installed)
        self.tracing: MessageTracing | None = _tracing[-1] if _tracing else None
        _dispatchers.add(self)

    def add_interceptor(self, interceptor: Interceptor) -> None:
        if interceptor not in self.interceptors:
            self.interceptors = (*self.interceptors, interceptor)

    def remove_interceptor(self, interceptor: Interceptor) -> None:
        self.interceptors = tuple(i for i in self.interceptors if i is not interceptor)

    def call(
        self,
        component: Component,
        operation: str,
        fn: Callable[..., T],
        *args: Any,
        attributes: Mapping[str, Any] | None = None,
    ) -> T:
        if not self.interceptors:  # the common case: one try block and the call
            try:
                return fn(*args)
            except CapaError:
                raise
            except Exception as exc:
                return self._recover(component, operation, fn, args, exc)

        def proceed() -> T:
            try:
                return fn(*args)
            except CapaError:
                raise
            except Exception as exc:
                return self._recover(component, operation, fn, args, exc)

        call = Call(component, operation, attributes or {})
        return self._chain(call, proceed, 0)  # type: ignore[no-any-return]

    def _chain(self, call: Call, proceed: Callable[[], Any], index: int) -> Any:
        if index == len(self.interceptors):
            return proceed()
        return self.interceptors[index].intercept(
            call, lambda: self._chain(call, proceed, index + 1)
        )

    def _recover(
        self,
        component: Component,
        operation: str,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        exc: Exception,
    ) -> T:
        """Retry transient failures; translate what is left into a typed error."""
        for delay in self.retry.delays():
            if not isinstance(exc, component.transient_errors):
                break
            log.warning(
                "%s %s.%s failed (%s); retrying in %.2fs",
                component.type_name, component.name, operation, exc, delay,
            )
            time.sleep(delay)
            try:
                return fn(*args)
            except CapaError:
                raise
            except Exception as again:
                exc = again
        translated = component.translate_error(exc)
        if translated is None and isinstance(exc, component.transient_errors):
            translated = ComponentUnavailable(
                f"{component.type_name} component {component.name!r} is unreachable during "
                f"{operation}: {exc}"
            )
        if translated is None:
            raise exc
        raise translated from exc
