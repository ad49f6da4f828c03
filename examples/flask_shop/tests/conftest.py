import pytest
from celery.contrib.testing.worker import start_worker
from shop import create_app
from shop.tasks import celery


@pytest.fixture(scope="session")
def app():
    return create_app(TESTING=True)


@pytest.fixture(scope="session")
def worker(app):
    with start_worker(celery, pool="threads", concurrency=2, perform_ping_check=False,
                      shutdown_timeout=10):
        yield


@pytest.fixture
def client(app):
    return app.test_client()
