"""Celery's logging helpers (get_task_logger...), unchanged."""

from celery.utils.log import (
    LOG_LEVELS,
    ColorFormatter,
    LoggingProxy,
    base_logger,
    get_logger,
    get_multiprocessing_logger,
    get_task_logger,
    in_sighandler,
    mlevel,
    reset_multiprocessing_logger,
    set_in_sighandler,
)

__all__ = [
    "LOG_LEVELS",
    "ColorFormatter",
    "LoggingProxy",
    "base_logger",
    "get_logger",
    "get_multiprocessing_logger",
    "get_task_logger",
    "in_sighandler",
    "mlevel",
    "reset_multiprocessing_logger",
    "set_in_sighandler",
]
