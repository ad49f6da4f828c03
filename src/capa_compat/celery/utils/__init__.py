"""Celery's utility modules apps import from (capa_compat.celery.utils.log)."""
