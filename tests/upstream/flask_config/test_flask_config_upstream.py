"""Flask's own tests/test_config.py passes with flask.Flask and flask.Config replaced by ours."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("flask")

from tests.upstream.flask_config.run import run_suite


@pytest.mark.timeout(330)
def test_flask_config_suite_passes(tmp_path: Path) -> None:
    outcome = run_suite(tmp_path / "tests")
    assert outcome.failed == [], outcome.output[-8000:]
    assert outcome.skipped == [], outcome.skipped
    assert outcome.tests >= 19 and outcome.passed == outcome.tests, outcome.output[-4000:]
    assert outcome.returncode == 0, outcome.output[-4000:]
