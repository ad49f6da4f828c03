"""capa_compat.dynaconf: dynaconf settings layered from capa configuration, with live reload."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.services import require

pytest.importorskip("dynaconf")

import dynaconf

from capa_compat.dynaconf import (
    ConfigurationUnavailable,
    ConfigValueError,
    Dynaconf,
    FlaskDynaconf,
    LazySettings,
    Validator,
    capa_kwargs,
)
from capa_core import Runtime

PUSH_BUDGET = 0.1


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.0005)
    return time.perf_counter() - start


@pytest.fixture
def files(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A settings.toml with environments, and one MYAPP_ env var, in an empty directory."""
    (in_tmp / "settings.toml").write_text(
        '[default]\nname = "from-file"\npool = 1\ncolor = "red"\n'
        '[development]\npool = 2\n[production]\npool = 3\n'
    )
    for var in ("MYAPP_COLOR", "MYAPP_POOL", "MYAPP_NAME", "ENV_FOR_DYNACONF"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MYAPP_COLOR", "from-env")
    return in_tmp


def make(runtime: Runtime, **kwargs: Any) -> LazySettings:
    return Dynaconf(
        settings_files=["settings.toml"], environments=True, envvar_prefix="MYAPP",
        capa_component="default", capa_runtime=runtime, **kwargs,
    )


def test_names_are_dynaconfs() -> None:
    assert Dynaconf is LazySettings and issubclass(LazySettings, dynaconf.LazySettings)
    assert Validator is dynaconf.Validator
    assert issubclass(FlaskDynaconf, dynaconf.FlaskDynaconf)


def test_without_a_component_nothing_changes(files: Path) -> None:
    settings = Dynaconf(settings_files=["settings.toml"], environments=True, envvar_prefix="MYAPP")
    assert settings.LOADERS_FOR_DYNACONF == ["dynaconf.loaders.env_loader"]
    assert settings.POOL == 2 and settings.COLOR == "from-env"
    assert capa_kwargs({"loaders": ["x"]}) == {"loaders": ["x"]}


def test_capa_values_layer_over_files_and_env_vars(files: Path, memory_runtime: Runtime) -> None:
    store = memory_runtime.configuration()
    store.save({"COLOR": "from-capa", "LIMITS": '{a = 1, b = "two"}', "RETRIES": "@int 5"})
    settings = make(memory_runtime)
    assert settings.COLOR == "from-capa"  # over the env var and the file
    assert settings.NAME == "from-file" and settings.POOL == 2
    assert settings.LIMITS == {"a": 1, "b": "two"}  # parsed like an env var: TOML
    assert settings.RETRIES == 5
    assert "CAPA_COMPONENT_FOR_DYNACONF" not in settings.as_dict()


def test_environments_map_to_labels(files: Path, memory_runtime: Runtime) -> None:
    store = memory_runtime.configuration()
    store.save({"POOL": "10"})  # no label: the base
    store.save({"POOL": "20"}, label="development")
    store.save({"POOL": "30", "ONLY_PROD": "true"}, label="production")
    settings = make(memory_runtime)
    assert settings.POOL == 20 and settings.get("ONLY_PROD") is None
    production = settings.from_env("production")
    assert production.POOL == 30 and production.ONLY_PROD is True
    pinned = make(memory_runtime, capa_label="production")
    assert pinned.POOL == 30


def test_group_and_prefix(files: Path, memory_runtime: Runtime) -> None:
    store = memory_runtime.configuration()
    store.save({"SHOP_POOL": "7", "OTHER": "x"}, group="shop")
    settings = make(memory_runtime, capa_group="shop", capa_prefix="SHOP_")
    assert settings.POOL == 7 and settings.get("OTHER") is None


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
def test_a_change_in_the_store_is_live_within_100ms(
    files: Path, backend: str, unique: str
) -> None:
    url = {"memory": f"memory://dyn-{unique}", "sqlite": f"sqlite:///{files / 'capa.db'}"}.get(
        backend
    ) or require("redis") + "/2"
    document = {
        "capa": {"default_url": "memory://", "app_id": f"dyn-{unique}"},
        "configuration": {"default": {"url": url, "namespace": f"dyn-{unique}"}},
    }
    reader, writer = Runtime.from_mapping(document), Runtime.from_mapping(document)
    try:
        writer.configuration().save({"POOL": "100"}, label="development")
        settings = make(reader)
        assert settings.POOL == 100
        latencies = []
        for value in range(101, 106):
            start = time.perf_counter()
            writer.configuration().save({"POOL": str(value)}, label="development")
            wait_for(lambda value=value: value == settings.POOL)
            latencies.append(time.perf_counter() - start)
        latencies.sort()
        assert latencies[len(latencies) // 2] < PUSH_BUDGET, latencies
        writer.configuration().delete(["POOL"], label="development")
        wait_for(lambda: settings.POOL == 2)  # the file's value again
    finally:
        reader.close()
        writer.close()


def test_a_higher_label_shadows_and_deleting_it_uncovers(
    files: Path, memory_runtime: Runtime
) -> None:
    store = memory_runtime.configuration()
    store.save({"COLOR": "base"})
    settings = make(memory_runtime)
    assert settings.COLOR == "base"
    store.save({"COLOR": "dev"}, label="development")
    wait_for(lambda: settings.COLOR == "dev")
    store.save({"COLOR": "base2"})  # a lower label changes: the higher one still wins
    time.sleep(0.02)
    assert settings.COLOR == "dev"
    store.delete(["COLOR"], label="development")
    wait_for(lambda: settings.COLOR == "base2")
    store.delete(["COLOR"])
    wait_for(lambda: settings.COLOR == "from-env")  # what capa had replaced


def test_a_live_change_that_breaks_a_validator_is_rolled_back(
    files: Path, memory_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    store = memory_runtime.configuration()
    store.save({"WORKERS": "4"})
    settings = make(memory_runtime, validators=[Validator("WORKERS", lte=16)])
    assert settings.WORKERS == 4
    with caplog.at_level(logging.ERROR, logger="capa_compat.dynaconf"):
        store.save({"WORKERS": "64"})
        store.save({"MARK": "1"})
        wait_for(lambda: settings.get("MARK") == 1)
    assert settings.WORKERS == 4
    assert "WORKERS" in caplog.text and "keeping the previous values" in caplog.text


def test_a_value_that_does_not_parse_names_the_key(files: Path, memory_runtime: Runtime) -> None:
    memory_runtime.configuration().save({"BROKEN": "@int many"}, label="development")
    with pytest.raises(ConfigValueError, match=r"'BROKEN'.*label 'development'.*Fix"):
        make(memory_runtime).BROKEN  # noqa: B018


def test_live_false_loads_once(files: Path, memory_runtime: Runtime) -> None:
    store = memory_runtime.configuration()
    store.save({"POOL": "50"})
    settings = make(memory_runtime, capa_live=False)
    assert settings.POOL == 50
    store.save({"POOL": "51"})
    time.sleep(0.05)
    assert settings.POOL == 50
    settings.reload()
    assert settings.POOL == 51


def test_switched_on_from_the_environment(
    files: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    (files / "capa.toml").write_text(
        f'[capa]\ndefault_url = "memory://"\n'
        f'[configuration.app]\nurl = "memory://"\nnamespace = "env-{unique}"\n'
    )
    Runtime.from_settings(files / "capa.toml").configuration("app").save({"POOL": "77"})
    monkeypatch.setenv("CAPA_COMPONENT_FOR_DYNACONF", "app")
    monkeypatch.setenv("CAPA_RUNTIME_FOR_DYNACONF", str(files / "capa.toml"))
    settings = dynaconf.Dynaconf(settings_files=["settings.toml"], environments=True)
    assert settings.POOL == 2  # upstream's class: untouched
    settings = Dynaconf(settings_files=["settings.toml"], environments=True)
    assert settings.POOL == 77
    explicit = Dynaconf(settings_files=["settings.toml"], environments=True,
                        loaders=["dynaconf.loaders.env_loader"])
    assert explicit.POOL == 2  # a loader list given in code is taken as complete


def test_unknown_component_names_the_setting(files: Path, memory_runtime: Runtime) -> None:
    settings = Dynaconf(capa_component="nope", capa_runtime=memory_runtime)
    with pytest.raises(ConfigurationUnavailable, match="CAPA_COMPONENT_FOR_DYNACONF = 'nope'"):
        settings.ANYTHING  # noqa: B018


def test_a_store_down_at_start_up_fails_naming_the_setting_and_the_fix(files: Path) -> None:
    from tests.test_flask_config import free_port

    runtime = Runtime.from_mapping({
        "capa": {"default_url": "memory://", "retries": 1},
        "configuration": {"remote": {"url": f"redis://127.0.0.1:{free_port()}/2"}},
    })
    try:
        settings = Dynaconf(capa_component="remote", capa_runtime=runtime)
        with pytest.raises(ConfigurationUnavailable) as raised:
            settings.POOL  # noqa: B018
    finally:
        runtime.close()
    message = str(raised.value)
    assert "CAPA_COMPONENT_FOR_DYNACONF" in message and "[configuration.remote]" in message
    assert "Fix:" in message


def test_a_store_down_later_keeps_the_last_values(
    files: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.test_flask_config import TcpProxy

    redis_url = require("redis")
    with TcpProxy(redis_url) as proxy:
        runtime = Runtime.from_mapping({
            "capa": {"default_url": "memory://", "app_id": f"dyn-{unique}", "retries": 1},
            "configuration": {"remote": {"url": f"redis://127.0.0.1:{proxy.port}/2"}},
        })
        try:
            runtime.configuration("remote").save({"POOL": "9"})
            settings = Dynaconf(settings_files=["settings.toml"], environments=True,
                                capa_component="remote", capa_runtime=runtime)
            assert settings.POOL == 9
            proxy.stop()
            with caplog.at_level(logging.WARNING, logger="capa_compat.dynaconf"):
                settings.reload()  # dynaconf clears and reloads: capa's part comes from memory
            assert settings.POOL == 9 and settings.NAME == "from-file"
            assert "unreachable" in caplog.text and "keeping the last known values" in caplog.text
            proxy.start()
            runtime.configuration("remote").delete(["POOL"])
        finally:
            runtime.close()


def test_flask_dynaconf_reads_capa_live(
    files: Path, memory_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    flask = pytest.importorskip("flask")
    # FlaskDynaconf rebinds dynaconf.settings, as upstream's does: put it back afterwards.
    monkeypatch.setattr(dynaconf, "settings", dynaconf.settings)
    store = memory_runtime.configuration()
    store.save({"GREETING": "hello"}, label="development")
    app = flask.Flask(__name__)
    FlaskDynaconf(app, settings_files=["settings.toml"], capa_component="default",
                  capa_runtime=memory_runtime, ENV_FOR_DYNACONF="development")
    assert app.config["GREETING"] == "hello" and app.config.POOL == 2
    store.save({"GREETING": "bonjour"}, label="development")
    wait_for(lambda: app.config["GREETING"] == "bonjour")


def test_a_settings_object_collected_while_the_loader_holds_its_lock(
    files: Path, memory_runtime: Runtime
) -> None:
    """Garbage collection can run a collected object's finalizer inside source_for, which holds
    the loader's lock: the finalizer takes it again on the same thread and must not deadlock."""
    import gc

    from capa_compat.dynaconf import loader

    settings = make(memory_runtime)
    assert settings.NAME == "from-file"  # loads, so the object has a live source
    inner = settings._wrapped
    del settings
    done = threading.Event()

    def collect_under_the_lock() -> None:
        nonlocal inner
        with loader._sources_lock:
            inner = None
            gc.collect()
        done.set()

    worker = threading.Thread(target=collect_under_the_lock, daemon=True)
    worker.start()
    assert done.wait(10), "the finalizer deadlocked on the loader's lock"
