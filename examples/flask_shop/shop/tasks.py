"""The shop's Celery tasks."""

from celery import Celery, shared_task
from celery.exceptions import Reject
from celery.utils.log import get_task_logger

from .config import Defaults

celery = Celery("shop", broker=Defaults.BROKER_URL, backend=Defaults.RESULT_BACKEND)
celery.conf.update(task_acks_late=True, task_default_queue="shop")
log = get_task_logger(__name__)


@celery.task(bind=True, max_retries=3, default_retry_delay=0.1)
def price_order(self, items, discount_percent):
    unknown = [item for item in items if item not in Defaults.PRICES]
    if unknown:
        raise Reject(f"unknown items: {unknown}", requeue=False)
    if self.request.retries == 0 and "melon" in items:
        # Melon prices come from a flaky supplier: the first try always fails.
        raise self.retry()
    subtotal = sum(Defaults.PRICES[item] for item in items)
    log.info("priced %s items", len(items))
    return round(subtotal * (100 - discount_percent) / 100, 2)


@shared_task
def add(x, y):
    return x + y
