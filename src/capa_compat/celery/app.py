"""The Celery application on capa: broker on capa pub/sub, results in capa state, beat on a lock.

Only the places where Celery turns settings into a broker connection and a result backend
change; everything else is Celery itself. Settings are read as Celery reads them (namespaces, old
upper-case names, ``-b`` / ``--result-backend``), and the final values are mapped:

================================  ==============================================================
``broker_url``                    capa transport
================================  ==============================================================
unset                             the embedded default (``capa://default``: SQLite in the cwd)
``capa://NAME``                   the configured pub/sub component NAME
``redis://`` ``amqp://`` ...      ``capa+<url>``: the capa component of that type, same server
``sqla+sqlite:///x.db``           ``capa+sqlite:///x.db``
================================  ==============================================================

``result_backend`` maps the same way onto state components (``db+postgresql://`` ->
postgres, ``db+sqlite://`` -> sqlite, ``cache+memory://`` -> memory); ``rpc://`` stores results
with the broker's server when it has a state component (Redis, PostgreSQL, SQLite, memory) and in
the embedded default otherwise; ``disabled`` stays disabled.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import celery as _celery
from celery.app import backends as _backends
from kombu.exceptions import EncodeError
from kombu.serialization import dumps as _dumps

from capa_core import ComponentNotFound

from ..kombu import install as _install_transport
from ..kombu import runtimes
from . import telemetry as _telemetry

log = logging.getLogger("capa_compat.celery")

BACKEND = "capa_compat.celery.backend:CapaBackend"
SCHEDULER = "capa_compat.celery.beat:Scheduler"
_NATIVE_SCHEDULERS = {"celery.beat:PersistentScheduler", "celery.beat.PersistentScheduler"}
# Broker kinds that also have a state component (rpc:// results go there).
_STATEFUL = {"redis", "rediss", "postgresql", "postgres", "sqlite", "memory"}

_install_transport()
_telemetry.connect()  # inert until capa telemetry is on (see capa_compat.celery.telemetry)
_backends.BACKEND_ALIASES.setdefault(runtimes.CAPA_SCHEME, BACKEND)


def result_backend_url(url: Any, broker: str | None) -> Any:
    """Map a Celery ``result_backend`` value onto the capa backend (see the module docstring)."""
    if url is not None and not isinstance(url, str):
        return url  # a backend class given in code
    if not url:
        return f"{runtimes.CAPA_SCHEME}://{runtimes.DEFAULT_COMPONENT}"
    url = url.strip()
    if url == "disabled" or url.startswith((f"{runtimes.CAPA_SCHEME}://", runtimes.CAPA_PREFIX)):
        return url
    scheme = url.partition("://")[0].lower()
    if scheme in ("rpc", "amqp", "amqps"):
        return _results_beside(broker)
    for prefix in ("db+", "cache+", "sqla+"):
        if url.startswith(prefix):
            url = url[len(prefix):]
            break
    return runtimes.CAPA_PREFIX + runtimes.legacy_component_url(url, role="result backend")


def _results_beside(broker: str | None) -> str:
    """Where rpc:// results go: the broker's server when it keeps state, else the default."""
    mapped = runtimes.broker_url(broker).split(";")[0]
    if mapped.startswith(runtimes.CAPA_PREFIX):
        legacy = mapped[len(runtimes.CAPA_PREFIX):]
        if legacy.partition("://")[0].lower() in _STATEFUL:
            return mapped
        log.warning(
            "rpc:// results: %s:// keeps no state, results go to the embedded default store",
            legacy.partition("://")[0],
        )
        return f"{runtimes.CAPA_SCHEME}://{runtimes.DEFAULT_COMPONENT}"
    name = mapped.partition("://")[2].strip("/") or runtimes.DEFAULT_COMPONENT
    if name in runtimes.configured("state"):
        return f"{runtimes.CAPA_SCHEME}://{name}"
    return f"{runtimes.CAPA_SCHEME}://{runtimes.DEFAULT_COMPONENT}"


def _check_component(url: str) -> None:
    """``capa://NAME`` must name a configured pub/sub component: fail now, listing them."""
    for part in url.split(";"):
        if part.startswith(f"{runtimes.CAPA_SCHEME}://"):
            name = part.partition("://")[2].strip("/") or runtimes.DEFAULT_COMPONENT
            known = runtimes.configured("pubsub")
            if name not in known:
                raise ComponentNotFound("pubsub", name, known)


def unserializable_argument(
    args: Any, kwargs: Any, serializer: str
) -> tuple[str, Exception] | None:
    """The first task argument ``serializer`` cannot encode, as (description, error)."""
    for index, value in enumerate(args or ()):
        try:
            _dumps(value, serializer=serializer)
        except Exception as exc:
            return f"positional argument {index} ({type(value).__name__})", exc
    for key, value in (kwargs or {}).items():
        try:
            _dumps(value, serializer=serializer)
        except Exception as exc:
            return f"keyword argument {key!r} ({type(value).__name__})", exc
    return None


_SEND_TASK = inspect.signature(_celery.Celery.send_task)


class Celery(_celery.Celery):  # type: ignore[misc]
    """A Celery app whose broker is capa pub/sub and whose result backend is capa state."""

    def _connection(self, url: Any, *args: Any, **kwargs: Any) -> Any:
        mapped = runtimes.broker_url(url)
        _check_component(mapped)
        # Our URL picks the transport; a broker_transport setting must not override it.
        kwargs["transport"] = runtimes.CAPA_SCHEME
        # The queue type Celery would declare on RabbitMQ (see runtimes.legacy_metadata).
        kwargs["transport_options"] = {
            "queue_type": self.conf.task_default_queue_type,
            **(kwargs.get("transport_options") or {}),
        }
        return super()._connection(mapped, *args, **kwargs)

    def _get_backend(self) -> Any:
        target = self.backend_cls or self.conf.result_backend
        mapped = result_backend_url(target, self.conf.broker_url)
        backend, url = _backends.by_url(mapped, self.loader)
        return backend(app=self, url=url)

    def _load_config(self) -> Any:
        conf = super()._load_config()
        if conf.get("beat_scheduler") in _NATIVE_SCHEDULERS:
            conf.beat_scheduler = SCHEDULER
        return conf

    def send_task(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().send_task(*args, **kwargs)
        except EncodeError as exc:
            bound = _SEND_TASK.bind(self, *args, **kwargs)
            options = bound.arguments.get("options", {})
            name = bound.arguments.get("name")
            task = self.tasks.get(name) if isinstance(name, str) else None
            serializer = (
                options.get("serializer")
                or getattr(task, "serializer", None)
                or self.conf.task_serializer
            )
            culprit = unserializable_argument(
                bound.arguments.get("args"), bound.arguments.get("kwargs"), serializer
            )
            if culprit is None:
                raise
            where, error = culprit
            raise EncodeError(
                f"task {name!r}: {where} cannot be serialized with {serializer!r}: {error}. "
                f"Pass values {serializer} can encode (accept_content decides which "
                "serializers workers take)."
            ) from exc

    send_task.__signature__ = _SEND_TASK  # type: ignore[attr-defined]
