"""capa_compat.celery without a worker: settings mapping, the result backend, the beat lock."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.services import require

from capa_compat.celery import Celery
from capa_compat.celery.app import result_backend_url
from capa_compat.celery.backend import CapaBackend
from capa_compat.celery.beat import Scheduler
from capa_compat.celery.schedules import schedule
from capa_core import ComponentNotFound, SettingsError


def test_no_settings_means_the_embedded_default(in_tmp: Path) -> None:
    app = Celery(f"u{uuid.uuid4().hex[:6]}")
    assert app.connection_for_write().as_uri().startswith("capa://")
    assert isinstance(app.backend, CapaBackend)
    assert app.backend.url == "capa://default"
    assert app.conf.beat_scheduler == "capa_compat.celery.beat:Scheduler"
    assert app.conf.task_serializer == "json" and list(app.conf.accept_content) == ["json"]


def test_namespaced_and_old_setting_names_are_mapped(in_tmp: Path) -> None:
    app = Celery("u1")
    app.config_from_object(
        {"CELERY_BROKER_URL": "redis://h:6379/3", "CELERY_RESULT_BACKEND": "db+sqlite:///r.db"},
        namespace="CELERY",
    )
    assert app.connection_for_write().as_uri() == "capa+redis://h:6379/3"
    assert app.backend.url == "sqlite:///r.db"
    old = Celery("u2")
    old.config_from_object(
        SimpleNamespace(BROKER_URL="sqla+sqlite:///b.db", CELERY_RESULT_BACKEND="rpc://")
    )
    assert old.connection_for_write().as_uri() == "capa+sqlite:///b.db"
    assert old.backend.url == "sqlite:///b.db"  # rpc:// results live beside the broker


def test_an_amqp_broker_behaves_as_celery_has_it_on_rabbitmq(in_tmp: Path) -> None:
    """Classic queues and no wait for confirms, unless the app's settings say otherwise."""
    require("rabbitmq")
    url = "amqp://guest:guest@127.0.0.1:5672//"
    apps = {
        "default": Celery("u3", broker=url),
        "quorum": Celery("u4", broker=url, task_default_queue_type="quorum"),
        "confirm": Celery("u5", broker=url,
                          broker_transport_options={"confirm_publish": True}),
    }
    seen = {}
    for label, app in apps.items():
        with app.connection_for_write() as connection:
            component = connection.transport.pubsub.component
            seen[label] = (component.queue_type, component.publisher_confirm)
    assert seen == {
        "default": ("classic", False),
        "quorum": ("quorum", False),
        "confirm": ("classic", True),
    }


def test_result_backend_urls() -> None:
    assert result_backend_url(None, None) == "capa://default"
    assert result_backend_url("capa://results", None) == "capa://results"
    assert result_backend_url("redis://h/3", None) == "capa+redis://h/3"
    assert result_backend_url("db+postgresql+psycopg2://u@h/db", None) == (
        "capa+postgresql://u@h/db"
    )
    assert result_backend_url("cache+memory://", None) == "capa+memory://"
    assert result_backend_url("disabled", None) == "disabled"
    assert result_backend_url("rpc://", "amqp://h//") == "capa://default"
    assert result_backend_url("rpc://", "redis://h/3") == "capa+redis://h/3"
    with pytest.raises(SettingsError, match="mongodb"):
        result_backend_url("mongodb://h/db", None)


def test_unknown_component_lists_the_configured_ones(in_tmp: Path) -> None:
    (in_tmp / "capa.toml").write_text('[pubsub.bus]\nurl = "memory://"\n')
    app = Celery("u3", broker="capa://buss")
    with pytest.raises(ComponentNotFound) as info:
        app.connection_for_write()
    message = str(info.value)
    assert "'bus'" in message and "did you mean 'bus'" in message
    named = Celery("u4", broker="capa://bus")
    with named.connection_for_write() as connection:
        connection.connect()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, in_tmp: Path) -> CapaBackend:
    url = require("redis") + "/3" if request.param == "redis" else "sqlite:///r.db"
    app = Celery(f"u{uuid.uuid4().hex[:6]}", backend=url)
    app.conf.result_backend_transport_options = {"global_keyprefix": uuid.uuid4().hex}
    app.conf.result_expires = 2
    return app.backend  # type: ignore[no-any-return]


def test_results_expire_with_result_expires(backend: CapaBackend) -> None:
    task_id = uuid.uuid4().hex
    backend.store_result(task_id, {"answer": 42}, "SUCCESS")
    assert backend.get_task_meta(task_id)["result"] == {"answer": 42}
    item = backend.store.get(backend.get_key_for_task(task_id).decode())
    assert item is not None and item.expires_at is not None
    assert item.expires_at - time.time() <= 2.1
    backend._cache.clear()
    time.sleep(2.5)
    assert backend.get_task_meta(task_id)["status"] == "PENDING"


def test_chord_counter_is_atomic_across_threads(backend: CapaBackend) -> None:
    key = f"counter-{uuid.uuid4().hex}"
    seen: list[int] = []

    def count() -> None:
        for _ in range(25):
            seen.append(backend.incr(key))

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(seen) == list(range(1, 101))  # every increment counted exactly once


def test_only_one_beat_leads(in_tmp: Path) -> None:
    app = Celery(f"beat{uuid.uuid4().hex[:6]}")
    app.conf.beat_capa_lock_ttl = 1
    app.conf.beat_schedule = {"tick": {"task": "t.tick", "schedule": schedule(0.2)}}
    sent: list[str] = []
    first, second = Scheduler(app, lazy=False), Scheduler(app, lazy=False)
    for scheduler in (first, second):
        scheduler.apply_async = lambda entry, *a, **k: sent.append(entry.name)  # type: ignore
    first.tick()
    second.tick()
    assert first.leading and not second.leading
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        first.tick()
        second.tick()
        time.sleep(0.05)
    assert not second.leading and sent
    runs = first.schedule["tick"].total_run_count
    first.close()  # releases the lock: the standby leads at its next tick, from saved state
    second.tick()
    assert second.leading
    assert second.schedule["tick"].total_run_count == runs
    second.close()
