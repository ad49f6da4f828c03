"""capa_compat.flask: flask.Config plus from_capa, with live updates from capa configuration."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.services import require

flask = pytest.importorskip("flask")

from capa_compat.flask import (  # noqa: E402
    Config,
    ConfigChange,
    ConfigurationUnavailable,
    ConfigValueError,
    Flask,
)
from capa_core import ConfigurationItem, Runtime  # noqa: E402

PUSH_BUDGET = 0.1  # seconds from a write in the store to app.config showing it


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``predicate`` held; fails after ``timeout``."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.0005)
    return time.perf_counter() - start


def runtime_for(backend: str, tmp: Path, unique: str) -> Runtime:
    url = {
        "memory": f"memory://flask-{unique}",
        "sqlite": f"sqlite:///{tmp / 'capa.db'}",
    }.get(backend) or require("redis") + "/2"
    return Runtime.from_mapping({
        "capa": {"default_url": "memory://", "app_id": f"flask-{unique}"},
        "configuration": {"app": {"url": url, "namespace": f"flask-{unique}"}},
    })


@pytest.fixture
def runtimes(tmp_path: Path, unique: str) -> Iterator[Callable[[str], Runtime]]:
    made: list[Runtime] = []

    def make(backend: str) -> Runtime:
        made.append(runtime_for(backend, tmp_path, unique))
        return made[-1]

    yield make
    if made:  # leave nothing behind in a shared store
        store = made[0].configuration("app")
        keys = [item.key for item in store.get()]
        if keys:
            store.delete(keys)
    for runtime in made:
        runtime.close()


def test_flask_uses_our_config() -> None:
    app = Flask(__name__)
    assert isinstance(app.config, Config) and isinstance(app.config, flask.Config)
    assert app.config["DEBUG"] is False  # Flask's defaults are there


def test_from_capa_loads_group_label_and_prefix(memory_runtime: Runtime) -> None:
    store = memory_runtime.configuration()
    store.save({"WEB_POOL": "5", "WEB_NAME": "shop", "WEB_FLAGS": '{"a": [1]}', "OTHER": "x"},
               group="web", label="prod")
    store.save({"WEB_POOL": "99"}, group="web", label="dev")
    app = Flask(__name__)
    assert app.config.from_capa(runtime=memory_runtime, group="web", label="prod",
                                prefix="WEB_", subscribe=False) is True
    assert app.config["POOL"] == 5
    assert app.config["NAME"] == "shop"  # not JSON: the string itself
    assert app.config["FLAGS"] == {"a": [1]}
    assert "OTHER" not in app.config and "WEB_POOL" not in app.config


def test_keys_narrow_what_is_loaded(memory_runtime: Runtime) -> None:
    memory_runtime.configuration().save({"A": "1", "B": "2"})
    app = Flask(__name__)
    app.config.from_capa(runtime=memory_runtime, keys=["A"], subscribe=False)
    assert app.config["A"] == 1 and "B" not in app.config


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
def test_a_change_in_the_store_reaches_app_config_within_100ms(
    runtimes: Callable[[str], Runtime], backend: str
) -> None:
    reader, writer = runtimes(backend), runtimes(backend)  # two runtimes: writes come from afar
    writer.configuration("app").save({"POOL": "1"})
    app = Flask(__name__)
    app.config.from_capa("app", runtime=reader)
    assert app.config["POOL"] == 1
    latencies = []
    for value in range(2, 7):
        start = time.perf_counter()
        writer.configuration("app").save({"POOL": str(value)})
        wait_for(lambda value=value: app.config["POOL"] == value)
        latencies.append(time.perf_counter() - start)
    latencies.sort()
    assert latencies[len(latencies) // 2] < PUSH_BUDGET, latencies


def test_hook_sees_each_change_and_a_failing_hook_stops_nothing(memory_runtime: Runtime) -> None:
    store = memory_runtime.configuration()
    store.save({"A": "1"})
    seen: list[list[ConfigChange]] = []

    def hook(config: Config, changes: list[ConfigChange]) -> None:
        seen.append(changes)
        raise RuntimeError("the app's hook is broken")

    app = Flask(__name__)
    app.config.from_capa(runtime=memory_runtime, on_change=hook)
    store.save({"A": "2", "B": "true"})
    wait_for(lambda: app.config.get("B") is True)
    store.save({"A": "3"})
    wait_for(lambda: app.config["A"] == 3)
    changes = [change for batch in seen for change in batch]
    assert ConfigChange("A", 2, 1) in changes and ConfigChange("B", True, None) in changes
    assert ConfigChange("A", 3, 2) in changes


def test_deleting_a_key_gives_back_the_value_it_replaced(memory_runtime: Runtime) -> None:
    store = memory_runtime.configuration()
    store.save({"POOL": "10", "NEW": "1"})
    app = Flask(__name__)
    app.config["POOL"] = 2
    app.config.from_capa(runtime=memory_runtime)
    assert app.config["POOL"] == 10
    store.delete(["POOL", "NEW"])
    wait_for(lambda: app.config["POOL"] == 2 and "NEW" not in app.config)


def test_subscribe_false_loads_once(memory_runtime: Runtime) -> None:
    store = memory_runtime.configuration()
    store.save({"A": "1"})
    app = Flask(__name__)
    app.config.from_capa(runtime=memory_runtime, subscribe=False)
    store.save({"A": "2"})
    time.sleep(0.05)
    assert app.config["A"] == 1
    assert app.config.refresh_capa() is True and app.config["A"] == 2


def test_readers_never_see_a_missing_key_while_values_change(memory_runtime: Runtime) -> None:
    store = memory_runtime.configuration()
    store.save({"A": "0"})
    app = Flask(__name__)
    app.config.from_capa(runtime=memory_runtime)
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                assert isinstance(app.config["A"], int)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    for value in range(1, 300):
        store.save({"A": str(value)})
    stop.set()
    for reader in readers:
        reader.join(timeout=10)
    assert errors == [] and app.config["A"] == 299


def test_a_value_that_does_not_parse_names_the_key(memory_runtime: Runtime) -> None:
    store = memory_runtime.configuration()
    tags = {"content-type": "application/json"}
    store.save([ConfigurationItem("LIMITS", "{not json", tags=tags)])
    app = Flask(__name__)
    with pytest.raises(ConfigValueError, match=r"'LIMITS'.*tagged as JSON.*Fix"):
        app.config.from_capa(runtime=memory_runtime)
    with pytest.raises(ConfigValueError, match=r"'LIMITS'.*int"):
        app.config.from_capa(runtime=memory_runtime, loads=int)


def test_a_bad_live_value_is_logged_and_the_last_one_kept(
    memory_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    store = memory_runtime.configuration()
    store.save({"N": "1"})
    app = Flask(__name__)
    app.config.from_capa(runtime=memory_runtime, loads=int)
    with caplog.at_level(logging.ERROR, logger="capa_compat.flask"):
        store.save({"N": "many"})
        store.save({"OTHER": "2"})
        wait_for(lambda: app.config.get("OTHER") == 2)
    assert app.config["N"] == 1
    assert "'N'" in caplog.text and "keeping the last value" in caplog.text


def test_unknown_component_lists_the_configured_ones(memory_runtime: Runtime) -> None:
    app = Flask(__name__)
    with pytest.raises(ConfigurationUnavailable, match=r"no configuration component named 'ap'.*"
                       r"configured: 'default'"):
        app.config.from_capa("ap", runtime=memory_runtime)


def test_a_store_down_at_start_up_fails_naming_the_setting_and_the_fix() -> None:
    port = free_port()
    runtime = Runtime.from_mapping({
        "capa": {"default_url": "memory://", "retries": 1},
        "configuration": {"remote": {"url": f"redis://127.0.0.1:{port}/2"}},
    })
    app = Flask(__name__)
    try:
        with pytest.raises(ConfigurationUnavailable) as raised:
            app.config.from_capa("remote", runtime=runtime)
    finally:
        runtime.close()
    message = str(raised.value)
    assert "'remote'" in message and "[configuration.remote]" in message and "Fix:" in message


def test_a_store_down_later_keeps_the_last_values_and_logs(
    unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis_url = require("redis")
    with TcpProxy(redis_url) as proxy:
        runtime = Runtime.from_mapping({
            "capa": {"default_url": "memory://", "app_id": f"flask-{unique}", "retries": 1},
            "configuration": {"remote": {"url": f"redis://127.0.0.1:{proxy.port}/2"}},
        })
        writer = Runtime.from_mapping({
            "capa": {"default_url": "memory://", "app_id": f"flask-{unique}"},
            "configuration": {"remote": {"url": redis_url + "/2"}},
        })
        try:
            writer.configuration("remote").save({"POOL": "4"})
            app = Flask(__name__)
            app.config.from_capa("remote", runtime=runtime, resync=0.05)
            assert app.config["POOL"] == 4
            with caplog.at_level(logging.WARNING, logger="capa_compat.flask"):
                proxy.stop()
                wait_for(lambda: "unreachable" in caplog.text, timeout=10)
                assert app.config["POOL"] == 4  # never blanked
                writer.configuration("remote").save({"POOL": "5"})
                proxy.start()
                wait_for(lambda: app.config["POOL"] == 5, timeout=10)
                # The watcher may bring the change first; the resync notices the store is back.
                wait_for(lambda: "reachable again" in caplog.text, timeout=10)
            assert "keeping the last known values" in caplog.text
            app.config.close_capa()
        finally:
            writer.configuration("remote").delete(["POOL"])
            runtime.close()
            writer.close()


# --- a loopback TCP forwarder that can be switched off, to take a store away --------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server; stop() drops every connection and refuses new ones."""

    def __init__(self, target_url: str) -> None:
        hostport = target_url.split("://", 1)[1].split("/", 1)[0]
        host, _, port = hostport.partition(":")
        self.target = (host, int(port))
        self.port = free_port()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            sockets, self._sockets = self._sockets, []
        if server is not None:
            server.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._server is not server:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def test_config_class_keeps_every_flask_loader(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "settings.py").write_text("SECRET_KEY = 'k'\nlower = 1\n")
    monkeypatch.setenv("FLASK_NESTED__A", "1")
    app = Flask(__name__, root_path=str(tmp_path))
    app.config.from_pyfile("settings.py")
    app.config.from_prefixed_env()
    app.config.from_mapping({"X": 1})
    assert app.config["SECRET_KEY"] == "k" and "lower" not in app.config
    assert app.config["NESTED"] == {"A": 1} and app.config["X"] == 1
