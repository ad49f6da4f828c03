"""Celery's public names with an application class that runs on capa: change the import line only.

``Celery`` sends tasks through capa pub/sub (a kombu transport) and keeps results in capa state;
``celery beat`` uses a scheduler whose state is in capa state and which only runs while it holds a
capa lock. Legacy broker and backend URLs keep working (see capa_compat.celery.app). Everything
else here is Celery's own object, so tasks, canvas, results, signals and the ``celery`` command
behave as upstream.
"""

from __future__ import annotations

from celery import (
    VERSION,
    Signature,
    Task,
    __version__,
    bugreport,
    chain,
    chord,
    chunks,
    current_app,
    current_task,
    group,
    maybe_signature,
    shared_task,
    signature,
    states,
    subtask,
    uuid,
    version_info,
    xmap,
    xstarmap,
)

from . import canvas, exceptions, result, schedules, signals
from .app import Celery
from .backend import CapaBackend

__all__ = [
    "VERSION",
    "CapaBackend",
    "Celery",
    "Signature",
    "Task",
    "__version__",
    "bugreport",
    "canvas",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "current_task",
    "exceptions",
    "group",
    "maybe_signature",
    "result",
    "schedules",
    "shared_task",
    "signals",
    "signature",
    "states",
    "subtask",
    "uuid",
    "version_info",
    "xmap",
    "xstarmap",
]
