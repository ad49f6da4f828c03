"""Background work of the catalog."""

from celery import shared_task
from django.core.cache import cache


@shared_task(bind=True, autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=3)
def rebuild_index(self, products):
    index = {name: position for position, name in enumerate(sorted(products))}
    cache.set("catalog:index", index, timeout=None)
    return len(index)
