"""Celery's schedules (crontab, schedule, solar); the capa beat scheduler runs them."""

from celery.schedules import (
    ParseException,
    crontab,
    crontab_parser,
    maybe_schedule,
    schedule,
    solar,
)

__all__ = [
    "ParseException",
    "crontab",
    "crontab_parser",
    "maybe_schedule",
    "schedule",
    "solar",
]
