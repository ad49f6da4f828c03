import os

import django
import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_site.settings")
django.setup()


@pytest.fixture(scope="session")
def worker():
    from catalog_site.celery import app
    from celery.contrib.testing.worker import start_worker

    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False,
                      shutdown_timeout=10):
        yield


@pytest.fixture
def client():
    from django.core.cache import cache
    from django.test import Client

    cache.clear()
    return Client()
