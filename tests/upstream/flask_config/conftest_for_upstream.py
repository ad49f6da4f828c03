"""conftest.py for Flask's own tests: flask.Flask and flask.Config are capa_compat.flask's.

Copied next to Flask's tests as conftest.py; Flask's own conftest (renamed upstream_conftest.py)
is imported after the swap, so its ``app`` fixture builds our Flask.
"""

import flask
import pytest
from _pytest import monkeypatch

import capa_compat.flask

# Flask's conftest uses pytest's private ``monkeypatch.notset``, renamed NOTSET in pytest 9.
if not hasattr(monkeypatch, "notset"):
    monkeypatch.notset = monkeypatch.NOTSET

flask.Flask = capa_compat.flask.Flask
flask.Config = capa_compat.flask.Config

from upstream_conftest import *  # noqa: E402,F403


@pytest.fixture(autouse=True)
def _the_shim_is_under_test():
    assert flask.Flask is capa_compat.flask.Flask
    assert isinstance(flask.Flask(__name__).config, capa_compat.flask.Config)
    yield
