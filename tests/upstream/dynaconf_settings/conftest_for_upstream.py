"""conftest.py for dynaconf's own tests: its settings classes are capa_compat.dynaconf's.

dynaconf's sdist ships its tests without the conftest they use, so this one provides those
fixtures (a settings object fed by DYNATEST_* variables, a temporary working directory per test,
a clean environment...). Before any test module is imported it swaps dynaconf.Dynaconf,
LazySettings and FlaskDynaconf for capa_compat.dynaconf's, and switches the capa loader on for
every settings object (CAPA_COMPONENT_FOR_DYNACONF, on an in-memory capa store), so each test
runs with capa in the loader chain. The session fails if the capa loader never ran.
"""

import os
import sys
import warnings
from pathlib import Path
from textwrap import dedent
from unittest import mock

import dynaconf
import dynaconf.contrib
import pytest

import capa_compat.dynaconf
from capa_compat.dynaconf import loader as capa_loader

# CAPA_HARNESS_CONTROL=1 runs the same tests on upstream dynaconf, to tell apart what the
# harness (files the sdist lacks) and what the shim would break.
CONTROL = bool(os.environ.get("CAPA_HARNESS_CONTROL"))
if not CONTROL:
    os.environ["CAPA_DEFAULT_URL"] = "memory://"
    os.environ["CAPA_COMPONENT_FOR_DYNACONF"] = "default"
    dynaconf.Dynaconf = capa_compat.dynaconf.Dynaconf
    dynaconf.LazySettings = capa_compat.dynaconf.LazySettings
    dynaconf.FlaskDynaconf = capa_compat.dynaconf.FlaskDynaconf
    dynaconf.contrib.FlaskDynaconf = capa_compat.dynaconf.FlaskDynaconf

CAPA_LOADS = []
_load = capa_loader.load


def _counting_load(obj, *args, **kwargs):
    CAPA_LOADS.append(1)
    return _load(obj, *args, **kwargs)


capa_loader.load = _counting_load

HERE = Path(__file__).resolve().parent


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"capa loader ran {len(CAPA_LOADS)} times")


def pytest_sessionfinish(session, exitstatus):
    if session.testscollected and not CAPA_LOADS and not CONTROL:
        session.exitstatus = 3
        print("the capa loader never ran: the shim was not under test", file=sys.stderr)


@pytest.fixture
def no_deprecations():
    """dynaconf's own deprecation warnings fail the test."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=DeprecationWarning, module="dynaconf")
        yield


@pytest.fixture(scope="module")
def settings():
    """A LazySettings with environments, values from DYNATEST_* variables and boxed data."""
    values = {
        "HOSTNAME": "host.com",
        "PORT": "@int 5000",
        "VALUE": "@float 42.1",
        "ALIST": '@json ["item1", "item2", "item3"]',
        "ADICT": '@json {"key": "value"}',
        "DEBUG": "@bool true",
        "TODELETE": "@bool true",
    }
    for name, value in values.items():
        os.environ[f"DYNATEST_{name}"] = value
    loaders = ["dynaconf.loaders.env_loader"]
    if not CONTROL:
        loaders.append(capa_loader.MODULE)  # an explicit list takes capa only when named in it
    lazy = dynaconf.LazySettings(
        LOADERS_FOR_DYNACONF=loaders,
        ENVVAR_PREFIX_FOR_DYNACONF="DYNATEST",
        ROOT_PATH_FOR_DYNACONF=str(HERE),
        environments=True,
        boxed_data={
            "HOST": "server.com",
            "port": 8080,
            "PARAMS": {
                "username": "admin",
                "PASSWORD": "secret",
                "token": {"TYPE": 1, "value": 2},
            },
        },
    )
    lazy.SIMPLE_BOOL = False
    lazy.configure()
    return lazy


@pytest.fixture
def create_file(tmp_path):
    def write(filename, data):
        path = tmp_path / filename
        path.write_text(dedent(data))
        return path

    return write


@pytest.fixture(scope="module")
def testdir():
    return str(HERE)


@pytest.fixture(autouse=True)
def _in_tmpdir(request):
    """Each test runs in its own temporary directory (also importable), with a .env file."""
    tmpdir = request.getfixturevalue("tmpdir")
    tmpdir.join(".env").write("DYNACONF_TESTING=true\n")
    saved_path = list(sys.path)
    sys.path.insert(0, str(tmpdir))
    with tmpdir.as_cwd():
        yield
    sys.path[:] = saved_path


@pytest.fixture(scope="module")
def clean_env():
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("DYNACONF_", "FLASK_", "DJANGO_")):
            del os.environ[name]
    yield
    os.environ.update(saved)


class _Mocker:
    """The part of pytest-mock's ``mocker`` these tests use: patch.object, undone afterwards."""

    def __init__(self):
        self._patches = []
        self.patch = self

    def object(self, target, attribute, *args, **kwargs):
        patcher = mock.patch.object(target, attribute, *args, **kwargs)
        self._patches.append(patcher)
        return patcher.start()

    def stopall(self):
        for patcher in reversed(self._patches):
            patcher.stop()


@pytest.fixture
def mocker():
    helper = _Mocker()
    yield helper
    helper.stopall()


@pytest.fixture(autouse=True)
def _the_shim_is_under_test():
    assert CONTROL or dynaconf.LazySettings is capa_compat.dynaconf.LazySettings
    yield
