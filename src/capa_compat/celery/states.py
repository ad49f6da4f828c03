"""Celery's task states, unchanged."""

from celery.states import (
    EXCEPTION_STATES,
    FAILURE,
    IGNORED,
    PENDING,
    PROPAGATE_STATES,
    READY_STATES,
    RECEIVED,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
    UNREADY_STATES,
    precedence,
    state,
)

__all__ = [
    "EXCEPTION_STATES",
    "FAILURE",
    "IGNORED",
    "PENDING",
    "PROPAGATE_STATES",
    "READY_STATES",
    "RECEIVED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "UNREADY_STATES",
    "precedence",
    "state",
]
